"""The scale-out store: PostgreSQL through an asyncpg pool, shared by several relay nodes.

Same rules as ``SqliteStore`` (``relay.store.rules`` decides them, ``relay.store.base``
states them); what differs is that several processes write at once, so every rule that
reads before it writes is made safe across nodes:

- one write transaction per batch: advisory locks on author buckets (exclusive for
  replaceable, addressable and kind-5 events, shared for regular ones, taken in key
  order so batches never deadlock), a few set-based reads of the state the rules need,
  ``rules.BatchPlan`` deciding every outcome in batch order, one write per table;
- the common batch (regular, no attachments for plug-ins' write hooks, distinct ids) is
  one round trip through the server function ``write_regular_batch`` (migration 2);
- duplicates racing across nodes: ``INSERT ... ON CONFLICT (id) DO NOTHING RETURNING``;
- plug-ins' write hooks lock and read their rows after the author locks and write them
  in the batch's transaction (``relay.store.database``);
- queries shaped so the planner has one sensible choice (per-value index probes,
  ``plan_cache_mode = force_custom_plan``), tags in a table rather than GIN.

Why each choice, the alternatives rejected and the figures measured: docs/postgres-store.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, Literal, cast

import asyncpg
import orjson

from relay.nostr.errors import Rejection
from relay.nostr.event import Event, KindClass, is_hex64
from relay.nostr.filters import Filter
from relay.nostr.redaction import redact_url
from relay.nostr.search import DEFAULT_SEARCH_KINDS, document_words, tsvector_literal
from relay.store.base import (
    PAGE_BYTES,
    USES_PRUNED_PER_CALL,
    ReadLanes,
    StoreUnavailable,
    UseLimit,
    WriteOutcome,
    WriteRequest,
    answer_pages,
    answerable,
)
from relay.store.database import BatchHook, PostgresWriteHook
from relay.store.migrations import Migration
from relay.store.postgres_broadcast import notify_payload
from relay.store.postgres_migrations import (
    LOCK_CLASS_MIGRATE,
    apply_component_migrations,
    apply_migrations,
    quote_ident,
)
from relay.store.postgres_sql import Params, filter_count, filter_select
from relay.store.rules import (
    GIFT_WRAP_KIND,
    Address,
    BatchPlan,
    Present,
    address_of,
    lookups,
    simple_batch,
)

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from relay.nostr.policy import ReadScope

CLOSE_SECONDS = 10.0  # a graceful pool close at shutdown, then its connections are terminated
# pg_advisory_xact_lock(classid, objid) namespace for author buckets (docs/postgres-store.md).
LOCK_CLASS_AUTHOR = 0x53520002
AUTHOR_BUCKETS = 1024


# write_regular_batch's one-letter answers (migration 2).
_REGULAR_OUTCOMES = {"s": WriteOutcome.STORED, "d": WriteOutcome.DELETED, "u": WriteOutcome.DUPLICATE}


def _bucket(schema: str, pubkey: str) -> int:
    digest = hashlib.blake2b(f"{schema}\x00{pubkey}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big") % AUTHOR_BUCKETS


def _search_vector(ev: Event, kinds: frozenset[int]) -> str | None:
    """NIP-50: the event's ``search`` column value (a tsvector literal), None when its
    kind is not indexed."""
    doc = document_words(ev.kind, ev.content, ev.tags, kinds)
    return None if doc is None else tsvector_literal(doc)


_BUMP_CHANGES = "UPDATE store_changes SET counter = counter + 1 WHERE topic = $1"
# NIP-77 item sets are fetched through a cursor this many rows at a time: asyncpg decodes
# rows on the event loop, and one fetch of 30,000 stalled every other client for up to
# 34 ms (2,000 rows: ~2 ms, between which the loop serves them).
_SYNC_CHUNK_ROWS = 2000


# ``Store.take_uses``: the upsert's WHERE leaves a live window at its limit untouched
# ("INSERT 0 0"); an ended window starts again at one use.
_TAKE_USE = (
    "INSERT INTO use_counts (key, uses, expires_at) VALUES ($1, 1, $2)"
    " ON CONFLICT (key) DO UPDATE SET"
    " uses = CASE WHEN use_counts.expires_at <= $3 THEN 1 ELSE use_counts.uses + 1 END,"
    " expires_at = CASE WHEN use_counts.expires_at <= $3 THEN excluded.expires_at ELSE use_counts.expires_at END"
    " WHERE use_counts.expires_at <= $3 OR use_counts.uses < $4"
)
_PRUNE_USES = (
    "DELETE FROM use_counts WHERE key IN"
    " (SELECT key FROM use_counts WHERE expires_at <= $1 LIMIT $2 FOR UPDATE SKIP LOCKED)"
)


class _Rollback(Exception):
    """Leaves a transaction block so it rolls back (a use at its limit: nothing counted)."""


class PostgresStore:
    """``Store`` over PostgreSQL (docs/postgres-store.md: the concurrency design)."""

    def __init__(
        self,
        dsn: str,
        *,
        schema: str | None = None,
        pool_size: int = 10,
        search_kinds: frozenset[int] = DEFAULT_SEARCH_KINDS,
    ) -> None:
        if pool_size < 2:
            raise ValueError("pool_size must be at least 2 (the writer and one reader)")
        self.dsn = dsn
        self.schema = schema
        self.pool_size = pool_size
        self._pool: Any = None
        self._lock_scope = schema or "public"
        self.search_kinds = search_kinds  # NIP-50: kinds whose events get a search vector
        # Event reads take fair turns at all but two of the pool's connections (the writer's
        # batch and the plug-ins' tables keep those), expensive ones at half of them at most,
        # so a flood of COUNT/NEG-OPEN/search leaves REQ pages connections (issue 17).
        readers = max(2, pool_size - 2)
        self._lanes = ReadLanes(readers, heavy=readers // 2)
        self._hooks: dict[str, PostgresWriteHook] = {}
        self.database = PostgresPluginDatabase(self)  # plug-ins' tables (relay.store.database)
        self._announce: tuple[str, str] | None = None  # (NOTIFY channel, node id): announce_stored

    def announce_stored(self, channel: str, node_id: str) -> None:
        """NOTIFY every event this store inserts on ``channel`` (``relay.store.postgres_broadcast``'s
        payloads, from ``node_id``), inside the transaction that inserts it: PostgreSQL
        sends a transaction's notifications at its commit and never without it, so other
        nodes hear of exactly the events that committed, even if this node dies right after
        (a NOTIFY sent after the commit was lost with the node)."""
        self._announce = (channel, node_id)

    def _payloads(self, events: Sequence[Event]) -> list[str]:
        assert self._announce is not None
        return [notify_payload(self._announce[1], ev) for ev in events]

    # --- life cycle ---------------------------------------------------------------------

    async def open(self) -> None:
        # Custom plans always: asyncpg prepares every statement, and after five executions
        # PostgreSQL may switch to a generic plan that cannot see the parameters (measured:
        # one author, 100k events, generic 21.7 ms vs custom 0.24 ms; docs/postgres-store.md).
        # No JIT: a relay's statements are short, and one whose estimate passes
        # jit_above_cost spent more compiling than it could save (a COUNT of 90k events with
        # NIP-86 bans: 126 ms with JIT, 90 of them compiling; 36 ms without).
        settings = {"plan_cache_mode": "force_custom_plan", "jit": "off"}
        if self.schema is not None:
            settings["search_path"] = quote_ident(self.schema)
        try:
            pool = await asyncpg.create_pool(
                self.dsn, min_size=1, max_size=self.pool_size, server_settings=settings, command_timeout=60
            )
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            # Wrong password, unknown database, server down: the operator's to fix.
            raise StoreUnavailable(f"cannot connect to PostgreSQL {redact_url(self.dsn)}: {exc}") from exc
        try:
            async with pool.acquire() as conn:
                await apply_migrations(conn, self.schema)
                await self._sync_search_index(conn)
        except BaseException:
            await pool.close()
            raise
        self._pool = pool

    async def _sync_search_index(self, conn: Any) -> None:
        """Rebuild the NIP-50 vectors when they were built for other kinds than
        ``search_kinds`` (first start after migration 5 on a database with events, or
        ``[search] kinds`` changed), in one transaction under the migration lock, so of
        several nodes starting together one rebuilds and the others find it done."""
        want = ",".join(str(k) for k in sorted(self.search_kinds))
        if await conn.fetchval("SELECT kinds FROM search_state WHERE id = 1") == want:
            return
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", LOCK_CLASS_MIGRATE, self._lock_scope)
            if await conn.fetchval("SELECT kinds FROM search_state WHERE id = 1") == want:
                return
            await conn.execute("UPDATE events SET search = NULL WHERE search IS NOT NULL")
            kinds = sorted(self.search_kinds)
            indexed = 0
            last = 0
            while kinds:
                rows = await conn.fetch(
                    "SELECT seq, raw FROM events WHERE kind = ANY($1::int4[]) AND seq > $2 ORDER BY seq LIMIT 5000",
                    kinds,
                    last,
                )
                if not rows:
                    break
                seqs: list[int] = []
                vectors: list[str] = []
                for seq, raw in rows:
                    obj = orjson.loads(raw)
                    doc = document_words(obj["kind"], obj["content"], obj["tags"], self.search_kinds)
                    if doc is not None:
                        seqs.append(seq)
                        vectors.append(tsvector_literal(doc))
                await conn.execute(
                    "UPDATE events e SET search = v.search::tsvector"
                    " FROM unnest($1::int8[], $2::text[]) v(seq, search) WHERE e.seq = v.seq",
                    seqs,
                    vectors,
                )
                indexed += len(seqs)
                last = rows[-1][0]
            await conn.execute(
                "INSERT INTO search_state (id, kinds) VALUES (1, $1) ON CONFLICT (id) DO UPDATE SET kinds = $1", want
            )
        if indexed:
            log.info("search index rebuilt for kinds [%s]: %d events", want, indexed)

    async def close(self) -> None:
        """Close the pool gracefully, but not for ever: asyncpg's ``close`` waits for every
        connection to be released, and one held by a read that never returns (a task the
        shutdown could not reach) kept a stopping relay waiting 300 s in a test run. Past
        ``CLOSE_SECONDS`` the remaining connections are terminated, so a relay stops within
        its service manager's limit."""
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                await asyncio.wait_for(pool.close(), timeout=CLOSE_SECONDS)
            except TimeoutError:
                log.warning("PostgreSQL connections still busy after %.0f s at shutdown: terminated", CLOSE_SECONDS)
                pool.terminate()

    async def schema_version(self) -> int:
        return int(await self._fetchval("SELECT coalesce(max(version), 0) FROM schema_version"))

    # --- plumbing -----------------------------------------------------------------------

    def _acquire(self) -> Any:
        if self._pool is None:
            raise RuntimeError("store is not open")
        return self._pool.acquire()

    async def _fetch(self, sql: str, *args: Any) -> list[Any]:
        async with self._acquire() as conn:
            return list(await conn.fetch(sql, *args))

    async def _fetchval(self, sql: str, *args: Any) -> Any:
        async with self._acquire() as conn:
            return await conn.fetchval(sql, *args)

    async def _read_events(self, sql: str, *args: Any, heavy: bool = False) -> list[Any]:
        """An event read, in its turn (``ReadLanes``; ``heavy`` for the expensive kinds)."""
        async with self._lanes.turn(heavy=heavy):
            return await self._fetch(sql, *args)

    # --- events: writes -----------------------------------------------------------------

    async def write_batch(self, batch: Sequence[WriteRequest], now: int) -> list[WriteOutcome | Rejection]:
        for req in batch:
            if req.event.kind_class is KindClass.EPHEMERAL:
                raise ValueError("ephemeral events are never stored")
        if not batch:
            return []
        hooks = tuple(self._hooks.values())
        if not hooks and any(req.attachments for req in batch):
            # Attachments nobody interprets would store, say, a priced event for free.
            raise ValueError("a write request carries attachments but no write hook is installed")
        if simple_batch(batch):
            async with self._acquire() as conn:
                return list(await self._write_regular_batch(conn, batch))
        async with self._acquire() as conn, conn.transaction():
            return await self._write_batch(conn, list(batch), now, hooks)

    async def _write_regular_batch(self, conn: Any, batch: Sequence[WriteRequest]) -> list[WriteOutcome]:
        """The common batch (see ``rules.simple_batch``) in ONE round trip: the server function
        ``write_regular_batch`` (migration 2) locks, checks tombstones and inserts, and its
        implicit transaction has committed, durably, by the time the rows arrive."""
        keys = sorted({_bucket(self._lock_scope, req.event.pubkey) for req in batch})
        ids, pubkeys, created, kinds, expirations, raws = [], [], [], [], [], []
        searches: list[str | None] = []
        tag_index: list[int] = []
        tag_names: list[str] = []
        tag_values: list[str] = []
        for i, req in enumerate(batch, start=1):
            ev = req.event
            ids.append(bytes.fromhex(ev.id))
            pubkeys.append(bytes.fromhex(ev.pubkey))
            created.append(ev.created_at)
            kinds.append(ev.kind)
            expirations.append(ev.expiration)
            raws.append(ev.raw)
            searches.append(_search_vector(ev, self.search_kinds))
            for name, value in dict.fromkeys(ev.index_tags()):
                tag_index.append(i)
                tag_names.append(name)
                tag_values.append(value)
        call = "write_regular_batch($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
        announce: list[Any] = []
        if self._announce is None:
            sql = f"SELECT {call}"
        else:
            # Still one statement, so one implicit transaction: the events it stored (answer
            # letter "s") are NOTIFY'd in it, and go out with its commit.
            sql = (
                f"WITH w AS MATERIALIZED (SELECT {call} AS answer)"
                " SELECT w.answer, (SELECT count(pg_notify($13, p.payload))"
                " FROM unnest($14::text[]) WITH ORDINALITY p(payload, n)"
                " WHERE substr(w.answer, p.n::int, 1) = 's') FROM w"
            )
            announce = [self._announce[0], self._payloads([req.event for req in batch])]
        answer: str = await conn.fetchval(
            sql,
            LOCK_CLASS_AUTHOR,
            keys,
            ids,
            pubkeys,
            created,
            kinds,
            expirations,
            raws,
            searches,
            tag_index,
            tag_names,
            tag_values,
            *announce,
        )
        if len(answer) != len(batch):
            raise RuntimeError(f"write_regular_batch answered {len(answer)} outcomes for {len(batch)} events")
        return [_REGULAR_OUTCOMES[code] for code in answer]

    async def _write_batch(
        self, conn: Any, batch: list[WriteRequest], now: int, hooks: tuple[PostgresWriteHook, ...]
    ) -> list[WriteOutcome | Rejection]:
        events = [req.event for req in batch]
        await self._lock_authors(conn, events)
        attached = [req for req in batch if req.attachments]
        batch_hooks: list[BatchHook] = [await hook(conn, attached, now) for hook in hooks] if attached else []

        # Everything the rules read, in four set-based statements under the locks.
        lookup_ids, addresses = lookups(events)
        present: dict[str, Present] = {}
        # A gift wrap's p tags come along: its recipient may delete it (rules.deletion_removes).
        rows = await conn.fetch(
            "SELECT e.id, e.pubkey, e.kind, e.created_at, e.d_tag, CASE WHEN e.kind = $2 THEN"
            " ARRAY(SELECT t.value FROM tags t WHERE t.seq = e.seq AND t.name = 'p') END"
            " FROM events e WHERE e.id = ANY($1::bytea[])",
            [bytes.fromhex(i) for i in lookup_ids],
            GIFT_WRAP_KIND,
        )
        for row in rows:
            eid, pk = row[0].hex(), row[1].hex()
            address = (pk, row[2], row[4]) if row[4] is not None else None
            recipients = frozenset(v for v in row[5] or () if is_hex64(v))
            present[eid] = Present(eid, pk, row[2], row[3], address, recipients)
        tomb_ids: dict[str, set[str]] = {}
        for row in await conn.fetch(
            "SELECT id, pubkey FROM deleted_ids WHERE id = ANY($1::bytea[])", [bytes.fromhex(ev.id) for ev in events]
        ):
            tomb_ids.setdefault(row[0].hex(), set()).add(row[1].hex())
        current: dict[Address, Present | None] = {}
        tomb_addresses: dict[Address, int] = {}
        if addresses:
            keys = sorted(addresses)
            args = ([bytes.fromhex(a[0]) for a in keys], [a[1] for a in keys], [a[2] for a in keys])
            for row in await conn.fetch(
                "SELECT e.id, e.pubkey, e.kind, e.created_at, e.d_tag FROM events e"
                " JOIN unnest($1::bytea[], $2::int4[], $3::text[]) k(pubkey, kind, d)"
                " ON e.pubkey = k.pubkey AND e.kind = k.kind AND e.d_tag = k.d",
                *args,
            ):
                eid, pk = row[0].hex(), row[1].hex()
                entry = Present(eid, pk, row[2], row[3], (pk, row[2], row[4]))
                current[(pk, row[2], row[4])] = entry
                present[eid] = entry
            for row in await conn.fetch(
                "SELECT d.pubkey, d.kind, d.d_tag, d.until FROM deleted_addresses d"
                " JOIN unnest($1::bytea[], $2::int4[], $3::text[]) k(pubkey, kind, d)"
                " ON d.pubkey = k.pubkey AND d.kind = k.kind AND d.d_tag = k.d",
                *args,
            ):
                tomb_addresses[(row[0].hex(), row[1], row[2])] = row[3]

        plan = BatchPlan(present, current, tomb_ids, tomb_addresses, batch_hooks)
        outcomes = [plan.apply(i, req) for i, req in enumerate(batch)]

        if plan.db_deletes:
            await conn.execute(
                "WITH gone AS (DELETE FROM events WHERE id = ANY($1::bytea[]) RETURNING seq)"
                " DELETE FROM tags WHERE seq IN (SELECT seq FROM gone)",
                [bytes.fromhex(i) for i in plan.db_deletes],
            )
        if plan.inserts:
            lost = await self._insert(conn, plan, self.search_kinds)
            for eid in lost:
                # Another node committed the same id after our read: it is stored, by them.
                index, req = plan.inserts[eid]
                outcomes[index] = WriteOutcome.DUPLICATE
                if req.attachments:
                    plan.retract(req)
        if plan.new_tomb_ids:
            ids = sorted(plan.new_tomb_ids)
            await conn.execute(
                "INSERT INTO deleted_ids (id, pubkey) SELECT * FROM unnest($1::bytea[], $2::bytea[])"
                " ON CONFLICT DO NOTHING",
                [bytes.fromhex(t[0]) for t in ids],
                [bytes.fromhex(t[1]) for t in ids],
            )
        if plan.new_tomb_addresses:
            keys = sorted(plan.new_tomb_addresses)
            await conn.execute(
                "INSERT INTO deleted_addresses (pubkey, kind, d_tag, until)"
                " SELECT * FROM unnest($1::bytea[], $2::int4[], $3::text[], $4::int8[])"
                " ON CONFLICT (pubkey, kind, d_tag)"
                " DO UPDATE SET until = greatest(deleted_addresses.until, excluded.until)",
                [bytes.fromhex(a[0]) for a in keys],
                [a[1] for a in keys],
                [a[2] for a in keys],
                [plan.new_tomb_addresses[a] for a in keys],
            )
        for batch_hook in batch_hooks:
            await batch_hook.write(conn, now)
        stored = [req.event for req, outcome in zip(batch, outcomes, strict=True) if outcome is WriteOutcome.STORED]
        if self._announce is not None and stored:
            # In this transaction: sent with its commit, or never (announce_stored).
            await conn.execute(
                "SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p", self._announce[0], self._payloads(stored)
            )
        return outcomes

    async def _lock_authors(self, conn: Any, events: list[Event]) -> None:
        """Advisory locks on author buckets, exclusive where the event's rules read and
        replace the author's other events (docs/postgres-store.md), in key order."""
        modes: dict[int, bool] = {}
        for ev in events:
            bucket = _bucket(self._lock_scope, ev.pubkey)
            exclusive = ev.kind == 5 or ev.kind_class is not KindClass.REGULAR
            modes[bucket] = modes.get(bucket, False) or exclusive
        keys = sorted(modes)
        await conn.execute(
            "SELECT CASE WHEN x THEN pg_advisory_xact_lock($1, k)::text"
            " ELSE pg_advisory_xact_lock_shared($1, k)::text END"
            " FROM unnest($2::int4[], $3::bool[]) u(k, x)",
            LOCK_CLASS_AUTHOR,
            keys,
            [modes[k] for k in keys],
        )

    @staticmethod
    async def _insert(conn: Any, plan: BatchPlan, search_kinds: frozenset[int]) -> set[str]:
        """Insert the batch's surviving events and their tags in one statement; return the
        ids another node inserted first (ON CONFLICT). Rows go in id order so two nodes
        inserting overlapping ids wait on the unique index in the same order."""
        ordered = sorted(plan.inserts)
        evs = [plan.inserts[i][1].event for i in ordered]
        ids, pubkeys, created, kinds, d_tags, expirations, raws = [], [], [], [], [], [], []
        searches: list[str | None] = []
        tag_ids, tag_names, tag_values = [], [], []
        for ev in evs:
            eid = bytes.fromhex(ev.id)
            ids.append(eid)
            pubkeys.append(bytes.fromhex(ev.pubkey))
            created.append(ev.created_at)
            kinds.append(ev.kind)
            address = address_of(ev)
            d_tags.append(address[2] if address is not None else None)
            expirations.append(ev.expiration)
            raws.append(ev.raw)
            searches.append(_search_vector(ev, search_kinds))
            for name, value in dict.fromkeys(ev.index_tags()):
                tag_ids.append(eid)
                tag_names.append(name)
                tag_values.append(value)
        rows = await conn.fetch(
            "WITH ins AS (INSERT INTO events (id, pubkey, created_at, kind, d_tag, expiration, raw, search)"
            " SELECT id, pubkey, created_at, kind, d_tag, expiration, raw, search::tsvector"
            " FROM unnest($1::bytea[], $2::bytea[], $3::int8[], $4::int4[], $5::text[], $6::int8[],"
            " $7::bytea[], $11::text[]) u(id, pubkey, created_at, kind, d_tag, expiration, raw, search)"
            " ON CONFLICT (id) DO NOTHING RETURNING seq, id, created_at, kind, expiration),"
            " tg AS (INSERT INTO tags (seq, name, value, created_at, kind, expiration)"
            " SELECT ins.seq, t.name, t.value, ins.created_at, ins.kind, ins.expiration"
            " FROM ins JOIN unnest($8::bytea[], $9::text[], $10::text[]) t(id, name, value) ON t.id = ins.id)"
            " SELECT id FROM ins",
            ids,
            pubkeys,
            created,
            kinds,
            d_tags,
            expirations,
            raws,
            tag_ids,
            tag_names,
            tag_values,
            searches,
        )
        won = {row[0].hex() for row in rows}
        return {i for i in ordered if i not in won}

    async def purge_expired(self, now: int) -> int:
        async with self._acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "WITH gone AS (DELETE FROM events WHERE expiration IS NOT NULL AND expiration <= $1 RETURNING seq),"
                " t AS (DELETE FROM tags WHERE seq IN (SELECT seq FROM gone))"
                " SELECT count(*) FROM gone",
                now,
            )
        return int(rows[0][0])

    # --- events: reads ------------------------------------------------------------------

    async def query(self, filters: Sequence[Filter], now: int, scope: ReadScope | None = None) -> list[bytes]:
        live = answerable(filters)
        if not live:
            return []
        return [row[0] for row in await self._answer(live, now, "e.raw", scope)]

    async def query_pages(
        self,
        filters: Sequence[Filter],
        now: int,
        scope: ReadScope | None = None,
        *,
        page_bytes: int = PAGE_BYTES,
    ) -> AsyncGenerator[list[bytes], None]:
        # octet_length() of a TOASTed bytea reads its header, not the value.
        live = answerable(filters)
        async for page in answer_pages(
            live,
            lambda columns: self._answer(live, now, columns, scope),
            "e.seq, e.id, octet_length(e.raw)",
            self._rows_by_seq,
            page_bytes,
        ):
            yield page

    async def _rows_by_seq(self, seqs: list[int]) -> list[tuple[int, bytes, bytes]]:
        rows = await self._read_events("SELECT seq, id, raw FROM events WHERE seq = ANY($1::int8[])", seqs)
        return [(row[0], row[1], row[2]) for row in rows]

    async def _answer(self, live: list[Filter], now: int, columns: str, scope: ReadScope | None) -> list[Any]:
        """Rows of ``columns`` (over ``events e``) of the answer to ``live``: each filter
        contributes its ``limit`` newest that ``scope`` lets the reader see, the union
        de-duplicated, newest first, ties lowest id."""
        p = Params()
        if len(live) == 1:
            # NIP-50 ranking reads up to RANK_CANDIDATES matches: an expensive read.
            sql = filter_select(live[0], now, p, columns, scope)
            return await self._read_events(sql, *p.values, heavy=live[0].search is not None)
        if any(f.search is not None for f in live):
            return await self._ranked_answer(live, now, columns, scope)
        # One statement, one snapshot; each arm keeps its own ORDER BY/LIMIT, the union is
        # de-duplicated and ordered here (cheaper than making the server compare raw).
        keyed = f"e.created_at, e.id, {columns}"
        arms = " UNION ALL ".join(f"({filter_select(f, now, p, keyed, scope)})" for f in live)
        merged: dict[bytes, tuple[int, bytes, tuple[Any, ...]]] = {}
        for row in await self._read_events(arms, *p.values):
            merged[row[1]] = (-row[0], row[1], tuple(row[2:]))
        return [rest for _, _, rest in sorted(merged.values())]

    async def _ranked_answer(
        self, live: list[Filter], now: int, columns: str, scope: ReadScope | None
    ) -> list[Any]:
        """``_answer`` when some filters carry a NIP-50 ``search``: each search filter's rows
        in its own relevance order (filters in the order given), then the other filters'
        union newest first, each event once (relevance scores of different searches do not
        compare, so they are not interleaved)."""
        parts = [[f] for f in live if f.search is not None]
        rest = [f for f in live if f.search is None]
        if rest:
            parts.append(rest)
        out: list[Any] = []
        seen: set[bytes] = set()
        for part in parts:
            for row in await self._answer(part, now, f"e.id, {columns}", scope):
                if row[0] not in seen:
                    seen.add(row[0])
                    out.append(tuple(row[1:]))
        return out

    async def count(self, filters: Sequence[Filter], now: int, scope: ReadScope | None = None) -> int:
        live = [f for f in filters if not f.is_empty()]
        if not live:
            return 0
        p = Params()
        union = " UNION ".join(filter_count(f, now, p, scope) for f in live)
        rows = await self._read_events(f"SELECT count(*) FROM ({union}) s", *p.values, heavy=True)
        return int(rows[0][0])

    async def count_registers(
        self, f: Filter, now: int, scope: ReadScope | None, offset: int
    ) -> list[tuple[int, bytes]]:
        # PostgreSQL has no min(bytea): the suffix is compared as hex text in the C collation
        # (bytewise), which orders equal-length hex exactly as the bytes.
        p = Params()
        at, after = p.add(offset, "::int4"), p.add(offset + 2, "::int4")
        columns = f"get_byte(e.pubkey, {at}), min(encode(substring(e.pubkey from {after} for 7), 'hex') COLLATE \"C\")"
        sql = filter_count(f, now, p, scope, columns=columns) + " GROUP BY 1"
        rows = await self._read_events(sql, *p.values, heavy=True)
        return [(int(row[0]), bytes.fromhex(row[1])) for row in rows]

    async def sync_items(
        self, f: Filter, now: int, scope: ReadScope | None, max_items: int
    ) -> list[tuple[int, bytes]]:
        """NIP-77: (created_at, id) of the events ``f`` matches; with no other condition
        an index-only scan of ``events_created (created_at DESC, id)``, never ``raw``."""
        if f.is_empty() or f.limit == 0:
            return []
        p = Params()
        sql = filter_count(f, now, p, scope, columns="e.created_at, e.id")
        take = max_items + 1
        if f.limit is not None:  # the newest `limit` events, as REQ would pick them
            take = min(take, f.limit)
            sql += " ORDER BY e.created_at DESC, e.id"
        sql += f" LIMIT {p.add(take, '::int8')}"
        items: list[tuple[int, bytes]] = []
        async with self._lanes.turn(heavy=True), self._acquire() as conn, conn.transaction(readonly=True):
            cursor = await conn.cursor(sql, *p.values)  # one statement: one snapshot
            while rows := await cursor.fetch(_SYNC_CHUNK_ROWS):
                items.extend((row[0], bytes(row[1])) for row in rows)
        return items

    # --- retention, quotas, NIP-62, NIP-86 -------------------------------------------------

    async def purge_older(self, kind: int, before: int, limit: int) -> int:
        async with self._acquire() as conn, conn.transaction():
            value = await conn.fetchval(
                "WITH gone AS (DELETE FROM events WHERE seq IN ("
                "  SELECT seq FROM events WHERE kind = $1 AND created_at < $2 ORDER BY created_at LIMIT $3"
                ") RETURNING seq),"
                " t AS (DELETE FROM tags WHERE seq IN (SELECT seq FROM gone))"
                " SELECT count(*) FROM gone",
                kind,
                before,
                limit,
            )
        return int(value)

    async def stored_bytes(self, pubkey: str) -> int:
        value = await self._fetchval(
            "SELECT coalesce(sum(octet_length(raw)), 0) FROM events WHERE pubkey = $1", bytes.fromhex(pubkey)
        )
        return int(value)

    async def database_bytes(self) -> int:
        # The tables of this store's schema (the first on its search_path), each with its
        # indexes and TOAST (pg_total_relation_size): sizes from the catalogue, no scan.
        value = await self._fetchval(
            "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'm')"
        )
        return int(value)

    async def vanish(self, pubkey: str, until: int, now: int) -> int:
        pk = bytes.fromhex(pubkey)
        async with self._acquire() as conn, conn.transaction():
            # The author's bucket exclusively, as for a kind 5: a batch of this author's
            # events in flight on any node commits before us or waits for us.
            await conn.execute(
                "SELECT pg_advisory_xact_lock($1, $2)", LOCK_CLASS_AUTHOR, _bucket(self._lock_scope, pubkey)
            )
            deleted = int(
                await conn.fetchval(
                    "WITH targets AS ("
                    "  SELECT seq FROM events WHERE pubkey = $1 AND created_at <= $3"
                    "  UNION SELECT t.seq FROM tags t WHERE t.name = 'p' AND t.value = $2 AND t.created_at <= $3"
                    "  AND t.kind = 1059),"
                    " gone AS (DELETE FROM events WHERE seq IN (SELECT seq FROM targets) RETURNING seq),"
                    " t AS (DELETE FROM tags WHERE seq IN (SELECT seq FROM gone))"
                    " SELECT count(*) FROM gone",
                    pk,
                    pubkey,
                    until,
                )
            )
            if deleted:
                await conn.execute(
                    "INSERT INTO vanished AS v (pubkey, until) VALUES ($1, $2)"
                    " ON CONFLICT (pubkey) DO UPDATE SET until = greatest(v.until, excluded.until)",
                    pk,
                    until,
                )
                await conn.execute(_BUMP_CHANGES, "vanish")
        return deleted

    async def list_vanished(self) -> dict[str, int]:
        rows = await self._fetch("SELECT pubkey, until FROM vanished")
        return {bytes(row[0]).hex(): int(row[1]) for row in rows}

    async def vanish_changes(self) -> int:
        value = await self._fetchval("SELECT counter FROM store_changes WHERE topic = 'vanish'")
        return int(value or 0)

    async def list_management(self) -> list[tuple[str, str, str]]:
        rows = await self._fetch("SELECT topic, key, value FROM management")
        return [(str(r[0]), str(r[1]), str(r[2])) for r in rows]

    async def apply_management(self, changes: Sequence[tuple[str, str, str | None]]) -> None:
        async with self._acquire() as conn, conn.transaction():
            for topic, key, value in changes:
                if value is None:
                    await conn.execute("DELETE FROM management WHERE topic = $1 AND key = $2", topic, key)
                else:
                    await conn.execute(
                        "INSERT INTO management (topic, key, value) VALUES ($1, $2, $3)"
                        " ON CONFLICT (topic, key) DO UPDATE SET value = excluded.value",
                        topic,
                        key,
                        value,
                    )
            await conn.execute(_BUMP_CHANGES, "management")

    async def management_changes(self) -> int:
        value = await self._fetchval("SELECT counter FROM store_changes WHERE topic = 'management'")
        return int(value or 0)

    async def take_uses(self, uses: Sequence[UseLimit], now: int) -> str | None:
        """Each upsert holds its row's lock to the commit, so two nodes counting one key
        queue on it (ON CONFLICT DO UPDATE re-reads the committed row); keys are taken in
        sorted order so two callers sharing keys cannot deadlock, and the pruning skips
        rows another caller holds (SKIP LOCKED) instead of waiting for them."""
        at_limit: str | None = None
        async with self._acquire() as conn:
            try:
                async with conn.transaction():
                    for use in sorted(uses, key=lambda u: u.key):
                        status: str = await conn.execute(_TAKE_USE, use.key, use.expires_at, now, use.limit)
                        if status != "INSERT 0 1":
                            at_limit = use.key
                            raise _Rollback
                    await conn.execute(_PRUNE_USES, now, USES_PRUNED_PER_CALL)
            except _Rollback:
                pass
        return at_limit


class PostgresPluginDatabase:
    """``relay.store.database.PostgresDatabase`` over a ``PostgresStore``: the store's
    pool, its schema, its migration lock."""

    def __init__(self, store: PostgresStore) -> None:
        self._store = store

    @property
    def dialect(self) -> Literal["postgresql"]:
        return "postgresql"

    @property
    def scope(self) -> str:
        return self._store._lock_scope

    def acquire(self) -> AbstractAsyncContextManager[Any]:
        return cast(AbstractAsyncContextManager[Any], self._store._acquire())

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Any]:
        async with self._store._acquire() as conn, conn.transaction():
            yield conn

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        return await self._store._fetch(sql, *args)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        return await self._store._fetchval(sql, *args)

    async def execute(self, sql: str, *args: Any) -> str:
        async with self._store._acquire() as conn:
            status: str = await conn.execute(sql, *args)
        return status

    async def migrate(
        self,
        component: str,
        steps: Sequence[Migration],
        adopt: Callable[[Any], Awaitable[int]] | None = None,
    ) -> int:
        async with self._store._acquire() as conn:
            return await apply_component_migrations(conn, self.scope, component, steps, adopt)

    def add_write_hook(self, component: str, hook: PostgresWriteHook) -> None:
        self._store._hooks[component] = hook
