"""The LND REST backend against a small fake of the documented API (httpx.MockTransport).

The fake answers like lnd's REST gateway: int64 fields as strings, bytes as base64,
the subscribe stream as newline-delimited ``{"result": ...}`` objects."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import bolt11
import httpx
import orjson
import pytest
from bolt11.models.tags import TagChar
from cryptography import x509
from cryptography.x509.oid import NameOID

from lightning.backend import BackendError, PaymentState, bolt11_description_hash
from lightning.backends.fake import FAKE_NODE_KEY
from lightning.backends.lnd import LndBackend, LndConfig
from tests.certificates import self_signed

MACAROON = "0201036c6e6402f801" + "ab" * 40


SETTLE_DATE = "1767225600"  # LND's int64s are JSON strings


class FakeLnd:
    """Invoices in a dict; ``settle`` marks one paid and feeds the subscribe stream."""

    def __init__(self) -> None:
        self.invoices: dict[str, dict[str, Any]] = {}
        self.requests: list[httpx.Request] = []
        self.stream: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.settle_count = 0
        self.legacy_not_found = False

    def settle(self, payment_hash: str, paid_msat: int) -> None:
        self.settle_count += 1
        invoice = self.invoices[payment_hash]
        invoice.update(
            state="SETTLED", amt_paid_msat=str(paid_msat), settle_index=str(self.settle_count), settle_date=SETTLE_DATE
        )
        self.stream.put_nowait(orjson.dumps({"result": invoice}) + b"\n")

    async def _lines(self) -> AsyncIterator[bytes]:
        while (chunk := await self.stream.get()) is not None:
            yield chunk

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.headers.get("Grpc-Metadata-macaroon") != MACAROON:
            # Echo the credential back, as a careless proxy might: the backend must scrub it.
            sent = request.headers.get("Grpc-Metadata-macaroon")
            return httpx.Response(500, json={"code": 2, "message": f"verification failed for {sent}"})
        path = request.url.path
        if request.method == "POST" and path == "/v1/invoices":
            body = orjson.loads(request.content)
            r_hash = hashlib.sha256(os.urandom(32)).digest()
            self.invoices[r_hash.hex()] = {
                "r_hash": base64.b64encode(r_hash).decode(),
                "memo": body["memo"],
                "value_msat": body["value_msat"],
                "expiry": body["expiry"],
                "state": "OPEN",
                "amt_paid_msat": "0",
            }
            pay_req = f"lnbc{int(body['value_msat']) // 1000}n1fake{r_hash.hex()[:10]}"
            if "description_hash" in body:  # lnd signs the hash (``h``) and keeps the memo local
                hashed = base64.b64decode(body["description_hash"])
                if len(hashed) != 32:
                    return httpx.Response(500, json={"code": 2, "message": "description hash is 32 bytes"})
                pay_req = _bolt11_with_hash(r_hash.hex(), int(body["value_msat"]), hashed.hex())
            return httpx.Response(200, json={"r_hash": base64.b64encode(r_hash).decode(), "payment_request": pay_req})
        if request.method == "GET" and path.startswith("/v1/invoice/"):
            invoice = self.invoices.get(path.rsplit("/", 1)[1])
            if invoice is None:
                if self.legacy_not_found:
                    return httpx.Response(500, json={"code": 2, "message": "unable to locate invoice"})
                return httpx.Response(404, json={"code": 5, "message": "there are no existing invoices"})
            return httpx.Response(200, json=invoice)
        if request.method == "GET" and path == "/v1/invoices/subscribe":
            return httpx.Response(200, content=self._lines())
        return httpx.Response(404, json={"code": 5, "message": "Not Found"})


def _bolt11_with_hash(payment_hash: str, amount_msat: int, description_hash_hex: str) -> str:
    tags = bolt11.Tags()
    tags.add(TagChar.payment_hash, payment_hash)
    tags.add(TagChar.payment_secret, os.urandom(32).hex())
    tags.add(TagChar.description_hash, description_hash_hex)
    invoice = bolt11.Bolt11(currency="bc", date=1_700_000_000, tags=tags, amount_msat=bolt11.MilliSatoshi(amount_msat))
    return str(bolt11.encode(invoice, private_key=FAKE_NODE_KEY))


@pytest.fixture
async def lnd() -> AsyncIterator[tuple[FakeLnd, LndBackend]]:
    fake = FakeLnd()
    async with httpx.AsyncClient(transport=httpx.MockTransport(fake.handle), timeout=5.0) as client:
        yield fake, LndBackend(LndConfig("https://lnd.test:8080", MACAROON), client)


async def test_create_sends_msat_and_macaroon_and_returns_hex_hash(lnd: tuple[FakeLnd, LndBackend]) -> None:
    fake, backend = lnd
    invoice = await backend.create_invoice(21_500, "memo here", 900)
    sent = fake.requests[-1]
    assert sent.headers["Grpc-Metadata-macaroon"] == MACAROON
    assert orjson.loads(sent.content) == {"value_msat": "21500", "memo": "memo here", "expiry": "900"}
    assert invoice.payment_hash in fake.invoices
    assert invoice.amount_msat == 21_500
    assert invoice.bolt11.startswith("lnbc21n1")


async def test_lookup_pending_paid_and_unknown(lnd: tuple[FakeLnd, LndBackend]) -> None:
    fake, backend = lnd
    invoice = await backend.create_invoice(10_000, "m", 600)
    assert (await backend.lookup_invoice(invoice.payment_hash)).state is PaymentState.PENDING
    fake.settle(invoice.payment_hash, 10_000)
    paid = await backend.lookup_invoice(invoice.payment_hash)
    assert (paid.state, paid.amount_received_msat) == (PaymentState.PAID, 10_000)
    assert paid.paid_at == int(SETTLE_DATE)  # when it was paid, for NIP-57 receipts
    assert (await backend.lookup_invoice("00" * 32)).state is PaymentState.UNKNOWN
    fake.legacy_not_found = True
    assert (await backend.lookup_invoice("00" * 32)).state is PaymentState.UNKNOWN


async def test_canceled_is_failed_and_accepted_hold_is_still_pending(lnd: tuple[FakeLnd, LndBackend]) -> None:
    fake, backend = lnd
    invoice = await backend.create_invoice(1_000, "m", 600)
    fake.invoices[invoice.payment_hash]["state"] = "ACCEPTED"
    assert (await backend.lookup_invoice(invoice.payment_hash)).state is PaymentState.PENDING
    fake.invoices[invoice.payment_hash]["state"] = "CANCELED"
    assert (await backend.lookup_invoice(invoice.payment_hash)).state is PaymentState.FAILED


async def test_subscribe_stream_yields_settled_hashes_and_resumes_from_settle_index(
    lnd: tuple[FakeLnd, LndBackend],
) -> None:
    fake, backend = lnd
    first = await backend.create_invoice(1_000, "a", 600)
    second = await backend.create_invoice(2_000, "b", 600)
    stream = backend.settlements()
    # An OPEN update (a new invoice) and a blank keep-alive line are not settlements.
    fake.stream.put_nowait(orjson.dumps({"result": {**fake.invoices[first.payment_hash]}}) + b"\n\n")
    fake.settle(first.payment_hash, 1_000)
    fake.settle(second.payment_hash, 2_000)
    async with asyncio.timeout(5):
        assert await anext(stream) == first.payment_hash
        assert await anext(stream) == second.payment_hash
    fake.stream.put_nowait(None)  # LND closes the stream
    with pytest.raises(BackendError, match="closed"):
        await anext(stream)
    # The next subscription asks LND to replay settlements after the last one seen.
    fake.stream.put_nowait(None)
    with pytest.raises(BackendError):
        await anext(backend.settlements())
    assert fake.requests[-1].url.params["settle_index"] == "2"


async def test_stream_error_object_raises(lnd: tuple[FakeLnd, LndBackend]) -> None:
    fake, backend = lnd
    fake.stream.put_nowait(orjson.dumps({"error": {"code": 14, "message": "shutting down"}}) + b"\n")
    with pytest.raises(BackendError, match="shutting down"):
        await anext(backend.settlements())


async def test_bad_macaroon_error_does_not_contain_it() -> None:
    fake = FakeLnd()
    wrong = "0201" + "cd" * 40
    async with httpx.AsyncClient(transport=httpx.MockTransport(fake.handle)) as client:
        backend = LndBackend(LndConfig("https://lnd.test:8080", wrong), client)
        with pytest.raises(BackendError) as caught:
            await backend.create_invoice(1_000, "m", 60)
    assert "HTTP 500" in str(caught.value) and "verification failed for ***" in str(caught.value)
    assert wrong not in str(caught.value)
    assert wrong not in repr(LndConfig("https://x", wrong))


async def test_unreachable_node_is_a_backend_error() -> None:
    async with httpx.AsyncClient(timeout=2.0) as client:
        backend = LndBackend(LndConfig("https://127.0.0.1:9", MACAROON), client)
        with pytest.raises(BackendError, match="ConnectError"):
            await backend.lookup_invoice("00" * 32)
        with pytest.raises(BackendError, match="ConnectError"):
            await anext(backend.settlements())


def _self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 like the one LND makes for itself (tls.cert/tls.key)."""
    name = x509.NameAttribute(NameOID.ORGANIZATION_NAME, "lnd autogenerated cert")
    return self_signed(directory, name=name, files=("tls.cert", "tls.key"))


async def test_self_signed_tls_cert_is_pinned_by_path(tmp_path: Path) -> None:
    cert_path, key_path = _self_signed_cert(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_path, key_path)
    paid = orjson.dumps({"state": "SETTLED", "amt_paid_msat": "7000", "r_hash": "AA=="})

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            head = await reader.readuntil(b"\r\n\r\n")
            ok = MACAROON.encode() in head
            status, body = (b"200 OK", paid) if ok else (b"500 Internal Server Error", b'{"message":"no macaroon"}')
            writer.write(
                b"HTTP/1.1 "
                + status
                + b"\r\nContent-Type: application/json\r\nContent-Length: "
                + str(len(body)).encode()
                + b"\r\nConnection: close\r\n\r\n"
                + body
            )
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    try:
        async with httpx.AsyncClient(timeout=5.0) as shared:
            pinned = LndBackend(LndConfig(f"https://127.0.0.1:{port}", MACAROON, str(cert_path)), shared)
            status = await pinned.lookup_invoice("11" * 32)
            assert (status.state, status.amount_received_msat) == (PaymentState.PAID, 7_000)
            await pinned.close()
            assert not shared.is_closed  # only the backend's own client was closed
            unpinned = LndBackend(LndConfig(f"https://127.0.0.1:{port}", MACAROON), shared)
            with pytest.raises(BackendError, match="ConnectError"):  # certificate verify failed
                await unpinned.lookup_invoice("11" * 32)
    finally:
        server.close()
        await server.wait_closed()


async def test_description_hash_is_base64_of_the_32_bytes_and_checked(lnd: tuple[FakeLnd, LndBackend]) -> None:
    fake, backend = lnd
    zap_request = '{"kind":9734,"tags":[["p","' + "ab" * 32 + '"]]}'
    invoice = await backend.create_invoice(21_000, "zap", 600, hashed_description=zap_request)
    sent = orjson.loads(fake.requests[-1].content)
    digest = hashlib.sha256(zap_request.encode()).digest()
    assert base64.b64decode(sent["description_hash"]) == digest
    assert bolt11_description_hash(invoice.bolt11) == digest.hex()


async def test_paid_invoice_reports_its_preimage(lnd: tuple[FakeLnd, LndBackend]) -> None:
    fake, backend = lnd
    invoice = await backend.create_invoice(1_000, "m", 600)
    preimage = os.urandom(32)
    fake.invoices[invoice.payment_hash]["r_preimage"] = base64.b64encode(preimage).decode()
    fake.settle(invoice.payment_hash, 1_000)
    assert (await backend.lookup_invoice(invoice.payment_hash)).preimage == preimage.hex()
