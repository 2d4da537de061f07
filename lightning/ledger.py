"""Issue invoices and confirm settlements on top of the ledger's tables (``lightning.store``).

The ledger store does the exactly-once part (``settle_invoice`` is idempotent by payment hash,
in one transaction with the account change). This module makes sure nothing reaches it
unverified: an invoice is stored before anyone sees it, and a settlement is applied only
after the wallet itself says the invoice is paid *and* the BOLT11 we stored decodes to the
same payment hash and amount and the wallet received at least that amount. A push message
is never trusted on its own (LNbits' websocket channels, for one, can be forged).
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass

import bolt11

from lightning.backend import BackendError, InvoiceStatus, PaymentState, WalletBackend
from lightning.plans import Grant, Plans
from lightning.store.base import Invoice, InvoiceState, LedgerStore

log = logging.getLogger(__name__)


class Confirmation(enum.Enum):
    CREDITED = "credited"  # this call applied the grant
    ALREADY_PAID = "already-paid"
    PENDING = "pending"
    EXPIRED = "expired"
    REJECTED = "rejected"  # wallet says paid but something does not match: credit nothing
    UNKNOWN = "unknown"  # not our invoice, or the wallet does not know it


@dataclass(frozen=True, slots=True)
class ConfirmResult:
    outcome: Confirmation
    invoice: Invoice | None  # as it was before this call; None when not ours
    fee_msat: int = 0  # CREDITED: what the wallet kept of the payment (the operator's cost)
    preimage: str | None = None  # CREDITED: when the wallet disclosed it (NIP-57 receipts)


def decode_bolt11(request: str) -> tuple[str, int | None]:
    """(payment hash, amount in msat or None) of a BOLT11 string; ValueError if unreadable."""
    try:
        decoded = bolt11.decode(request)
    except Exception as exc:  # the library raises many unrelated types for bad input
        raise ValueError(f"undecodable BOLT11: {type(exc).__name__}") from None
    amount = decoded.amount_msat
    return str(decoded.payment_hash), None if amount is None else int(amount)


def settlement_problem(invoice: Invoice, status: InvoiceStatus) -> str | None:
    """Why a "paid" answer must not credit ``invoice``, or None when it may.

    Checks the wallet's answer is about this payment hash, that the BOLT11 we stored (and
    showed) decodes to the same hash and the amount we priced, and that the wallet received
    at least that amount. A wallet that reports no received amount is taken at its word
    for the invoice's amount: Lightning nodes refuse to settle an amount-bearing invoice
    for less (BOLT 4, ``incorrect_or_unknown_payment_details``).
    """
    if status.state is not PaymentState.PAID:
        return f"wallet state is {status.state.value}"
    if status.payment_hash != invoice.payment_hash:
        return "wallet answered about another payment hash"
    try:
        decoded_hash, decoded_amount = decode_bolt11(invoice.bolt11)
    except ValueError as exc:
        return str(exc)
    if decoded_hash != invoice.payment_hash:
        return "stored BOLT11 has another payment hash"
    if decoded_amount != invoice.amount_msat:
        return f"stored BOLT11 amount {decoded_amount} msat differs from the priced {invoice.amount_msat} msat"
    received = invoice.amount_msat if status.amount_received_msat is None else status.amount_received_msat
    if received < invoice.amount_msat:
        return f"underpaid: received {received} of {invoice.amount_msat} msat"
    return None


class TooManyPending(Exception):
    """A cap on unpaid invoices is reached; ``per_pubkey`` says which."""

    def __init__(self, message: str, *, per_pubkey: bool) -> None:
        super().__init__(message)
        self.per_pubkey = per_pubkey


@dataclass(frozen=True, slots=True)
class PendingCaps:
    """Bounds on unpaid, unexpired invoices (issue 8: 100 IPs made 1,000 in 7 s)."""

    total: int | None = None
    per_pubkey: int | None = None


@dataclass(frozen=True, slots=True)
class Issued:
    invoice: Invoice
    reused: bool  # an unpaid invoice for the same pubkey, plan and amount handed out again


class Ledger:
    def __init__(
        self,
        store: LedgerStore,
        backend: WalletBackend,
        plans: Plans,
        expiry_seconds: int,
        caps: PendingCaps | None = None,
    ) -> None:
        self.store = store
        self.backend = backend
        self.plans = plans
        self.expiry_seconds = expiry_seconds
        self.caps = caps or PendingCaps()

    async def issue(self, pubkey: str, plan: str, now: int, amount_sats: int | None = None, memo: str = "") -> Invoice:
        """``issue_or_reuse``'s invoice."""
        return (await self.issue_or_reuse(pubkey, plan, now, amount_sats, memo)).invoice

    async def issue_or_reuse(
        self, pubkey: str, plan: str, now: int, amount_sats: int | None = None, memo: str = ""
    ) -> Issued:
        """The pending invoice for this pubkey, plan and amount if one has at least a third
        of its life left; else a new one, created at the wallet and stored before anyone
        may see it, within the caps.

        Raises ``UnknownPlan`` for a bad plan/amount, ``TooManyPending`` when a cap is
        reached (checked before the wallet is asked, and again atomically with the insert),
        and ``BackendError`` when the wallet fails or hands back an invoice that does not
        decode to what we asked for.
        """
        grant = self.plans.grant(plan, amount_sats)
        reusable = await self.store.find_pending_invoice(
            pubkey, grant.plan, grant.amount_msat, now + self.expiry_seconds // 3
        )
        if reusable is not None:
            return Issued(reusable, reused=True)
        # A fixed price (admission, subscription) is reused above, so one requester cannot
        # pile such invoices on a pubkey; only chosen amounts (credit top-ups, zaps) count
        # against its cap. Otherwise anyone could fill a victim's slots with odd top-ups and
        # keep the victim from buying admission (issue 8's cap, turned against its owner).
        fixed_price = grant.credit_msat == 0
        invoice = await self.issue_grant(pubkey, grant, now, memo=memo, capped_per_pubkey=not fixed_price)
        return Issued(invoice, reused=False)

    async def issue_grant(
        self,
        pubkey: str,
        grant: Grant,
        now: int,
        *,
        memo: str = "",
        hashed_description: str | None = None,
        capped_per_pubkey: bool = True,
    ) -> Invoice:
        """A new invoice for a grant computed by the caller (a zap's, ``lightning.zap``),
        within the caps (the per-pubkey one unless ``capped_per_pubkey`` is false); with
        ``hashed_description`` it commits to it (BOLT11 ``h``) and keeps it. Raises like
        ``issue_or_reuse``."""
        per_pubkey = self.caps.per_pubkey if capped_per_pubkey else None
        mine, total = await self.store.pending_invoice_counts(pubkey, now)
        self._check_caps(mine, total, per_pubkey)
        created = await self.backend.create_invoice(
            grant.amount_msat,
            memo or f"{grant.plan} for {pubkey[:12]}",
            self.expiry_seconds,
            hashed_description=hashed_description,
        )
        try:
            decoded_hash, decoded_amount = decode_bolt11(created.bolt11)
        except ValueError as exc:
            raise BackendError(f"wallet returned an unreadable invoice ({exc})") from None
        if decoded_hash != created.payment_hash or decoded_amount != grant.amount_msat:
            raise BackendError("wallet returned an invoice whose hash or amount differs from the request")
        invoice = Invoice(
            payment_hash=created.payment_hash,
            pubkey=pubkey,
            plan=grant.plan,
            amount_msat=grant.amount_msat,
            bolt11=created.bolt11,
            created_at=now,
            # Trust the wallet's expiry unless it is nonsense (some report 0 or the past).
            expires_at=created.expires_at if created.expires_at > now else now + self.expiry_seconds,
            admit_seconds=grant.admit_seconds,
            admit_forever=grant.admit_forever,
            credit_msat=grant.credit_msat,
            description=hashed_description,
        )
        if not await self.store.add_invoice(invoice, max_pending=self.caps.total, max_pending_per_pubkey=per_pubkey):
            # Lost a race with concurrent requests: the wallet's invoice is never shown.
            mine, total = await self.store.pending_invoice_counts(pubkey, now)
            self._check_caps(mine, total, per_pubkey)
            raise TooManyPending("too many unpaid invoices; try again later", per_pubkey=False)
        return invoice

    def _check_caps(self, mine: int, total: int, per_pubkey: int | None) -> None:
        if per_pubkey is not None and mine >= per_pubkey:
            raise TooManyPending(
                f"this pubkey has {mine} unpaid invoices; pay one or wait for them to expire", per_pubkey=True
            )
        if self.caps.total is not None and total >= self.caps.total:
            raise TooManyPending("too many unpaid invoices at this relay; try again later", per_pubkey=False)

    async def confirm(self, payment_hash: str, now: int) -> ConfirmResult:
        """Ask the wallet about one invoice and settle it if verifiably paid.

        Safe to call any number of times, from any node: the ledger store settles once. A paid
        invoice that expired locally is still credited (the payer did pay). Raises
        ``BackendError`` when the wallet cannot be asked; the caller retries later.
        """
        invoice = await self.store.get_invoice(payment_hash)
        if invoice is None:
            return ConfirmResult(Confirmation.UNKNOWN, None)
        if invoice.state is InvoiceState.PAID:
            return ConfirmResult(Confirmation.ALREADY_PAID, invoice)
        status = await self.backend.lookup_invoice(payment_hash)
        if status.state is PaymentState.PENDING:
            return ConfirmResult(Confirmation.PENDING, invoice)
        if status.state is PaymentState.FAILED:
            return ConfirmResult(Confirmation.EXPIRED, invoice)
        if status.state is PaymentState.UNKNOWN:
            return ConfirmResult(Confirmation.UNKNOWN, invoice)
        problem = settlement_problem(invoice, status)
        if problem is not None:
            log.warning("not crediting invoice %s: %s", payment_hash, problem)
            return ConfirmResult(Confirmation.REJECTED, invoice)
        paid = status.amount_received_msat if status.amount_received_msat is not None else invoice.amount_msat
        if await self.store.settle_invoice(payment_hash, paid, now, status.fee_msat):
            log.info("invoice %s paid: %d msat, %s for %s", payment_hash, paid, invoice.plan, invoice.pubkey)
            return ConfirmResult(Confirmation.CREDITED, invoice, status.fee_msat, status.preimage)
        return ConfirmResult(Confirmation.ALREADY_PAID, invoice)
