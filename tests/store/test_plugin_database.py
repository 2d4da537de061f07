"""The seam a plug-in keeps its tables through (``relay.store.database``), on both stores:
its own version line beside the core's, and write hooks that take part in an event
batch's transaction. A small "tally" plug-in stands in for payments: each event attached
a ``Tally`` adds one to its author's row, up to the tally's limit; past it the event is
refused with the plug-in's own reply."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from relay.nostr.errors import Rejection, Restricted
from relay.nostr.event import Event, sign_event
from relay.nostr.filters import Filter
from relay.store.base import Store, WriteOutcome, WriteRequest
from relay.store.database import BatchHook, Database, database_of
from relay.store.migrations import Migration
from relay.store.writer import GroupCommitWriter

NOW = 1_700_000_000
ALICE = (1).to_bytes(32, "big")
BOB = (2).to_bytes(32, "big")

STEPS = (
    Migration(1, "tally", ("CREATE TABLE tally (pubkey TEXT PRIMARY KEY, n INTEGER NOT NULL)",)),
    Migration(2, "tally log", ("CREATE TABLE tally_log (id TEXT PRIMARY KEY)",)),
)


@dataclass(frozen=True, slots=True)
class Tally:
    limit: int


def _tally(req: WriteRequest) -> Tally | None:
    return next((a for a in req.attachments if isinstance(a, Tally)), None)


def _refusal(ev: Event) -> Rejection:
    return Restricted(f"tally full for {ev.pubkey[:8]}")


def sqlite_tally_hook(conn: sqlite3.Connection, req: WriteRequest, now: int) -> Rejection | None:
    tally = _tally(req)
    if tally is None:
        return None
    conn.execute("INSERT OR IGNORE INTO tally (pubkey, n) VALUES (?, 0)", (req.event.pubkey,))
    cur = conn.execute("UPDATE tally SET n = n + 1 WHERE pubkey = ? AND n < ?", (req.event.pubkey, tally.limit))
    if cur.rowcount == 0:
        return _refusal(req.event)
    conn.execute("INSERT INTO tally_log (id) VALUES (?)", (req.event.id,))
    return None


class _PostgresTally:
    def __init__(self, counts: dict[str, int]) -> None:
        self.counts = counts
        self.admitted: dict[str, WriteRequest] = {}

    def admit(self, request: WriteRequest) -> Rejection | None:
        tally = _tally(request)
        if tally is None:
            return None
        pubkey = request.event.pubkey
        if self.counts.get(pubkey, 0) >= tally.limit:
            return _refusal(request.event)
        self.counts[pubkey] = self.counts.get(pubkey, 0) + 1
        self.admitted[request.event.id] = request
        return None

    def retract(self, request: WriteRequest) -> None:
        if self.admitted.pop(request.event.id, None) is not None:
            self.counts[request.event.pubkey] -= 1

    async def write(self, conn: Any, now: int) -> None:
        for pubkey, n in self.counts.items():
            await conn.execute(
                "INSERT INTO tally (pubkey, n) VALUES ($1, $2) ON CONFLICT (pubkey) DO UPDATE SET n = $2", pubkey, n
            )
        for eid in self.admitted:
            await conn.execute("INSERT INTO tally_log (id) VALUES ($1)", eid)


async def postgres_tally_hook(conn: Any, requests: Sequence[WriteRequest], now: int) -> BatchHook:
    # Rows made first, then locked in pubkey order: a missing row cannot be locked, and two
    # batches counting from the same missing row would each write their own total.
    pubkeys = sorted({r.event.pubkey for r in requests})
    await conn.execute(
        "INSERT INTO tally (pubkey, n) SELECT unnest($1::text[]), 0 ON CONFLICT (pubkey) DO NOTHING", pubkeys
    )
    rows = await conn.fetch(
        "SELECT pubkey, n FROM tally WHERE pubkey = ANY($1::text[]) ORDER BY pubkey FOR UPDATE", pubkeys
    )
    return _PostgresTally({row[0]: row[1] for row in rows})


def _refuse_all_sqlite(conn: sqlite3.Connection, req: WriteRequest, now: int) -> Rejection | None:
    return Restricted("second hook says no")


class _RefuseAll:
    def admit(self, request: WriteRequest) -> Rejection | None:
        return Restricted("second hook says no")

    def retract(self, request: WriteRequest) -> None:
        raise AssertionError("a refused request is never retracted")

    async def write(self, conn: Any, now: int) -> None:
        pass


async def _refuse_all_postgres(conn: Any, requests: Sequence[WriteRequest], now: int) -> BatchHook:
    return _RefuseAll()


async def install_tally(db: Database) -> None:
    await db.migrate("tally", STEPS)
    if db.dialect == "sqlite":
        db.add_write_hook("tally", sqlite_tally_hook)
    else:
        db.add_write_hook("tally", postgres_tally_hook)


async def rows(db: Database, sql: str) -> list[tuple[Any, ...]]:
    if db.dialect == "sqlite":
        return [tuple(r) for r in await db.read(sql)]
    return [tuple(r) for r in await db.fetch(sql)]


async def tallies(db: Database) -> dict[str, int]:
    return {str(r[0]): int(r[1]) for r in await rows(db, "SELECT pubkey, n FROM tally")}


async def test_a_component_has_its_own_version_line(store: Store) -> None:
    db = database_of(store)
    core = await store.schema_version()  # type: ignore[attr-defined]
    assert await db.migrate("tally", STEPS[:1]) == 1
    assert await db.migrate("tally", STEPS) == 2
    assert await db.migrate("tally", STEPS) == 2  # idempotent
    assert await db.migrate("other", ()) == 0
    assert sorted(await rows(db, "SELECT component, version FROM component_versions")) == [("other", 0), ("tally", 2)]
    assert await store.schema_version() == core  # type: ignore[attr-defined]
    assert await rows(db, "SELECT count(*) FROM tally_log") == [(0,)]
    with pytest.raises(RuntimeError, match="newer"):
        await db.migrate("tally", STEPS[:1])  # a database ahead of the plug-in's code


async def test_a_failed_step_leaves_nothing_and_the_version_unchanged(store: Store) -> None:
    db = database_of(store)
    await db.migrate("tally", STEPS[:1])
    broken = (*STEPS[:1], Migration(2, "half", ("CREATE TABLE half (x INTEGER)", "CREATE TABLE tally (x INTEGER)")))
    with pytest.raises(Exception, match="tally"):
        await db.migrate("tally", broken)
    assert await rows(db, "SELECT version FROM component_versions WHERE component = 'tally'") == [(1,)]
    assert await db.migrate("tally", STEPS) == 2  # "half" was rolled back with its step


async def test_adopt_starts_a_new_line_where_the_database_already_is(store: Store) -> None:
    """Tables an older release made on another line are adopted, not made again; ``adopt``
    is asked only while the component has no row."""
    db = database_of(store)
    asked: list[int] = []
    if db.dialect == "sqlite":
        await db.write(lambda conn: conn.execute(STEPS[0].statements[0]))

        def adopt_sqlite(conn: sqlite3.Connection) -> int:
            asked.append(1)
            return int(conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'tally'").fetchone()[0])

        assert await db.migrate("tally", STEPS, adopt_sqlite) == 2
        assert await db.migrate("tally", STEPS, adopt_sqlite) == 2
    else:
        await db.execute(STEPS[0].statements[0])

        async def adopt_postgres(conn: Any) -> int:
            asked.append(1)
            return 1 if await conn.fetchval("SELECT to_regclass('tally')") is not None else 0

        assert await db.migrate("tally", STEPS, adopt_postgres) == 2
        assert await db.migrate("tally", STEPS, adopt_postgres) == 2
    assert asked == [1]
    assert await rows(db, "SELECT count(*) FROM tally_log") == [(0,)]


async def test_hook_rows_commit_with_their_events_and_refusals_store_nothing(store: Store) -> None:
    db = database_of(store)
    await install_tally(db)
    events = [sign_event(ALICE, 1, f"note {i}", [], 100 + i) for i in range(3)]
    free = sign_event(BOB, 1, "no attachment", [], 100)
    outcomes = await store.write_batch(
        [*(WriteRequest(ev, attachments=(Tally(2),)) for ev in events), WriteRequest(free)], NOW
    )
    assert outcomes[:2] == [WriteOutcome.STORED, WriteOutcome.STORED]
    assert (
        isinstance(outcomes[2], Restricted) and str(outcomes[2]) == f"restricted: tally full for {events[2].pubkey[:8]}"
    )
    assert outcomes[3] is WriteOutcome.STORED
    assert set(await store.query([Filter()], NOW)) == {events[0].raw, events[1].raw, free.raw}
    assert await tallies(db) == {events[0].pubkey: 2}
    assert sorted(r[0] for r in await rows(db, "SELECT id FROM tally_log")) == sorted(e.id for e in events[:2])


async def test_hooks_never_see_duplicates_superseded_or_deleted_events(store: Store) -> None:
    db = database_of(store)
    await install_tally(db)
    note = sign_event(ALICE, 1, "note", [], 100)
    newer = sign_event(ALICE, 3, "contacts v2", [], 200)
    older = sign_event(ALICE, 3, "contacts v1", [], 100)
    gone = sign_event(ALICE, 1, "gone", [], 100)
    request = sign_event(ALICE, 5, "", [["e", gone.id]], 150)
    first = await store.write_batch([WriteRequest(e, attachments=(Tally(10),)) for e in (note, newer, request)], NOW)
    assert first == [WriteOutcome.STORED] * 3
    again = await store.write_batch([WriteRequest(e, attachments=(Tally(10),)) for e in (note, older, gone)], NOW)
    assert again == [WriteOutcome.DUPLICATE, WriteOutcome.SUPERSEDED, WriteOutcome.DELETED]
    assert await tallies(db) == {note.pubkey: 3}


async def test_a_refused_replaceable_leaves_the_stored_version(store: Store) -> None:
    db = database_of(store)
    await install_tally(db)
    old = sign_event(ALICE, 0, "old profile", [], 100)
    new = sign_event(ALICE, 0, "new profile", [], 200)
    outcomes = await store.write_batch([WriteRequest(e, attachments=(Tally(1),)) for e in (old, new)], NOW)
    assert outcomes[0] is WriteOutcome.STORED and isinstance(outcomes[1], Restricted)
    assert await store.query([Filter()], NOW) == [old.raw]


async def test_a_later_hooks_refusal_takes_back_an_earlier_hooks_rows(store: Store) -> None:
    db = database_of(store)
    await install_tally(db)
    if db.dialect == "sqlite":
        db.add_write_hook("no", _refuse_all_sqlite)
    else:
        db.add_write_hook("no", _refuse_all_postgres)
    ev = sign_event(ALICE, 1, "refused by the second hook", [], 100)
    (outcome,) = await store.write_batch([WriteRequest(ev, attachments=(Tally(5),))], NOW)
    assert isinstance(outcome, Restricted) and str(outcome) == "restricted: second hook says no"
    assert await store.count([Filter()], NOW) == 0
    assert await tallies(db) in ({}, {ev.pubkey: 0})
    assert await rows(db, "SELECT count(*) FROM tally_log") == [(0,)]


async def test_attachments_without_a_hook_are_refused_not_stored_free(store: Store) -> None:
    ev = sign_event(ALICE, 1, "priced, but nobody takes the price", [], 100)
    with pytest.raises(ValueError, match="no write hook"):
        await store.write_batch([WriteRequest(ev, attachments=(Tally(1),))], NOW)
    assert await store.count([Filter()], NOW) == 0


async def test_the_writer_raises_a_hooks_refusal_to_its_submitter(store: Store) -> None:
    db = database_of(store)
    await install_tally(db)
    writer = GroupCommitWriter(store)
    try:
        ok = sign_event(ALICE, 1, "one", [], 100)
        refused = sign_event(ALICE, 1, "two", [], 101)
        assert await writer.submit(WriteRequest(ok, attachments=(Tally(1),))) is WriteOutcome.STORED
        with pytest.raises(Restricted, match="tally full"):
            await writer.submit(WriteRequest(refused, attachments=(Tally(1),)))
    finally:
        await writer.close()
    assert await store.query([Filter()], NOW) == [ok.raw]


async def test_concurrent_batches_and_plugin_writes_lose_no_update(store: Store) -> None:
    """Event batches (several at once, as several nodes or processes write) and the
    plug-in's own transactions, all updating one row: each is serialised with the others
    (SQLite: the one writer thread; PostgreSQL: the hook's row lock), so none is lost."""
    db = database_of(store)
    await install_tally(db)
    pubkey = sign_event(ALICE, 1, "", [], 1).pubkey

    async def batch(i: int) -> list[WriteOutcome | Rejection]:
        evs = [sign_event(ALICE, 1, f"b{i} e{j}", [], 100 + j) for j in range(5)]
        return await store.write_batch([WriteRequest(ev, attachments=(Tally(1000),)) for ev in evs], NOW)

    if db.dialect == "sqlite":

        def bump_sqlite(conn: sqlite3.Connection, who: str) -> None:
            conn.execute(
                "INSERT INTO tally (pubkey, n) VALUES (?, 1) ON CONFLICT (pubkey) DO UPDATE SET n = n + 1", (who,)
            )

        async def bump() -> None:
            await db.write(bump_sqlite, pubkey)

    else:

        async def bump() -> None:
            async with db.transaction() as conn:
                await conn.execute(
                    "INSERT INTO tally (pubkey, n) VALUES ($1, 1) ON CONFLICT (pubkey) DO UPDATE SET n = tally.n + 1",
                    pubkey,
                )

    results = await asyncio.gather(*(batch(i) for i in range(20)), *(bump() for _ in range(30)))
    outcomes = [o for r in results[:20] if isinstance(r, list) for o in r]
    assert outcomes == [WriteOutcome.STORED] * 100
    assert await tallies(db) == {pubkey: 130}
    assert await rows(db, "SELECT count(*) FROM tally_log") == [(100,)]
