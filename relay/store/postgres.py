"""The scale-out store: PostgreSQL through an asyncpg pool, shared by several relay nodes.

Same rules as ``SqliteStore`` (``relay.store.rules`` decides them, ``relay.store.base``
states them); what differs is that several processes write at once, so every rule that
reads before it writes is made safe across nodes:

- one write transaction per batch: advisory locks on author buckets (exclusive for
  replaceable, addressable and kind-5 events, shared for regular ones, taken in key
  order so batches never deadlock), a few set-based reads of the state the rules need,
  ``rules.BatchPlan`` deciding every outcome in batch order, one write per table;
- the common batch (regular, uncharged, distinct ids) is one round trip through the
  server function ``write_regular_batch`` (migration 2);
- duplicates racing across nodes: ``INSERT ... ON CONFLICT (id) DO NOTHING RETURNING``;
- settlement exactly once: a conditional ``UPDATE invoices ... WHERE state <> 'paid'``;
- queries shaped so the planner has one sensible choice (per-value index probes,
  ``plan_cache_mode = force_custom_plan``), tags in a table rather than GIN.

Why each choice, the alternatives rejected and the figures measured: docs/postgres-store.md.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncGenerator, Sequence
from typing import TYPE_CHECKING, Any

import asyncpg
import orjson

from relay.event import Event, KindClass, is_hex64
from relay.filters import Filter
from relay.search import DEFAULT_SEARCH_KINDS, RANK_CANDIDATES, document_words, tsvector_literal
from relay.store.base import (
    ACCOUNT_COLUMNS,
    DAY_SECONDS,
    FOREVER,
    INVITE_COLUMNS,
    INVOICE_COLUMNS,
    PAGE_BYTES,
    RENEWAL_COLUMNS,
    USES_PRUNED_PER_CALL,
    Account,
    Invite,
    InviteOutcome,
    Invoice,
    InvoiceFunnel,
    MemberStatus,
    NwcLink,
    ReadLanes,
    RenewalAttempt,
    RevenueRow,
    StoreUnavailable,
    UseLimit,
    WriteOutcome,
    WriteRequest,
    account_from_row,
    answer_pages,
    answerable,
    hex_prefix_range,
    invite_from_row,
    invite_refusal,
    invoice_from_row,
    member_status_conditions,
)
from relay.store.postgres_migrations import LOCK_CLASS_MIGRATE, apply_migrations, quote_ident
from relay.store.rules import (
    GIFT_WRAP_KIND,
    Address,
    BatchPlan,
    Present,
    address_of,
    admitted_until_after_grant,
    lookups,
    simple_batch,
)

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from relay.policy import ReadScope

# pg_advisory_xact_lock(classid, objid) namespace for author buckets (docs/postgres-store.md).
LOCK_CLASS_AUTHOR = 0x53520002
AUTHOR_BUCKETS = 1024
# pg_advisory_xact_lock(classid, objid) for "count pending invoices, then insert" (caps).
LOCK_CLASS_INVOICES = 0x53520003
# Most rows a filter's per-author/per-kind index probes may read (probes x limit), beyond
# which the plain WHERE is left to the planner; a single probe is always taken (see
# "Query plans" in docs/postgres-store.md).
PROBE_ROWS_MAX = 2500


# write_regular_batch's one-letter answers (migration 2).
_REGULAR_OUTCOMES = {"s": WriteOutcome.STORED, "d": WriteOutcome.DELETED, "u": WriteOutcome.DUPLICATE}


def _bucket(schema: str, pubkey: str) -> int:
    digest = hashlib.blake2b(f"{schema}\x00{pubkey}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big") % AUTHOR_BUCKETS


class _Params:
    """Numbered asyncpg placeholders for a statement assembled from parts."""

    def __init__(self) -> None:
        self.values: list[Any] = []

    def add(self, value: Any, cast: str = "") -> str:
        self.values.append(value)
        return f"${len(self.values)}{cast}"


def _search_vector(ev: Event, kinds: frozenset[int]) -> str | None:
    """NIP-50: the event's ``search`` column value (a tsvector literal), None when its
    kind is not indexed."""
    doc = document_words(ev.kind, ev.content, ev.tags, kinds)
    return None if doc is None else tsvector_literal(doc)


def _event_conditions(f: Filter, now: int, p: _Params) -> list[str]:
    """Conditions on ``events e`` for a filter's non-tag fields, NIP-40 and NIP-50."""
    where: list[str] = []
    # With a search, kinds are tested as "kind + 0": the planner, lacking statistics
    # (autovacuum off, or a fresh import), would otherwise AND a bitmap of the whole kind
    # index with the GIN matches (measured: 1M events, a word in 100 events, 161 ms, all
    # of it reading kind = 1 entries); the GIN matches are few enough to test kinds on.
    kind = "e.kind" if f.search is None else "(e.kind + 0)"
    if f.search is not None:
        # Only the indexed kinds can match (the filter was parsed with the relay's kinds).
        where.append(f"e.search @@ {p.add(f.search.tsquery_literal(), '::tsquery')}")
        where.append(f"{kind} = ANY({p.add(sorted(f.search.kinds), '::int4[]')})")
    if f.ids is not None:
        where.append(f"e.id = ANY({p.add(sorted(bytes.fromhex(i) for i in f.ids), '::bytea[]')})")
    if f.authors is not None:
        where.append(f"e.pubkey = ANY({p.add(sorted(bytes.fromhex(a) for a in f.authors), '::bytea[]')})")
    if f.kinds is not None:
        where.append(f"{kind} = ANY({p.add(sorted(f.kinds), '::int4[]')})")
    if f.since is not None:
        where.append(f"e.created_at >= {p.add(f.since, '::int8')}")
    if f.until is not None:
        where.append(f"e.created_at <= {p.add(f.until, '::int8')}")
    # NIP-40: an expired event is never sent, purged yet or not.
    where.append(f"(e.expiration IS NULL OR e.expiration > {p.add(now, '::int8')})")
    return where


def _tag_subquery(name: str, values: frozenset[str], f: Filter, p: _Params) -> str:
    values_param = p.add(sorted(values), "::text[]")
    sub = f"SELECT t.seq FROM tags t WHERE t.name = {p.add(name)} AND t.value = ANY({values_param})"
    if f.since is not None:
        sub += f" AND t.created_at >= {p.add(f.since, '::int8')}"
    if f.until is not None:
        sub += f" AND t.created_at <= {p.add(f.until, '::int8')}"
    return sub


def _probe_select(f: Filter, now: int, p: _Params, columns: str, scope: ReadScope | None = None) -> str | None:
    """A limited filter on authors and/or kinds (no ids, no tags) as one ordered index
    probe per author, per kind or per (author, kind) pair, or None when it has none of
    them or too many values (docs/postgres-store.md, "Query plans").

    Each probe reads the newest ``limit`` rows of one key from an index whose order is
    ``created_at DESC`` (ties kept whole, so the outer lowest-id cut is exact) and stops;
    the outer sort sees at most ``limit`` x probes rows. An event has one pubkey and one
    kind, so probes never return the same row twice. The lateral is aliased ``e`` so
    ``columns`` reads the same as in a plain ``events e`` select.
    """
    if f.limit is None or f.ids is not None or f.tags or f.search is not None:
        return None

    wanted = f.limit

    def affordable(probes: int) -> bool:
        return probes == 1 or probes * wanted <= PROBE_ROWS_MAX

    keys: list[str] = []
    if f.authors is not None and f.kinds is not None and affordable(len(f.authors) * len(f.kinds)):
        pairs = sorted((bytes.fromhex(a), k) for a in f.authors for k in f.kinds)
        source = (
            f"unnest({p.add([a for a, _ in pairs], '::bytea[]')}, {p.add([k for _, k in pairs], '::int4[]')})"
            " v(pubkey, kind)"
        )
        keys += ["e.pubkey = v.pubkey", "e.kind = v.kind"]
    elif f.authors is not None and affordable(len(f.authors)):
        source = f"unnest({p.add(sorted(bytes.fromhex(a) for a in f.authors), '::bytea[]')}) v(pubkey)"
        keys.append("e.pubkey = v.pubkey")
        if f.kinds is not None:
            keys.append(f"e.kind = ANY({p.add(sorted(f.kinds), '::int4[]')})")
    elif f.authors is None and f.kinds is not None and affordable(len(f.kinds)):
        source = f"unnest({p.add(sorted(f.kinds), '::int4[]')}) v(kind)"
        keys.append("e.kind = v.kind")
    else:
        return None
    if f.since is not None:
        keys.append(f"e.created_at >= {p.add(f.since, '::int8')}")
    if f.until is not None:
        keys.append(f"e.created_at <= {p.add(f.until, '::int8')}")
    keys.append(f"(e.expiration IS NULL OR e.expiration > {p.add(now, '::int8')})")
    keys.extend(_scope_conditions(scope, f, p))  # inside the probe: before its limit
    limit = p.add(f.limit, "::int8")
    return (
        f"SELECT {columns} FROM {source}, LATERAL ("
        f"SELECT e.seq, e.created_at, e.id, e.raw FROM events e WHERE {' AND '.join(keys)}"
        f" ORDER BY e.created_at DESC FETCH FIRST ({limit}) ROWS WITH TIES) e"
        f" ORDER BY e.created_at DESC, e.id LIMIT {limit}"
    )


def _search_select(f: Filter, now: int, p: _Params, columns: str, scope: ReadScope | None) -> str:
    """NIP-50: a ``search`` filter, best match first (``ts_rank``: grows with how often
    the words occur), then newest, then lowest id; LIMIT after ranking. The partial GIN
    index ``events_search`` finds the candidates, the other conditions are checked on
    them, and only the ``RANK_CANDIDATES`` most recently stored are ranked
    (``relay.search``): ``ts_rank`` reads each candidate's vector."""
    assert f.search is not None
    where = _event_conditions(f, now, p)
    where.extend(f"e.seq IN ({_tag_subquery(name, values, f, p)})" for name, values in f.tags)
    where.extend(_scope_conditions(scope, f, p))
    query = p.add(f.search.tsquery_literal(), "::tsquery")
    candidates = (
        f"SELECT e.seq FROM events e WHERE {' AND '.join(where)}"
        # "+ 0": no index yields this order, so the planner cannot walk the primary key
        # backwards testing @@ on every row (a full scan for a rare word); it takes the GIN
        # index's matches and keeps the newest in a top-N sort.
        f" ORDER BY e.seq + 0 DESC LIMIT {p.add(RANK_CANDIDATES, '::int8')}"
    )
    best = (
        f"SELECT c.seq, ts_rank(c.search, {query}) AS r, c.created_at, c.id FROM events c"
        f" WHERE c.seq IN ({candidates}) ORDER BY r DESC, c.created_at DESC, c.id"
    )
    if f.limit is not None:
        best += f" LIMIT {p.add(f.limit, '::int8')}"
    return (
        f"SELECT {columns} FROM ({best}) s JOIN events e ON e.seq = s.seq"
        " ORDER BY s.r DESC, s.created_at DESC, s.id"
    )


def _filter_select(f: Filter, now: int, p: _Params, columns: str, scope: ReadScope | None = None) -> str:
    """One filter as a SELECT of ``columns`` over ``events e``, newest first, limited.

    A filter whose only event-level conditions are one tag, kinds, since/until (the
    common ``#p``/``#e`` shapes) takes the top-N path: for each tag value, the newest
    ``limit`` rows of ``tags_lookup`` (ties kept whole, so the final lowest-id cut is
    exact), then one events probe per candidate. Authors/kinds filters take the same
    shape over the events indexes (``_probe_select``). Everything else is one WHERE that
    the planner drives from the most selective index; tag conditions are ``seq IN
    (...)`` so an event matching two values of one tag counts once. ``scope``'s rules
    (``_scope_conditions``) go wherever the rows are cut to ``limit``, inside each probe.
    """
    if f.search is not None:
        return _search_select(f, now, p, columns, scope)
    probe = _probe_select(f, now, p, columns, scope)
    if probe is not None:
        return probe
    if f.limit is not None and len(f.tags) == 1 and f.ids is None and f.authors is None:
        name, values = f.tags[0]
        inner = [f"t.name = {p.add(name)}", "t.value = v.value"]
        if f.kinds is not None:
            inner.append(f"t.kind = ANY({p.add(sorted(f.kinds), '::int4[]')})")
        if f.since is not None:
            inner.append(f"t.created_at >= {p.add(f.since, '::int8')}")
        if f.until is not None:
            inner.append(f"t.created_at <= {p.add(f.until, '::int8')}")
        inner.append(f"(t.expiration IS NULL OR t.expiration > {p.add(now, '::int8')})")
        inner.extend(_scope_conditions(scope, f, p, "t"))
        limit = p.add(f.limit, "::int8")
        return (
            f"SELECT {columns} FROM events e WHERE e.seq IN ("
            f"SELECT s.seq FROM unnest({p.add(sorted(values), '::text[]')}) v(value), LATERAL ("
            f"SELECT t.seq FROM tags t WHERE {' AND '.join(inner)}"
            f" ORDER BY t.created_at DESC FETCH FIRST ({limit}) ROWS WITH TIES) s)"
            f" ORDER BY e.created_at DESC, e.id LIMIT {limit}"
        )
    where = _event_conditions(f, now, p)
    where.extend(f"e.seq IN ({_tag_subquery(name, values, f, p)})" for name, values in f.tags)
    where.extend(_scope_conditions(scope, f, p))
    sql = f"SELECT {columns} FROM events e WHERE {' AND '.join(where)} ORDER BY e.created_at DESC, e.id"
    if f.limit is not None:
        sql += f" LIMIT {p.add(f.limit, '::int8')}"
    return sql


# NIP-86 bans (``ReadScope.banned``) in SQL: a probe of the ``management`` table's primary
# key (topic, key = lowercase hex) per candidate row, so the statement has no parameter per
# ban; the node's copy of the bans only decides whether a filter needs the probe
# (``ReadScope.hides_banned_authors``). Written ``(EXISTS ...) IS FALSE``, not ``NOT
# EXISTS``: PostgreSQL turns a bare NOT EXISTS into an anti-join whose plan rests on
# statistics, and without them (``autovacuum = off`` here; bans added since the last
# ANALYZE) it took the bans for a handful and compared every row with each of them (100k
# events, 1,000 bans matching nothing: ``{"kinds":[1],"limit":500}`` and a COUNT of 90k
# rows each over 3 s). Kept a subplan, the probe is a per-row index lookup, or the bans
# hashed once when many rows are tested; see docs/postgres-store.md for the figures.
_BANNED_AUTHOR = "EXISTS (SELECT 1 FROM management m WHERE m.topic = 'ban_pubkey' AND m.key = encode({}.pubkey, 'hex'))"
_BANNED_EVENT = "EXISTS (SELECT 1 FROM management m WHERE m.topic = 'ban_event' AND m.key = encode({}.id, 'hex'))"


def _scope_conditions(scope: ReadScope | None, f: Filter, p: _Params, alias: str = "e") -> list[str]:
    """The conditions of the rules of ``scope`` that can hide an event ``f`` matches
    (none when no rule can: the filter runs as it stands), testing ``alias``: ``e``
    (events) or ``t`` (a tags row, which carries its event's kind and seq but not its
    pubkey or id; the tag top-N path cuts to ``limit`` there, so the ban probes go
    through the event row, by ``seq``, as the private rule's author test does; ``OFFSET
    0`` keeps that a per-row lookup by primary key, never a join over every event)."""
    if scope is None:
        return []
    out: list[str] = []
    if scope.hides_private(f):
        out.append(_private_condition(scope, p, alias))
    row = alias if alias == "e" else "x"
    banned: list[str] = []
    if scope.hides_banned_authors(f):
        banned.append(_BANNED_AUTHOR.format(row))
    if scope.hides_banned_ids(f):
        banned.append(_BANNED_EVENT.format(row))
    if alias == "e":
        out.extend(f"({probe}) IS FALSE" for probe in banned)
    elif banned:
        either = " OR ".join(f"({probe}) IS TRUE" for probe in banned)
        out.append(f"NOT EXISTS (SELECT 1 FROM events x WHERE x.seq = {alias}.seq AND ({either}) OFFSET 0)")
    return out


def _private_condition(scope: ReadScope, p: _Params, alias: str = "e") -> str:
    """``ReadScope.allows`` in SQL: a private kind only when authored by or ``p``-tagging
    one of the connection's authenticated pubkeys (every ``p`` tag is in ``tags``).
    ``alias`` is the row it tests: ``e`` (events) or ``t`` (a tags row, which carries its
    event's kind and seq but not its pubkey; the tag top-N path cuts to ``limit`` there)."""
    sql = f"{alias}.kind <> ALL({p.add(sorted(scope.private_kinds), '::int4[]')})"
    if scope.readers:
        readers = sorted(scope.readers)
        keys = p.add([bytes.fromhex(r) for r in readers if is_hex64(r)], "::bytea[]")
        values = p.add(readers, "::text[]")
        if alias == "e":
            sql += f" OR e.pubkey = ANY({keys})"
        else:
            sql += f" OR EXISTS (SELECT 1 FROM events x WHERE x.seq = {alias}.seq AND x.pubkey = ANY({keys}))"
        sql += f" OR {alias}.seq IN (SELECT r.seq FROM tags r WHERE r.name = 'p' AND r.value = ANY({values}))"
    return f"({sql})"


def _filter_count(f: Filter, now: int, p: _Params, scope: ReadScope | None = None, columns: str = "e.seq") -> str:
    where = _event_conditions(f, now, p)
    where.extend(f"e.seq IN ({_tag_subquery(name, values, f, p)})" for name, values in f.tags)
    where.extend(_scope_conditions(scope, f, p))
    return f"SELECT {columns} FROM events e WHERE {' AND '.join(where)}"


_BUMP_CHANGES = "UPDATE store_changes SET counter = counter + 1 WHERE topic = $1"
# NIP-77 item sets are fetched through a cursor this many rows at a time: asyncpg decodes
# rows on the event loop, and one fetch of 30,000 stalled every other client for up to
# 34 ms (2,000 rows: ~2 ms, between which the loop serves them).
_SYNC_CHUNK_ROWS = 2000


def redact_dsn(dsn: str) -> str:
    """A PostgreSQL URL for messages: the password replaced by ***."""
    if "@" in dsn and "://" in dsn:
        scheme, rest = dsn.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        if ":" in creds:
            return f"{scheme}://{creds.split(':')[0]}:***@{host}"
    return dsn


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
        # batch and the ledger keep those), expensive ones at half of them at most, so a
        # flood of COUNT/NEG-OPEN/search leaves REQ pages connections (issue 17).
        readers = max(2, pool_size - 2)
        self._lanes = ReadLanes(readers, heavy=readers // 2)

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
            raise StoreUnavailable(f"cannot connect to PostgreSQL {redact_dsn(self.dsn)}: {exc}") from exc
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
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

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

    async def write_batch(self, batch: Sequence[WriteRequest], now: int) -> list[WriteOutcome]:
        for req in batch:
            if req.event.kind_class is KindClass.EPHEMERAL:
                raise ValueError("ephemeral events are never stored")
        if not batch:
            return []
        if simple_batch(batch):
            async with self._acquire() as conn:
                return await self._write_regular_batch(conn, batch)
        async with self._acquire() as conn, conn.transaction():
            return await self._write_batch(conn, list(batch), now)

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
        answer: str = await conn.fetchval(
            "SELECT write_regular_batch($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
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
        )
        if len(answer) != len(batch):
            raise RuntimeError(f"write_regular_batch answered {len(answer)} outcomes for {len(batch)} events")
        return [_REGULAR_OUTCOMES[code] for code in answer]

    async def _write_batch(self, conn: Any, batch: list[WriteRequest], now: int) -> list[WriteOutcome]:
        events = [req.event for req in batch]
        await self._lock_authors(conn, events)

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
        credits: dict[str, int] = {}
        charged = sorted({req.event.pubkey for req in batch if req.charge_msat > 0})
        if charged:
            # Row locks in pubkey order: two nodes charging the same authors cannot deadlock.
            for row in await conn.fetch(
                "SELECT pubkey, credit_msat FROM accounts WHERE pubkey = ANY($1::text[]) ORDER BY pubkey FOR UPDATE",
                charged,
            ):
                credits[row[0]] = row[1]

        plan = BatchPlan(present, current, tomb_ids, tomb_addresses, credits)
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
                if req.charge_msat > 0:
                    plan.charges[req.event.pubkey] -= req.charge_msat
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
        charges = sorted((pk, amount) for pk, amount in plan.charges.items() if amount > 0)
        if charges:
            await conn.execute(
                "UPDATE accounts a SET credit_msat = a.credit_msat - c.amount, updated_at = $3"
                " FROM unnest($1::text[], $2::int8[]) c(pubkey, amount) WHERE a.pubkey = c.pubkey",
                [c[0] for c in charges],
                [c[1] for c in charges],
                now,
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
        p = _Params()
        if len(live) == 1:
            # NIP-50 ranking reads up to RANK_CANDIDATES matches: an expensive read.
            sql = _filter_select(live[0], now, p, columns, scope)
            return await self._read_events(sql, *p.values, heavy=live[0].search is not None)
        if any(f.search is not None for f in live):
            return await self._ranked_answer(live, now, columns, scope)
        # One statement, one snapshot; each arm keeps its own ORDER BY/LIMIT, the union is
        # de-duplicated and ordered here (cheaper than making the server compare raw).
        keyed = f"e.created_at, e.id, {columns}"
        arms = " UNION ALL ".join(f"({_filter_select(f, now, p, keyed, scope)})" for f in live)
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
        p = _Params()
        union = " UNION ".join(_filter_count(f, now, p, scope) for f in live)
        rows = await self._read_events(f"SELECT count(*) FROM ({union}) s", *p.values, heavy=True)
        return int(rows[0][0])

    async def count_registers(
        self, f: Filter, now: int, scope: ReadScope | None, offset: int
    ) -> list[tuple[int, bytes]]:
        # PostgreSQL has no min(bytea): the suffix is compared as hex text in the C collation
        # (bytewise), which orders equal-length hex exactly as the bytes.
        p = _Params()
        at, after = p.add(offset, "::int4"), p.add(offset + 2, "::int4")
        columns = f"get_byte(e.pubkey, {at}), min(encode(substring(e.pubkey from {after} for 7), 'hex') COLLATE \"C\")"
        sql = _filter_count(f, now, p, scope, columns=columns) + " GROUP BY 1"
        rows = await self._read_events(sql, *p.values, heavy=True)
        return [(int(row[0]), bytes.fromhex(row[1])) for row in rows]

    async def sync_items(
        self, f: Filter, now: int, scope: ReadScope | None, max_items: int
    ) -> list[tuple[int, bytes]]:
        """NIP-77: (created_at, id) of the events ``f`` matches; with no other condition
        an index-only scan of ``events_created (created_at DESC, id)``, never ``raw``."""
        if f.is_empty() or f.limit == 0:
            return []
        p = _Params()
        sql = _filter_count(f, now, p, scope, columns="e.created_at, e.id")
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

    # --- payments ledger ----------------------------------------------------------------

    async def add_invoice(
        self,
        invoice: Invoice,
        *,
        max_pending: int | None = None,
        max_pending_per_pubkey: int | None = None,
        max_pending_per_source: int | None = None,
        evict: bool = False,
    ) -> bool:
        inv = invoice
        async with self._acquire() as conn, conn.transaction():
            if max_pending is not None or max_pending_per_pubkey is not None or max_pending_per_source is not None:
                # One transaction-scoped lock for every node: count and insert cannot interleave.
                await conn.execute("SELECT pg_advisory_xact_lock($1, 0)", LOCK_CLASS_INVOICES)
                # Never earlier than the newest invoice: see SQLite's _insert_invoice_capped.
                newest = await conn.fetchval("SELECT coalesce(max(created_at), 0) FROM invoices")
                now = max(inv.created_at, int(newest))
                if max_pending_per_pubkey is not None:
                    mine = await conn.fetchval(
                        "SELECT count(*) FROM invoices WHERE pubkey = $1 AND state = 'pending' AND expires_at > $2",
                        inv.pubkey,
                        now,
                    )
                    if mine >= max_pending_per_pubkey:
                        return False
                held = 0
                if inv.source:
                    held = await conn.fetchval(
                        "SELECT count(*) FROM invoices WHERE source = $1 AND state = 'pending' AND expires_at > $2",
                        inv.source,
                        now,
                    )
                    if max_pending_per_source is not None and held >= max_pending_per_source:
                        return False
                if max_pending is not None:
                    total = await conn.fetchval(
                        "SELECT count(*) FROM invoices WHERE state = 'pending' AND expires_at > $1", now
                    )
                    if total >= max_pending and not (evict and await _evict_one(conn, inv.source, held, now)):
                        return False
            await conn.execute(
                f"INSERT INTO invoices ({INVOICE_COLUMNS})"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
                inv.payment_hash,
                inv.pubkey,
                inv.plan,
                inv.amount_msat,
                inv.bolt11,
                inv.created_at,
                inv.expires_at,
                inv.admit_seconds,
                inv.admit_forever,
                inv.credit_msat,
                inv.state.value,
                inv.paid_at,
                inv.paid_msat,
                inv.fee_msat,
                inv.description,
                inv.source,
            )
        return True

    async def find_pending_invoice(self, pubkey: str, plan: str, amount_msat: int, valid_after: int) -> Invoice | None:
        rows = await self._fetch(
            f"SELECT {INVOICE_COLUMNS} FROM invoices WHERE pubkey = $1 AND state = 'pending' AND plan = $2"
            " AND amount_msat = $3 AND expires_at > $4 ORDER BY created_at DESC LIMIT 1",
            pubkey,
            plan,
            amount_msat,
            valid_after,
        )
        return invoice_from_row(rows[0]) if rows else None

    async def pending_invoice_counts(self, pubkey: str, now: int, source: str = "") -> tuple[int, int, int]:
        rows = await self._fetch(
            "SELECT count(*) FILTER (WHERE pubkey = $1), count(*) FILTER (WHERE source = $3 AND source <> ''),"
            " count(*) FROM invoices WHERE state = 'pending' AND expires_at > $2",
            pubkey,
            now,
            source,
        )
        return int(rows[0][0]), int(rows[0][1]), int(rows[0][2])

    async def delete_unpaid_invoices(self, expired_before: int) -> int:
        # One statement: the deleted rows feed the tally (data-modifying CTEs run to the end
        # whether read or not). A row two nodes race for is deleted, and tallied, by one.
        deleted = await self._fetchval(
            "WITH gone AS (DELETE FROM invoices WHERE state = 'expired' AND expires_at < $1 RETURNING created_at),"
            f" tallied AS (INSERT INTO pruned_invoices (day, count) SELECT created_at / {DAY_SECONDS}, count(*)"
            "  FROM gone GROUP BY 1 ON CONFLICT (day) DO UPDATE SET count = pruned_invoices.count + excluded.count)"
            " SELECT count(*) FROM gone",
            expired_before,
        )
        return int(deleted)

    async def charge_credit(self, pubkey: str, amount_msat: int, now: int) -> bool:
        async with self._acquire() as conn:
            status: str = await conn.execute(
                "UPDATE accounts SET credit_msat = credit_msat - $1, updated_at = $2"
                " WHERE pubkey = $3 AND credit_msat >= $1",
                amount_msat,
                now,
                pubkey,
            )
        return status == "UPDATE 1"

    async def get_invoice(self, payment_hash: str) -> Invoice | None:
        rows = await self._fetch(f"SELECT {INVOICE_COLUMNS} FROM invoices WHERE payment_hash = $1", payment_hash)
        return invoice_from_row(rows[0]) if rows else None

    async def list_invoices(
        self,
        *,
        pending_only: bool = False,
        pubkey: str | None = None,
        valid_after: int | None = None,
        paid_after: int | None = None,
        limit: int | None = None,
    ) -> list[Invoice]:
        where: list[str] = []
        p = _Params()
        if pending_only:
            where.append("state = 'pending'")
        if pubkey is not None:
            where.append(f"pubkey = {p.add(pubkey)}")
        if valid_after is not None:
            where.append(f"expires_at > {p.add(valid_after, '::int8')}")
        if paid_after is not None:
            where.append(f"state = 'paid' AND paid_at > {p.add(paid_after, '::int8')}")
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        cut = f" LIMIT {p.add(limit, '::int8')}" if limit is not None else ""
        rows = await self._fetch(
            f"SELECT {INVOICE_COLUMNS} FROM invoices {clause} ORDER BY created_at DESC, payment_hash{cut}", *p.values
        )
        return [invoice_from_row(row) for row in rows]

    async def settle_invoice(self, payment_hash: str, paid_msat: int, now: int, fee_msat: int = 0) -> bool:
        """Exactly once across nodes: the conditional UPDATE changes the row for one caller
        only (a concurrent one waits for its commit, re-checks ``state`` and matches
        nothing), and only that caller applies the grant, in the same transaction."""
        async with self._acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "UPDATE invoices SET state = 'paid', paid_at = $1, paid_msat = $2, fee_msat = $4, source = ''"
                " WHERE payment_hash = $3 AND state <> 'paid'"
                " RETURNING pubkey, admit_seconds, admit_forever, credit_msat",
                now,
                paid_msat,
                payment_hash,
                fee_msat,
            )
            if row is None:
                return False
            pubkey, admit_seconds, admit_forever, credit_msat = row
            await _apply_grant(conn, pubkey, now, admit_seconds, admit_forever, credit_msat)
            return True

    async def expire_invoices(self, now: int) -> int:
        async with self._acquire() as conn:
            status: str = await conn.execute(
                "UPDATE invoices SET state = 'expired', source = '' WHERE state = 'pending' AND expires_at <= $1", now
            )
        return int(status.split()[-1])

    async def get_account(self, pubkey: str) -> Account | None:
        rows = await self._fetch(f"SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE pubkey = $1", pubkey)
        return account_from_row(rows[0]) if rows else None

    async def list_accounts(self) -> list[Account]:
        rows = await self._fetch(f"SELECT {ACCOUNT_COLUMNS} FROM accounts ORDER BY pubkey")
        return [account_from_row(row) for row in rows]

    # --- the operator console's figures --------------------------------------------------

    async def revenue_by_day(self, since: int) -> list[RevenueRow]:
        rows = await self._fetch(
            f"SELECT paid_at / {DAY_SECONDS}, plan, sum(paid_msat), coalesce(sum(fee_msat), 0), count(*)"
            " FROM invoices WHERE state = 'paid' AND paid_at >= $1 GROUP BY 1, 2 ORDER BY 1, 2",
            since,
        )
        return [RevenueRow(int(r[0]), str(r[1]), int(r[2] or 0), int(r[3]), int(r[4])) for r in rows]

    async def invoice_funnel(self, since: int, now: int) -> InvoiceFunnel:
        row = (
            await self._fetch(
                "SELECT count(*), count(*) FILTER (WHERE state = 'paid'),"
                " count(*) FILTER (WHERE state = 'expired' OR (state = 'pending' AND expires_at <= $1)),"
                " (SELECT coalesce(sum(count), 0) FROM pruned_invoices"
                f"  WHERE day >= ($2::bigint + {DAY_SECONDS - 1}) / {DAY_SECONDS})"
                " FROM invoices WHERE created_at >= $2",
                now,
                since,
            )
        )[0]
        created, paid, expired, pruned = (int(v) for v in row)
        return InvoiceFunnel(created + pruned, paid, expired + pruned)

    async def recurring_msat(self, now: int, per_seconds: int) -> int:
        # numeric: price x seconds can pass bigint; div() truncates as SQLite's integer division.
        total = await self._fetchval(
            "SELECT coalesce(sum(div((i.amount_msat - i.credit_msat)::numeric * $1, i.admit_seconds)), 0)"
            " FROM accounts a JOIN invoices i ON i.payment_hash = ("
            "  SELECT j.payment_hash FROM invoices j WHERE j.pubkey = a.pubkey AND j.state = 'paid'"
            "  AND j.admit_seconds > 0 AND NOT j.admit_forever ORDER BY j.paid_at DESC, j.payment_hash DESC LIMIT 1)"
            " WHERE a.admitted_until > $2 AND a.admitted_until < $3 AND NOT a.banned",
            per_seconds,
            now,
            FOREVER,
        )
        return int(total)

    async def member_counts(self, now: int, soon: int) -> dict[MemberStatus, int]:
        conditions = member_status_conditions("$1::bigint", "$2::bigint")
        columns = ", ".join(f"count(*) FILTER (WHERE {c})" for c in conditions.values())
        row = (await self._fetch(f"SELECT {columns} FROM accounts", now, soon))[0]
        return {status: int(n) for status, n in zip(conditions, row, strict=True)}

    async def find_accounts(
        self, now: int, soon: int, *, status: MemberStatus | None = None, pubkey_prefix: str = "", limit: int = 100
    ) -> list[Account]:
        p = _Params()
        where = ["true"]
        if status is not None:
            condition = member_status_conditions("{now}", "{soon}")[status]
            for name, value in (("{now}", now), ("{soon}", soon)):
                if name in condition:  # a placeholder no text names has no type: add only those used
                    condition = condition.replace(name, p.add(value))
            where.append(condition)
        if pubkey_prefix:
            low, high = hex_prefix_range(pubkey_prefix)
            where.append(f"pubkey >= {p.add(low)} AND pubkey < {p.add(high)}")
        order = "ASC" if status is MemberStatus.EXPIRING else "DESC"
        rows = await self._fetch(
            f"SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE {' AND '.join(where)}"
            f" ORDER BY admitted_until {order}, pubkey {order} LIMIT {p.add(limit)}",
            *p.values,
        )
        return [account_from_row(row) for row in rows]

    async def find_invoices(self, *, pubkey_prefix: str = "", hash_prefix: str = "", limit: int = 100) -> list[Invoice]:
        p = _Params()
        either: list[str] = []
        for column, prefix in (("pubkey", pubkey_prefix), ("payment_hash", hash_prefix)):
            if prefix:
                low, high = hex_prefix_range(prefix)
                either.append(f"({column} >= {p.add(low)} AND {column} < {p.add(high)})")
        where = f"WHERE {' OR '.join(either)}" if either else ""
        rows = await self._fetch(
            f"SELECT {INVOICE_COLUMNS} FROM invoices {where}"
            f" ORDER BY created_at DESC, payment_hash DESC LIMIT {p.add(limit)}",
            *p.values,
        )
        return [invoice_from_row(row) for row in rows]

    async def update_account(
        self,
        pubkey: str,
        now: int,
        *,
        admitted_until: int | None = None,
        credit_delta_msat: int = 0,
        banned: bool | None = None,
        allowed: bool | None = None,
    ) -> Account:
        async with self._acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                f"INSERT INTO accounts AS a (pubkey, admitted_until, credit_msat, banned, allowed, updated_at)"
                f" VALUES ($1, coalesce($2::bigint, 0), $3::bigint, coalesce($4, false), coalesce($5, false), $6)"
                f" ON CONFLICT (pubkey) DO UPDATE SET"
                f" admitted_until = coalesce($2, a.admitted_until), credit_msat = a.credit_msat + $3,"
                f" banned = coalesce($4, a.banned), allowed = coalesce($5, a.allowed), updated_at = $6"
                f" RETURNING {ACCOUNT_COLUMNS}",
                pubkey,
                admitted_until,
                credit_delta_msat,
                banned,
                allowed,
                now,
            )
            await conn.execute(_BUMP_CHANGES, "accounts")
        return account_from_row(row)

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

    async def account_changes(self) -> int:
        value = await self._fetchval("SELECT counter FROM store_changes WHERE topic = 'accounts'")
        return int(value or 0)

    # --- NIP-43 membership ---------------------------------------------------------------

    async def add_invites(self, invites: Sequence[Invite]) -> None:
        async with self._acquire() as conn, conn.transaction():
            await conn.executemany(
                f"INSERT INTO invites ({INVITE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                [
                    (
                        i.code_hash,
                        i.plan,
                        i.created_at,
                        i.expires_at,
                        i.created_by,
                        i.admit_seconds,
                        i.admit_forever,
                        i.credit_msat,
                        i.redeemed_by,
                        i.redeemed_at,
                    )
                    for i in invites
                ],
            )

    async def redeem_invite(self, code_hash: str, pubkey: str, now: int) -> InviteOutcome:
        """Exactly once across nodes: a concurrent claim of the same code waits for this
        transaction, re-checks ``redeemed_by`` and matches nothing."""
        async with self._acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "UPDATE invites SET redeemed_by = $2, redeemed_at = $3 WHERE code_hash = $1"
                " AND redeemed_by IS NULL AND (expires_at IS NULL OR expires_at > $3)"
                " RETURNING admit_seconds, admit_forever, credit_msat",
                code_hash,
                pubkey,
                now,
            )
            if row is None:
                found = await conn.fetchrow(
                    "SELECT expires_at, redeemed_by FROM invites WHERE code_hash = $1", code_hash
                )
                return invite_refusal(None if found is None else tuple(found), pubkey, now)
            await _apply_grant(conn, pubkey, now, row[0], row[1], row[2])
            return InviteOutcome.REDEEMED

    async def list_invites(self) -> list[Invite]:
        rows = await self._fetch(f"SELECT {INVITE_COLUMNS} FROM invites ORDER BY created_at DESC, code_hash")
        return [invite_from_row(row) for row in rows]

    async def open_invite_count(self, created_by: str, now: int) -> int:
        async with self._acquire() as conn:
            count = await conn.fetchval(
                "SELECT count(*) FROM invites WHERE created_by = $1 AND redeemed_by IS NULL"
                " AND (expires_at IS NULL OR expires_at > $2)",
                created_by,
                now,
            )
        return int(count)

    async def revoke_invite(self, code_hash: str) -> bool:
        async with self._acquire() as conn:
            status: str = await conn.execute(
                "DELETE FROM invites WHERE code_hash = $1 AND redeemed_by IS NULL", code_hash
            )
        return status != "DELETE 0"

    async def end_membership(self, pubkey: str, now: int) -> bool:
        async with self._acquire() as conn:
            status: str = await conn.execute(
                "UPDATE accounts SET admitted_until = 0, credit_msat = 0, allowed = false, updated_at = $2"
                " WHERE pubkey = $1 AND (admitted_until > $2 OR credit_msat > 0 OR allowed)",
                pubkey,
                now,
            )
        return status != "UPDATE 0"

    # --- reminders in Nostr --------------------------------------------------------------

    async def set_reminders(self, pubkey: str, on: bool, now: int) -> None:
        async with self._acquire() as conn:
            if on:
                await conn.execute(
                    "INSERT INTO reminder_optins (pubkey, opted_in_at) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                    pubkey,
                    now,
                )
            else:
                await conn.execute("DELETE FROM reminder_optins WHERE pubkey = $1", pubkey)

    async def reminders_on(self, pubkey: str) -> bool:
        return bool(await self._fetchval("SELECT 1 FROM reminder_optins WHERE pubkey = $1", pubkey))

    async def reminder_targets(self) -> list[tuple[Account, bool]]:
        columns = ", ".join(f"a.{c.strip()}" for c in ACCOUNT_COLUMNS.split(","))
        rows = await self._fetch(
            f"SELECT {columns}, EXISTS (SELECT 1 FROM reminders_sent s WHERE s.pubkey = a.pubkey"
            " AND s.reason = 'credit') FROM reminder_optins o JOIN accounts a ON a.pubkey = o.pubkey ORDER BY a.pubkey"
        )
        return [(account_from_row(tuple(row)[:6]), bool(row[6])) for row in rows]

    async def claim_reminder(self, pubkey: str, reason: str, term_end: int, now: int) -> bool:
        async with self._acquire() as conn:
            status: str = await conn.execute(
                "INSERT INTO reminders_sent (pubkey, reason, term_end, sent_at) VALUES ($1, $2, $3, $4)"
                " ON CONFLICT DO NOTHING",
                pubkey,
                reason,
                term_end,
                now,
            )
        return status == "INSERT 0 1"

    async def rearm_reminder(self, pubkey: str, reason: str) -> None:
        async with self._acquire() as conn:
            await conn.execute("DELETE FROM reminders_sent WHERE pubkey = $1 AND reason = $2", pubkey, reason)

    # --- renewal by Nostr Wallet Connect ---------------------------------------------------

    async def set_nwc_link(self, link: NwcLink) -> None:
        async with self._acquire() as conn:
            await conn.execute(
                "INSERT INTO nwc_links (pubkey, sealed_uri, budget_msat, created_at) VALUES ($1, $2, $3, $4)"
                " ON CONFLICT (pubkey) DO UPDATE SET sealed_uri = excluded.sealed_uri,"
                " budget_msat = excluded.budget_msat, created_at = excluded.created_at",
                link.pubkey,
                link.sealed_uri,
                link.budget_msat,
                link.created_at,
            )

    async def forget_nwc_link(self, pubkey: str) -> bool:
        async with self._acquire() as conn:
            status: str = await conn.execute("DELETE FROM nwc_links WHERE pubkey = $1", pubkey)
        return status != "DELETE 0"

    async def nwc_links(self) -> list[NwcLink]:
        rows = await self._fetch("SELECT pubkey, sealed_uri, budget_msat, created_at FROM nwc_links ORDER BY pubkey")
        return [NwcLink(*tuple(row)) for row in rows]

    async def claim_renewal(self, pubkey: str, period_end: int, payment_hash: str, now: int) -> bool:
        async with self._acquire() as conn:
            status: str = await conn.execute(
                f"INSERT INTO renewal_attempts ({RENEWAL_COLUMNS}) VALUES ($1, $2, $3, 'paying', 0, '', $4, $4)"
                " ON CONFLICT DO NOTHING",
                pubkey,
                period_end,
                payment_hash,
                now,
            )
        return status == "INSERT 0 1"

    async def get_renewal(self, pubkey: str, period_end: int) -> RenewalAttempt | None:
        rows = await self._fetch(
            f"SELECT {RENEWAL_COLUMNS} FROM renewal_attempts WHERE pubkey = $1 AND period_end = $2", pubkey, period_end
        )
        return RenewalAttempt(*tuple(rows[0])) if rows else None

    async def record_renewal(
        self, pubkey: str, period_end: int, state: str, detail: str, now: int, *, tried: bool
    ) -> None:
        async with self._acquire() as conn:
            await conn.execute(
                "UPDATE renewal_attempts SET state = $3, detail = $4, updated_at = $5, tries = tries + $6"
                " WHERE pubkey = $1 AND period_end = $2",
                pubkey,
                period_end,
                state,
                detail,
                now,
                int(tried),
            )

    async def list_renewals(self, pubkey: str) -> list[RenewalAttempt]:
        rows = await self._fetch(
            f"SELECT {RENEWAL_COLUMNS} FROM renewal_attempts WHERE pubkey = $1 ORDER BY period_end DESC", pubkey
        )
        return [RenewalAttempt(*tuple(row)) for row in rows]


async def _evict_one(conn: Any, source: str, held: int, now: int) -> bool:
    """Make room in a full pool (``Store.add_invoice``; the caller holds the invoices lock):
    the oldest unexpired pending invoice of the source holding the most (ties: the one whose
    oldest invoice is oldest), or of ``source`` itself when it already holds as many,
    expires now. False when no source may give one up."""
    biggest = await conn.fetchrow(
        "SELECT source, count(*) FROM invoices WHERE state = 'pending' AND expires_at > $1 AND source <> ''"
        " GROUP BY source ORDER BY count(*) DESC, min(created_at), source LIMIT 1",
        now,
    )
    if biggest is None:
        return False
    victim = source if source and held >= biggest[1] else biggest[0]
    status: str = await conn.execute(
        "UPDATE invoices SET expires_at = $1 WHERE payment_hash = (SELECT payment_hash FROM invoices"
        " WHERE source = $2 AND state = 'pending' AND expires_at > $1 ORDER BY created_at, payment_hash LIMIT 1)",
        now,
        victim,
    )
    return status.split()[-1] != "0"


async def _apply_grant(
    conn: Any, pubkey: str, now: int, admit_seconds: int, admit_forever: bool, credit_msat: int
) -> None:
    """An invoice's or invite's grant. The account row is locked first (created if new),
    then the grant computed by the shared rule: a concurrent charge or operator change of
    this account waits for us."""
    current = await conn.fetchval(
        "INSERT INTO accounts AS a (pubkey, updated_at) VALUES ($1, $2)"
        " ON CONFLICT (pubkey) DO UPDATE SET updated_at = a.updated_at"
        " RETURNING admitted_until",
        pubkey,
        now,
    )
    await conn.execute(
        "UPDATE accounts SET admitted_until = $2, credit_msat = credit_msat + $3, updated_at = $4 WHERE pubkey = $1",
        pubkey,
        admitted_until_after_grant(current, now, admit_seconds, admit_forever),
        credit_msat,
        now,
    )
    await conn.execute(_BUMP_CHANGES, "accounts")

