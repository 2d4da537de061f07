"""Fixtures for the wallet backends: a real LNbits for the session, an HTTP client like the relay's."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from tests.lnbits_server import LnbitsServer, lnbits_python


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
