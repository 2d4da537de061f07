"""LNbits (checked against 1.6.2): invoices through one wallet's invoice key.

Traps measured on a real server (shared/notes/lnbits-test-server.md, and this module's tests):
- Units are mixed: the create request takes *sats*; the payment's ``amount`` is *msat*.
- ``GET /api/v1/payments/{hash}`` with a wrong or missing key still answers 200 with
  ``{"paid": ...}`` and no ``details``; only a valid key of the owning wallet gets the
  details (another wallet's hash is 404). So "paid" counts only with details present:
  that is the proof the invoice belongs to our wallet and carries its real amount.
- The websocket ``/api/v1/ws/{inkey}`` can be written to by anyone who knows the id, so
  what it says is a hint; the watcher confirms with ``lookup_invoice``.
- Description-hash invoices (NIP-57): ``POST /api/v1/payments`` takes ``description_hash``
  (hex of the 32 bytes) and ``unhashed_description`` (hex of the description itself);
  which one counts depends on LNbits' funding source (FakeWallet honours either; sources
  backed by Core Lightning need the full description). Both are sent, and the returned
  invoice's ``h`` tag is checked. LNbits cuts memos at 640 characters.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
from websockets.asyncio.client import connect
from websockets.exceptions import WebSocketException

from lightning.backend import (
    BackendError,
    CreatedInvoice,
    InvoiceStatus,
    PaymentState,
    check_description_hash,
    description_hash,
    fit_memo,
)
from lightning.backends import as_msat, as_unix_time, request_json, require, scrub

MAX_MEMO = 639

_STATES = {"success": PaymentState.PAID, "pending": PaymentState.PENDING, "failed": PaymentState.FAILED}


@dataclass(frozen=True, slots=True)
class LnbitsConfig:
    url: str  # e.g. https://legend.lnbits.com (no trailing /api)
    invoice_key: str  # the wallet's *invoice/read* key: it cannot spend

    def __repr__(self) -> str:  # keep the key out of logs that print configs
        return f"LnbitsConfig(url={self.url!r}, invoice_key='***')"


class LnbitsBackend:
    name = "lnbits"

    def __init__(self, config: LnbitsConfig, client: httpx.AsyncClient) -> None:
        self._config = config
        self._client = client
        self._base = config.url.rstrip("/")
        self._headers = {"X-Api-Key": config.invoice_key}
        self._secrets = (config.invoice_key,)

    async def create_invoice(
        self, amount_msat: int, memo: str, expiry_seconds: int, *, hashed_description: str | None = None
    ) -> CreatedInvoice:
        # LNbits takes whole sats: round up so the payer never pays less than asked.
        sats = -(-amount_msat // 1000)
        requested_at = int(time.time())
        label = "lnbits create_invoice"
        request: dict[str, Any] = {
            "out": False,
            "amount": sats,
            "memo": fit_memo(memo, MAX_MEMO),
            "expiry": expiry_seconds,
        }
        if hashed_description is not None:
            request["description_hash"] = description_hash(hashed_description).hex()
            request["unhashed_description"] = hashed_description.encode().hex()
        reply = await request_json(
            self._client,
            "POST",
            f"{self._base}/api/v1/payments",
            label=label,
            secrets=self._secrets,
            headers=self._headers,
            json=request,
        )
        body = reply.body
        payment_hash = require(body, "payment_hash", label)
        bolt11 = body.get("bolt11") or require(body, "payment_request", label)
        if hashed_description is not None:
            check_description_hash(str(bolt11), hashed_description, label)
        amount = as_msat(body["amount"]) if "amount" in body else sats * 1000
        return CreatedInvoice(
            payment_hash=str(payment_hash),
            bolt11=str(bolt11),
            amount_msat=amount,
            expires_at=_expiry(body.get("expiry"), requested_at + expiry_seconds),
        )

    async def lookup_invoice(self, payment_hash: str) -> InvoiceStatus:
        label = "lnbits lookup_invoice"
        reply = await request_json(
            self._client,
            "GET",
            f"{self._base}/api/v1/payments/{payment_hash}",
            label=label,
            secrets=self._secrets,
            headers=self._headers,
            allow=frozenset({404}),
        )
        if reply.status == 404:
            return InvoiceStatus(payment_hash, PaymentState.UNKNOWN)
        details = reply.body.get("details") if isinstance(reply.body, dict) else None
        if not isinstance(details, dict):
            # The public form of the answer: the key was not accepted for this wallet.
            raise BackendError(f"{label}: no payment details (is the invoice key right?)")
        if details.get("payment_hash") != payment_hash or as_msat(details.get("amount", 0)) <= 0:
            raise BackendError(f"{label}: details do not describe an incoming payment with this hash")
        state = _STATES.get(str(details.get("status")), PaymentState.PENDING)
        if reply.body.get("paid") is True:
            state = PaymentState.PAID
        received = as_msat(details["amount"]) if state is PaymentState.PAID else None
        preimage = reply.body.get("preimage") or details.get("preimage")
        if not (isinstance(preimage, str) and len(preimage) == 64) or set(preimage) == {"0"}:
            preimage = None  # LNbits shows 64 zeros until it knows the preimage
        # LNbits 1.x has no "paid at": a paid payment's last update is its settlement.
        paid_at = as_unix_time(details.get("updated_at")) if state is PaymentState.PAID else None
        return InvoiceStatus(payment_hash, state, received, preimage=preimage, paid_at=paid_at)

    async def check(self) -> None:
        """``GET /api/v1/wallet`` answers a valid invoice key with the wallet's name and
        balance, anything else with 404 "Wallet not found." (a lookup cannot tell: an unknown
        hash is 404 whatever the key)."""
        label = "lnbits wallet"
        reply = await request_json(
            self._client,
            "GET",
            f"{self._base}/api/v1/wallet",
            label=label,
            secrets=self._secrets,
            headers=self._headers,
            allow=frozenset({401, 403, 404}),
        )
        if reply.status != 200:
            raise BackendError(f"{label}: the invoice key was refused (HTTP {reply.status})")

    async def settlements(self) -> AsyncIterator[str]:
        ws_url = self._base.replace("https://", "wss://", 1).replace("http://", "ws://", 1)
        try:
            async with connect(f"{ws_url}/api/v1/ws/{self._config.invoice_key}", open_timeout=10) as ws:
                async for message in ws:
                    payment_hash = _paid_hash(message)
                    if payment_hash is not None:
                        yield payment_hash
        except (OSError, TimeoutError, WebSocketException) as exc:
            # The URL holds the invoice key: name the failure, never quote it.
            raise BackendError(f"lnbits push stream: {type(exc).__name__}: {scrub(str(exc), self._secrets)}") from None
        raise BackendError("lnbits push stream: closed by the server")

    def notifications_live(self) -> bool:
        """LNbits' websocket is unauthenticated (anyone can forge a message on it) and not
        promised complete: polling stays."""
        return False

    async def close(self) -> None:
        """Nothing to release: the HTTP client belongs to the relay."""


def _paid_hash(message: str | bytes) -> str | None:
    """The payment hash of an incoming, successful payment message; None for anything else
    (balance updates, outgoing payments, whatever a stranger wrote into the channel)."""
    try:
        data: Any = orjson.loads(message)
    except orjson.JSONDecodeError:
        return None
    payment = data.get("payment") if isinstance(data, dict) else None
    if not isinstance(payment, dict) or payment.get("status") != "success":
        return None
    payment_hash, amount = payment.get("payment_hash"), payment.get("amount")
    if not isinstance(payment_hash, str) or not isinstance(amount, int) or amount <= 0:
        return None
    return payment_hash


def _expiry(value: object, fallback: int) -> int:
    """LNbits reports expiry as an ISO time, with or without an offset (UTC either way)."""
    if isinstance(value, str):
        try:
            when = dt.datetime.fromisoformat(value)
        except ValueError:
            return fallback
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        return int(when.timestamp())
    return fallback
