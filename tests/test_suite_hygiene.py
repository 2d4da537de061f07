"""The test suite keeps to its temp folders: run from a checkout, it must write nothing into
the current directory, whose ``./data`` is the operator's (``make run`` keeps the demo
relay's database and key there)."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

from relay.nostr import crypto
from tests.conftest import RelayFactory
from tests.lnbits_server import LnbitsServer, lnbits_python
from tests.nostr_client import NostrClient, signed


def test_starting_the_test_lnbits_writes_nothing_into_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not lnbits_python().exists():
        pytest.skip(f"no LNbits interpreter at {lnbits_python()}: run `make test-deps`")
    monkeypatch.chdir(tmp_path)
    server = LnbitsServer.start()
    try:
        assert server.wallet_a.inkey
    finally:
        server.stop()
    assert sorted(os.listdir(tmp_path)) == []


async def test_a_test_relay_writes_nothing_into_the_current_directory(
    storage: dict[str, str], relay_factory: RelayFactory, alice: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On PostgreSQL the relay's key file and the demo wallet's file default to ./data: the
    fixtures keep them in the test's folder."""
    here = tmp_path / "cwd"
    here.mkdir()
    monkeypatch.chdir(here)
    payments = {"enabled": True, "backend": "fake", "allow_pubkeys": [crypto.public_key(alice).hex()]}
    async with relay_factory(storage=storage, payments=payments) as relay, NostrClient(relay.url) as client:
        ok, message = await client.publish(signed(alice, 1, "x"))
        assert ok, message
        async with httpx.AsyncClient() as http:  # an invoice: the demo wallet writes its file
            invoice = {"pubkey": "ab" * 32, "plan": "admission"}
            answer = await http.post(f"http://127.0.0.1:{relay.port}/api/invoice", json=invoice)
            assert answer.status_code == 200, answer.text
    assert sorted(os.listdir(here)) == []
