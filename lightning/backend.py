"""The wallet seam: every backend module in ``lightning/backends/`` implements this.

A push from a backend is only a *hint* that an invoice may be paid: the watcher always
confirms with ``lookup_invoice`` before crediting (some push channels can be forged, e.g.
LNbits' public websocket), so a backend's ``settlements`` may be noisy but never trusted.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

# A payment hash no wallet holds: looking it up proves the wallet answers and takes the
# credential (``WalletBackend.check``) without touching a real invoice.
PROBE_PAYMENT_HASH = hashlib.sha256(b"satsrelay wallet check").hexdigest()
BOLT11_DESCRIPTION_BYTES = 639  # the most a ``d`` tag can hold (10-bit length in 5-bit groups)
ELLIPSIS = "\u2026"


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
    """What the wallet says about one invoice.

    ``amount_received_msat`` is what the *payer sent* (the amount that settles the
    invoice), not what the node kept: a wallet that takes a fee out of an incoming payment
    (phoenixd's on-the-fly liquidity) reports that fee in ``fee_msat``, the operator's cost.
    ``preimage`` (hex) when the wallet discloses it: NIP-57 receipts may carry it.
    ``paid_at`` (unix seconds) when the wallet says when it was paid: a NIP-57 receipt is
    dated then (the NIP's SHOULD), not when the relay noticed, which after a restart is
    later.
    """

    payment_hash: str
    state: PaymentState
    amount_received_msat: int | None = None
    fee_msat: int = 0
    preimage: str | None = None
    paid_at: int | None = None


def description_hash(hashed_description: str) -> bytes:
    """The 32 bytes an invoice's BOLT11 ``h`` tag must carry for ``hashed_description``
    (NIP-57: sha256 of the zap request's JSON, UTF-8 encoded, exactly as received)."""
    return hashlib.sha256(hashed_description.encode()).digest()


def bolt11_description_hash(bolt11_text: str) -> str | None:
    """The hex ``h`` tag of a BOLT11 invoice, None when it has none; ValueError when the
    text does not decode."""
    import bolt11  # imported late: only description-hash callers need the decoder

    try:
        decoded = bolt11.decode(bolt11_text)
    except Exception as exc:  # the library raises many unrelated types for bad input
        raise ValueError(f"undecodable BOLT11: {type(exc).__name__}") from None
    value = decoded.description_hash
    return None if value is None else str(value).lower()


def check_description_hash(bolt11_text: str, hashed_description: str, label: str) -> None:
    """``BackendError`` unless the invoice commits to ``hashed_description`` (some wallets
    silently ignore a description-hash request and sign the plain memo instead)."""
    try:
        found = bolt11_description_hash(bolt11_text)
    except ValueError as exc:
        raise BackendError(f"{label}: {exc}") from None
    if found != description_hash(hashed_description).hex():
        raise BackendError(f"{label}: the wallet's invoice does not commit to the description hash")


def fit_memo(memo: str, limit: int) -> str:
    """``memo`` cut to ``limit`` characters and to BOLT11's 639 UTF-8 bytes for a ``d`` tag,
    ending in an ellipsis when cut, so a long relay name never makes a wallet refuse the
    invoice (phoenixd answers HTTP 400 past 128 characters; LNbits' FakeWallet fails past
    639 bytes)."""
    if len(memo) <= limit and len(memo.encode()) <= BOLT11_DESCRIPTION_BYTES:
        return memo
    cut = memo[: limit - 1]
    while len(cut.encode()) + len(ELLIPSIS.encode()) > BOLT11_DESCRIPTION_BYTES:
        cut = cut[: -max(1, (len(cut.encode()) - BOLT11_DESCRIPTION_BYTES) // 4)]
    return cut.rstrip() + ELLIPSIS


class WalletBackend(Protocol):
    name: str

    async def create_invoice(
        self, amount_msat: int, memo: str, expiry_seconds: int, *, hashed_description: str | None = None
    ) -> CreatedInvoice:
        """Issue an invoice for ``amount_msat``.

        ``memo`` is a short human description; each backend fits it to its wallet's limit
        (see ``fit_memo``). With ``hashed_description`` (NIP-57: the zap request's JSON)
        the invoice instead commits to sha256(hashed_description.encode()) in its BOLT11
        ``h`` tag; a backend whose wallet cannot do that raises ``BackendError`` rather
        than return an invoice without it.
        """
        ...

    async def lookup_invoice(self, payment_hash: str) -> InvoiceStatus: ...

    async def check(self) -> None:
        """Return when the wallet answers and accepts the credential; else ``BackendError``
        saying which (the relay's start-up check: a wrong URL or key is named at once, not
        at the first payer's invoice). Cheap and read-only: it creates nothing."""
        ...

    def settlements(self) -> AsyncIterator[str]:
        """Payment hashes the wallet says were just paid, for as long as the stream lives.
        Backends without push return an iterator that never yields; the watcher's polling
        covers them. The iterator may raise ``BackendError`` when the stream drops; the
        watcher reconnects."""
        ...

    def notifications_live(self) -> bool:
        """True while ``settlements`` is being read and the wallet has promised to report
        every payment it receives on it (NIP-47 ``payment_received`` notifications, as its
        info event says). The watcher then leaves young invoices to the stream and polls
        them only at the old invoices' pace; polling is the fallback whenever this is
        false (stream down, not read, or a wallet without such a promise)."""
        ...

    async def close(self) -> None: ...
