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
import logging
import sqlite3
import threading
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Concatenate, Literal, ParamSpec, TypeVar

import aiosqlite
import orjson

from relay.nostr.errors import Rejection
from relay.nostr.event import Event, KindClass, index_tags, is_hex64, kind_class
from relay.nostr.filters import Filter
from relay.nostr.search import DEFAULT_SEARCH_KINDS, RANK_CANDIDATES, document_words, fts5_body
from relay.store.backup import StoreLock
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
from relay.store.database import COMPONENT_VERSIONS, SqliteWriteHook
from relay.store.migrations import SQLITE_MIGRATIONS, Migration, pending
from relay.store.rules import (
    GIFT_WRAP_KIND,
    a_tag_addresses,
    address_of,
    deletion_removes,
    e_tag_targets,
    gift_wrap_recipients,
    newer,
)

if TYPE_CHECKING:
    from relay.config import StorageSettings
    from relay.nostr.policy import ReadScope
    from relay.store.writer_client import WriterLink

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

_SYNCHRONOUS = frozenset(("OFF", "NORMAL", "FULL", "EXTRA"))
# SQLite's default SQLITE_MAX_VARIABLE_NUMBER since 3.32; past it, filters run one by one.
_MAX_PARAMS = 32766
# WalCheckpointer: a PASSIVE pass at most every 250 ms while commits happen; the WAL rewound
# once it holds 16,384 frames (64 MiB at 4 KiB pages) and its file truncated back to 64 MiB.
# Measured in the relay (ingest, 256 in flight): intervals of 0.05-0.5 s and rewinds at
# 4k-16k frames are within noise of each other; 64k frames was worse (p99 60-70 ms).
_CHECKPOINT_INTERVAL = 0.25
_RESTART_FRAMES = 16_384
_WAL_SIZE_LIMIT = 64 * 1024 * 1024


def _marks(n: int) -> str:
    return ",".join("?" * n)


def _filter_where(
    f: Filter,
    now: int,
    *,
    skip_tag: str | None = None,
    scope: ReadScope | None = None,
    search_joined: bool = False,
) -> tuple[str, list[Any]]:
    """WHERE clause (over ``events e``) of one filter.

    Tag conditions are ``e.rid IN (SELECT rid FROM tags ...)`` so an event matching through
    two values of the same tag is counted once, and since/until are repeated on the tags'
    own created_at so the ``tags_value`` index range is as narrow as the filter.
    ``skip_tag`` names a tag condition the caller has already turned into a join;
    ``search_joined`` says the caller joins ``events_search`` itself (ranked search).
    """
    where: list[str] = []
    params: list[Any] = []
    if f.search is not None:
        # NIP-50: only the indexed kinds can match (an operator may have dropped a kind
        # whose old rows are still in the index until the next re-index).
        where.append(f"e.kind IN ({_marks(len(f.search.kinds))})")
        params.extend(sorted(f.search.kinds))
        if not search_joined:
            where.append("e.rid IN (SELECT rowid FROM events_search WHERE events_search MATCH ?)")
            params.append(f.search.fts5_match())
    if f.ids is not None:
        where.append(f"e.id IN ({_marks(len(f.ids))})")
        params.extend(bytes.fromhex(i) for i in sorted(f.ids))
    if f.authors is not None:
        where.append(f"e.pubkey IN ({_marks(len(f.authors))})")
        params.extend(bytes.fromhex(a) for a in sorted(f.authors))
    if f.kinds is not None:
        where.append(f"e.kind IN ({_marks(len(f.kinds))})")
        params.extend(sorted(f.kinds))
        if _addresses_only(f):
            # Always true for these kinds; it lets events_address (partial) serve the search.
            where.append("e.d_tag IS NOT NULL")
    if f.since is not None:
        where.append("e.created_at >= ?")
        params.append(f.since)
    if f.until is not None:
        where.append("e.created_at <= ?")
        params.append(f.until)
    for name, values in f.tags:
        if name == skip_tag:
            continue
        sub = f"SELECT t.rid FROM tags t WHERE t.name = ? AND t.value IN ({_marks(len(values))})"
        params.append(name)
        params.extend(sorted(values))
        sub += _time_bounds("t", f, params)
        where.append(f"e.rid IN ({sub})")
    # NIP-40: an event whose expiration has passed is never sent, stored or not.
    where.append("(e.expiration IS NULL OR e.expiration > ?)")
    params.append(now)
    if scope is not None:
        where.extend(_scope_conditions(scope, f, params))
    return " AND ".join(where), params


# NIP-86 bans (``ReadScope.banned``) in SQL: a probe of the ``management`` table's primary
# key (topic, key = lowercase hex) per candidate row, so the statement has no parameter per
# ban (SQLite's default build allows 32,766); the node's copy of the bans only decides
# whether a filter needs the probe (``ReadScope.hides_banned_authors``). Its cost follows
# the rows read, not the bans (100k events, ``bench/ban_scope.py``): ``{"kinds":[1],
# "limit":500}`` 0.64 ms with 1,000 or 10,000 bans none matching (0.35 without the test);
# skipping a banned flood of the newest 50k rows, 34-43 ms. ``hex(e.pubkey) NOT IN (SELECT
# upper(key) ...)`` builds the set of bans first: 25-30% faster when a statement reads every
# row (a COUNT of 90k, 50 ms against 72; the flood, 30 ms), but 0.78 and 3.7 ms on that REQ
# with 1,000 and 10,000 bans. One parameter per ban (``NOT IN (?, ...)``, blob compares,
# 25 ms on the flood) grows with the list.
_NOT_BANNED_AUTHOR = (
    "NOT EXISTS (SELECT 1 FROM management m WHERE m.topic = 'ban_pubkey' AND m.key = lower(hex(e.pubkey)))"
)
_NOT_BANNED_EVENT = "NOT EXISTS (SELECT 1 FROM management m WHERE m.topic = 'ban_event' AND m.key = lower(hex(e.id)))"


def _scope_conditions(scope: ReadScope, f: Filter, params: list[Any]) -> list[str]:
    """The conditions (over ``events e``) of the rules of ``scope`` that can hide an event
    ``f`` matches; none when no rule can, so the filter runs as it stands. They sit in the
    filter's WHERE, i.e. before its LIMIT wherever the statement cuts it."""
    out: list[str] = []
    if scope.hides_private(f):
        out.append(_private_condition(scope, params))
    if scope.hides_banned_authors(f):
        out.append(_NOT_BANNED_AUTHOR)
    if scope.hides_banned_ids(f):
        out.append(_NOT_BANNED_EVENT)
    return out


def _private_condition(scope: ReadScope, params: list[Any]) -> str:
    """``ReadScope.allows`` in SQL: a private kind only when authored by or ``p``-tagging
    one of the connection's authenticated pubkeys (every ``p`` tag is in ``tags``)."""
    kinds = sorted(scope.private_kinds)
    params.extend(kinds)
    sql = f"e.kind NOT IN ({_marks(len(kinds))})"
    if scope.readers:
        readers = sorted(scope.readers)
        params.extend(bytes.fromhex(r) for r in readers if is_hex64(r))
        marks = _marks(sum(1 for r in readers if is_hex64(r)))
        params.extend(readers)
        sql += (
            f" OR e.pubkey IN ({marks})"
            f" OR e.rid IN (SELECT t.rid FROM tags t WHERE t.name = 'p' AND t.value IN ({_marks(len(readers))}))"
        )
    return f"({sql})"


def _time_bounds(alias: str, f: Filter, params: list[Any]) -> str:
    sql = ""
    if f.since is not None:
        sql += f" AND {alias}.created_at >= ?"
        params.append(f.since)
    if f.until is not None:
        sql += f" AND {alias}.created_at <= ?"
        params.append(f.until)
    return sql


def _driver(f: Filter) -> str:
    """Which index a filter's search starts from, chosen by rule rather than left to the
    planner: without statistics SQLite prefers an index that yields created_at order
    (e.g. ``kind = 1`` for ``authors + kinds``) and then walks every kind-1 event to find
    two authors. The rule, most selective first: ids, tag values (event ids, pubkeys,
    hashtags), authors (+kinds), kinds, and created_at alone.
    Authors use ``events_author`` (pubkey, created_at, kind), newest first with the kinds
    tested on the index entry, except when every kind is replaceable or addressable
    (profiles, follow lists: at most one row per author, kind and d tag), which
    ``events_address`` finds directly (``_filter_where`` adds its ``d_tag IS NOT NULL``).
    ``NOT INDEXED`` leaves the planner only rowid lookups, i.e. the tags subquery."""
    if f.ids is not None:
        return ""
    if f.tags:
        return " NOT INDEXED"
    if f.authors is not None:
        return " INDEXED BY events_address" if _addresses_only(f) else " INDEXED BY events_author"
    if f.kinds is not None:
        return " INDEXED BY events_kind"
    return " INDEXED BY events_created"


def _addresses_only(f: Filter) -> bool:
    """Authors and kinds given, every kind replaceable or addressable: only rows with a
    ``d_tag`` can match."""
    return (
        f.authors is not None
        and f.kinds is not None
        and all(kind_class(k) in (KindClass.REPLACEABLE, KindClass.ADDRESSABLE) for k in f.kinds)
    )


def _search_select(f: Filter, now: int, columns: str, scope: ReadScope | None) -> tuple[str, list[Any]]:
    """NIP-50: SELECT of a ``search`` filter, best match first (FTS5 ``bm25``, whose
    ``rank`` is lower for better matches), then newest, then lowest id; the LIMIT applies
    after ranking. The full-text index drives the search, most recently stored match
    first (FTS5 walks its doclists in rowid order, both ways, at no cost); every other
    condition is checked on the event row found through it; only the first
    ``RANK_CANDIDATES`` that pass are ranked (``relay.nostr.search``), and only the ``limit``
    winners are read again for ``columns``."""
    assert f.search is not None
    where, rest = _filter_where(f, now, search_joined=True, scope=scope)
    params: list[Any] = [f.search.fts5_match(), *rest, RANK_CANDIDATES]
    candidates = (
        "SELECT e.rid AS rid, events_search.rank AS r, e.created_at AS c, e.id AS i"
        " FROM events_search CROSS JOIN events e ON e.rid = events_search.rowid"
        f" WHERE events_search MATCH ? AND {where} ORDER BY events_search.rowid DESC LIMIT ?"
    )
    best = f"SELECT rid, r, c, i FROM ({candidates}) ORDER BY r, c DESC, i"
    if f.limit is not None:
        best += " LIMIT ?"
        params.append(f.limit)
    sql = f"SELECT {columns} FROM ({best}) s CROSS JOIN events e ON e.rid = s.rid ORDER BY s.r, s.c DESC, s.i"
    return sql, params


def _filter_select(f: Filter, now: int, columns: str, scope: ReadScope | None = None) -> tuple[str, list[Any]]:
    """SELECT of one filter, newest first, ties lowest id, with its own LIMIT (a
    ``search`` filter: best match first, ``_search_select``).

    A tag condition with a single value (``#e``/``#p`` lookups, the common case) drives
    the search as a join over ``tags_value``, which yields rows in created_at order, so
    ``LIMIT n`` stops after about n rows instead of sorting every tagged event. Several
    values would need a merge of ranges, which SQLite does not do: those sort.
    """
    if f.search is not None:
        return _search_select(f, now, columns, scope)
    single = next((name for name, values in f.tags if len(values) == 1), None) if f.ids is None else None
    if single is not None:
        (value,) = dict(f.tags)[single]
        params: list[Any] = [single, value]
        bounds = _time_bounds("d", f, params)
        where, rest = _filter_where(f, now, skip_tag=single, scope=scope)
        params.extend(rest)
        sql = (
            f"SELECT {columns} FROM tags d CROSS JOIN events e ON e.rid = d.rid "
            f"WHERE d.name = ? AND d.value = ?{bounds} AND {where} ORDER BY d.created_at DESC, e.id"
        )
    else:
        where, params = _filter_where(f, now, scope=scope)
        sql = f"SELECT {columns} FROM events e{_driver(f)} WHERE {where} ORDER BY e.created_at DESC, e.id"
    if f.limit is not None:
        sql += " LIMIT ?"
        params.append(f.limit)
    return sql, params


def sqlite_path_from_url(url: str) -> Path:
    """``sqlite:///relative/path`` -> ``relative/path``; ``sqlite:////abs/path`` -> ``/abs/path``
    (the SQLAlchemy convention operators already know)."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or len(url) == len(prefix):
        raise ValueError(f"not a sqlite URL with a path: {url!r} (use sqlite:///relative or sqlite:////absolute)")
    return Path(url[len(prefix) :])


def apply_migrations(conn: sqlite3.Connection, migrations: Sequence[Migration] = SQLITE_MIGRATIONS) -> int:
    """Bring the file to the newest schema; return the version it is at.

    Runs under ``BEGIN IMMEDIATE`` (the write lock) and reads ``user_version`` under it,
    so of two processes opening a fresh file at once one migrates and the other sees the
    result. All pending steps and the new version commit together or not at all.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        current = conn.execute("PRAGMA user_version").fetchone()[0]
        steps = pending(migrations, current)
        for step in steps:
            for statement in step.statements:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {int(step.version)}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return steps[-1].version if steps else int(current)


def apply_component_migrations(
    conn: sqlite3.Connection,
    component: str,
    steps: Sequence[Migration],
    adopt: Callable[[sqlite3.Connection], int] | None = None,
) -> int:
    """A plug-in's version line (``relay.store.database``): its pending steps and its new
    version in one transaction under the write lock, as ``apply_migrations`` does for the
    core's; a component without a row starts where ``adopt`` says (else 0)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {COMPONENT_VERSIONS}"
            " (component TEXT PRIMARY KEY, version INTEGER NOT NULL) WITHOUT ROWID"
        )
        row = conn.execute(f"SELECT version FROM {COMPONENT_VERSIONS} WHERE component = ?", (component,)).fetchone()
        current = int(row[0]) if row is not None else (adopt(conn) if adopt is not None else 0)
        todo = pending(steps, current)
        for step in todo:
            for statement in step.statements:
                conn.execute(statement)
        version = todo[-1].version if todo else current
        if row is None or todo:
            conn.execute(
                f"INSERT INTO {COMPONENT_VERSIONS} (component, version) VALUES (?, ?)"
                " ON CONFLICT (component) DO UPDATE SET version = excluded.version",
                (component, version),
            )
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return version


def _sync_search_index(conn: sqlite3.Connection, kinds: frozenset[int]) -> None:
    """Rebuild the NIP-50 index when it was built for other kinds than ``kinds`` (first
    start after migration 5 on a store with events, or ``[search] kinds`` changed), in
    one transaction under the write lock: a search sees the old index or the new one."""
    want = ",".join(str(k) for k in sorted(kinds))
    row = conn.execute("SELECT kinds FROM search_state WHERE id = 1").fetchone()
    if row is not None and row[0] == want:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        row = conn.execute("SELECT kinds FROM search_state WHERE id = 1").fetchone()
        if row is not None and row[0] == want:
            conn.execute("ROLLBACK")
            return
        conn.execute("DELETE FROM events_search")
        indexed = 0
        if kinds:
            reader = conn.execute(f"SELECT rid, raw FROM events WHERE kind IN ({_marks(len(kinds))})", sorted(kinds))
            while rows := reader.fetchmany(5000):
                batch: list[tuple[int, str]] = []
                for rid, raw in rows:
                    obj = orjson.loads(raw)
                    doc = document_words(obj["kind"], obj["content"], obj["tags"], kinds)
                    if doc is not None:
                        batch.append((rid, fts5_body(doc)))
                conn.executemany(_INSERT_SEARCH, batch)
                indexed += len(batch)
        conn.execute("INSERT OR REPLACE INTO search_state (id, kinds) VALUES (1, ?)", (want,))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    if indexed:
        log.info("search index rebuilt for kinds [%s]: %d events", want, indexed)


class WalCheckpointer:
    """Copies committed WAL frames into the database file on its own thread and connection.

    Why: with SQLite's automatic checkpoint, the COMMIT that pushes the WAL past 1,000
    pages also copies them into the database file and fsyncs it, on the writer thread,
    while every event of the next batch waits (bench/README.md: the COMMIT line was 62%
    of the writer thread, which was busy 89-93% of an ingest run). Here the writer's
    connection has ``wal_autocheckpoint = 0`` and only appends to the WAL; after each
    commit it calls ``after_commit``, which wakes this thread for a PASSIVE checkpoint
    (never blocks the writer or readers) at most once per ``interval`` seconds.

    Rewinding the WAL: SQLite writes the WAL from its start again only when a write
    transaction begins with every frame already copied. Under steady load a pass on this
    thread never achieves that (the writer has appended more by the time it ends), and a
    RESTART checkpoint from this connection starves on the write lock that the writer
    keeps retaking (measured: 0.2-1 s, stalling a batch as long). So once a pass finds
    ``restart_frames`` frames, the *writer* runs one PASSIVE checkpoint itself between
    two transactions (copying only what arrived since the pass: 5-20 ms, once per
    ``restart_frames``), and its next BEGIN rewinds the WAL; ``journal_size_limit`` then
    truncates the file. A reader still on old frames turns that into a no-op that a later
    pass retries; past four times the limit the writer uses RESTART, which waits for such
    readers (up to the writer's busy_timeout). A WAL kept short also keeps page reads
    fast: SQLite searches one WAL-index hash table per 4,096 frames for every page read.

    Durability is unchanged: a commit is durable once it is in the WAL, checkpointed or
    not. Should this thread die, the writer goes back to SQLite's automatic checkpoint.
    """

    def __init__(self, path: Path, synchronous: str, *, interval: float, restart_frames: int) -> None:
        self._path = path
        self._synchronous = synchronous
        self._interval = interval
        self._restart_frames = restart_frames
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sqlite-checkpointer", daemon=True)
        self._conn: sqlite3.Connection | None = None
        # Set by this thread, cleared by the writer: while set, no pass starts here, so the
        # writer's own checkpoint never finds the checkpoint lock taken.
        self._rewind_due = False
        self._fallback = False
        self.wal_frames = 0

    def start(self) -> None:
        """Connect (errors surface to the caller) and start the thread."""
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA synchronous = {self._synchronous}")
        self._conn = conn
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join()
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def after_commit(self, writer: sqlite3.Connection) -> None:
        """Called on the writer thread after each COMMIT, outside any transaction.

        Never raises: the batch is already committed, and an exception here would report
        it failed (the writer would retry it in halves, answer "duplicate" and skip its
        live fan-out). A checkpoint that fails loses nothing: the frames stay in the WAL.
        """
        try:
            if self._rewind_due:
                mode = "RESTART" if self.wal_frames >= 4 * self._restart_frames else "PASSIVE"
                try:
                    writer.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
                finally:
                    self._rewind_due = False
            elif self._thread.is_alive():
                self._wake.set()
            elif not self._fallback and not self._stop.is_set():
                self._fallback = True
                writer.execute("PRAGMA wal_autocheckpoint = 1000")
                log.error("WAL checkpointer is gone: the writer checkpoints inside its commits again")
        except sqlite3.Error:
            log.exception("WAL checkpoint after a commit failed; the commit stands, the WAL keeps its frames")

    def _run(self) -> None:
        try:
            while True:
                self._wake.wait()
                if self._stop.is_set():
                    return
                self._wake.clear()
                if not self._rewind_due:
                    self._pass()
                self._stop.wait(self._interval)
        except Exception:
            # after_commit sees the thread gone and falls back to automatic checkpoints.
            log.exception("WAL checkpointer stopped")

    def _pass(self) -> None:
        assert self._conn is not None
        try:
            _busy, frames, _copied = self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error:
            # A failed pass loses nothing (the frames stay in the WAL); the next commit
            # wakes another.
            log.exception("WAL checkpoint failed")
            return
        self.wal_frames = frames
        self._rewind_due = frames >= self._restart_frames


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
            self._all_readers.append(conn)
            self._idle.append(conn)
        if self._link is not None:
            await self._link.follow(self)  # checkpoints are the writer process's
            return
        self._checkpointer = WalCheckpointer(
            self.path, self.synchronous, interval=_CHECKPOINT_INTERVAL, restart_frames=_RESTART_FRAMES
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
        conn.execute(f"PRAGMA journal_size_limit = {_WAL_SIZE_LIMIT}")
        apply_migrations(conn)
        _sync_search_index(conn, self.search_kinds)
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
        marks = _marks(len(ids))
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
                refusal = _run_hooks(conn, hooks, req, now) if req.attachments else None
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
            _insert_rows(conn, event_rows, tag_rows, search_rows)
            outcome = _write_one(conn, req, eid, pk, next_rid, now, search_kinds, hooks)
            if outcome is WriteOutcome.STORED:
                next_rid += 1
                stored.add(eid)
                if kind == 5:
                    tombstones = None
            outcomes.append(outcome)
        _insert_rows(conn, event_rows, tag_rows, search_rows)
        return outcomes

    async def purge_expired(self, now: int) -> int:
        purged: int = await self._transact(_purge_expired, now)
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
        return await self._read(f"SELECT rid, id, raw FROM events WHERE rid IN ({_marks(len(rids))})", rids)

    async def _answer(self, live: list[Filter], now: int, columns: str, scope: ReadScope | None) -> list[Any]:
        """Rows of ``columns`` (over ``events e``) of the answer to ``live``: each filter
        contributes its ``limit`` newest that ``scope`` lets the reader see, the union
        de-duplicated, newest first, ties lowest id."""
        if len(live) == 1:
            sql, params = _filter_select(live[0], now, columns, scope)
            # NIP-50 ranking reads up to RANK_CANDIDATES matches: an expensive read.
            return await self._read(sql, params, heavy=live[0].search is not None)
        if any(f.search is not None for f in live):
            return await self._ranked_answer(live, now, columns, scope)
        arms = [_filter_select(f, now, "e.rid", scope) for f in live]
        if sum(len(p) for _, p in arms) <= _MAX_PARAMS:
            # One statement, one snapshot: each filter keeps its own ORDER BY/LIMIT inside
            # its arm, UNION de-duplicates, the outer query orders the union.
            union = " UNION ".join(f"SELECT rid FROM ({sql})" for sql, _ in arms)
            sql = f"SELECT {columns} FROM events e WHERE e.rid IN ({union}) ORDER BY e.created_at DESC, e.id"
            return await self._read(sql, [p for _, ps in arms for p in ps])
        merged: dict[bytes, tuple[int, bytes, tuple[Any, ...]]] = {}
        for f in live:
            sql, params = _filter_select(f, now, f"e.id, e.created_at, {columns}", scope)
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
        arms = [_filter_where(f, now, scope=scope) for f in live]
        if len(arms) == 1:
            where, params = arms[0]
            rows = await self._read(f"SELECT COUNT(*) FROM events e WHERE {where}", params, heavy=True)
            return int(rows[0][0])
        if sum(len(p) for _, p in arms) <= _MAX_PARAMS:
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
        where, params = _filter_where(f, now, scope=scope)
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
        where, params = _filter_where(f, now, scope=scope)
        take = max_items + 1
        order = ""
        if f.limit is not None:  # the newest `limit` events, as REQ would pick them
            take = min(take, f.limit)
            order = " ORDER BY e.created_at DESC, e.id"
        driver = "" if f.search is not None else _driver(f)
        sql = f"SELECT e.created_at, e.id FROM events e{driver} WHERE {where}{order} LIMIT ?"
        # The rows are (created_at, id) tuples already: no copy of up to max_items of them
        # on the event loop.
        return await self._read(sql, [*params, take], heavy=True)

    # --- retention, quotas, NIP-62, NIP-86 -------------------------------------------------

    async def purge_older(self, kind: int, before: int, limit: int) -> int:
        purged: int = await self._transact(_purge_older, kind, before, limit)
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
        wal = await asyncio.to_thread(_file_bytes, Path(f"{self.path}-wal"))
        return int(count[0][0]) * int(size[0][0]) + wal

    async def vanish(self, pubkey: str, until: int, now: int) -> int:
        deleted: int = await self._transact(_vanish, pubkey, until)
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
        await self._transact(_apply_management, list(changes))

    async def management_changes(self) -> int:
        rows = await self._read("SELECT counter FROM store_changes WHERE topic = 'management'", ())
        return int(rows[0][0]) if rows else 0

    async def take_uses(self, uses: Sequence[UseLimit], now: int) -> str | None:
        # BEGIN IMMEDIATE takes the file's write lock first: processes sharing the file
        # (``--workers``, a restart overlapping the old process) count one after another.
        try:
            await self._transact(_take_uses, list(uses), now)
        except _AtLimit as at_limit:
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


# --- synchronous bodies run on the writer thread inside one transaction --------------------


_INSERT_EVENT = (
    "INSERT INTO events (rid, id, pubkey, created_at, kind, d_tag, expiration, raw) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_TAG = "INSERT INTO tags (name, value, created_at, rid) VALUES (?, ?, ?, ?)"
# NIP-50: an indexed event's words, under the event's rid (migration 5).
_INSERT_SEARCH = "INSERT INTO events_search (rowid, body) VALUES (?, ?)"


def _insert_rows(
    conn: sqlite3.Connection,
    event_rows: list[tuple[Any, ...]],
    tag_rows: list[tuple[Any, ...]],
    search_rows: list[tuple[int, str]],
) -> None:
    """Write the rows ``_write_all`` has gathered, then empty the lists for reuse."""
    if event_rows:
        conn.executemany(_INSERT_EVENT, event_rows)
        event_rows.clear()
    if tag_rows:
        conn.executemany(_INSERT_TAG, tag_rows)
        tag_rows.clear()
    if search_rows:
        conn.executemany(_INSERT_SEARCH, search_rows)
        search_rows.clear()


def _run_hooks(
    conn: sqlite3.Connection, hooks: tuple[SqliteWriteHook, ...], req: WriteRequest, now: int
) -> Rejection | None:
    """The write hooks for one event about to be stored, in order; the first refusal wins.
    With several hooks a SAVEPOINT takes back what earlier ones wrote when a later one
    refuses (a lone hook that refuses has written nothing: its contract)."""
    if len(hooks) == 1:
        return hooks[0](conn, req, now)
    conn.execute("SAVEPOINT write_hooks")
    for hook in hooks:
        refusal = hook(conn, req, now)
        if refusal is not None:
            conn.execute("ROLLBACK TO write_hooks")
            conn.execute("RELEASE write_hooks")
            return refusal
    conn.execute("RELEASE write_hooks")
    return None


def _write_one(
    conn: sqlite3.Connection,
    req: WriteRequest,
    eid: bytes,
    pk: bytes,
    rid: int,
    now: int,
    search_kinds: frozenset[int],
    hooks: tuple[SqliteWriteHook, ...],
) -> WriteOutcome | Rejection:
    """A replaceable, addressable or kind-5 event, already known to be neither stored nor
    tombstoned: apply the replacement rules, the write hooks, store it as ``rid``, apply a
    deletion."""
    ev = req.event
    address = address_of(ev)
    d_tag: str | None = None
    old: tuple[int, bytes] | None = None
    if address is not None:
        d_tag = address[2]
        row = conn.execute(
            "SELECT until FROM deleted_addresses WHERE pubkey = ? AND kind = ? AND d_tag = ?", (pk, ev.kind, d_tag)
        ).fetchone()
        if row is not None and ev.created_at <= row[0]:
            return WriteOutcome.DELETED
        row = conn.execute(
            "SELECT rid, created_at, id, raw FROM events WHERE pubkey = ? AND kind = ? AND d_tag = ?",
            (pk, ev.kind, d_tag),
        ).fetchone()
        if row is not None:
            if not newer(ev.created_at, ev.id, row[1], row[2].hex()):
                return WriteOutcome.SUPERSEDED
            old = (row[0], row[3])
    refusal = _run_hooks(conn, hooks, req, now) if req.attachments else None
    if refusal is not None:
        return refusal
    if old is not None:
        _delete_event(conn, *old)
    conn.execute(_INSERT_EVENT, (rid, eid, pk, ev.created_at, ev.kind, d_tag, ev.expiration, ev.raw))
    tags = set(ev.index_tags())
    if tags:
        conn.executemany(_INSERT_TAG, [(name, value, ev.created_at, rid) for name, value in tags])
    doc = document_words(ev.kind, ev.content, ev.tags, search_kinds)
    if doc is not None:
        conn.execute(_INSERT_SEARCH, (rid, fts5_body(doc)))
    if ev.kind == 5:
        _apply_deletion(conn, ev, pk)
    return WriteOutcome.STORED


def _delete_event(conn: sqlite3.Connection, rid: int, raw: bytes) -> None:
    """Remove a stored event and its tag rows, found by their full key: the tags are read
    back from the event's own JSON, since the tags table is keyed by value, not by rid.
    Not through ``parse_event``: a row stored before a parse rule was tightened must stay
    deletable (refusing it here would fail every batch that replaces or deletes it)."""
    obj = orjson.loads(raw)
    created_at = obj["created_at"]
    conn.executemany(
        "DELETE FROM tags WHERE name = ? AND value = ? AND created_at = ? AND rid = ?",
        [(name, value, created_at, rid) for name, value in set(index_tags(obj["tags"]))],
    )
    conn.execute("DELETE FROM events WHERE rid = ?", (rid,))
    # NIP-50: a deleted, replaced or expired event leaves the search index with it (a
    # no-op for kinds that were never indexed).
    conn.execute("DELETE FROM events_search WHERE rowid = ?", (rid,))


def _apply_deletion(conn: sqlite3.Connection, ev: Event, pk: bytes) -> None:
    """NIP-09: remove the author's own events named by ``e`` tags (never a kind 5) and every
    version of an ``a``-tag address up to the request's created_at; remember both so a
    deleted event sent again is refused."""
    for target in e_tag_targets(ev):
        tid = bytes.fromhex(target)
        conn.execute("INSERT OR IGNORE INTO deleted_ids (id, pubkey) VALUES (?, ?)", (tid, pk))
        row = conn.execute("SELECT rid, raw, pubkey, kind FROM events WHERE id = ?", (tid,)).fetchone()
        if row is None:
            continue
        # A gift wrap's recipient may delete it: its p tags are read from the stored JSON.
        recipients: frozenset[str] = frozenset()
        if row[3] == GIFT_WRAP_KIND:
            recipients = gift_wrap_recipients(row[3], orjson.loads(row[1])["tags"])
        if deletion_removes(row[2].hex(), row[3], ev.pubkey, recipients):
            _delete_event(conn, row[0], row[1])
    for _, kind, d_tag in a_tag_addresses(ev):
        conn.execute(
            "INSERT INTO deleted_addresses (pubkey, kind, d_tag, until) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (pubkey, kind, d_tag) DO UPDATE SET until = max(until, excluded.until)",
            (pk, kind, d_tag, ev.created_at),
        )
        rows = conn.execute(
            "SELECT rid, raw FROM events WHERE pubkey = ? AND kind = ? AND d_tag = ? AND created_at <= ?",
            (pk, kind, d_tag, ev.created_at),
        ).fetchall()
        for rid, raw in rows:
            _delete_event(conn, rid, raw)


def _vanish(conn: sqlite3.Connection, pubkey: str, until: int) -> int:
    """NIP-62 in one transaction: the author's events, then gift wraps addressed to them."""
    pk = bytes.fromhex(pubkey)
    rows = conn.execute("SELECT rid, raw FROM events WHERE pubkey = ? AND created_at <= ?", (pk, until)).fetchall()
    rows += conn.execute(
        "SELECT e.rid, e.raw FROM tags t JOIN events e ON e.rid = t.rid"
        " WHERE t.name = 'p' AND t.value = ? AND t.created_at <= ? AND e.kind = 1059 AND e.pubkey != ?",
        (pubkey, until, pk),
    ).fetchall()
    for rid, raw in rows:
        _delete_event(conn, rid, raw)
    if rows:
        conn.execute(
            "INSERT INTO vanished (pubkey, until) VALUES (?, ?)"
            " ON CONFLICT (pubkey) DO UPDATE SET until = max(until, excluded.until)",
            (pk, until),
        )
        _bump_changes(conn, "vanish")
    return len(rows)


def _purge_older(conn: sqlite3.Connection, kind: int, before: int, limit: int) -> int:
    rows = conn.execute(
        "SELECT rid, raw FROM events WHERE kind = ? AND created_at < ? ORDER BY created_at LIMIT ?",
        (kind, before, limit),
    ).fetchall()
    for rid, raw in rows:
        _delete_event(conn, rid, raw)
    return len(rows)


def _apply_management(conn: sqlite3.Connection, changes: list[tuple[str, str, str | None]]) -> None:
    for topic, key, value in changes:
        if value is None:
            conn.execute("DELETE FROM management WHERE topic = ? AND key = ?", (topic, key))
        else:
            conn.execute(
                "INSERT INTO management (topic, key, value) VALUES (?, ?, ?)"
                " ON CONFLICT (topic, key) DO UPDATE SET value = excluded.value",
                (topic, key, value),
            )
    _bump_changes(conn, "management")


class _AtLimit(Exception):
    """Raised inside ``_take_uses`` so the transaction rolls back: nothing is counted."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _take_uses(conn: sqlite3.Connection, uses: list[UseLimit], now: int) -> None:
    for use in uses:
        # The upsert's WHERE leaves a live window at its limit untouched (rowcount 0); an
        # ended window starts again at one use.
        counted = conn.execute(
            "INSERT INTO use_counts (key, uses, expires_at) VALUES (:key, 1, :expires_at)"
            " ON CONFLICT (key) DO UPDATE SET"
            " uses = CASE WHEN use_counts.expires_at <= :now THEN 1 ELSE use_counts.uses + 1 END,"
            " expires_at = CASE WHEN use_counts.expires_at <= :now THEN excluded.expires_at"
            " ELSE use_counts.expires_at END"
            " WHERE use_counts.expires_at <= :now OR use_counts.uses < :limit",
            {"key": use.key, "expires_at": use.expires_at, "now": now, "limit": use.limit},
        ).rowcount
        if counted != 1:
            raise _AtLimit(use.key)
    conn.execute(
        "DELETE FROM use_counts WHERE key IN (SELECT key FROM use_counts WHERE expires_at <= ? LIMIT ?)",
        (now, USES_PRUNED_PER_CALL),
    )


def _purge_expired(conn: sqlite3.Connection, now: int) -> int:
    rows = conn.execute(
        "SELECT rid, raw FROM events WHERE expiration IS NOT NULL AND expiration <= ?", (now,)
    ).fetchall()
    for rid, raw in rows:
        _delete_event(conn, rid, raw)
    return len(rows)


def _bump_changes(conn: sqlite3.Connection, topic: str) -> None:
    conn.execute("UPDATE store_changes SET counter = counter + 1 WHERE topic = ?", (topic,))


def _file_bytes(path: Path) -> int:
    """A file's size, 0 when it does not exist (no WAL between a TRUNCATE checkpoint and the next write)."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
