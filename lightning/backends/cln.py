"""Core Lightning through clnrest (the REST plugin shipped with CLN >= 23.08), with a rune.

Every call is ``POST /v1/<rpc method>`` with the method's JSON parameters and a ``Rune``
header. The rune should be restricted to ``invoice``, ``listinvoices`` and
``waitanyinvoice``. Push is ``waitanyinvoice`` called in a loop with the last
``pay_index``: it blocks until the next invoice is paid. The first call starts from the
highest ``pay_index`` CLN has (read once from ``listinvoices``) so an old node does not
replay its whole history at start-up; anything paid while the relay was down is found by
the watcher's reconciliation, not by this stream.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx

from lightning.backend import BackendError, CreatedInvoice, InvoiceStatus, PaymentState
from lightning.backends import as_msat, long_poll_timeout, request_json, require

_STATES = {"unpaid": PaymentState.PENDING, "paid": PaymentState.PAID, "expired": PaymentState.FAILED}


@dataclass(frozen=True, slots=True)
class ClnConfig:
    url: str  # https://host:3010
    rune: str
    label_prefix: str = "satsrelay"  # invoice labels must be unique on the node

    def __repr__(self) -> str:
        return f"ClnConfig(url={self.url!r}, rune='***', label_prefix={self.label_prefix!r})"


class ClnBackend:
    name = "cln"

    def __init__(self, config: ClnConfig, client: httpx.AsyncClient) -> None:
        self._config = config
        self._client = client
        self._base = config.url.rstrip("/")
        self._headers = {"Rune": config.rune}
        self._secrets = (config.rune,)
        self._lastpay_index: int | None = None

    async def _rpc(self, method: str, params: dict[str, Any], *, long_poll: bool = False) -> Any:
        reply = await request_json(
            self._client,
            "POST",
            f"{self._base}/v1/{method}",
            label=f"cln {method}",
            secrets=self._secrets,
            headers=self._headers,
            json=params,
            timeout=long_poll_timeout(self._client) if long_poll else None,
        )
        return reply.body

    async def create_invoice(self, amount_msat: int, memo: str, expiry_seconds: int) -> CreatedInvoice:
        label = f"{self._config.label_prefix}-{uuid.uuid4().hex}"
        requested_at = int(time.time())
        body = await self._rpc(
            "invoice",
            {"amount_msat": amount_msat, "label": label, "description": memo, "expiry": expiry_seconds},
        )
        expires_at = body.get("expires_at") if isinstance(body, dict) else None
        return CreatedInvoice(
            payment_hash=str(require(body, "payment_hash", "cln invoice")),
            bolt11=str(require(body, "bolt11", "cln invoice")),
            amount_msat=amount_msat,
            expires_at=expires_at if isinstance(expires_at, int) else requested_at + expiry_seconds,
        )

    async def lookup_invoice(self, payment_hash: str) -> InvoiceStatus:
        body = await self._rpc("listinvoices", {"payment_hash": payment_hash})
        invoices = require(body, "invoices", "cln listinvoices")
        if not isinstance(invoices, list) or not invoices:
            return InvoiceStatus(payment_hash, PaymentState.UNKNOWN)
        invoice = invoices[0]
        if not isinstance(invoice, dict) or invoice.get("payment_hash") != payment_hash:
            raise BackendError("cln listinvoices: reply is not the asked invoice")
        state = _STATES.get(str(invoice.get("status")), PaymentState.PENDING)
        received = None
        if state is PaymentState.PAID:
            received = as_msat(invoice.get("amount_received_msat", invoice.get("msatoshi_received", 0)))
        return InvoiceStatus(payment_hash, state, received)

    async def settlements(self) -> AsyncIterator[str]:
        if self._lastpay_index is None:
            body = await self._rpc("listinvoices", {})
            invoices = require(body, "invoices", "cln listinvoices")
            listed = invoices if isinstance(invoices, list) else []
            indexes = [i.get("pay_index") for i in listed if isinstance(i, dict)]
            self._lastpay_index = max((i for i in indexes if isinstance(i, int)), default=0)
        while True:
            invoice = await self._rpc("waitanyinvoice", {"lastpay_index": self._lastpay_index}, long_poll=True)
            pay_index = invoice.get("pay_index") if isinstance(invoice, dict) else None
            if not isinstance(pay_index, int):
                raise BackendError("cln waitanyinvoice: reply has no pay_index")
            self._lastpay_index = pay_index
            if invoice.get("status") == "paid" and isinstance(invoice.get("payment_hash"), str):
                yield invoice["payment_hash"]

    async def close(self) -> None:
        """Nothing to release: the HTTP client belongs to the relay."""
