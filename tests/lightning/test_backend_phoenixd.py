"""The Phoenixd backend against a small fake: HTTP via MockTransport, push via a real
local websocket server that checks basic auth as phoenixd does."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs

import httpx
import orjson
import pytest
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from lightning.backend import BackendError, PaymentState
from lightning.backends.phoenixd import PhoenixdBackend, PhoenixdConfig

PASSWORD = "9b2c7f0e4d1a38c5b6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d"


def _authorized(value: str | None) -> bool:
    return value == "Basic " + base64.b64encode(f":{PASSWORD}".encode()).decode()


class FakePhoenixd:
    def __init__(self) -> None:
        self.incoming: dict[str, dict[str, Any]] = {}
        self.requests: list[httpx.Request] = []
        self.sockets: set[ServerConnection] = set()
        self.connected = asyncio.Event()

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if not _authorized(request.headers.get("Authorization")):
            return httpx.Response(401, text="Invalid authentication (use basic auth with the http password)")
        path = request.url.path
        if request.method == "POST" and path == "/createinvoice":
            form = {k: v[0] for k, v in parse_qs(request.content.decode()).items()}
            payment_hash = hashlib.sha256(os.urandom(32)).hexdigest()
            self.incoming[payment_hash] = {"paymentHash": payment_hash, "isPaid": False, "receivedSat": 0, "fees": 0}
            amount = int(form["amountSat"])
            return httpx.Response(200, json={"amountSat": amount, "paymentHash": payment_hash, "serialized": "lnbc1fk"})
        if request.method == "GET" and path.startswith("/payments/incoming/"):
            payment = self.incoming.get(path.rsplit("/", 1)[1])
            if payment is None:
                return httpx.Response(404, text="payment not found")
            return httpx.Response(200, json=payment)
        return httpx.Response(404, text="not found")

    async def pay(self, payment_hash: str, sats: int) -> None:
        self.incoming[payment_hash].update(isPaid=True, receivedSat=sats, fees=0)
        message = {"type": "payment_received", "timestamp": 1, "amountSat": sats, "paymentHash": payment_hash}
        for ws in list(self.sockets):
            await ws.send(orjson.dumps(message).decode())

    def process_request(self, _conn: ServerConnection, request: Request) -> Response | None:
        if request.path != "/websocket" or not _authorized(request.headers.get("Authorization")):
            return Response(401, "Unauthorized", Headers(), b"unauthorized")
        return None

    async def ws_handler(self, ws: ServerConnection) -> None:
        self.sockets.add(ws)
        self.connected.set()
        try:
            await ws.wait_closed()
        finally:
            self.sockets.discard(ws)


@pytest.fixture
async def phoenixd() -> AsyncIterator[tuple[FakePhoenixd, PhoenixdBackend, Server]]:
    fake = FakePhoenixd()
    async with serve(fake.ws_handler, "127.0.0.1", 0, process_request=fake.process_request) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        transport = httpx.MockTransport(fake.handle)
        async with httpx.AsyncClient(transport=transport, timeout=5.0) as client:
            yield fake, PhoenixdBackend(PhoenixdConfig(f"http://127.0.0.1:{port}", PASSWORD), client), server


async def test_create_rounds_msat_up_to_sats_and_sends_basic_auth(
    phoenixd: tuple[FakePhoenixd, PhoenixdBackend, Server],
) -> None:
    fake, backend, _ = phoenixd
    invoice = await backend.create_invoice(21_001, "hello", 900)
    form = parse_qs(fake.requests[-1].content.decode())
    assert form == {"amountSat": ["22"], "description": ["hello"], "expirySeconds": ["900"]}
    assert _authorized(fake.requests[-1].headers["Authorization"])
    assert invoice.amount_msat == 22_000
    assert invoice.payment_hash in fake.incoming


async def test_lookup_pending_paid_unknown(phoenixd: tuple[FakePhoenixd, PhoenixdBackend, Server]) -> None:
    fake, backend, _ = phoenixd
    invoice = await backend.create_invoice(3_000, "m", 600)
    assert (await backend.lookup_invoice(invoice.payment_hash)).state is PaymentState.PENDING
    await fake.pay(invoice.payment_hash, 3)
    paid = await backend.lookup_invoice(invoice.payment_hash)
    assert (paid.state, paid.amount_received_msat) == (PaymentState.PAID, 3_000)
    assert (await backend.lookup_invoice("00" * 32)).state is PaymentState.UNKNOWN


async def test_websocket_push_yields_received_hashes(phoenixd: tuple[FakePhoenixd, PhoenixdBackend, Server]) -> None:
    fake, backend, _ = phoenixd
    invoice = await backend.create_invoice(1_000, "m", 600)
    stream = backend.settlements()
    first = asyncio.ensure_future(anext(stream))
    async with asyncio.timeout(5):
        await fake.connected.wait()
        for ws in fake.sockets:  # other message types are ignored
            await ws.send('{"type":"payment_sent","paymentHash":"' + "11" * 32 + '"}')
            await ws.send("not json")
        await fake.pay(invoice.payment_hash, 1)
        assert await first == invoice.payment_hash
    await stream.aclose()


async def test_websocket_drop_raises_backend_error(phoenixd: tuple[FakePhoenixd, PhoenixdBackend, Server]) -> None:
    fake, backend, _ = phoenixd
    stream = backend.settlements()
    waiting = asyncio.ensure_future(anext(stream))
    async with asyncio.timeout(5):
        await fake.connected.wait()
        for ws in list(fake.sockets):
            await ws.close()
        with pytest.raises(BackendError, match="phoenixd push stream"):
            await waiting


async def test_wrong_password_fails_everywhere_without_leaking_it(
    phoenixd: tuple[FakePhoenixd, PhoenixdBackend, Server],
) -> None:
    _, good, _ = phoenixd
    wrong = "not-the-password-" + "z" * 20
    backend = PhoenixdBackend(PhoenixdConfig(good._base, wrong), good._client)
    errors = []
    with pytest.raises(BackendError) as caught:
        await backend.create_invoice(1_000, "m", 60)
    errors.append(str(caught.value))
    with pytest.raises(BackendError) as caught:
        await anext(backend.settlements())
    errors.append(str(caught.value))
    assert "HTTP 401" in errors[0]
    token = base64.b64encode(f":{wrong}".encode()).decode()
    for text in errors:
        assert wrong not in text and token not in text
    assert wrong not in repr(backend._config)
