"""Core Lightning through clnrest (the REST plugin shipped with CLN), with a rune.

Every call is ``POST /v1/<rpc method>`` with the method's JSON parameters and a ``Rune``
header. The rune should be restricted to ``invoice``, ``listinvoices`` and ``wait``.
Minimum version: Core Lightning 23.11. 23.08's clnrest (a Python plugin) also demands a
``Nodeid`` header on every call, which this backend does not send.

clnrest serves HTTPS by default (``clnrest-protocol=https``) with a certificate signed by
the node's own CA (``ca.pem`` in the network's directory, e.g. ``~/.lightning/bitcoin``);
``ca_cert_path`` trusts that CA. Because httpx fixes TLS verification per client, such a
backend owns a second client (same timeouts) and closes it in ``close``.

Description-hash invoices (NIP-57) send the full description with ``deschashonly: true``:
CLN then puts only its sha256 in the BOLT11 ``h`` tag.

Push uses the ``wait`` index API (23.08+): ``wait invoices updated 0`` reads the current
``updated`` index once at start (so an old node neither replays its history nor has every
invoice listed, which is slow on a big node), then each ``wait invoices updated <n+1>``
blocks until some invoice changes and ``listinvoices`` with ``index: updated`` reads just
the changed ones. Anything paid while the relay was down is found by the watcher's
reconciliation, not by this stream.
"""

from __future__ import annotations

import ssl
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx

from lightning.backend import (
    PROBE_PAYMENT_HASH,
    BackendError,
    CreatedInvoice,
    InvoiceStatus,
    PaymentState,
    check_description_hash,
    fit_memo,
)
from lightning.backends import as_msat, as_unix_time, long_poll_timeout, request_json, require

_STATES = {"unpaid": PaymentState.PENDING, "paid": PaymentState.PAID, "expired": PaymentState.FAILED}
# CLN takes a description of any length, but BOLT11 caps a ``d`` tag at 639 bytes and
# wallets show little of it: a plain memo is kept short.
MAX_MEMO = 300
LIST_PAGE = 100  # invoices read per ``listinvoices`` call while following the updated index


@dataclass(frozen=True, slots=True)
class ClnConfig:
    url: str  # https://host:3010
    rune: str
    label_prefix: str = "satsrelay"  # invoice labels must be unique on the node
    ca_cert_path: str | None = None  # clnrest's ca.pem, when it serves its own certificates

    def __repr__(self) -> str:
        return (
            f"ClnConfig(url={self.url!r}, rune='***', label_prefix={self.label_prefix!r}, "
            f"ca_cert_path={self.ca_cert_path!r})"
        )


class ClnBackend:
    name = "cln"

    def __init__(self, config: ClnConfig, client: httpx.AsyncClient) -> None:
        self._config = config
        self._own_client = config.ca_cert_path is not None
        if config.ca_cert_path is not None:
            context = ssl.create_default_context(cafile=config.ca_cert_path)
            client = httpx.AsyncClient(verify=context, timeout=client.timeout)
        self._client = client
        self._base = config.url.rstrip("/")
        self._headers = {"Rune": config.rune}
        self._secrets = (config.rune,)
        self._updated_index: int | None = None

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

    async def create_invoice(
        self, amount_msat: int, memo: str, expiry_seconds: int, *, hashed_description: str | None = None
    ) -> CreatedInvoice:
        label = f"{self._config.label_prefix}-{uuid.uuid4().hex}"
        requested_at = int(time.time())
        params: dict[str, Any] = {"amount_msat": amount_msat, "label": label, "expiry": expiry_seconds}
        if hashed_description is None:
            params["description"] = fit_memo(memo, MAX_MEMO)
        else:
            params.update(description=hashed_description, deschashonly=True)
        body = await self._rpc("invoice", params)
        expires_at = body.get("expires_at") if isinstance(body, dict) else None
        bolt11 = str(require(body, "bolt11", "cln invoice"))
        if hashed_description is not None:
            check_description_hash(bolt11, hashed_description, "cln invoice")
        return CreatedInvoice(
            payment_hash=str(require(body, "payment_hash", "cln invoice")),
            bolt11=bolt11,
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
        received = paid_at = None
        if state is PaymentState.PAID:
            received = as_msat(invoice.get("amount_received_msat", invoice.get("msatoshi_received", 0)))
            paid_at = as_unix_time(invoice.get("paid_at"))
        return InvoiceStatus(payment_hash, state, received, paid_at=paid_at)

    async def check(self) -> None:
        """An unknown hash is answered "unknown" only past the credential check."""
        await self.lookup_invoice(PROBE_PAYMENT_HASH)

    async def settlements(self) -> AsyncIterator[str]:
        if self._updated_index is None:
            self._updated_index = await self._wait_updated(0)
        while True:
            reached = await self._wait_updated(self._updated_index + 1)
            while self._updated_index < reached:
                body = await self._rpc(
                    "listinvoices", {"index": "updated", "start": self._updated_index + 1, "limit": LIST_PAGE}
                )
                invoices = require(body, "invoices", "cln listinvoices")
                if not isinstance(invoices, list) or not invoices:
                    self._updated_index = reached  # the changed invoices were deleted meanwhile
                    break
                for invoice in invoices:
                    index = invoice.get("updated_index") if isinstance(invoice, dict) else None
                    if not isinstance(index, int):
                        raise BackendError("cln listinvoices: an invoice has no updated_index")
                    self._updated_index = max(self._updated_index, index)
                    if invoice.get("status") == "paid" and isinstance(invoice.get("payment_hash"), str):
                        yield invoice["payment_hash"]

    async def _wait_updated(self, nextvalue: int) -> int:
        """The invoices' ``updated`` index once it reaches ``nextvalue`` (0: at once)."""
        body = await self._rpc(
            "wait", {"subsystem": "invoices", "indexname": "updated", "nextvalue": nextvalue}, long_poll=nextvalue > 0
        )
        value = body.get("updated", 0) if isinstance(body, dict) else None
        if not isinstance(value, int) or isinstance(value, bool):
            raise BackendError("cln wait: reply has no updated index")
        return value

    def notifications_live(self) -> bool:
        """Not relied on yet: polling stays as the safety net beside clnrest's wait stream."""
        return False

    async def close(self) -> None:
        if self._own_client:
            await self._client.aclose()
