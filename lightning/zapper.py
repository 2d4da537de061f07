"""Zap the relay to join: the LNURL-pay routes and the receipts (NIP-57, LUD-06/16).

Thin over the pure parts (``lightning.lnurl`` documents, ``lightning.zap`` rules):

- ``GET /.well-known/lnurlp/<name>``: the pay-request document (``allowsNostr``,
  ``nostrPubkey`` = the relay's key, min/max sendable, the callback).
- ``GET /lnurlp/<name>/callback?amount=<msat>&nostr=<zap request>``: the request is
  checked (NIP-57 Appendix D), an invoice committing to its hash is created through the
  configured wallet and stored in the ledger *before* the answer (the same exactly-once
  settlement as the join page), and the bolt11 goes back. A plain LNURL payment without
  ``nostr`` is refused: it would name nobody to credit.
- When such an invoice is credited (``settled``), the relay signs a kind-9735 receipt,
  stores it through its own writer, and sends it to the request's ``relays`` (at most
  ``max_publish_relays``, public addresses only unless configured otherwise): best effort,
  in the background. ``publish_timeout_seconds`` bounds everything one relay costs: the
  DNS lookup (in the publisher's own small thread pool, so a zapper's slow names never
  occupy the default pool NIP-77 set building uses), the connection, the OK and the
  closing handshake; a relay that ignores the close has its socket dropped at the deadline
  (issue 17: the close timeout used to run after it, ~15 s instead of 5).
- At start-up, zap invoices paid in the last day whose receipt is not in the store (the
  relay stopped between crediting and signing) get their receipt (``reconcile``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException

from lightning import lnurl
from lightning.backend import BackendError
from lightning.ledger import Ledger, RequestBudget, TooManyPending
from lightning.plans import Plans
from lightning.settings import ZapSettings
from lightning.store.base import Invoice
from lightning.zap import (
    ZAP_PLAN,
    ZAP_RECEIPT_KIND,
    ZapRequestError,
    min_zap_msat,
    parse_zap_request,
    public_address,
    publish_targets,
    receipt_event,
    receipt_time,
    zap_grant,
)
from relay.net.http import HttpRequest, HttpResponse
from relay.nostr.event import Event
from relay.nostr.filters import Filter
from relay.store.base import Store
from relay.store.identity import RelayIdentity

log = logging.getLogger(__name__)

RECONCILE_SECONDS = 86_400  # how far back start-up looks for paid zaps without a receipt
RECONCILE_MAX = 500
MAX_AMOUNT_DIGITS = 15
# Receipt relays' names are resolved here: a zapper chooses them (up to max_publish_relays
# per paid zap), so a few slow names could otherwise hold every thread of asyncio's default
# pool (6 on 2 cores), which NIP-77 set building shares. A stuck lookup holds one of these
# until the resolver gives up; the publish deadline stops waiting for it long before.
RESOLVER_THREADS = 4

Publish = Callable[[Event], Awaitable[object]]


def _json(status: HTTPStatus, doc: Any) -> HttpResponse:
    headers = [
        ("Content-Type", "application/json"),
        ("Cache-Control", "no-store"),
        # LUD-01: browser wallets fetch these cross-origin.
        ("Access-Control-Allow-Origin", "*"),
    ]
    return HttpResponse(status.value, orjson.dumps(doc), headers)


class Zapper:
    def __init__(
        self,
        settings: ZapSettings,
        *,
        relay_name: str,
        public_url: str,
        identity: RelayIdentity,
        ledger: Ledger,
        events: Store,
        plans: Plans,
        publish: Publish,
        budget: RequestBudget,
        on_issued: Callable[[Invoice], None] = lambda invoice: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._identity = identity
        self._ledger = ledger
        self._events = events  # the relay's event store: which receipts exist
        self._plans = plans
        self._publish = publish
        self._clock = clock
        self._on_issued = on_issued
        self._public_url = public_url
        base = lnurl.http_base(public_url)
        self.address = lnurl.lightning_address(settings.name, public_url)
        self.min_msat = min_zap_msat(plans)
        self.max_msat = max(settings.max_sats * 1000, self.min_msat)
        self._info_path = f"/.well-known/lnurlp/{settings.name}"
        self._callback_path = f"/lnurlp/{settings.name}/callback"
        self._callback_url = base + self._callback_path
        self._metadata = lnurl.metadata(relay_name, self.address)
        self._budget = budget  # shared with the join page (lightning.web)
        self._tasks: set[asyncio.Task[None]] = set()
        self._resolver = ThreadPoolExecutor(max_workers=RESOLVER_THREADS, thread_name_prefix="zap-receipt-dns")

    # --- HTTP -----------------------------------------------------------------------

    async def handle(self, request: HttpRequest) -> HttpResponse | None:
        """LUD-06 pay request and callback: GETs by that spec (a wallet follows them)."""
        client_ip = request.client_ip
        parts = urlsplit(request.target)
        if parts.path == self._info_path:
            doc = lnurl.pay_request(
                self._callback_url, self.min_msat, self.max_msat, self._metadata, self._identity.pubkey
            )
            return _json(HTTPStatus.OK, doc)
        if parts.path == self._callback_path:
            status, doc = await self.callback(parse_qs(parts.query), client_ip)
            return _json(status, doc)
        return None

    async def callback(self, query: dict[str, list[str]], client_ip: str) -> tuple[HTTPStatus, dict[str, Any]]:
        """The LNURL callback: an invoice for a valid zap request, or an LNURL error."""
        amount_text = query.get("amount", [""])[0]
        # ASCII digits only: str.isdigit() also accepts "²" (and every script's digits), which
        # int() refuses: that was a 500 and a traceback per request (issue 17).
        if not (amount_text.isascii() and amount_text.isdigit()) or len(amount_text) > MAX_AMOUNT_DIGITS:
            return HTTPStatus.BAD_REQUEST, lnurl.error("amount must be a whole number of millisatoshis")
        amount = int(amount_text)
        if not self.min_msat <= amount <= self.max_msat or amount % 1000:
            return HTTPStatus.BAD_REQUEST, lnurl.error(
                f"amount must be whole sats from {self.min_msat // 1000} to {self.max_msat // 1000}"
            )
        raw = query.get("nostr", [""])[0]
        if not raw:
            return HTTPStatus.BAD_REQUEST, lnurl.error("zap from a Nostr client: this address needs a zap request")
        try:
            zap = parse_zap_request(raw, relay_pubkey=self._identity.pubkey, amount_msat=amount)
        except ZapRequestError as exc:
            return HTTPStatus.BAD_REQUEST, lnurl.error(str(exc))
        source = self._budget.source(client_ip)
        if not self._budget.take(source):
            return HTTPStatus.TOO_MANY_REQUESTS, lnurl.error("too many invoices from your address; wait a minute")
        grant = zap_grant(self._plans, amount)
        try:
            async with self._budget.turn(source):
                invoice = await self._ledger.issue_grant(
                    zap.event.pubkey, grant, int(self._clock()), memo="zap", hashed_description=zap.raw, source=source
                )
        except TooManyPending as exc:
            status = HTTPStatus.TOO_MANY_REQUESTS if exc.per_pubkey else HTTPStatus.SERVICE_UNAVAILABLE
            return status, lnurl.error(str(exc))
        except BackendError as exc:
            log.warning("zap invoice creation failed: %s", exc)
            return HTTPStatus.SERVICE_UNAVAILABLE, lnurl.error("the relay's wallet is unavailable; try again shortly")
        self._on_issued(invoice)
        return HTTPStatus.OK, lnurl.invoice_answer(invoice.bolt11)

    # --- receipts ---------------------------------------------------------------------

    def settled(self, invoice: Invoice, preimage: str | None, paid_at: int | None = None) -> None:
        """A zap invoice was credited (exactly once, on this node): sign and spread the
        receipt in the background, dated ``paid_at`` (the wallet's time of payment)."""
        if invoice.plan != ZAP_PLAN or invoice.description is None:
            return
        task = asyncio.create_task(self._receipt(invoice, preimage, paid_at), name="zap-receipt")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _receipt(self, invoice: Invoice, preimage: str | None, paid_at: int | None) -> None:
        try:
            assert invoice.description is not None
            zap = parse_zap_request(
                invoice.description, relay_pubkey=self._identity.pubkey, amount_msat=invoice.amount_msat
            )
        except ZapRequestError as exc:  # stored by us after the same checks: should not happen
            log.error("zap invoice %s: stored zap request no longer parses (%s)", invoice.payment_hash, exc)
            return
        created_at = receipt_time(paid_at, invoice.created_at, int(self._clock()))
        receipt = receipt_event(self._identity.secret, zap, invoice.bolt11, preimage, created_at)
        try:
            await self._publish(receipt)
        except Exception:
            log.exception("zap receipt %s could not be stored", receipt.id)
        targets = publish_targets(zap.relays, (self._public_url,), self._settings.max_publish_relays)
        await asyncio.gather(*(self._send(url, receipt) for url in targets))

    async def _send(self, url: str, receipt: Event) -> None:
        """Best effort: one EVENT, wait for its OK; the lookup, the connection, the OK and
        the closing handshake all end by one deadline (see the module docstring)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._settings.publish_timeout_seconds
        ws: ClientConnection | None = None
        try:
            async with asyncio.timeout_at(deadline):
                pinned: dict[str, Any] = {}
                if not self._settings.publish_to_private_addresses:
                    address = await loop.run_in_executor(self._resolver, public_address, url)
                    if address is None:
                        log.info("zap receipt %s not sent to %s: not a public address", receipt.id, url)
                        return
                    # Dial the checked address itself (TLS still verifies the host name);
                    # redirects then stay on it too.
                    pinned = {"host": address, "proxy": None}
                ws = await connect(url, open_timeout=None, max_size=2**16, **pinned)
                await ws.send(orjson.dumps(["EVENT", receipt.to_dict()]).decode())
                async for message in ws:
                    reply = orjson.loads(message)
                    if isinstance(reply, list) and reply[:2] == ["OK", receipt.id]:
                        if reply[2:3] != [True]:  # a hostile relay's short reply is no IndexError
                            log.info("relay %s refused zap receipt %s: %s", url, receipt.id, reply[3:4])
                        return
        except (TimeoutError, OSError, WebSocketException, orjson.JSONDecodeError) as exc:
            log.info("zap receipt %s not delivered to %s (%s)", receipt.id, url, type(exc).__name__)
        finally:
            if ws is not None:
                await _close_by(ws, deadline)

    async def reconcile(self) -> int:
        """Receipts for recently paid zap invoices that have none in the store; returns
        how many were re-signed. Waits for receipts already under way first."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=self._settings.publish_timeout_seconds + 1)
        now = int(self._clock())
        recent = await self._ledger.store.list_invoices(paid_after=now - RECONCILE_SECONDS)
        paid = [invoice for invoice in recent if invoice.plan == ZAP_PLAN][:RECONCILE_MAX]
        missing = 0
        for invoice in paid:
            found = await self._events.query(
                [
                    Filter(
                        authors=frozenset({self._identity.pubkey}),
                        kinds=frozenset({ZAP_RECEIPT_KIND}),
                        tags=(("P", frozenset({invoice.pubkey})),),
                    )
                ],
                now,
            )
            if not any(invoice.bolt11 in raw.decode() for raw in found):
                missing += 1
                self.settled(invoice, None, await self._paid_time(invoice))
        if missing:
            log.info("re-signing %d zap receipts missing after a stop", missing)
        return missing

    async def _paid_time(self, invoice: Invoice) -> int | None:
        """When the wallet says a credited invoice was paid, else when the ledger settled it
        (a receipt re-signed after a stop keeps the payment's date, NIP-57)."""
        try:
            status = await self._ledger.backend.lookup_invoice(invoice.payment_hash)
        except BackendError as exc:
            log.info("zap invoice %s: payment time not asked of the wallet (%s)", invoice.payment_hash, exc)
            status = None
        if status is not None and status.paid_at is not None:
            return status.paid_at
        return invoice.paid_at

    async def close(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        # A lookup stuck in the resolver is not waited for (it ends with the resolver's own timeout).
        self._resolver.shutdown(wait=False, cancel_futures=True)


async def _close_by(ws: ClientConnection, deadline: float) -> None:
    """The closing handshake, with what is left before ``deadline`` (RFC 6455 7.1.1 lets
    the client drop the connection when the server does not answer); then the socket is
    dropped in any case."""
    try:
        async with asyncio.timeout_at(deadline):
            await ws.close()
    except (TimeoutError, OSError, WebSocketException):
        pass
    finally:
        ws.transport.abort()
