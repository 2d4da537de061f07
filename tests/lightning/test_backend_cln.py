"""The Core Lightning (clnrest) backend against a small fake of the documented API, served
over HTTPS with a CA and server certificate this test generates, as clnrest does by default
(``clnrest-protocol=https``; ``ca.pem`` + ``server.pem`` under the node's directory).

The fake follows ``doc/schemas``: ``invoice`` with ``deschashonly`` signs only the
description's sha256 (``h`` tag); ``listinvoices`` filters by ``payment_hash`` or pages by
``index``/``start``/``limit`` with each invoice's ``updated_index``; ``wait invoices
updated <n>`` blocks until that index reaches n (0 answers at once with the current one).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import ipaddress
import os
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from lightning.backend import BackendError, PaymentState, bolt11_description_hash
from lightning.backends.cln import ClnBackend, ClnConfig
from lightning.backends.fake import make_bolt11

RUNE = "tU-RLjMiDpY2U0o3W1oFowar36RFGpWloPbW9-RuZdo9MyZpZD0wMjRiOWExZmE4ZTAwNmYxZTM5MzdmNjVmNjZjNDA4ZTZk"


PAID_AT = 1767225601


class FakeCln:
    """clnrest: ``POST /v1/<method>`` with the method's JSON parameters and a ``Rune``."""

    def __init__(self) -> None:
        self.invoices: list[dict[str, Any]] = []
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.changed = asyncio.Condition()
        self.next_pay_index = 1
        self.updated = 0  # the invoices subsystem's ``updated`` index

    async def _bump(self, invoice: dict[str, Any], **changes: Any) -> None:
        async with self.changed:
            self.updated += 1
            invoice.update(changes, updated_index=self.updated)
            self.changed.notify_all()

    async def pay(self, payment_hash: str, amount_msat: int) -> None:
        invoice = next(i for i in self.invoices if i["payment_hash"] == payment_hash)
        await self._bump(
            invoice, status="paid", amount_received_msat=amount_msat, pay_index=self.next_pay_index, paid_at=PAID_AT
        )
        self.next_pay_index += 1

    async def expire(self, payment_hash: str) -> None:
        await self._bump(next(i for i in self.invoices if i["payment_hash"] == payment_hash), status="expired")

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
            payment_hash = hashlib.sha256(os.urandom(32)).hexdigest()
            description = params["description"]
            hashed = description if params.get("deschashonly") else None
            bolt11 = make_bolt11(
                payment_hash, params["amount_msat"], description, 1_700_000_000, 600, hashed_description=hashed
            )
            invoice = {
                "label": params["label"],
                "payment_hash": payment_hash,
                "bolt11": bolt11,
                "amount_msat": params["amount_msat"],
                "status": "unpaid",
                "expires_at": 1_900_000_000,
                "created_index": len(self.invoices) + 1,
            }
            self.invoices.append(invoice)
            return httpx.Response(201, json={k: invoice[k] for k in ("payment_hash", "bolt11", "expires_at")})
        if method == "listinvoices":
            found = self.invoices
            if "payment_hash" in params:
                found = [i for i in found if i["payment_hash"] == params["payment_hash"]]
            if params.get("index") == "updated":
                found = sorted(
                    (i for i in found if i.get("updated_index", 0) >= params["start"]), key=lambda i: i["updated_index"]
                )
            if "limit" in params:
                found = found[: params["limit"]]
            return httpx.Response(201, json={"invoices": found})
        if method == "wait":
            if params.get("subsystem") != "invoices" or params.get("indexname") != "updated":
                return httpx.Response(500, json={"code": -32602, "message": "unsupported in this fake"})
            async with self.changed:
                await self.changed.wait_for(lambda: self.updated >= params["nextvalue"])
                return httpx.Response(201, json={"subsystem": "invoices", "updated": self.updated})
        return httpx.Response(404, json={"code": -32601, "message": f"Unknown command '{method}'"})


def _generate_ca_and_server_cert(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it, as clnrest's certs.rs
    makes for itself (ca.pem; server.pem and server-key.pem)."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cln Root CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cln")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("cln"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    paths = directory / "ca.pem", directory / "server.pem", directory / "server-key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return paths


@contextlib.asynccontextmanager
async def serve_https(fake: FakeCln, directory: Path) -> AsyncIterator[tuple[str, Path]]:
    """``fake`` behind a real HTTPS listener (one request per connection); yields its URL
    and the CA file that signed its certificate."""
    ca_path, cert_path, key_path = _generate_ca_and_server_cert(directory)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_path, key_path)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            method, target, _ = head[0].split(" ", 2)
            headers = dict(line.split(": ", 1) for line in head[1:] if ": " in line)
            length = int(next((v for k, v in headers.items() if k.lower() == "content-length"), "0"))
            body = await reader.readexactly(length)
            response = await fake.handle(
                httpx.Request(method, f"https://127.0.0.1{target}", headers=headers, content=body)
            )
            content = response.content
            writer.write(
                f"HTTP/1.1 {response.status_code} X\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(content)}\r\nConnection: close\r\n\r\n".encode()
                + content
            )
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=context)
    try:
        yield f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}", ca_path
    finally:
        server.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), 2)


@pytest.fixture
async def cln(tmp_path: Path) -> AsyncIterator[tuple[FakeCln, ClnBackend]]:
    fake = FakeCln()
    async with serve_https(fake, tmp_path) as (url, ca_path), httpx.AsyncClient(timeout=5.0) as shared:
        backend = ClnBackend(ClnConfig(url, RUNE, ca_cert_path=str(ca_path)), shared)
        yield fake, backend
        await backend.close()


async def test_create_sends_msat_unique_label_and_expiry(cln: tuple[FakeCln, ClnBackend]) -> None:
    fake, backend = cln
    first = await backend.create_invoice(21_001, "hello", 600)
    await backend.create_invoice(21_001, "hello", 600)  # same memo: a fresh label all the same
    method, params = fake.requests[0]
    assert method == "invoice"
    assert params["amount_msat"] == 21_001 and params["description"] == "hello" and params["expiry"] == 600
    assert params["label"].startswith("satsrelay-")
    assert (first.amount_msat, first.expires_at) == (21_001, 1_900_000_000)
    assert first.bolt11 == fake.invoices[0]["bolt11"]


async def test_lookup_pending_paid_expired_unknown(cln: tuple[FakeCln, ClnBackend]) -> None:
    fake, backend = cln
    invoice = await backend.create_invoice(5_000, "m", 600)
    assert (await backend.lookup_invoice(invoice.payment_hash)).state is PaymentState.PENDING
    assert fake.requests[-1] == ("listinvoices", {"payment_hash": invoice.payment_hash})
    await fake.pay(invoice.payment_hash, 5_123)
    paid = await backend.lookup_invoice(invoice.payment_hash)
    assert (paid.state, paid.amount_received_msat) == (PaymentState.PAID, 5_123)
    assert paid.paid_at == PAID_AT  # when it was paid, for NIP-57 receipts
    other = await backend.create_invoice(1_000, "m", 1)
    fake.invoices[-1]["status"] = "expired"
    assert (await backend.lookup_invoice(other.payment_hash)).state is PaymentState.FAILED
    assert (await backend.lookup_invoice("00" * 32)).state is PaymentState.UNKNOWN


async def test_stream_starts_from_the_current_index_without_listing_every_invoice(
    cln: tuple[FakeCln, ClnBackend],
) -> None:
    fake, backend = cln
    old = await backend.create_invoice(1_000, "paid before start", 600)
    await fake.pay(old.payment_hash, 1_000)
    stream = backend.settlements()
    new = [await backend.create_invoice(2_000, "n", 600) for _ in range(3)]
    waiting = asyncio.ensure_future(anext(stream))
    await asyncio.sleep(0.1)
    assert not waiting.done()  # the old payment is not replayed
    await fake.expire(new[2].payment_hash)  # a change that is not a payment
    await fake.pay(new[0].payment_hash, 2_000)
    await fake.pay(new[1].payment_hash, 2_000)
    async with asyncio.timeout(5):
        assert await waiting == new[0].payment_hash
        assert await anext(stream) == new[1].payment_hash
    await stream.aclose()
    # Only invoices changed after the start were ever listed: no whole-node listinvoices.
    listings = [p for m, p in fake.requests if m == "listinvoices"]
    assert listings and all(p.get("index") == "updated" and p["start"] >= 2 for p in listings)
    waits = [p["nextvalue"] for m, p in fake.requests if m == "wait"]
    assert waits[0] == 0 and waits[1] == 2


async def test_https_with_the_nodes_own_ca_needs_ca_cert_path(tmp_path: Path) -> None:
    fake = FakeCln()
    async with serve_https(fake, tmp_path) as (url, ca_path), httpx.AsyncClient(timeout=5.0) as shared:
        trusting = ClnBackend(ClnConfig(url, RUNE, ca_cert_path=str(ca_path)), shared)
        invoice = await trusting.create_invoice(3_000, "m", 600)
        assert (await trusting.lookup_invoice(invoice.payment_hash)).state is PaymentState.PENDING
        await trusting.close()
        assert not shared.is_closed  # only the backend's own client was closed
        default = ClnBackend(ClnConfig(url, RUNE), shared)
        with pytest.raises(BackendError, match="ConnectError"):  # certificate verify failed
            await default.lookup_invoice(invoice.payment_hash)
    assert "ca.pem" in repr(trusting._config) and RUNE not in repr(trusting._config)


async def test_description_hash_invoice_sends_the_description_with_deschashonly(
    cln: tuple[FakeCln, ClnBackend],
) -> None:
    fake, backend = cln
    zap_request = '{"kind":9734,"content":"' + "z" * 700 + '"}'
    invoice = await backend.create_invoice(21_000, "zap", 600, hashed_description=zap_request)
    _, params = fake.requests[-1]
    assert params["description"] == zap_request and params["deschashonly"] is True
    assert bolt11_description_hash(invoice.bolt11) == hashlib.sha256(zap_request.encode()).hexdigest()


async def test_plain_memo_is_kept_short(cln: tuple[FakeCln, ClnBackend]) -> None:
    fake, backend = cln
    await backend.create_invoice(1_000, "R" * 1_000 + ": admission", 600)
    _, params = fake.requests[-1]
    assert len(params["description"]) <= 300 and "deschashonly" not in params


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


async def test_settings_pass_ca_cert_path_to_the_backend(tmp_path: Path) -> None:
    from lightning.extension import build_backend
    from tests.lightning.payment_stack import payment_settings

    ca_path, _, _ = _generate_ca_and_server_cert(tmp_path)
    settings = payment_settings(tmp_path, backend="cln", cln={"rune": RUNE, "ca_cert_path": str(ca_path)})
    async with httpx.AsyncClient() as shared:
        backend = build_backend(settings, shared)
        assert isinstance(backend, ClnBackend) and backend._config.ca_cert_path == str(ca_path)
        await backend.close()
