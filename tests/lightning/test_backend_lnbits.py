"""The LNbits backend against a real LNbits server (FakeWallet): create, look up, push."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import AsyncIterator
from urllib.parse import quote

import bolt11
import httpx
import orjson
import pytest

from lightning.backend import BackendError, PaymentState, bolt11_description_hash
from lightning.backends.lnbits import LnbitsBackend, LnbitsConfig
from tests.lnbits_server import LnbitsServer


def _backend(lnbits: LnbitsServer, http: httpx.AsyncClient, key: str | None = None) -> LnbitsBackend:
    return LnbitsBackend(LnbitsConfig(lnbits.url, key or lnbits.wallet_a.inkey), http)


@contextlib.asynccontextmanager
async def _push(backend: LnbitsBackend) -> AsyncIterator[asyncio.Queue[str]]:
    """Run ``settlements()`` in a task feeding a queue, for as long as the block lasts."""
    queue: asyncio.Queue[str] = asyncio.Queue()

    async def pump() -> None:
        async for payment_hash in backend.settlements():
            await queue.put(payment_hash)

    task = asyncio.create_task(pump())
    try:
        yield queue
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _forge(http: httpx.AsyncClient, lnbits: LnbitsServer, payload: dict[str, object]) -> None:
    """What any stranger can do (see the note): write text into wallet A's websocket channel."""
    text = quote(orjson.dumps(payload).decode(), safe="")
    reply = await http.get(f"{lnbits.url}/api/v1/ws/{lnbits.wallet_a.inkey}/{text}")
    reply.raise_for_status()


def _payment(payment_hash: str, status: str = "success", amount: int = 1) -> dict[str, object]:
    return {"payment": {"payment_hash": payment_hash, "status": status, "amount": amount}}


async def test_create_then_lookup_is_pending_in_msat(lnbits: LnbitsServer, http: httpx.AsyncClient) -> None:
    backend = _backend(lnbits, http)
    before = int(time.time())
    invoice = await backend.create_invoice(21_000, "satsrelay test", 600)
    assert invoice.amount_msat == 21_000  # LNbits took 21 sats and answered in msat
    assert invoice.bolt11.startswith("lnbc210n")
    assert len(invoice.payment_hash) == 64
    assert before + 590 <= invoice.expires_at <= before + 610
    status = await backend.lookup_invoice(invoice.payment_hash)
    assert status.state is PaymentState.PENDING
    assert status.amount_received_msat is None


async def test_amount_in_msat_is_rounded_up_to_whole_sats(lnbits: LnbitsServer, http: httpx.AsyncClient) -> None:
    invoice = await _backend(lnbits, http).create_invoice(1_001, "rounding", 600)
    assert invoice.amount_msat == 2_000


async def test_paid_invoice_is_pushed_then_looked_up_paid(lnbits: LnbitsServer, http: httpx.AsyncClient) -> None:
    backend = _backend(lnbits, http)
    invoice = await backend.create_invoice(21_000, "push", 600)
    async with _push(backend) as pushed:
        # Wait until the stream is really listening: a forged hint for a throwaway hash
        # comes through only once the websocket is up.
        probe = "ab" * 32
        got = None
        for _ in range(100):
            await _forge(http, lnbits, _payment(probe))
            with contextlib.suppress(TimeoutError):
                got = await asyncio.wait_for(pushed.get(), 0.2)
                break
        assert got == probe
        before = int(time.time())
        lnbits.pay(invoice.bolt11)
        after = int(time.time())
        async with asyncio.timeout(10):
            while (got := await pushed.get()) == probe:
                pass
        assert got == invoice.payment_hash
    status = await backend.lookup_invoice(invoice.payment_hash)
    assert status.state is PaymentState.PAID
    assert status.amount_received_msat == 21_000
    assert status.paid_at is not None and before <= status.paid_at <= after  # for NIP-57 receipts


async def test_forged_push_is_only_a_hint_lookup_still_says_pending(
    lnbits: LnbitsServer, http: httpx.AsyncClient
) -> None:
    backend = _backend(lnbits, http)
    invoice = await backend.create_invoice(5_000, "forged", 600)
    forged = _payment(invoice.payment_hash, amount=5_000)
    async with _push(backend) as pushed:
        got = None
        for _ in range(100):
            await _forge(http, lnbits, forged)
            with contextlib.suppress(TimeoutError):
                got = await asyncio.wait_for(pushed.get(), 0.2)
                break
    assert got == invoice.payment_hash  # the stream believed the stranger...
    status = await backend.lookup_invoice(invoice.payment_hash)
    assert status.state is PaymentState.PENDING  # ...the confirmation does not


async def test_junk_and_outgoing_messages_are_not_settlements(lnbits: LnbitsServer, http: httpx.AsyncClient) -> None:
    backend = _backend(lnbits, http)
    marker = "cd" * 32
    async with _push(backend) as pushed:
        got = None
        for _ in range(100):
            # Outgoing (negative amount), not-yet-successful and non-payment messages first.
            await _forge(http, lnbits, _payment("11" * 32, amount=-5))
            await _forge(http, lnbits, _payment("22" * 32, status="pending"))
            await _forge(http, lnbits, {"wallet_balance": 3})
            await _forge(http, lnbits, _payment(marker))
            with contextlib.suppress(TimeoutError):
                got = await asyncio.wait_for(pushed.get(), 0.2)
                break
    assert got == marker


async def test_unknown_hash_is_unknown(lnbits: LnbitsServer, http: httpx.AsyncClient) -> None:
    status = await _backend(lnbits, http).lookup_invoice("00" * 32)
    assert status.state is PaymentState.UNKNOWN


async def test_other_wallets_invoice_is_unknown_to_ours(lnbits: LnbitsServer, http: httpx.AsyncClient) -> None:
    theirs = await _backend(lnbits, http, lnbits.wallet_b.inkey).create_invoice(3_000, "B's", 600)
    status = await _backend(lnbits, http).lookup_invoice(theirs.payment_hash)
    assert status.state is PaymentState.UNKNOWN


async def test_wrong_key_lookup_is_an_error_not_a_public_paid(lnbits: LnbitsServer, http: httpx.AsyncClient) -> None:
    backend = _backend(lnbits, http)
    invoice = await backend.create_invoice(2_000, "paid, then asked with a bad key", 600)
    lnbits.pay(invoice.bolt11)
    bad_key = "f" * 32
    with pytest.raises(BackendError) as caught:
        # LNbits answers {"paid": true} without details to anyone: that must not count.
        await _backend(lnbits, http, bad_key).lookup_invoice(invoice.payment_hash)
    assert bad_key not in str(caught.value)


async def test_wrong_key_create_fails_without_leaking_it(lnbits: LnbitsServer, http: httpx.AsyncClient) -> None:
    bad_key = "e" * 32
    with pytest.raises(BackendError) as caught:
        await _backend(lnbits, http, bad_key).create_invoice(1_000, "x", 600)
    assert bad_key not in str(caught.value)
    assert "HTTP 4" in str(caught.value)


async def test_push_to_a_dead_server_raises_backend_error_without_the_key(http: httpx.AsyncClient) -> None:
    secret = "0123456789abcdef" * 2
    backend = LnbitsBackend(LnbitsConfig("http://127.0.0.1:9", secret), http)
    with pytest.raises(BackendError) as caught:
        async for _ in backend.settlements():
            pass
    assert secret not in str(caught.value)
    assert secret not in repr(backend._config)


async def test_unreachable_server_is_a_backend_error(http: httpx.AsyncClient) -> None:
    backend = LnbitsBackend(LnbitsConfig("http://127.0.0.1:9", "k" * 32), http)
    with pytest.raises(BackendError, match="lnbits create_invoice: ConnectError"):
        await backend.create_invoice(1_000, "x", 600)


@pytest.mark.parametrize("field", ["description_hash", "unhashed_description"])
async def test_real_lnbits_fakewallet_honours_each_description_field(
    lnbits: LnbitsServer, http: httpx.AsyncClient, field: str
) -> None:
    """What the backend relies on, asked of the real server one field at a time: LNbits
    1.6.2 with FakeWallet signs the sha256 into the ``h`` tag for either field."""
    zap_request = '{"kind":9734,"content":"field ' + field + '"}'
    value = (
        hashlib.sha256(zap_request.encode()).hexdigest() if field == "description_hash" else zap_request.encode().hex()
    )
    reply = await http.post(
        f"{lnbits.url}/api/v1/payments",
        headers={"X-Api-Key": lnbits.wallet_a.inkey},
        json={"out": False, "amount": 21, "memo": "ignored", field: value},
    )
    assert reply.status_code in (200, 201), reply.text
    decoded = bolt11.decode(reply.json()["bolt11"])
    assert decoded.description_hash == hashlib.sha256(zap_request.encode()).hexdigest()
    assert decoded.description is None  # the memo is not signed alongside


async def test_description_hash_invoice_commits_to_the_zap_request_and_pays(
    lnbits: LnbitsServer, http: httpx.AsyncClient
) -> None:
    backend = _backend(lnbits, http)
    zap_request = '{"kind":9734,"content":"' + "long zap request " * 60 + '"}'  # past LNbits' 640-char memo cut
    invoice = await backend.create_invoice(21_000, "zap", 600, hashed_description=zap_request)
    assert bolt11_description_hash(invoice.bolt11) == hashlib.sha256(zap_request.encode()).hexdigest()
    await asyncio.to_thread(lnbits.pay, invoice.bolt11)
    paid = await backend.lookup_invoice(invoice.payment_hash)
    assert (paid.state, paid.amount_received_msat) == (PaymentState.PAID, 21_000)
    assert paid.preimage is not None
    assert hashlib.sha256(bytes.fromhex(paid.preimage)).hexdigest() == invoice.payment_hash


async def test_long_memo_is_cut_to_what_lnbits_keeps(lnbits: LnbitsServer, http: httpx.AsyncClient) -> None:
    backend = _backend(lnbits, http)
    invoice = await backend.create_invoice(1_000, "R" * 2_000 + ": admission", 600)
    description = bolt11.decode(invoice.bolt11).description
    assert description is not None and description.startswith("RRR") and len(description) <= 640
