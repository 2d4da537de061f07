"""Phoenixd (ACINQ's headless Phoenix), HTTP basic auth with an empty user name.

Phoenixd counts in whole sats: an amount in msat is rounded up, and the created invoice
reports what was really asked so the ledger checks the payment against that.

Checked against phoenixd 0.8's ``Api.kt`` and ``JsonSerializers.kt``:
- ``POST /createinvoice`` takes a form with ``amountSat``, ``expirySeconds`` and either
  ``description`` (HTTP 400 past 128 characters, so the memo is cut to fit) or
  ``descriptionHash`` (64 hex: the invoice then carries the BOLT11 ``h`` tag, NIP-57).
- ``GET /payments/incoming/{hash}`` reports ``receivedSat`` *after* fees: when phoenixd
  opens or splices a channel on the fly to receive (the first payment to a new node, or
  when inbound liquidity runs out) it keeps the liquidity fee out of the payment and
  reports it in ``fees`` (msat). The payer still sent the full amount, so the amount
  that settles the invoice is ``receivedSat`` x 1000 + ``fees``; and since a node never
  settles an amount-bearing invoice for less than asked (BOLT 4), ``isPaid`` with
  ``requestedSat`` proves at least that much even where rounding to whole sats loses a
  few msat. The fee is reported separately: it is the operator's cost, not the payer's
  debt. ``isExpired`` marks an unpaid invoice that can no longer be paid.
- Push is the ``/websocket`` stream of ``payment_received`` messages.
"""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, TypeGuard

import httpx
import orjson
from websockets.asyncio.client import connect
from websockets.exceptions import WebSocketException

from lightning.backend import (
    PROBE_PAYMENT_HASH,
    BackendError,
    CreatedInvoice,
    InvoiceStatus,
    PaymentState,
    check_description_hash,
    description_hash,
    fit_memo,
)
from lightning.backends import as_unix_time, request_json, require, scrub

MAX_DESCRIPTION = 128  # phoenixd's Api.kt: longer descriptions are a 400


@dataclass(frozen=True, slots=True)
class PhoenixdConfig:
    url: str  # http://127.0.0.1:9740
    password: str  # http-password (or the limited-access one) from phoenix.conf

    def __repr__(self) -> str:
        return f"PhoenixdConfig(url={self.url!r}, password='***')"


class PhoenixdBackend:
    name = "phoenixd"

    def __init__(self, config: PhoenixdConfig, client: httpx.AsyncClient) -> None:
        self._config = config
        self._client = client
        self._base = config.url.rstrip("/")
        self._auth = httpx.BasicAuth("", config.password)
        self._secrets = (config.password, _basic_token(config.password))

    async def create_invoice(
        self, amount_msat: int, memo: str, expiry_seconds: int, *, hashed_description: str | None = None
    ) -> CreatedInvoice:
        label = "phoenixd createinvoice"
        sats = -(-amount_msat // 1000)
        requested_at = int(time.time())
        form = {"amountSat": str(sats), "expirySeconds": str(expiry_seconds)}
        if hashed_description is None:
            form["description"] = fit_memo(memo, MAX_DESCRIPTION)
        else:
            form["descriptionHash"] = description_hash(hashed_description).hex()
        reply = await request_json(
            self._client,
            "POST",
            f"{self._base}/createinvoice",
            label=label,
            secrets=self._secrets,
            auth=self._auth,
            data=form,
        )
        bolt11 = str(require(reply.body, "serialized", label))
        if hashed_description is not None:
            check_description_hash(bolt11, hashed_description, label)
        return CreatedInvoice(
            payment_hash=str(require(reply.body, "paymentHash", label)),
            bolt11=bolt11,
            amount_msat=sats * 1000,
            expires_at=requested_at + expiry_seconds,
        )

    async def lookup_invoice(self, payment_hash: str) -> InvoiceStatus:
        label = "phoenixd incoming payment"
        reply = await request_json(
            self._client,
            "GET",
            f"{self._base}/payments/incoming/{payment_hash}",
            label=label,
            secrets=self._secrets,
            auth=self._auth,
            allow=frozenset({404}),
        )
        if reply.status == 404:
            return InvoiceStatus(payment_hash, PaymentState.UNKNOWN)
        body = reply.body
        if not isinstance(body, dict) or body.get("paymentHash") != payment_hash:
            raise BackendError(f"{label}: reply is not the asked payment")
        if body.get("isPaid") is not True:
            state = PaymentState.FAILED if body.get("isExpired") is True else PaymentState.PENDING
            return InvoiceStatus(payment_hash, state)
        received, fees, requested = body.get("receivedSat"), body.get("fees", 0), body.get("requestedSat")
        if not _count(received) or not _count(fees):
            raise BackendError(f"{label}: paid without receivedSat and fees amounts")
        sent = received * 1000 + fees  # what the payer sent; phoenixd kept ``fees`` of it
        if _count(requested):
            sent = max(sent, requested * 1000)
        preimage = body.get("preimage")
        return InvoiceStatus(
            payment_hash,
            PaymentState.PAID,
            sent,
            fee_msat=fees,
            preimage=preimage if isinstance(preimage, str) and len(preimage) == 64 else None,
            paid_at=as_unix_time(body.get("completedAt"), millis=True),  # phoenixd counts in ms
        )

    async def check(self) -> None:
        """An unknown hash is answered "unknown" only past the credential check."""
        await self.lookup_invoice(PROBE_PAYMENT_HASH)

    async def settlements(self) -> AsyncIterator[str]:
        ws_url = self._base.replace("https://", "wss://", 1).replace("http://", "ws://", 1)
        headers = {"Authorization": f"Basic {_basic_token(self._config.password)}"}
        try:
            async with connect(f"{ws_url}/websocket", additional_headers=headers, open_timeout=10) as ws:
                async for message in ws:
                    payment_hash = _received_hash(message)
                    if payment_hash is not None:
                        yield payment_hash
        except (OSError, TimeoutError, WebSocketException) as exc:
            reason = scrub(str(exc), self._secrets)
            raise BackendError(f"phoenixd push stream: {type(exc).__name__}: {reason}") from None
        raise BackendError("phoenixd push stream: closed by phoenixd")

    def notifications_live(self) -> bool:
        """Not relied on yet: polling stays as the safety net beside phoenixd's websocket."""
        return False

    async def close(self) -> None:
        """Nothing to release: the HTTP client belongs to the relay."""


def _count(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _basic_token(password: str) -> str:
    return base64.b64encode(f":{password}".encode()).decode("ascii")


def _received_hash(message: str | bytes) -> str | None:
    try:
        data: Any = orjson.loads(message)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict) or data.get("type") != "payment_received":
        return None
    payment_hash = data.get("paymentHash")
    return payment_hash if isinstance(payment_hash, str) else None
