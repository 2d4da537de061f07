"""The invoice status route asks the wallet about a pending invoice, but at most once every
2 s per invoice, and never makes the page wait long on a stalled wallet.

Fake wallet, push off and polls an hour apart, so the status route's own lookup is the only
way an invoice can be credited here. Lookups are counted by wrapping the running relay's
wallet object: the wallet's calls are the thing being limited. (The same behaviour against
a real LNbits is in ``test_lnbits_e2e.py``.)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from lightning.backend import InvoiceStatus
from lightning.backends.fake import FakeBackend, mark_paid
from lightning.extension import PaymentsExtension
from lightning.web import STATUS_CHECK_INTERVAL, STATUS_CHECK_WAIT
from relay.nostr import crypto
from relay.nostr.event import sign_event
from relay.session.server import Relay
from tests.conftest import RelayFactory
from tests.nostr_client import NostrClient

NO_PUSH_NO_POLL: dict[str, Any] = {
    "enabled": True,
    "backend": "fake",
    "push": False,
    "poll_interval_seconds": 3600,
    "account_cache_seconds": 60,  # a stale gate would refuse the payer for a minute
    "invoice_requests_per_minute": 100,
    "max_pending_invoices_per_address": 100,
}


class CountedWallet:
    """Counts (and can slow down) the running relay's wallet lookups."""

    def __init__(self, relay: Relay, monkeypatch: pytest.MonkeyPatch) -> None:
        ext = relay.hooks.owner("payments")
        assert isinstance(ext, PaymentsExtension) and isinstance(ext.backend, FakeBackend)
        self.wallet = ext.backend
        self.lookups: list[str] = []
        self.delay = 0.0
        real: Callable[[str], Awaitable[InvoiceStatus]] = ext.backend.lookup_invoice

        async def lookup(payment_hash: str) -> InvoiceStatus:
            self.lookups.append(payment_hash)
            await asyncio.sleep(self.delay)
            return await real(payment_hash)

        monkeypatch.setattr(ext.backend, "lookup_invoice", lookup)


@pytest.fixture
async def paid_relay(
    relay_factory: RelayFactory, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Relay, httpx.AsyncClient, CountedWallet]]:
    async with (
        relay_factory(payments=NO_PUSH_NO_POLL) as relay,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{relay.port}", timeout=15.0) as web,
    ):
        yield relay, web, CountedWallet(relay, monkeypatch)


async def issue(web: httpx.AsyncClient, pubkey: str) -> str:
    reply = await web.post("/api/invoice", json={"pubkey": pubkey, "plan": "admission"})
    assert reply.status_code == 200, reply.text
    payment_hash: str = reply.json()["payment_hash"]
    return payment_hash


async def status(web: httpx.AsyncClient, payment_hash: str) -> dict[str, Any]:
    reply = await web.get(f"/api/invoice/{payment_hash}")
    assert reply.status_code == 200, reply.text
    doc: dict[str, Any] = reply.json()
    return doc


async def test_status_route_asks_the_wallet_at_most_once_per_interval_then_credits(
    paid_relay: tuple[Relay, httpx.AsyncClient, CountedWallet], tmp_path: Path, alice: bytes
) -> None:
    relay, web, wallet = paid_relay
    pubkey = crypto.public_key(alice).hex()
    payment_hash = await issue(web, pubkey)

    first = time.monotonic()
    docs = await asyncio.gather(*(status(web, payment_hash) for _ in range(10)))  # concurrent page polls
    assert {d["state"] for d in docs} == {"pending"}
    assert wallet.lookups == [payment_hash]  # ten requests, one lookup

    mark_paid(tmp_path / "fake-wallet.db", payment_hash)  # paid; nothing pushes it
    doc = await status(web, payment_hash)
    assert time.monotonic() - first < STATUS_CHECK_INTERVAL  # (so the next answer must be the stored one)
    assert doc["state"] == "pending" and len(wallet.lookups) == 1

    await asyncio.sleep(STATUS_CHECK_INTERVAL - (time.monotonic() - first) + 0.05)
    doc = await status(web, payment_hash)
    assert doc["state"] == "paid" and doc["account"]["admitted_until"] == "forever"
    assert len(wallet.lookups) == 2
    async with NostrClient(relay.url) as client:  # the gate saw the credit at once, despite its 60 s cache
        ok, message = await client.publish(sign_event(alice, 1, "paid", [], int(time.time())))
        assert ok, message

    await asyncio.sleep(STATUS_CHECK_INTERVAL)
    assert (await status(web, payment_hash))["paid"] is True
    assert len(wallet.lookups) == 2  # a paid invoice is answered from the store


async def test_throttle_is_per_invoice(paid_relay: tuple[Relay, httpx.AsyncClient, CountedWallet]) -> None:
    _, web, wallet = paid_relay
    hashes = [await issue(web, crypto.public_key(crypto.generate_secret()).hex()) for _ in range(3)]
    for payment_hash in hashes:
        await status(web, payment_hash)
        await status(web, payment_hash)
    assert wallet.lookups == hashes


async def test_stalled_wallet_delays_the_status_answer_only_briefly_and_still_credits(
    paid_relay: tuple[Relay, httpx.AsyncClient, CountedWallet], tmp_path: Path
) -> None:
    _, web, wallet = paid_relay
    pubkey = crypto.public_key(crypto.generate_secret()).hex()
    payment_hash = await issue(web, pubkey)
    mark_paid(tmp_path / "fake-wallet.db", payment_hash)
    wallet.delay = STATUS_CHECK_WAIT + 4.0

    start = time.monotonic()
    doc = await status(web, payment_hash)
    answered = time.monotonic() - start
    assert doc["state"] == "pending"
    assert STATUS_CHECK_WAIT - 0.1 <= answered < STATUS_CHECK_WAIT + 2.5  # waited for the lookup, not its 5.5 s

    # The lookup carried on without anyone waiting for it, and credited.
    deadline = time.monotonic() + 15
    while True:
        account = (await web.get(f"/account/{pubkey}", headers={"Accept": "application/json"})).json()
        if account["admitted"]:
            break
        assert time.monotonic() < deadline, "the background lookup never credited"
        await asyncio.sleep(0.1)
    assert wallet.lookups == [payment_hash]


async def test_unreachable_wallet_still_gets_a_status_answer(
    paid_relay: tuple[Relay, httpx.AsyncClient, CountedWallet],
) -> None:
    _, web, wallet = paid_relay
    payment_hash = await issue(web, crypto.public_key(crypto.generate_secret()).hex())
    wallet.wallet.set_outage(True)
    doc = await status(web, payment_hash)
    assert doc["state"] == "pending" and doc["paid"] is False
