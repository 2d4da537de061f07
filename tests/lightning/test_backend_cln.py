"""The Core Lightning (clnrest) backend against a small fake of the documented API."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest

from lightning.backend import BackendError, PaymentState
from lightning.backends.cln import ClnBackend, ClnConfig

RUNE = "tU-RLjMiDpY2U0o3W1oFowar36RFGpWloPbW9-RuZdo9MyZpZD0wMjRiOWExZmE4ZTAwNmYxZTM5MzdmNjVmNjZjNDA4ZTZk"


class FakeCln:
    """clnrest: ``POST /v1/<method>``; ``waitanyinvoice`` blocks until a payment arrives."""

    def __init__(self) -> None:
        self.invoices: list[dict[str, Any]] = []
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.paid = asyncio.Condition()
        self.next_pay_index = 1

    async def pay(self, payment_hash: str, amount_msat: int) -> None:
        async with self.paid:
            invoice = next(i for i in self.invoices if i["payment_hash"] == payment_hash)
            invoice.update(status="paid", amount_received_msat=amount_msat, pay_index=self.next_pay_index)
            self.next_pay_index += 1
            self.paid.notify_all()

    async def handle(self, request: httpx.Request) -> httpx.Response:
        if request.headers.get("Rune") != RUNE:
            return httpx.Response(401, json={"code": 1501, "message": "Not authorized: Not derived from master"})
        method = request.url.path.removeprefix("/v1/")
        params = orjson.loads(request.content) if request.content else {}
        self.requests.append((method, params))
        if method == "invoice":
            if params["amount_msat"] <= 0:
                return httpx.Response(500, json={"code": -32602, "message": "amount_msat: should be positive"})
            if any(i["label"] == params["label"] for i in self.invoices):
                return httpx.Response(500, json={"code": 900, "message": "Duplicate label"})
            invoice = {
                "label": params["label"],
                "payment_hash": hashlib.sha256(os.urandom(32)).hexdigest(),
                "bolt11": "lnbc1fakecln",
                "amount_msat": params["amount_msat"],
                "status": "unpaid",
                "expires_at": 1_900_000_000,
            }
            self.invoices.append(invoice)
            return httpx.Response(201, json={k: invoice[k] for k in ("payment_hash", "bolt11", "expires_at")})
        if method == "listinvoices":
            wanted = params.get("payment_hash")
            found = [i for i in self.invoices if wanted in (None, i["payment_hash"])]
            return httpx.Response(201, json={"invoices": found})
        if method == "waitanyinvoice":
            async with self.paid:
                await self.paid.wait_for(lambda: self._after(params["lastpay_index"]) is not None)
                return httpx.Response(201, json=self._after(params["lastpay_index"]))
        return httpx.Response(404, json={"code": -32601, "message": f"Unknown command '{method}'"})

    def _after(self, index: int) -> dict[str, Any] | None:
        later = [i for i in self.invoices if i.get("pay_index", 0) > index]
        return min(later, key=lambda i: i["pay_index"]) if later else None


@pytest.fixture
async def cln() -> AsyncIterator[tuple[FakeCln, ClnBackend]]:
    fake = FakeCln()
    async with httpx.AsyncClient(transport=httpx.MockTransport(fake.handle), timeout=5.0) as client:
        yield fake, ClnBackend(ClnConfig("https://cln.test:3010", RUNE), client)


async def test_create_sends_msat_unique_label_and_expiry(cln: tuple[FakeCln, ClnBackend]) -> None:
    fake, backend = cln
    first = await backend.create_invoice(21_001, "hello", 600)
    await backend.create_invoice(21_001, "hello", 600)  # same memo: a fresh label all the same
    method, params = fake.requests[0]
    assert method == "invoice"
    assert params["amount_msat"] == 21_001 and params["description"] == "hello" and params["expiry"] == 600
    assert params["label"].startswith("satsrelay-")
    assert (first.amount_msat, first.expires_at, first.bolt11) == (21_001, 1_900_000_000, "lnbc1fakecln")


async def test_lookup_pending_paid_expired_unknown(cln: tuple[FakeCln, ClnBackend]) -> None:
    fake, backend = cln
    invoice = await backend.create_invoice(5_000, "m", 600)
    assert (await backend.lookup_invoice(invoice.payment_hash)).state is PaymentState.PENDING
    assert fake.requests[-1] == ("listinvoices", {"payment_hash": invoice.payment_hash})
    await fake.pay(invoice.payment_hash, 5_123)
    paid = await backend.lookup_invoice(invoice.payment_hash)
    assert (paid.state, paid.amount_received_msat) == (PaymentState.PAID, 5_123)
    other = await backend.create_invoice(1_000, "m", 1)
    fake.invoices[-1]["status"] = "expired"
    assert (await backend.lookup_invoice(other.payment_hash)).state is PaymentState.FAILED
    assert (await backend.lookup_invoice("00" * 32)).state is PaymentState.UNKNOWN


async def test_waitanyinvoice_loop_starts_after_existing_payments(cln: tuple[FakeCln, ClnBackend]) -> None:
    fake, backend = cln
    old = await backend.create_invoice(1_000, "paid before start", 600)
    await fake.pay(old.payment_hash, 1_000)
    stream = backend.settlements()
    new = [await backend.create_invoice(2_000, "n", 600) for _ in range(2)]
    waiting = asyncio.ensure_future(anext(stream))
    await asyncio.sleep(0.05)
    assert not waiting.done()  # the old payment is not replayed
    await fake.pay(new[0].payment_hash, 2_000)
    await fake.pay(new[1].payment_hash, 2_000)
    async with asyncio.timeout(5):
        assert await waiting == new[0].payment_hash
        assert await anext(stream) == new[1].payment_hash
    indexes = [p["lastpay_index"] for m, p in fake.requests if m == "waitanyinvoice"]
    assert indexes == [1, 2]
    await stream.aclose()


async def test_bad_rune_is_a_backend_error_without_the_rune() -> None:
    fake = FakeCln()
    wrong = "x" * 60
    async with httpx.AsyncClient(transport=httpx.MockTransport(fake.handle)) as client:
        backend = ClnBackend(ClnConfig("https://cln.test:3010", wrong), client)
        with pytest.raises(BackendError) as caught:
            await backend.lookup_invoice("00" * 32)
        with pytest.raises(BackendError):
            await anext(backend.settlements())
    assert "HTTP 401" in str(caught.value)
    assert wrong not in str(caught.value) and wrong not in repr(backend._config)


async def test_rpc_error_is_a_backend_error(cln: tuple[FakeCln, ClnBackend]) -> None:
    _, backend = cln
    with pytest.raises(BackendError, match=r"cln invoice: HTTP 500: .*should be positive"):
        await backend.create_invoice(0, "m", 60)
