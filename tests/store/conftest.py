"""The shared store suite runs every test against each backend: ``store`` is parametrized
over SQLite (a real file in tmp_path) and PostgreSQL (a real server, when configured).

``PostgresStore(dsn, schema=name)`` creates ``name`` if missing and keeps every table in
it (``search_path``), so each test gets a fresh, isolated schema; the fixture drops the
schema afterwards. The PostgreSQL case is skipped, with the reason, when
``SATSRELAY_TEST_POSTGRES`` is unset (``.ci/run`` sets it and fails on any skip).
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from relay.store.base import Store
from relay.store.postgres import PostgresStore
from relay.store.sqlite import SqliteStore

StoreFactory = Callable[[], contextlib.AbstractAsyncContextManager[Store]]


def _postgres_class() -> tuple[str, Any]:
    dsn = os.environ.get("SATSRELAY_TEST_POSTGRES")
    if not dsn:
        pytest.skip("SATSRELAY_TEST_POSTGRES is unset (e.g. postgresql://postgres@127.0.0.1:5432/test)")
    return dsn, PostgresStore


async def _drop_schema(dsn: str, schema: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    """``async with store_factory() as store``: a fresh, open, empty store of this backend.

    A factory (not only a fixture) because the property test needs a fresh store per
    hypothesis example."""
    backend: str = request.param
    if backend == "postgres":
        dsn, postgres_store = _postgres_class()

    @contextlib.asynccontextmanager
    async def make() -> AsyncIterator[Store]:
        store: Store
        if backend == "sqlite":
            store = SqliteStore(tmp_path / f"{uuid.uuid4().hex}" / "relay.db")
            await store.open()
            try:
                yield store
            finally:
                await store.close()
        else:
            schema = f"t_{uuid.uuid4().hex}"
            store = postgres_store(dsn, schema=schema)
            await store.open()
            try:
                yield store
            finally:
                await store.close()
                await _drop_schema(dsn, schema)

    return make


@pytest.fixture
async def store(store_factory: StoreFactory) -> AsyncIterator[Store]:
    async with store_factory() as s:
        yield s


@pytest.fixture
async def both_stores(tmp_path: Path) -> AsyncIterator[tuple[Store, Store]]:
    """(SQLite, PostgreSQL), open and empty, for tests that compare the two stores on the
    same input; skipped when PostgreSQL is not configured."""
    dsn, postgres_store = _postgres_class()
    schema = f"t_{uuid.uuid4().hex}"
    lite = SqliteStore(tmp_path / "both" / "relay.db")
    pg: Store = postgres_store(dsn, schema=schema)
    await lite.open()
    try:
        await pg.open()
        try:
            yield lite, pg
        finally:
            await pg.close()
            await _drop_schema(dsn, schema)
    finally:
        await lite.close()
