"""The NWC backend against a small fake NIP-47 wallet service, both talking over
WebSockets through a real satsrelay started by the shared ``relay_factory`` fixture."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect

from lightning import nip04, nip44
from lightning.backend import BackendError, PaymentState, bolt11_description_hash
from lightning.backends.fake import make_bolt11
from lightning.backends.nwc import NwcBackend, NwcConfig, NwcConnection
from lightning.ledger import Ledger, decode_bolt11
from lightning.plans import Plans
from lightning.settings import PaymentSettings
from lightning.store.base import InvoiceState, LedgerStore
from lightning.watcher import PollSchedule, Watcher
from relay.nostr import crypto
from relay.nostr.event import parse_event, sign_event, verify_signature
from tests.conftest import RelayFactory
from tests.nostr_client import NostrClient
from tests.waiting import eventually


class FakeWalletService:
    """The wallet side of NIP-47: publishes its info event (``notifications`` tag naming
    ``payment_received`` when it sends them), answers make_invoice and lookup_invoice for
    invoices whose payment hash is the SHA-256 of a preimage it keeps, and on ``pay``
    sends payment_received notifications in every scheme it supports (23197 NIP-44, 23196
    NIP-04), carrying the invoice with its preimage as the NIP's example does (without it
    when ``proves`` is false)."""

    def __init__(self, relay_url: str, encryption: str | None, *, notifications: bool = True) -> None:
        self.relay_url = relay_url
        self.encryption = encryption  # None: an old wallet whose info has no encryption tag
        self.notifications = notifications
        self.proves = True
        self._preimages: dict[str, str] = {}
        self.secret = crypto.generate_secret()
        self.pubkey = crypto.public_key(self.secret).hex()
        self.client_secret = crypto.generate_secret()
        self.client_x = crypto.public_key(self.client_secret)
        self.invoices: dict[str, dict[str, Any]] = {}
        self.seen: list[tuple[str, str]] = []  # (method, scheme) of every request
        self.fail_next: str | None = None
        self.honours_description_hash = True  # NIP-47 leaves it to the wallet
        self._ws: ClientConnection | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def schemes(self) -> list[str]:
        return self.encryption.split() if self.encryption else ["nip04"]

    def uri(self) -> str:
        return f"nostr+walletconnect://{self.pubkey}?relay={self.relay_url}&secret={self.client_secret.hex()}"

    async def start(self) -> None:
        self._ws = ws = await connect(self.relay_url)
        tags = [["notifications", "payment_received"]] if self.notifications else []
        if self.encryption:
            tags.append(["encryption", self.encryption])
        methods = "make_invoice lookup_invoice" + (" notifications" if self.notifications else "")
        info = sign_event(self.secret, 13194, methods, tags, int(time.time()))
        await ws.send(orjson.dumps(["EVENT", info.to_dict()]).decode())
        while (reply := orjson.loads(await ws.recv()))[0] != "OK":  # skip the NIP-42 AUTH challenge
            pass
        assert reply[:3] == ["OK", info.id, True]
        await ws.send(orjson.dumps(["REQ", "requests", {"kinds": [23194], "#p": [self.pubkey]}]).decode())
        while orjson.loads(await ws.recv())[0] != "EOSE":
            pass
        self._task = asyncio.create_task(self._serve(ws))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._ws is not None:
            await self._ws.close()

    async def _serve(self, ws: ClientConnection) -> None:
        async for raw in ws:
            message = orjson.loads(raw)
            if message[0] != "EVENT":
                continue
            request = parse_event(message[2])
            assert verify_signature(request) and request.pubkey == self.client_x.hex()
            scheme = "nip44_v2" if request.tag_values("encryption") == ["nip44_v2"] else "nip04"
            body = orjson.loads(self._decrypt(request.content, scheme))
            self.seen.append((body["method"], scheme))
            await self._send(23195, self._answer(body), scheme, [["e", request.id]])

    def _answer(self, body: dict[str, Any]) -> dict[str, Any]:
        method, params = body["method"], body["params"]
        if self.fail_next:
            code, self.fail_next = self.fail_next, None
            return {"result_type": method, "error": {"code": code, "message": "wallet says no"}, "result": None}
        if method == "make_invoice":
            preimage = os.urandom(32)
            payment_hash = hashlib.sha256(preimage).hexdigest()
            self._preimages[payment_hash] = preimage.hex()
            hashed = params.get("description_hash") if self.honours_description_hash else None
            memo = params.get("description", "")
            bolt11 = make_bolt11(
                payment_hash, params["amount"], memo, int(time.time()), params["expiry"], description_hash_hex=hashed
            )
            invoice = {
                "type": "incoming",
                "state": "pending",
                "invoice": bolt11,
                "payment_hash": payment_hash,
                "amount": params["amount"],
                "created_at": int(time.time()),
                "expires_at": int(time.time()) + params["expiry"],
            }
            self.invoices[payment_hash] = invoice
            return {"result_type": method, "error": None, "result": invoice}
        if method == "lookup_invoice":
            found = self.invoices.get(params["payment_hash"])
            if found is None:
                return {"result_type": method, "error": {"code": "NOT_FOUND", "message": "no such invoice"}}
            return {"result_type": method, "error": None, "result": found}
        return {"result_type": method, "error": {"code": "NOT_IMPLEMENTED", "message": method}}

    async def pay(self, payment_hash: str) -> None:
        invoice = self.invoices[payment_hash]
        invoice.update(state="settled", settled_at=int(time.time()), preimage=self._preimages[payment_hash])
        if not self.notifications:
            return
        shown = invoice if self.proves else {k: v for k, v in invoice.items() if k != "preimage"}
        note = {"notification_type": "payment_received", "notification": shown}
        if "nip44_v2" in self.schemes:
            await self._send(23197, note, "nip44_v2", [])
        if "nip04" in self.schemes:
            await self._send(23196, note, "nip04", [])

    def _decrypt(self, content: str, scheme: str) -> str:
        if scheme == "nip44_v2":
            return nip44.decrypt(content, nip44.conversation_key(self.secret, self.client_x))
        return nip04.decrypt(content, self.secret, self.client_x)

    async def _send(self, kind: int, payload: dict[str, Any], scheme: str, tags: list[list[str]]) -> None:
        text = orjson.dumps(payload).decode()
        if scheme == "nip44_v2":
            content = nip44.encrypt(text, nip44.conversation_key(self.secret, self.client_x))
        else:
            content = nip04.encrypt(text, self.secret, self.client_x)
        event = sign_event(self.secret, kind, content, [["p", self.client_x.hex()], *tags], int(time.time()))
        assert self._ws is not None
        await self._ws.send(orjson.dumps(["EVENT", event.to_dict()]).decode())


@contextlib.asynccontextmanager
async def _wallet(
    relay_url: str, encryption: str | None, *, notifications: bool = True
) -> AsyncIterator[tuple[FakeWalletService, NwcBackend]]:
    wallet = FakeWalletService(relay_url, encryption, notifications=notifications)
    await wallet.start()
    backend = NwcBackend(NwcConfig(wallet.uri(), request_timeout_seconds=5))
    try:
        yield wallet, backend
    finally:
        await backend.close()
        await wallet.stop()


@pytest.mark.parametrize(
    ("encryption", "scheme"),
    [("nip44_v2 nip04", "nip44_v2"), ("nip44_v2", "nip44_v2"), (None, "nip04"), ("nip04", "nip04")],
)
async def test_create_lookup_and_push_in_the_negotiated_scheme(
    relay_factory: RelayFactory, encryption: str | None, scheme: str
) -> None:
    async with relay_factory() as relay, _wallet(relay.url, encryption) as (wallet, backend):
        invoice = await backend.create_invoice(21_000, "via nwc", 600)
        assert invoice.payment_hash in wallet.invoices
        assert invoice.amount_msat == 21_000
        assert decode_bolt11(invoice.bolt11) == (invoice.payment_hash, 21_000)
        pending = await backend.lookup_invoice(invoice.payment_hash)
        assert pending.state is PaymentState.PENDING
        stream = backend.settlements()
        first = asyncio.ensure_future(anext(stream))
        await asyncio.sleep(0)  # let the iterator register before the payment lands
        await wallet.pay(invoice.payment_hash)
        async with asyncio.timeout(5):
            assert await first == invoice.payment_hash
        paid = await backend.lookup_invoice(invoice.payment_hash)
        assert (paid.state, paid.amount_received_msat) == (PaymentState.PAID, 21_000)
        assert paid.paid_at == wallet.invoices[invoice.payment_hash]["settled_at"]  # for NIP-57 receipts
        assert paid.preimage == wallet.invoices[invoice.payment_hash]["preimage"]
        # The notification's preimage proved the payment: that lookup asked the wallet nothing.
        assert wallet.seen == [("make_invoice", scheme), ("lookup_invoice", scheme)]
        await stream.aclose()


async def test_make_invoice_with_description_hash_checks_the_wallet_honoured_it(relay_factory: RelayFactory) -> None:
    zap_request = '{"kind":9734,"content":"thanks"}'
    expected = hashlib.sha256(zap_request.encode()).hexdigest()
    async with relay_factory() as relay, _wallet(relay.url, "nip44_v2") as (wallet, backend):
        invoice = await backend.create_invoice(21_000, "zap", 600, hashed_description=zap_request)
        assert bolt11_description_hash(invoice.bolt11) == expected
        wallet.honours_description_hash = False  # signs a plain description instead
        with pytest.raises(BackendError, match="does not commit to the description hash"):
            await backend.create_invoice(21_000, "zap", 600, hashed_description=zap_request)


async def test_unknown_hash_is_unknown_and_wallet_errors_are_backend_errors(relay_factory: RelayFactory) -> None:
    async with relay_factory() as relay, _wallet(relay.url, "nip44_v2") as (wallet, backend):
        assert (await backend.lookup_invoice("00" * 32)).state is PaymentState.UNKNOWN
        wallet.fail_next = "INTERNAL"
        with pytest.raises(BackendError, match="nwc make_invoice: INTERNAL: wallet says no"):
            await backend.create_invoice(1_000, "m", 60)


async def test_silent_wallet_times_out_with_backend_error(relay_factory: RelayFactory) -> None:
    """A wallet that listens for requests but never answers: the request times out. One
    that is not even connected: the relay says at once that nobody listened (NIP-01 mute)."""
    async with relay_factory() as relay:
        nobody = crypto.public_key(crypto.generate_secret()).hex()
        secret = crypto.generate_secret().hex()
        uri = f"nostr+walletconnect://{nobody}?relay={relay.url}&secret={secret}"
        backend = NwcBackend(NwcConfig(uri, request_timeout_seconds=0.5))
        try:
            with pytest.raises(BackendError, match="mute: nobody was listening") as absent:
                await backend.lookup_invoice("00" * 32)
            async with NostrClient(relay.url) as silent:
                assert await silent.req("requests", {"kinds": [23194], "#p": [nobody]}) == []
                with pytest.raises(BackendError, match="no answer") as caught:
                    await backend.lookup_invoice("00" * 32)
        finally:
            await backend.close()
        assert secret not in str(caught.value) and secret not in str(absent.value)


async def test_relay_going_away_ends_settlements_with_backend_error(relay_factory: RelayFactory) -> None:
    async with relay_factory() as relay:
        wallet = FakeWalletService(relay.url, "nip44_v2")
        await wallet.start()
        backend = NwcBackend(NwcConfig(wallet.uri(), request_timeout_seconds=5))
        stream = backend.settlements()
        waiting = asyncio.ensure_future(anext(stream))

        async def live() -> bool:
            return backend.notifications_live()

        await eventually(live, 5, what="the notification stream")
    # The relay has stopped: the stream must say so, not hang, and polling takes over.
    try:
        async with asyncio.timeout(10):
            with pytest.raises(BackendError, match="nwc: relay connection"):
                await waiting
        assert not backend.notifications_live()
        with pytest.raises(BackendError, match="no relay usable"):
            await backend.lookup_invoice("00" * 32)  # reconnecting fails cleanly too
    finally:
        await backend.close()
        await wallet.stop()


def test_connection_uri_parsing() -> None:
    secret = "71a8c14c1407c113601079c4302dab36460f0ccd0ad506f1f2dc73b5100e4f3c"
    wallet = "b889ff5b1513b641e2a139f661a661364979c5beee91842f8f0ef42ab558e9d4"
    # The example from NIP-47, with its percent-encoded relay, plus a second relay.
    uri = f"nostr+walletconnect://{wallet}?relay=wss%3A%2F%2Frelay.damus.io&relay=ws://127.0.0.1:7777&secret={secret}"
    conn = NwcConnection.parse(uri)
    assert conn.wallet_pubkey == wallet
    assert conn.relays == ("wss://relay.damus.io", "ws://127.0.0.1:7777")
    assert conn.secret == bytes.fromhex(secret)
    assert secret not in repr(conn) and secret not in repr(NwcConfig(uri))
    bad = [
        f"nostr+wallet://{wallet}?relay=wss://r&secret={secret}",
        f"nostr+walletconnect://{wallet[:-2]}?relay=wss://r&secret={secret}",
        f"nostr+walletconnect://{wallet}?secret={secret}",
        f"nostr+walletconnect://{wallet}?relay=wss://r&secret={secret[:-1]}",
        f"nostr+walletconnect://{wallet}?relay=wss://r&secret={'f' * 64}",  # above the curve order
    ]
    for uri in bad:
        with pytest.raises(BackendError) as caught:
            NwcConnection.parse(uri)
        assert secret not in str(caught.value)


PAYER = "ab" * 32


@contextlib.asynccontextmanager
async def _watching(
    ledger: LedgerStore, backend: NwcBackend, *, push: bool = True
) -> AsyncIterator[tuple[Ledger, Watcher]]:
    """The relay's ledger and watcher over the NWC wallet. Its own poll loop sleeps for an
    hour: the test runs the rounds, each one finding every young invoice due (interval 0)."""
    plans = Plans.from_settings(PaymentSettings())  # admission, 1,000 sats
    books = Ledger(ledger, backend, plans, 600)
    schedule = PollSchedule(poll_interval=0.0, old_interval=300)
    watcher = Watcher(books, poll_interval=3600, push=push, schedule=schedule)
    await watcher.start()
    try:
        yield books, watcher
    finally:
        await watcher.stop()


def lookups(wallet: FakeWalletService) -> int:
    return [method for method, _ in wallet.seen].count("lookup_invoice")


@pytest.mark.parametrize("proves", [True, False])
async def test_payment_received_notifications_replace_polling_while_the_stream_lives(
    relay_factory: RelayFactory, ledger: LedgerStore, proves: bool
) -> None:
    """NIP-47 ``payment_received`` (kind 23197 here, NIP-44): with the wallet's promise in its
    info event and the stream read, poll rounds ask nothing about a young invoice, and the
    notification credits it; one carrying the preimage costs no request at all, one without
    is a hint confirmed by one lookup."""
    async with relay_factory() as relay, _wallet(relay.url, "nip44_v2") as (wallet, backend):
        wallet.proves = proves
        async with _watching(ledger, backend) as (books, watcher):
            invoice = await books.issue(PAYER, "admission", int(time.time()))

            async def live() -> bool:
                return backend.notifications_live()

            await eventually(live, 5, what="the wallet's notification stream")
            for _ in range(3):
                assert await watcher.poll_due() == 0
            assert watcher.notified and lookups(wallet) == 0  # young invoices are left to the stream
            await wallet.pay(invoice.payment_hash)

            async def credited() -> bool:
                found = await ledger.get_invoice(invoice.payment_hash)
                return found is not None and found.state is InvoiceState.PAID

            await eventually(credited, 5, what="the notified payment's credit")
            account = await ledger.get_account(PAYER)
            assert account is not None and account.admitted(int(time.time()))
            assert lookups(wallet) == (0 if proves else 1)


async def test_a_wallet_without_notifications_is_polled(relay_factory: RelayFactory, ledger: LedgerStore) -> None:
    async with (
        relay_factory() as relay,
        _wallet(relay.url, "nip44_v2", notifications=False) as (wallet, backend),
        _watching(ledger, backend) as (books, watcher),
    ):
        invoice = await books.issue(PAYER, "admission", int(time.time()))
        assert await watcher.poll_due() == 0
        assert not backend.notifications_live() and not watcher.notified
        assert lookups(wallet) == 1  # polled: the wallet promised nothing
        await wallet.pay(invoice.payment_hash)  # and it sends nothing
        assert await watcher.poll_due() == 1
        assert lookups(wallet) == 2


async def test_notifications_not_read_leave_polling_on(relay_factory: RelayFactory, ledger: LedgerStore) -> None:
    """``[payments] push = false``: nobody reads the stream, so nothing is left to it."""
    async with (
        relay_factory() as relay,
        _wallet(relay.url, "nip44_v2") as (wallet, backend),
        _watching(ledger, backend, push=False) as (books, watcher),
    ):
        invoice = await books.issue(PAYER, "admission", int(time.time()))
        assert await watcher.poll_due() == 0
        assert not backend.notifications_live() and lookups(wallet) == 1
        await wallet.pay(invoice.payment_hash)
        assert await watcher.poll_due() == 1
