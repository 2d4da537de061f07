"""The embedded store: one SQLite file in WAL mode, events (and plug-ins' tables beside them).

Two kinds of connection, because reads and writes have opposite needs:

- **One writer**: a stdlib ``sqlite3`` connection owned by a single-thread executor. Every
  write (an event batch, an operator change, a plug-in's transaction through
  ``SqlitePluginDatabase.write``) runs as ONE plain synchronous function on that thread:
  ``write_batch`` costs one thread hop per batch, not one per statement. With aiosqlite
  each ``execute`` is a hop through a queue and a future (tens of microseconds); a batch
  of 1,000 events issues about 5,000 statements, so per-statement hops alone would cap the
  writer well below the 12k events/s target on two cores. SQLite allows one writer per
  file anyway, so a single thread also means the relay's own writes never fight over the
  lock (no SQLITE_BUSY between them).
- **``read_connections`` readers** (at least two): aiosqlite connections (each has its own
  thread), handed out in fair turns (``ReadLanes``). WAL lets them read the last committed
  state while the writer writes, so a slow REQ never delays a commit and a commit never
  blocks a REQ. Each query or count is a single ``execute_fetchall``: one hop, one
  snapshot, even with several filters (they are combined into one SQL statement).
  Expensive reads (COUNT, NIP-77 item sets, NIP-50 ranking) may hold at most half the
  readers, so REQ pages always find one (issue 17: a NEG-OPEN flood held every reader).

**Several processes** (``serve --workers N``): the writer connection lives in one writer
process (``relay.store.writer_process``) and each worker's store has a ``link`` to it. A
worker's store opens only its readers (WAL: readers in any process see the last commit);
every write it would run on its own writer thread (``_transact``: vanish, retention, NIP-86
state, NIP-98 replay counts, plug-ins' writes and migrations) runs on the writer process's
thread instead, and its events reach the writer process's group commit through the link
(``relay.store.writer_client.RemoteWriter``). The reason is the lock: the worker's own
write connections would meet the writer's batches at the file lock, where SQLite's busy
handler polls with growing sleeps (up to 100 ms) and rarely catches the gap between two
back-to-back batches, so a write could wait out ``busy_timeout`` and fail with
SQLITE_BUSY under ingest. One writer thread for the file queues them instead.

``synchronous="FULL"`` fsyncs the WAL at every commit, so an OK sent after a commit
survives power loss; ``"NORMAL"`` survives a process crash but may lose the last commits on
power loss, for a faster commit. Measured on the 2-core dev VM: a commit costs ~0.13 ms
more under FULL (0.39 vs 0.26 ms for one event), so FULL is 1.5x slower for lone events,
~10% slower at 16 per batch, and within noise at the 1,000-event batches of a busy relay
(12-19k events/s either way through GroupCommitWriter, 50k pre-signed kind-1 events).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Concatenate, Literal, ParamSpec, TypeVar

import aiosqlite

import relay.store.sqlite_writes as txn
from relay.nostr.errors import Rejection
from relay.nostr.event import KindClass
from relay.nostr.filters import Filter
from relay.nostr.search import DEFAULT_SEARCH_KINDS, document_words, fts5_body
from relay.store.backup import StoreLock
from relay.store.base import (
    PAGE_BYTES,
    ReadLanes,
    StoreUnavailable,
    UseLimit,
    WriteOutcome,
    WriteRequest,
    answer_pages,
    answerable,
)
from relay.store.database import SqliteWriteHook
from relay.store.migrations import Migration
from relay.store.rules import (
    gift_wrap_recipients,
)
from relay.store.sqlite_checkpoint import CHECKPOINT_INTERVAL, RESTART_FRAMES, WAL_SIZE_LIMIT, WalCheckpointer
from relay.store.sqlite_schema import (
    apply_component_migrations,
    apply_migrations,
    sqlite_path_from_url,
    sync_search_index,
)
from relay.store.sqlite_sql import MAX_PARAMS, driving_index, filter_select, filter_where, placeholders
from relay.store.sqlite_writes import AtLimit, file_bytes

if TYPE_CHECKING:
    from relay.config import StorageSettings
    from relay.nostr.policy import ReadScope
    from relay.store.writer_client import WriterLink

READER_MMAP_BYTES = 1 << 30  # per reader connection, at most this much of the file mapped

P = ParamSpec("P")
T = TypeVar("T")

_SYNCHRONOUS = frozenset(("OFF", "NORMAL", "FULL", "EXTRA"))
# SQLite's default SQLITE_MAX_VARIABLE_NUMBER since 3.32; past it, filters run one by one.


class SqliteStore:
    """``Store`` over one SQLite file (see the module docstring for the connection design)."""

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: str = "FULL",
        read_connections: int = 2,
        search_kinds: frozenset[int] = DEFAULT_SEARCH_KINDS,
        link: WriterLink | None = None,
    ) -> None:
        """``link``: a ``--workers`` worker's link to the writer process, which then owns the
        file's write connection: every write of this store is sent there (the module
        docstring, "Several processes"), and only the readers open here."""
        if synchronous.upper() not in _SYNCHRONOUS:
            raise ValueError(f"synchronous must be one of {sorted(_SYNCHRONOUS)}")
        if read_connections < 1:
            raise ValueError("read_connections must be at least 1")
        self.path = Path(path)
        self.synchronous = synchronous.upper()
        self.read_connections = read_connections
        self.search_kinds = search_kinds  # NIP-50: kinds whose words go into events_search
        self._executor: ThreadPoolExecutor | None = None
        self._lock: StoreLock | None = None
        self._writer: sqlite3.Connection | None = None
        # Two readers at least, so that one is always left to REQ pages (ReadLanes).
        readers = max(2, read_connections)
        self._lanes = ReadLanes(readers, heavy=readers // 2)
        self._idle: list[aiosqlite.Connection] | None = None
        self._all_readers: list[aiosqlite.Connection] = []
        self._checkpointer: WalCheckpointer | None = None
        self._hooks: dict[str, SqliteWriteHook] = {}
        self._link = link
        self.database = SqlitePluginDatabase(self)  # plug-ins' tables (relay.store.database)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        synchronous: str = "FULL",
        read_connections: int = 2,
        search_kinds: frozenset[int] = DEFAULT_SEARCH_KINDS,
        link: WriterLink | None = None,
    ) -> SqliteStore:
        return cls(
            sqlite_path_from_url(url),
            synchronous=synchronous,
            read_connections=read_connections,
            search_kinds=search_kinds,
            link=link,
        )

    @classmethod
    def from_settings(
        cls, settings: StorageSettings, *, search_kinds: frozenset[int], link: WriterLink | None = None
    ) -> SqliteStore:
        return cls.from_url(
            settings.url,
            synchronous=settings.synchronous,
            read_connections=settings.read_connections,
            search_kinds=search_kinds,
            link=link,
        )

    # --- life cycle ---------------------------------------------------------------------

    async def open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Held while open so `satsrelay restore` cannot replace the file under us.
            self._lock = StoreLock(self.path)
            if not self._lock.acquire(exclusive=False):
                self._lock = None
                raise StoreUnavailable(f"{self.path} is being restored from a backup; try again when it is done")
            if self._link is not None:
                # The writer process has opened (and migrated) the file once it answers.
                await self._link.start()
            else:
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-writer")
                await self._write(self._open_writer)
        except (OSError, sqlite3.Error) as exc:
            await self.close()  # no writer thread may outlive a failed open
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            where = exc.filename if isinstance(exc, OSError) and exc.filename else self.path
            raise StoreUnavailable(f"cannot open SQLite database {self.path} ({where}: {reason})") from exc
        self._idle = []
        for _ in range(self._lanes.readers):
            conn = await aiosqlite.connect(self.path, isolation_level=None)
            await conn.execute("PRAGMA busy_timeout = 5000")
            await conn.execute("PRAGMA query_only = ON")
            await conn.execute("PRAGMA cache_size = -32000")
            # Readers map the file instead of copying pages in with read(): 2-8% more REQs/s
            # with 8 in flight and 0-10% off an authors REQ's time to EOSE (bench query,
            # 100k events, 3 runs each alternating). Address space only; the writer keeps
            # plain I/O, so a failing disk is met by writes as an error, not a SIGBUS.
            await conn.execute(f"PRAGMA mmap_size = {READER_MMAP_BYTES}")
            self._all_readers.append(conn)
            self._idle.append(conn)
        if self._link is not None:
            await self._link.follow(self)  # checkpoints are the writer process's
            return
        self._checkpointer = WalCheckpointer(
            self.path, self.synchronous, interval=CHECKPOINT_INTERVAL, restart_frames=RESTART_FRAMES
        )
        self._checkpointer.start()

    def _open_writer(self) -> None:
        # check_same_thread=False only because the connection is created and closed through
        # the executor's one thread; it is never touched from any other.
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 5000")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        conn.execute("PRAGMA cache_size = -64000")
        conn.execute("PRAGMA temp_store = MEMORY")
        # Checkpoints run on WalCheckpointer's thread, not inside this connection's COMMITs.
        conn.execute("PRAGMA wal_autocheckpoint = 0")
        conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
        apply_migrations(conn)
        sync_search_index(conn, self.search_kinds)
        self._writer = conn

    async def close(self) -> None:
        if self._checkpointer is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._checkpointer.stop)
            self._checkpointer = None
        for conn in self._all_readers:
            await conn.close()
        self._all_readers.clear()
        self._idle = None
        if self._executor is not None:
            if self._writer is not None:
                await self._write(self._close_writer)
            self._executor.shutdown(wait=True)
            self._executor = None
        if self._link is not None:
            await self._link.close()
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _close_writer(self) -> None:
        if self._writer is not None:
            # Fold the WAL back into the main file so a closed store is one self-contained file.
            self._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._writer.close()
            self._writer = None

    async def schema_version(self) -> int:
        rows = await self._read("PRAGMA user_version", ())
        return int(rows[0][0])

    # --- plumbing -----------------------------------------------------------------------

    async def _write(self, fn: Any, *args: Any) -> Any:
        if self._executor is None:
            raise RuntimeError("store is not open")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def _read(self, sql: str, params: Sequence[Any] | Mapping[str, Any], *, heavy: bool = False) -> list[Any]:
        """One statement on a reader; ``heavy`` for the expensive kinds (``ReadLanes``)."""
        idle = self._idle
        if idle is None:
            raise RuntimeError("store is not open")
        async with self._lanes.turn(heavy=heavy):
            # A turn is granted only while a reader is idle: the lanes count them.
            conn = idle.pop()
            try:
                return list(await conn.execute_fetchall(sql, params))
            finally:
                idle.append(conn)

    async def _transact(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(conn, *args, **kwargs)`` as one write transaction: on this store's writer
        thread, or in the writer process when the store has a link (``fn`` is then sent by
        reference: a module-level function, with arguments pickle can carry)."""
        if self._link is not None:
            return await self._link.call("transact", fn, args, kwargs)
        return await self._write(self._transaction, partial(fn, **kwargs) if kwargs else fn, *args)

    async def _transact_here(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return await self._transact(fn, *args, **kwargs)

    def writer_calls(self) -> dict[str, Callable[..., Awaitable[Any]]]:
        """What the writer process runs for its workers' stores (their ``_transact`` and the
        plug-ins' migrations): the ``calls`` of ``relay.store.writer_process.WriterService``."""
        if self._link is not None:
            raise RuntimeError("a store with a writer link writes nothing itself")
        return {"transact": self._transact_here, "migrate": self.database.migrate}

    def _conn(self) -> sqlite3.Connection:
        if self._writer is None:
            raise RuntimeError("store is not open")
        return self._writer

    def _transaction(self, fn: Any, *args: Any) -> Any:
        """Run ``fn(conn, *args)`` in one write transaction on the writer thread."""
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = fn(conn, *args)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        if self._checkpointer is not None:
            self._checkpointer.after_commit(conn)
        return result

    # --- events: writes -----------------------------------------------------------------

    async def write_batch(self, batch: Sequence[WriteRequest], now: int) -> list[WriteOutcome | Rejection]:
        for req in batch:
            if req.event.kind_class is KindClass.EPHEMERAL:
                raise ValueError("ephemeral events are never stored")
        if not batch:
            return []
        if self._link is not None:
            raise RuntimeError("a --workers worker's events go to the writer process (RemoteWriter)")
        hooks = tuple(self._hooks.values())
        if not hooks and any(req.attachments for req in batch):
            # Attachments nobody interprets would store, say, a priced event for free.
            raise ValueError("a write request carries attachments but no write hook is installed")
        outcomes: list[WriteOutcome | Rejection] = await self._write(
            self._transaction, self._write_all, list(batch), now, self.search_kinds, hooks
        )
        return outcomes

    @staticmethod
    def _write_all(
        conn: sqlite3.Connection,
        batch: list[WriteRequest],
        now: int,
        search_kinds: frozenset[int],
        hooks: tuple[SqliteWriteHook, ...],
    ) -> list[WriteOutcome | Rejection]:
        """Apply a batch in order, with as few statements as the batch allows.

        The common event (regular kind, not a deletion) needs no lookup of its own: the
        duplicate and tombstone probes are one ``IN (...)`` query each for the whole batch,
        and its rows wait in lists that one ``executemany`` per table writes. Rowids are
        assigned here (``max(rid) + 1`` onwards; the write lock is held) so tag rows can be
        built before their event is inserted. Any other event (replaceable, addressable,
        kind 5) first flushes the waiting rows, since its rules read the table, and is
        then applied alone; after a kind 5 the tombstone snapshot is stale, so later
        events probe ``deleted_ids`` one by one.
        """
        ids = [bytes.fromhex(req.event.id) for req in batch]
        marks = placeholders(len(ids))
        stored = {row[0] for row in conn.execute(f"SELECT id FROM events WHERE id IN ({marks})", ids)}
        tombstones: set[tuple[bytes, bytes]] | None = {
            (row[0], row[1]) for row in conn.execute(f"SELECT id, pubkey FROM deleted_ids WHERE id IN ({marks})", ids)
        }
        next_rid: int = conn.execute("SELECT coalesce(max(rid), 0) + 1 FROM events").fetchone()[0]
        event_rows: list[tuple[Any, ...]] = []
        tag_rows: list[tuple[str, str, int, int]] = []
        search_rows: list[tuple[int, str]] = []
        outcomes: list[WriteOutcome | Rejection] = []
        for req, eid in zip(batch, ids, strict=True):
            ev = req.event
            if eid in stored:
                outcomes.append(WriteOutcome.DUPLICATE)
                continue
            pk = bytes.fromhex(ev.pubkey)
            kind = ev.kind
            # NIP-09: deleting a deletion has no effect, so kind 5 ignores tombstones.
            if kind != 5:
                # The author's own deletion, or (a gift wrap) its recipient's: rules.tombstone_applies.
                deleters = [pk, *(bytes.fromhex(p) for p in gift_wrap_recipients(kind, ev.tags))]
                if tombstones is not None:
                    deleted = any((eid, by) in tombstones for by in deleters)
                else:
                    deleted = any(
                        conn.execute("SELECT 1 FROM deleted_ids WHERE id = ? AND pubkey = ?", (eid, by)).fetchone()
                        is not None
                        for by in deleters
                    )
                if deleted:
                    outcomes.append(WriteOutcome.DELETED)
                    continue
            if kind != 5 and ev.kind_class is KindClass.REGULAR:
                refusal = txn.run_write_hooks(conn, hooks, req, now) if req.attachments else None
                if refusal is not None:
                    outcomes.append(refusal)
                    continue
                created_at = ev.created_at
                event_rows.append((next_rid, eid, pk, created_at, kind, None, ev.expiration, ev.raw))
                tag_rows.extend((name, value, created_at, next_rid) for name, value in set(ev.index_tags()))
                doc = document_words(kind, ev.content, ev.tags, search_kinds)
                if doc is not None:
                    search_rows.append((next_rid, fts5_body(doc)))
                next_rid += 1
                stored.add(eid)
                outcomes.append(WriteOutcome.STORED)
                continue
            txn.insert_rows(conn, event_rows, tag_rows, search_rows)
            outcome = txn.write_one(conn, req, eid, pk, next_rid, now, search_kinds, hooks)
            if outcome is WriteOutcome.STORED:
                next_rid += 1
                stored.add(eid)
                if kind == 5:
                    tombstones = None
            outcomes.append(outcome)
        txn.insert_rows(conn, event_rows, tag_rows, search_rows)
        return outcomes

    async def purge_expired(self, now: int) -> int:
        purged: int = await self._transact(txn.purge_expired, now)
        return purged

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
        # length() of a BLOB reads the record header, not the (overflow) pages of the event.
        live = answerable(filters)
        async for page in answer_pages(
            live,
            lambda columns: self._answer(live, now, columns, scope),
            "e.rid, e.id, length(e.raw)",
            self._rows_by_rid,
            page_bytes,
        ):
            yield page

    async def _rows_by_rid(self, rids: list[int]) -> list[tuple[int, bytes, bytes]]:
        return await self._read(f"SELECT rid, id, raw FROM events WHERE rid IN ({placeholders(len(rids))})", rids)

    async def _answer(self, live: list[Filter], now: int, columns: str, scope: ReadScope | None) -> list[Any]:
        """Rows of ``columns`` (over ``events e``) of the answer to ``live``: each filter
        contributes its ``limit`` newest that ``scope`` lets the reader see, the union
        de-duplicated, newest first, ties lowest id."""
        if len(live) == 1:
            sql, params = filter_select(live[0], now, columns, scope)
            # NIP-50 ranking reads up to RANK_CANDIDATES matches: an expensive read.
            return await self._read(sql, params, heavy=live[0].search is not None)
        if any(f.search is not None for f in live):
            return await self._ranked_answer(live, now, columns, scope)
        arms = [filter_select(f, now, "e.rid", scope) for f in live]
        if sum(len(p) for _, p in arms) <= MAX_PARAMS:
            # One statement, one snapshot: each filter keeps its own ORDER BY/LIMIT inside
            # its arm, UNION de-duplicates, the outer query orders the union.
            union = " UNION ".join(f"SELECT rid FROM ({sql})" for sql, _ in arms)
            sql = f"SELECT {columns} FROM events e WHERE e.rid IN ({union}) ORDER BY e.created_at DESC, e.id"
            return await self._read(sql, [p for _, ps in arms for p in ps])
        merged: dict[bytes, tuple[int, bytes, tuple[Any, ...]]] = {}
        for f in live:
            sql, params = filter_select(f, now, f"e.id, e.created_at, {columns}", scope)
            for row in await self._read(sql, params):
                merged[row[0]] = (-row[1], row[0], tuple(row[2:]))
        return [rest for _, _, rest in sorted(merged.values())]

    async def _ranked_answer(
        self, live: list[Filter], now: int, columns: str, scope: ReadScope | None
    ) -> list[Any]:
        """``_answer`` when some filters carry a NIP-50 ``search``: each search filter's rows
        in its own relevance order (filters in the order given), then the other filters'
        union newest first, each event once. Relevance scores of different searches do not
        compare, so they are not interleaved."""
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
        arms = [filter_where(f, now, scope=scope) for f in live]
        if len(arms) == 1:
            where, params = arms[0]
            rows = await self._read(f"SELECT COUNT(*) FROM events e WHERE {where}", params, heavy=True)
            return int(rows[0][0])
        if sum(len(p) for _, p in arms) <= MAX_PARAMS:
            union = " UNION ".join(f"SELECT e.rid FROM events e WHERE {where}" for where, _ in arms)
            rows = await self._read(f"SELECT COUNT(*) FROM ({union})", [p for _, ps in arms for p in ps], heavy=True)
            return int(rows[0][0])
        seen: set[int] = set()
        for where, params in arms:
            rows = await self._read(f"SELECT e.rid FROM events e WHERE {where}", params, heavy=True)
            seen.update(row[0] for row in rows)
        return len(seen)

    async def count_registers(
        self, f: Filter, now: int, scope: ReadScope | None, offset: int
    ) -> list[tuple[int, bytes]]:
        # substr() of a BLOB is bytes (1-based), and min() of BLOBs compares them memcmp-wise.
        where, params = filter_where(f, now, scope=scope)
        sql = f"SELECT substr(e.pubkey, ?, 1), min(substr(e.pubkey, ?, 7)) FROM events e WHERE {where} GROUP BY 1"
        rows = await self._read(sql, [offset + 1, offset + 2, *params], heavy=True)
        return [(row[0][0], bytes(row[1])) for row in rows]

    async def sync_items(
        self, f: Filter, now: int, scope: ReadScope | None, max_items: int
    ) -> list[tuple[int, bytes]]:
        """NIP-77: (created_at, id) of the events ``f`` matches, read as two columns: the
        raw JSON (the bulk of a row, in overflow pages) is never read."""
        if f.is_empty() or f.limit == 0:
            return []
        where, params = filter_where(f, now, scope=scope)
        take = max_items + 1
        order = ""
        if f.limit is not None:  # the newest `limit` events, as REQ would pick them
            take = min(take, f.limit)
            order = " ORDER BY e.created_at DESC, e.id"
        driver = "" if f.search is not None else driving_index(f)
        sql = f"SELECT e.created_at, e.id FROM events e{driver} WHERE {where}{order} LIMIT ?"
        # The rows are (created_at, id) tuples already: no copy of up to max_items of them
        # on the event loop.
        return await self._read(sql, [*params, take], heavy=True)

    # --- retention, quotas, NIP-62, NIP-86 -------------------------------------------------

    async def purge_older(self, kind: int, before: int, limit: int) -> int:
        purged: int = await self._transact(txn.purge_older, kind, before, limit)
        return purged

    async def stored_bytes(self, pubkey: str) -> int:
        # length() of a BLOB reads the record header, not the event's (overflow) pages.
        rows = await self._read(
            "SELECT coalesce(sum(length(raw)), 0) FROM events WHERE pubkey = ?", (bytes.fromhex(pubkey),)
        )
        return int(rows[0][0])

    async def database_bytes(self) -> int:
        # page_count is the database's logical size in this reader's snapshot (WAL pages
        # included); the WAL file is on disk too, until a checkpoint truncates it.
        count = await self._read("PRAGMA page_count", ())
        size = await self._read("PRAGMA page_size", ())
        wal = await asyncio.to_thread(file_bytes, Path(f"{self.path}-wal"))
        return int(count[0][0]) * int(size[0][0]) + wal

    async def vanish(self, pubkey: str, until: int, now: int) -> int:
        deleted: int = await self._transact(txn.vanish_author, pubkey, until)
        return deleted

    async def list_vanished(self) -> dict[str, int]:
        rows = await self._read("SELECT pubkey, until FROM vanished", ())
        return {bytes(row[0]).hex(): int(row[1]) for row in rows}

    async def vanish_changes(self) -> int:
        rows = await self._read("SELECT counter FROM store_changes WHERE topic = 'vanish'", ())
        return int(rows[0][0]) if rows else 0

    async def list_management(self) -> list[tuple[str, str, str]]:
        rows = await self._read("SELECT topic, key, value FROM management", ())
        return [(str(r[0]), str(r[1]), str(r[2])) for r in rows]

    async def apply_management(self, changes: Sequence[tuple[str, str, str | None]]) -> None:
        await self._transact(txn.apply_management, list(changes))

    async def management_changes(self) -> int:
        rows = await self._read("SELECT counter FROM store_changes WHERE topic = 'management'", ())
        return int(rows[0][0]) if rows else 0

    async def take_uses(self, uses: Sequence[UseLimit], now: int) -> str | None:
        # BEGIN IMMEDIATE takes the file's write lock first: processes sharing the file
        # (``--workers``, a restart overlapping the old process) count one after another.
        try:
            await self._transact(txn.take_uses, list(uses), now)
        except AtLimit as at_limit:
            return at_limit.key
        return None

    # --- the commit log a --workers worker catches up from (relay.store.writer_client) ----
    # Positions are rids: the writer gives each stored event max(rid) + 1 under the write
    # lock, in commit order, so "after rid r" is "committed after the event at r".

    async def position_of(self, event_ids: Sequence[str]) -> int | None:
        for event_id in event_ids:
            rows = await self._read("SELECT rid FROM events WHERE id = ?", (bytes.fromhex(event_id),))
            if rows:
                return int(rows[0][0])
        return None

    async def newest_position(self) -> int:
        rows = await self._read("SELECT coalesce(max(rid), 0) FROM events", ())
        return int(rows[0][0])

    async def committed_after(self, position: int, limit: int) -> list[bytes]:
        rows = await self._read("SELECT raw FROM events WHERE rid > ? ORDER BY rid LIMIT ?", (position, limit))
        return [bytes(row[0]) for row in rows]


class SqlitePluginDatabase:
    """``relay.store.database.SqliteDatabase`` over a ``SqliteStore``: plug-ins' writes go
    through the store's writer thread and lock, their reads through its readers."""

    def __init__(self, store: SqliteStore) -> None:
        self._store = store

    @property
    def dialect(self) -> Literal["sqlite"]:
        return "sqlite"

    async def write(
        self, fn: Callable[Concatenate[sqlite3.Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        result: T = await self._store._transact(fn, *args, **kwargs)
        return result

    async def read(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> list[Any]:
        return await self._store._read(sql, params)

    async def migrate(
        self,
        component: str,
        steps: Sequence[Migration],
        adopt: Callable[[sqlite3.Connection], int] | None = None,
    ) -> int:
        store = self._store
        if store._link is not None:
            remote: int = await store._link.call("migrate", component, steps, adopt)
            return remote
        version: int = await store._write(lambda: apply_component_migrations(store._conn(), component, steps, adopt))
        return version

    def add_write_hook(self, component: str, hook: SqliteWriteHook) -> None:
        self._store._hooks[component] = hook
