"""The wallet seam: every backend module in ``lightning/backends/`` implements this.

A push from a backend is only a *hint* that an invoice may be paid: the watcher always
confirms with ``lookup_invoice`` before crediting (some push channels can be forged, e.g.
LNbits' public websocket), so a backend's ``settlements`` may be noisy but never trusted.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol


class BackendError(Exception):
    """The wallet could not be reached or refused; the message never contains secrets."""


@dataclass(frozen=True, slots=True)
class CreatedInvoice:
    payment_hash: str
    bolt11: str
    amount_msat: int
    expires_at: int


class PaymentState(enum.Enum):
    PENDING = "pending"
    PAID = "paid"
    FAILED = "failed"  # expired or cancelled at the wallet
    UNKNOWN = "unknown"  # the wallet does not know this payment hash


@dataclass(frozen=True, slots=True)
class InvoiceStatus:
    payment_hash: str
    state: PaymentState
    amount_received_msat: int | None = None


class WalletBackend(Protocol):
    name: str

    async def create_invoice(self, amount_msat: int, memo: str, expiry_seconds: int) -> CreatedInvoice: ...

    async def lookup_invoice(self, payment_hash: str) -> InvoiceStatus: ...

    def settlements(self) -> AsyncIterator[str]:
        """Payment hashes the wallet says were just paid, for as long as the stream lives.
        Backends without push return an iterator that never yields; the watcher's polling
        covers them. The iterator may raise ``BackendError`` when the stream drops; the
        watcher reconnects."""
        ...

    async def close(self) -> None: ...
