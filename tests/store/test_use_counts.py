"""``Store.take_uses`` in both stores: counted uses per key and window, all or none, exact
when two stores on one database (two nodes, or ``--workers`` processes on one SQLite file)
race, and ended windows pruned. What the relay-wide NIP-98 replay guard and the free inbox
allowance rest on (issue 17 items 3 and 4/9)."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from relay.store.base import USES_PRUNED_PER_CALL, Store, UseLimit
from relay.store.postgres import PostgresStore
from relay.store.sqlite import SqliteStore
from tests.store.conftest import _drop_schema

NOW = 1_700_000_000
Rows = Callable[[], Awaitable[int]]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def two_nodes(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[Store, Store, Rows]]:
    """Two open stores on one database, and a count of its ``use_counts`` rows."""
    if request.param == "sqlite":
        path = tmp_path / "relay.db"
        made: list[Store] = [SqliteStore(path), SqliteStore(path)]

        async def rows() -> int:
            with sqlite3.connect(path) as conn:
                return int(conn.execute("SELECT count(*) FROM use_counts").fetchone()[0])

        schema = None
    else:
        dsn = os.environ.get("SATSRELAY_TEST_POSTGRES")
        if not dsn:
            pytest.skip("SATSRELAY_TEST_POSTGRES is unset (e.g. postgresql://postgres@127.0.0.1:5432/test)")
        import asyncpg

        schema = f"uses_{uuid.uuid4().hex[:12]}"
        made = [PostgresStore(dsn, schema=schema), PostgresStore(dsn, schema=schema)]

        async def rows() -> int:
            conn = await asyncpg.connect(dsn)
            try:
                return int(await conn.fetchval(f'SELECT count(*) FROM "{schema}".use_counts'))
            finally:
                await conn.close()

    for store in made:
        await store.open()
    try:
        yield made[0], made[1], rows
    finally:
        for store in made:
            await store.close()
        if schema is not None:
            await _drop_schema(os.environ["SATSRELAY_TEST_POSTGRES"], schema)


async def test_a_key_is_counted_up_to_its_limit_then_again_in_a_new_window(
    two_nodes: tuple[Store, Store, Rows],
) -> None:
    a, b, _ = two_nodes
    hour = UseLimit("inbox:pk", 3, NOW + 3600)
    assert [await (a if i % 2 else b).take_uses([hour], NOW + i) for i in range(4)] == [None, None, None, "inbox:pk"]
    # the window is fixed by its first use: later uses do not push its end further away
    assert await a.take_uses([UseLimit("inbox:pk", 3, NOW + 9999)], NOW + 3599) == "inbox:pk"
    assert await b.take_uses([UseLimit("inbox:pk", 3, NOW + 7200)], NOW + 3600) is None  # a new window
    assert await a.take_uses([UseLimit("inbox:pk", 1, NOW + 7200)], NOW + 3601) == "inbox:pk"


async def test_several_keys_are_counted_all_or_none(two_nodes: tuple[Store, Store, Rows]) -> None:
    a, b, _ = two_nodes
    assert await a.take_uses([UseLimit("ip", 1, NOW + 60)], NOW) is None
    # the sender has room, the address does not: the sender's use is not counted either
    assert await b.take_uses([UseLimit("sender", 1, NOW + 60), UseLimit("ip", 1, NOW + 60)], NOW) == "ip"
    assert await a.take_uses([UseLimit("sender", 1, NOW + 60)], NOW) is None
    assert await b.take_uses([UseLimit("sender", 1, NOW + 60)], NOW) == "sender"


async def test_two_nodes_racing_for_one_key_count_it_exactly(two_nodes: tuple[Store, Store, Rows]) -> None:
    a, b, _ = two_nodes
    single = UseLimit("nip98:" + "ab" * 32, 1, NOW + 360)
    outcomes = await asyncio.gather(*(node.take_uses([single], NOW) for node in (a, b) * 10))
    assert outcomes.count(None) == 1
    five = [UseLimit("sender", 5, NOW + 3600), UseLimit("group", 50, NOW + 3600)]
    outcomes = await asyncio.gather(*(node.take_uses(five, NOW) for node in (a, b) * 20))
    assert outcomes.count(None) == 5 and set(outcomes) == {None, "sender"}


async def test_ended_windows_are_pruned(two_nodes: tuple[Store, Store, Rows]) -> None:
    a, b, rows = two_nodes
    for i in range(100):
        assert await a.take_uses([UseLimit(f"old-{i}", 1, NOW + 10)], NOW) is None
    assert await rows() == 100
    # each take after the windows ended deletes up to USES_PRUNED_PER_CALL of them
    assert await b.take_uses([UseLimit("new-1", 1, NOW + 100)], NOW + 10) is None
    assert await rows() == 100 - USES_PRUNED_PER_CALL + 1
    assert await a.take_uses([UseLimit("new-2", 1, NOW + 100)], NOW + 11) is None
    assert await rows() == 2
    # a refused take counts nothing, so it leaves the table as it was
    assert await b.take_uses([UseLimit("new-1", 1, NOW + 100)], NOW + 12) == "new-1"
    assert await rows() == 2
