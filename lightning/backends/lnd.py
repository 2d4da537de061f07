"""LND over its REST gateway, authenticated by an invoice macaroon (hex).

The macaroon should be baked with ``invoices:read invoices:write`` only: it cannot spend.
LND usually serves a self-signed certificate; ``tls_cert_path`` pins it, and because httpx
fixes TLS verification per client, such a backend owns a second client (same timeouts) and
closes it in ``close``. Push is ``/v1/invoices/subscribe``: one JSON object per line,
``{"result": <Invoice>}``; the last ``settle_index`` seen is resent on reconnect so
settlements during a drop are replayed by LND itself.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

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
from lightning.backends import as_msat, as_unix_time, long_poll_timeout, request_json, require, scrub

MAX_MEMO = 639  # BOLT11's cap on a ``d`` tag; LND refuses longer memos

_STATES = {
    "OPEN": PaymentState.PENDING,
    "ACCEPTED": PaymentState.PENDING,  # a hold invoice locked in but not settled: not money yet
    "SETTLED": PaymentState.PAID,
    "CANCELED": PaymentState.FAILED,
}
# LND < 0.14 answered an unknown hash with gRPC code 2 (HTTP 500) and this text; 0.14 and
# newer map it to gRPC NotFound, which the REST gateway serves as 404.
_NOT_FOUND_TEXTS = ("unable to locate invoice", "there are no existing invoices")


@dataclass(frozen=True, slots=True)
class LndConfig:
    url: str  # https://host:8080
    macaroon_hex: str
    tls_cert_path: str | None = None  # LND's tls.cert, when it is self-signed

    def __repr__(self) -> str:
        return f"LndConfig(url={self.url!r}, macaroon_hex='***', tls_cert_path={self.tls_cert_path!r})"


class LndBackend:
    name = "lnd"

    def __init__(self, config: LndConfig, client: httpx.AsyncClient) -> None:
        self._base = config.url.rstrip("/")
        self._headers = {"Grpc-Metadata-macaroon": config.macaroon_hex}
        self._secrets = (config.macaroon_hex,)
        self._own_client = config.tls_cert_path is not None
        if config.tls_cert_path is not None:
            context = ssl.create_default_context(cafile=config.tls_cert_path)
            client = httpx.AsyncClient(verify=context, timeout=client.timeout)
        self._client = client
        self._settle_index = 0

    async def create_invoice(
        self, amount_msat: int, memo: str, expiry_seconds: int, *, hashed_description: str | None = None
    ) -> CreatedInvoice:
        label = "lnd create_invoice"
        requested_at = int(time.time())
        # int64 fields travel as strings through the gRPC gateway, bytes as base64.
        body = {"value_msat": str(amount_msat), "memo": fit_memo(memo, MAX_MEMO), "expiry": str(expiry_seconds)}
        if hashed_description is not None:
            # LND then signs only the hash (``h``); the memo stays in its own database.
            body["description_hash"] = base64.b64encode(description_hash(hashed_description)).decode("ascii")
        reply = await request_json(
            self._client,
            "POST",
            f"{self._base}/v1/invoices",
            label=label,
            secrets=self._secrets,
            headers=self._headers,
            json=body,
        )
        payment_hash = _hash_hex(require(reply.body, "r_hash", label), label)
        bolt11 = str(require(reply.body, "payment_request", label))
        if hashed_description is not None:
            check_description_hash(bolt11, hashed_description, label)
        return CreatedInvoice(payment_hash, bolt11, amount_msat, requested_at + expiry_seconds)

    async def lookup_invoice(self, payment_hash: str) -> InvoiceStatus:
        label = "lnd lookup_invoice"
        reply = await request_json(
            self._client,
            "GET",
            f"{self._base}/v1/invoice/{payment_hash}",
            label=label,
            secrets=self._secrets,
            headers=self._headers,
            allow=frozenset({404, 500}),
        )
        if reply.status != 200:
            message = str(reply.body.get("message", "")) if isinstance(reply.body, dict) else ""
            if reply.status == 404 or any(text in message for text in _NOT_FOUND_TEXTS):
                return InvoiceStatus(payment_hash, PaymentState.UNKNOWN)
            raise BackendError(f"{label}: HTTP {reply.status}: {scrub(message, self._secrets)}")
        return _status(payment_hash, reply.body, label)

    async def check(self) -> None:
        """An unknown hash is answered "unknown" only past the credential check."""
        await self.lookup_invoice(PROBE_PAYMENT_HASH)

    async def settlements(self) -> AsyncIterator[str]:
        label = "lnd push stream"
        try:
            async with self._client.stream(
                "GET",
                f"{self._base}/v1/invoices/subscribe",
                params={"settle_index": str(self._settle_index)} if self._settle_index else None,
                headers=self._headers,
                timeout=long_poll_timeout(self._client),
            ) as response:
                if response.status_code != 200:
                    body = (await response.aread()).decode(errors="replace")
                    raise BackendError(f"{label}: HTTP {response.status_code}: {scrub(body, self._secrets)}")
                async for line in response.aiter_lines():
                    payment_hash = self._settled_hash(line, label)
                    if payment_hash is not None:
                        yield payment_hash
        except httpx.HTTPError as exc:
            raise BackendError(f"{label}: {type(exc).__name__}: {scrub(str(exc), self._secrets)}") from None
        raise BackendError(f"{label}: closed by LND")

    def _settled_hash(self, line: str, label: str) -> str | None:
        if not line.strip():
            return None
        try:
            data: Any = orjson.loads(line)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(data, dict):
            return None
        if "error" in data:
            error = data["error"]
            message = error.get("message", "") if isinstance(error, dict) else str(error)
            raise BackendError(f"{label}: {scrub(str(message), self._secrets)}")
        invoice = data.get("result")
        if not isinstance(invoice, dict) or invoice.get("state") != "SETTLED" or "r_hash" not in invoice:
            return None
        index = invoice.get("settle_index")
        if isinstance(index, str | int) and str(index).isascii() and str(index).isdigit():
            self._settle_index = max(self._settle_index, int(index))
        return _hash_hex(invoice["r_hash"], label)

    def notifications_live(self) -> bool:
        """Not relied on yet: polling stays as the safety net beside LND's invoice stream."""
        return False

    async def close(self) -> None:
        if self._own_client:
            await self._client.aclose()


def _hash_hex(value: object, label: str) -> str:
    """gRPC-gateway bytes are base64 (standard; URL-safe seen on some proxies) -> 64 hex."""
    if isinstance(value, str):
        try:
            raw = base64.b64decode(value.replace("-", "+").replace("_", "/"), validate=True)
        except (binascii.Error, ValueError):
            raw = b""
        if len(raw) == 32:
            return raw.hex()
    raise BackendError(f"{label}: r_hash is not a base64 32-byte hash")


def _status(payment_hash: str, invoice: Any, label: str) -> InvoiceStatus:
    if not isinstance(invoice, dict):
        raise BackendError(f"{label}: reply is not an invoice")
    state_name = invoice.get("state")
    if isinstance(state_name, str) and state_name in _STATES:
        state = _STATES[state_name]
    elif invoice.get("settled") is True:  # LND before the state field
        state = PaymentState.PAID
    else:
        state = PaymentState.PENDING
    received = as_msat(invoice.get("amt_paid_msat", "0")) if state is PaymentState.PAID else None
    preimage = None
    if state is PaymentState.PAID and isinstance(invoice.get("r_preimage"), str):
        with contextlib.suppress(BackendError):
            preimage = _hash_hex(invoice["r_preimage"], label)
    paid_at = as_unix_time(invoice.get("settle_date")) if state is PaymentState.PAID else None
    return InvoiceStatus(payment_hash, state, received, preimage=preimage, paid_at=paid_at)
