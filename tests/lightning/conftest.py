"""Fixtures for the payments tests: a real LNbits for the session, an HTTP client like the
relay's, and the ledger on a fresh store of each backend."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from lightning.store import open_ledger
from lightning.store.base import LedgerStore
from relay.store.base import Store
from tests.lnbits_server import LnbitsServer, lnbits_python
from tests.store.conftest import store, store_factory  # noqa: F401  (SQLite and PostgreSQL, fresh per test)


@pytest.fixture(scope="session")
def lnbits() -> Iterator[LnbitsServer]:
    """A real LNbits 1.6.2 (FakeWallet) with wallet A (the relay's) and funded wallet B.

    Started once per session: it takes 3-20 s to come up."""
    python = lnbits_python()
    if not python.exists():
        pytest.skip(
            f"no LNbits interpreter at {python}: run `make test-deps` (creates .venv-lnbits) "
            "or set SATSRELAY_TEST_LNBITS_PYTHON"
        )
    server = LnbitsServer.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    """One shared client with timeouts, as the relay hands to every backend."""
    async with httpx.AsyncClient(timeout=httpx.Timeout(10.0)) as client:
        yield client


@pytest.fixture
async def ledger(store: Store) -> LedgerStore:  # noqa: F811
    """The payments tables on a fresh store of each backend (``store``: SQLite, PostgreSQL)."""
    books = open_ledger(store)
    await books.open()
    return books
