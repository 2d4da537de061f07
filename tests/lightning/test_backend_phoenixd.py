"""The Phoenixd backend against a small fake: HTTP via MockTransport, push via a real
local websocket server that checks basic auth as phoenixd does.

The fake follows phoenixd 0.8's ``Api.kt``: descriptions over 128 characters are a 400,
``descriptionHash`` replaces ``description`` (the invoice then carries the ``h`` tag), and
an incoming payment reports ``receivedSat`` *after* the liquidity fee phoenixd kept
(``fees``, msat), with ``requestedSat``, ``isPaid``, ``isExpired`` and ``preimage``."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import orjson
import pytest
from prometheus_client import CollectorRegistry
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from lightning.backend import BackendError, PaymentState, bolt11_description_hash
from lightning.backends.fake import make_bolt11
from lightning.backends.phoenixd import PhoenixdBackend, PhoenixdConfig
from lightning.extension import PaymentsExtension
from lightning.ledger import Confirmation
from relay.store.sqlite import SqliteStore
from tests.lightning.payment_stack import payment_settings
from tests.lightning.test_cli import satsrelay

PASSWORD = "9b2c7f0e4d1a38c5b6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d"


def _authorized(value: str | None) -> bool:
    return value == "Basic " + base64.b64encode(f":{PASSWORD}".encode()).decode()


COMPLETED_MS = 1767225602345


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
            description, description_hash = form.get("description"), form.get("descriptionHash")
            if description is not None and len(description) > 128:
                return httpx.Response(400, text="Description must be 128 characters or less")
            if (description is None) == (description_hash is None):
                return httpx.Response(400, text="Must provide either a description or descriptionHash")
            preimage = os.urandom(32)
            payment_hash = hashlib.sha256(preimage).hexdigest()
            amount = int(form["amountSat"])
            bolt11 = make_bolt11(payment_hash, amount * 1000, description or "", 1_700_000_000, 600)
            if description_hash is not None:
                bolt11 = self._with_hash_tag(payment_hash, amount, description_hash)
            self.incoming[payment_hash] = {
                "type": "incoming_payment",
                "subType": "lightning",
                "paymentHash": payment_hash,
                "preimage": preimage.hex(),
                "invoice": bolt11,
                "isPaid": False,
                "isExpired": False,
                "requestedSat": amount,
                "receivedSat": 0,
                "fees": 0,
            }
            return httpx.Response(200, json={"amountSat": amount, "paymentHash": payment_hash, "serialized": bolt11})
        if request.method == "GET" and path.startswith("/payments/incoming/"):
            payment = self.incoming.get(path.rsplit("/", 1)[1])
            if payment is None:
                return httpx.Response(404, text="payment not found")
            return httpx.Response(200, json=payment)
        return httpx.Response(404, text="not found")

    def _with_hash_tag(self, payment_hash: str, amount_sat: int, description_hash: str) -> str:
        """A BOLT11 whose ``h`` tag is exactly the hex phoenixd was given (not re-hashed)."""
        import bolt11
        from bolt11.models.tags import TagChar

        from lightning.backends.fake import FAKE_NODE_KEY

        tags = bolt11.Tags()
        tags.add(TagChar.payment_hash, payment_hash)
        tags.add(TagChar.payment_secret, os.urandom(32).hex())
        tags.add(TagChar.description_hash, description_hash)
        invoice = bolt11.Bolt11(
            currency="bc", date=1_700_000_000, tags=tags, amount_msat=bolt11.MilliSatoshi(amount_sat * 1000)
        )
        return str(bolt11.encode(invoice, private_key=FAKE_NODE_KEY))

    async def pay(self, payment_hash: str, sats: int, fee_msat: int = 0) -> None:
        """The payer sends ``sats``; phoenixd keeps ``fee_msat`` (on-the-fly liquidity) and
        reports the rest, truncated to whole sats, as ``receivedSat``."""
        received_sat = (sats * 1000 - fee_msat) // 1000
        paid = {"isPaid": True, "receivedSat": received_sat, "fees": fee_msat, "completedAt": COMPLETED_MS}
        self.incoming[payment_hash].update(paid)
        message = {"type": "payment_received", "timestamp": 1, "amountSat": received_sat, "paymentHash": payment_hash}
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
    assert paid.paid_at == COMPLETED_MS // 1000  # phoenixd counts milliseconds
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


async def test_payment_with_a_liquidity_fee_settles_on_what_the_payer_sent(
    phoenixd: tuple[FakePhoenixd, PhoenixdBackend, Server],
) -> None:
    """phoenixd opened a channel on the fly and kept 3,210 msat of a 21-sat payment: the
    payer paid in full, so the invoice is paid in full; the fee is reported apart."""
    fake, backend, _ = phoenixd
    invoice = await backend.create_invoice(21_000, "admission", 600)
    await fake.pay(invoice.payment_hash, 21, fee_msat=3_210)
    assert fake.incoming[invoice.payment_hash]["receivedSat"] == 17  # net of the fee, truncated
    paid = await backend.lookup_invoice(invoice.payment_hash)
    assert (paid.state, paid.amount_received_msat, paid.fee_msat) == (PaymentState.PAID, 21_000, 3_210)
    assert (
        paid.preimage is not None and hashlib.sha256(bytes.fromhex(paid.preimage)).hexdigest() == invoice.payment_hash
    )


async def test_expired_unpaid_invoice_is_failed(phoenixd: tuple[FakePhoenixd, PhoenixdBackend, Server]) -> None:
    fake, backend, _ = phoenixd
    invoice = await backend.create_invoice(1_000, "m", 60)
    fake.incoming[invoice.payment_hash]["isExpired"] = True
    assert (await backend.lookup_invoice(invoice.payment_hash)).state is PaymentState.FAILED


async def test_long_relay_name_memo_fits_phoenixds_128_characters(
    phoenixd: tuple[FakePhoenixd, PhoenixdBackend, Server],
) -> None:
    fake, backend, _ = phoenixd
    relay_name = "The Extremely Long Name Of A Community Relay " * 4  # 180 characters
    invoice = await backend.create_invoice(1_000, f"{relay_name}: admission", 600)
    sent = parse_qs(fake.requests[-1].content.decode())["description"][0]
    assert len(sent) <= 128 and sent.startswith("The Extremely Long Name")
    assert invoice.payment_hash in fake.incoming


async def test_description_hash_is_sent_instead_of_the_description(
    phoenixd: tuple[FakePhoenixd, PhoenixdBackend, Server],
) -> None:
    fake, backend, _ = phoenixd
    zap_request = '{"kind":9734,"content":"' + "z" * 400 + '"}'  # far past 128 characters
    invoice = await backend.create_invoice(21_000, "zap", 600, hashed_description=zap_request)
    form = parse_qs(fake.requests[-1].content.decode())
    expected = hashlib.sha256(zap_request.encode()).hexdigest()
    assert form["descriptionHash"] == [expected] and "description" not in form
    assert bolt11_description_hash(invoice.bolt11) == expected


async def test_invoice_without_the_asked_hash_is_refused(
    phoenixd: tuple[FakePhoenixd, PhoenixdBackend, Server],
) -> None:
    fake, backend, _ = phoenixd
    fake._with_hash_tag = lambda payment_hash, amount, _hash: make_bolt11(  # type: ignore[method-assign]
        payment_hash, amount * 1000, "plain memo", 1_700_000_000, 600
    )
    with pytest.raises(BackendError, match="does not commit to the description hash"):
        await backend.create_invoice(21_000, "zap", 600, hashed_description='{"kind":9734}')


async def test_fee_taken_payment_admits_the_payer_and_records_the_operators_cost(
    phoenixd: tuple[FakePhoenixd, PhoenixdBackend, Server], tmp_path: Path
) -> None:
    """End to end through the ledger: the relay credits the payer for a fee-taken payment,
    and the fee shows in the metrics and in ``satsrelay invoices list``."""
    fake, backend, _ = phoenixd
    settings = payment_settings(
        tmp_path, backend="phoenixd", phoenixd={"password": PASSWORD}, admission={"fee_sats": 21}
    )
    store = SqliteStore(tmp_path / "relay.db")
    await store.open()
    ext = PaymentsExtension(settings, store, backend, registry=CollectorRegistry())
    await ext.store.open()
    try:
        payer = "c" * 64
        invoice = await ext.ledger.issue(payer, "admission", int(time.time()))
        await fake.pay(invoice.payment_hash, 21, fee_msat=3_210)
        result = await ext.watcher.confirm(invoice.payment_hash)
        assert result.outcome is Confirmation.CREDITED
        account = await ext.store.get_account(payer)
        assert account is not None and account.admitted(int(time.time()))
        stored = await ext.store.get_invoice(invoice.payment_hash)
        assert stored is not None and (stored.paid_msat, stored.fee_msat) == (21_000, 3_210)
        assert ext.metrics.wallet_fees_msat._value.get() == 3_210
    finally:
        await store.close()
    config = tmp_path / "cli.toml"
    config.write_text(f'[storage]\nurl = "sqlite:///{tmp_path}/relay.db"\n[payments]\nenabled = true\n')
    code, out, err = await satsrelay(config, "invoices", "list", "--json")
    assert code == 0, err
    [listed] = json.loads(out)
    assert (listed["payment_hash"], listed["fee_msat"], listed["state"]) == (invoice.payment_hash, 3_210, "paid")
    code, out, _ = await satsrelay(config, "invoices", "list")
    assert "wallet fee (sats)" in out and "3.21" in out
