"""SQLite-only behaviour: migrations, URL parsing, query plans (durability: test_durability.py)."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from pathlib import Path

import pytest

from relay.nostr.event import sign_event
from relay.nostr.filters import Filter
from relay.store.base import WriteRequest
from relay.store.migrations import SQLITE_MIGRATIONS, Migration, pending
from relay.store.sqlite import SqliteStore
from relay.store.sqlite_checkpoint import WalCheckpointer
from relay.store.sqlite_schema import apply_migrations, sqlite_path_from_url
from relay.store.sqlite_sql import filter_select, filter_where

NOW = 1_700_000_000
ROOT = Path(__file__).resolve().parents[2]
ALICE = (1).to_bytes(32, "big")


async def test_migrations_idempotent_on_reopen(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "relay.db"
    store = SqliteStore(path)
    await store.open()
    ev = sign_event(ALICE, 1, "kept", [], 100)
    await store.write_batch([WriteRequest(ev)], NOW)
    assert await store.schema_version() == len(SQLITE_MIGRATIONS)
    await store.close()
    for _ in range(2):
        again = SqliteStore(path)
        await again.open()
        assert await again.schema_version() == len(SQLITE_MIGRATIONS)
        assert await again.query([Filter()], NOW) == [ev.raw]
        await again.close()


def test_migration_runner_applies_pending_steps_in_one_transaction(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "m.db", isolation_level=None)
    steps = (
        Migration(1, "a", ("CREATE TABLE a (x INTEGER)",)),
        Migration(2, "b", ("CREATE TABLE b (y INTEGER)", "INSERT INTO b VALUES (1)")),
    )
    assert apply_migrations(conn, steps[:1]) == 1
    assert apply_migrations(conn, steps) == 2
    assert apply_migrations(conn, steps) == 2
    broken = (*steps, Migration(3, "c", ("CREATE TABLE c (z INTEGER)", "CREATE TABLE a (x INTEGER)")))
    with pytest.raises(sqlite3.OperationalError):
        apply_migrations(conn, broken)
    # The failed step left nothing behind: no table c, version still 2.
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
    assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'c'").fetchone()[0] == 0


def test_pending_refuses_gaps_and_newer_databases() -> None:
    steps = (Migration(1, "a", ()), Migration(3, "c", ()))
    with pytest.raises(ValueError, match="out of order"):
        pending(steps, 0)
    with pytest.raises(RuntimeError, match="newer"):
        pending(SQLITE_MIGRATIONS, len(SQLITE_MIGRATIONS) + 1)
    assert pending(SQLITE_MIGRATIONS, 0) == list(SQLITE_MIGRATIONS)


def test_sqlite_url_forms() -> None:
    assert sqlite_path_from_url("sqlite:///data/relay.db") == Path("data/relay.db")
    assert sqlite_path_from_url("sqlite:////var/lib/relay.db") == Path("/var/lib/relay.db")
    with pytest.raises(ValueError):
        sqlite_path_from_url("postgresql://x/y")
    with pytest.raises(ValueError):
        sqlite_path_from_url("sqlite:///")


async def test_from_url_creates_parent_directories(tmp_path: Path) -> None:
    os.chdir(tmp_path)
    store = SqliteStore.from_url("sqlite:///deep/er/relay.db", synchronous="NORMAL")
    await store.open()
    await store.close()
    assert (tmp_path / "deep" / "er" / "relay.db").exists()
    absolute = SqliteStore.from_url(f"sqlite:///{tmp_path}/abs/relay.db")
    await absolute.open()
    await absolute.close()
    assert (tmp_path / "abs" / "relay.db").exists()


def test_file_is_in_wal_mode_after_open(tmp_path: Path) -> None:
    async def open_close() -> None:
        store = SqliteStore(tmp_path / "w.db")
        await store.open()
        await store.close()

    asyncio.run(open_close())
    conn = sqlite3.connect(tmp_path / "w.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


HEX = "ab" * 32
SHAPES = {
    "ids": Filter(ids=frozenset([HEX, "cd" * 32])),
    "authors": Filter(authors=frozenset([HEX, "cd" * 32]), limit=10),
    "authors+kinds": Filter(authors=frozenset([HEX]), kinds=frozenset([1, 6]), limit=10),
    "kinds": Filter(kinds=frozenset([1]), limit=10),
    "tag one value": Filter(tags=(("e", frozenset([HEX])),), limit=10),
    "tag values": Filter(tags=(("t", frozenset(["a", "b"])),), limit=10),
    "tag+kinds": Filter(kinds=frozenset([7]), tags=(("e", frozenset([HEX])),), limit=10),
    "tag+authors": Filter(authors=frozenset([HEX]), tags=(("p", frozenset([HEX, "cd" * 32])),)),
    "two tags": Filter(tags=(("e", frozenset([HEX])), ("p", frozenset([HEX])))),
    "since/until": Filter(since=100, until=200, limit=10),
    "authors+since": Filter(authors=frozenset([HEX]), since=100),
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
async def test_every_filter_shape_is_an_index_search(tmp_path: Path, shape: str) -> None:
    store = SqliteStore(tmp_path / "plan.db")
    await store.open()
    await store.close()
    conn = sqlite3.connect(tmp_path / "plan.db")
    f = SHAPES[shape]
    for sql, params in (filter_select(f, NOW, "e.raw"), filter_where(f, NOW)):
        if not sql.startswith("SELECT"):
            sql = f"SELECT COUNT(*) FROM events e WHERE {sql}"
        plan = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, params)]
        assert not any(step.startswith("SCAN") for step in plan), plan
        assert any(step.startswith("SEARCH") for step in plan), plan


def test_purge_expired_uses_the_expiration_index(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "p.db", isolation_level=None)
    apply_migrations(conn)
    sql = "DELETE FROM events WHERE expiration IS NOT NULL AND expiration <= ?"
    plan = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, (NOW,))]
    assert any("events_expiration" in step for step in plan), plan


def test_a_failed_checkpoint_after_commit_does_not_fail_the_committed_batch(tmp_path: Path) -> None:
    """after_commit runs after COMMIT: raising there would report a durable batch as failed
    (the writer would retry it, answer "duplicate" and skip its fan-out)."""
    db = tmp_path / "c.db"
    sqlite3.connect(db).close()
    checkpointer = WalCheckpointer(db, "FULL", interval=1.0, restart_frames=1000)
    checkpointer._rewind_due = True  # the writer's own checkpoint is due
    broken = sqlite3.connect(db)
    broken.close()  # any statement on it raises sqlite3.ProgrammingError
    checkpointer.after_commit(broken)  # must not raise
    assert checkpointer._rewind_due is False


@pytest.mark.parametrize("size", [1, 2, 3, 127, 128, 129, 300])
async def test_a_batch_of_any_size_stores_every_row(tmp_path: Path, size: int) -> None:
    """The writer inserts a batch through multi-row VALUES statements of a power of two rows
    each (``sqlite_writes._insert_values``): every event, tag row and search row of a
    batch of any size is written once, with its own values and types."""
    store = SqliteStore(tmp_path / "r.db")
    await store.open()
    try:
        author = (7).to_bytes(32, "big")
        events = [
            sign_event(author, 1, f"word{i} common", [["t", f"topic{i}"], ["p", "ab" * 32]], 1_700_000_000 - i)
            for i in range(size)
        ]
        outcomes = await store.write_batch([WriteRequest(e) for e in events], 1_700_000_000)
        assert len(outcomes) == size
        assert {o.name for o in outcomes} == {"STORED"}
    finally:
        await store.close()
    conn = sqlite3.connect(tmp_path / "r.db")
    rows = conn.execute(
        "SELECT rid, hex(id), hex(pubkey), created_at, kind, raw, typeof(id), typeof(raw) FROM events ORDER BY rid"
    ).fetchall()
    assert [(r[1].lower(), r[2].lower(), r[3], r[4], r[5]) for r in rows] == [
        (e.id, e.pubkey, e.created_at, 1, e.raw) for e in events
    ]
    assert [r[0] for r in rows] == list(range(1, size + 1))
    assert {(r[6], r[7]) for r in rows} == {("blob", "blob")}
    tags = conn.execute("SELECT name, value, created_at, rid FROM tags ORDER BY rid, name").fetchall()
    assert tags == [
        row
        for i, e in enumerate(events, 1)
        for row in (("p", "ab" * 32, e.created_at, i), ("t", f"topic{i - 1}", e.created_at, i))
    ]
    found = conn.execute("SELECT rowid FROM events_search WHERE events_search MATCH 'common' ORDER BY rowid").fetchall()
    assert [r[0] for r in found] == list(range(1, size + 1))
    last = conn.execute("SELECT rowid FROM events_search WHERE events_search MATCH ?", (f"word{size - 1}",))
    assert last.fetchall() == [(size,)]
    conn.close()
