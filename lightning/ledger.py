"""Issue invoices and confirm settlements on top of the ledger's tables (``lightning.store``).

The ledger store does the exactly-once part (``settle_invoice`` is idempotent by payment hash,
in one transaction with the account change). This module makes sure nothing reaches it
unverified: an invoice is stored before anyone sees it, and a settlement is applied only
after the wallet itself says the invoice is paid *and* the BOLT11 we stored decodes to the
same payment hash and amount and the wallet received at least that amount. A push message
is never trusted on its own (LNbits' websocket channels, for one, can be forged).
"""

from __future__ import annotations

import contextlib
import enum
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import bolt11

from lightning.backend import BackendError, InvoiceStatus, PaymentState, WalletBackend
from lightning.plans import Grant, Plans
from lightning.store.base import Invoice, InvoiceState, LedgerStore
from relay.net.limits import BucketTable, address_group
from relay.session.heavy_reads import HeavyReads

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
    paid_at: int | None = None  # CREDITED: when the wallet says it was paid (NIP-57 receipts)


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
    """A cap on unpaid invoices is reached; ``per_pubkey`` is true for the requester's own
    share (its pubkey's or its address group's: asking again later helps), false for the
    relay-wide pool (nothing could be evicted)."""

    def __init__(self, message: str, *, per_pubkey: bool) -> None:
        super().__init__(message)
        self.per_pubkey = per_pubkey


@dataclass(frozen=True, slots=True)
class PendingCaps:
    """Bounds on unpaid, unexpired invoices.

    Issue 8: 100 IPs made 1,000 in 7 s, so the pool got a ``total``. Issue 17: 138
    addresses then filled that pool in 26 s and every payer got 503 for the 15 minutes
    until they expired. So each address group holds at most ``per_source``, and a full
    pool no longer refuses a newcomer: the oldest invoice of the group holding the most
    makes room (``Store.add_invoice(evict=True)``). A payer from any group that holds
    less than the biggest holder always gets an invoice; pushing a payer's invoice out
    takes as many groups as ``total`` (measured: README, "Payments")."""

    total: int | None = None
    per_pubkey: int | None = None
    per_source: int | None = None


ISSUING_AT_ONCE = 2  # invoices being issued at once, relay-wide (per process)


class RequestBudget:
    """How often an address group may ask for a new invoice: ONE budget for every route a
    stranger reaches (the join page's ``POST /api/invoice`` and the zap callback).

    Issue 17 found one bucket per route, keyed on the raw address: both routes doubled an
    attacker's rate, and one IPv6 host had 2^64 addresses to pick from. Keys are the
    connection caps' address groups (IPv4 address, IPv6 ``/ipv6_prefix``); the buckets live
    in a ``relay.net.limits.BucketTable``. The group (``source``) also goes on the invoice, so
    its share of the pending pool is counted by the store (``PendingCaps.per_source``)."""

    def __init__(
        self,
        per_minute: int,
        *,
        ipv6_prefix: int = 64,
        capacity: int = 100_000,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._table = BucketTable(per_minute / 60.0, float(per_minute), capacity, name="invoice-requests")
        self._ipv6_prefix = ipv6_prefix
        self._monotonic = monotonic
        # Seconds until a drained bucket holds a token again (RFC 9110 Retry-After).
        self.retry_after = max(1, math.ceil(60 / per_minute))
        # Issuing is work on the relay's own resources (the wallet call, the ledger's insert
        # on the store's one writer, where events commit too): at most ISSUING_AT_ONCE at a
        # time, one per address group, turns round robin over the groups waiting. Fifty
        # addresses spending their whole budgets at once (500 invoices in ~2 s) held a
        # bystander's EVENT OK at p99 267 ms; an honest payer now waits one round at most.
        self._turns = HeavyReads(ISSUING_AT_ONCE, 1)

    def source(self, client_ip: str) -> str:
        """The address group ``client_ip`` is counted under."""
        return address_group(client_ip, self._ipv6_prefix)

    def take(self, source: str) -> bool:
        """One request's token from ``source``'s bucket; False when it is empty."""
        return self._table.take(source, self._monotonic())

    def turn(self, source: str) -> contextlib.AbstractAsyncContextManager[None]:
        """``source``'s fair turn at issuing an invoice (after ``take``)."""
        return self._turns.turn(source)


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
        self.terms = plans.terms()  # what settlement's time rule reads (lightning.billing)
        self.expiry_seconds = expiry_seconds
        self.caps = caps or PendingCaps()

    async def issue(self, pubkey: str, plan: str, now: int, amount_sats: int | None = None, memo: str = "") -> Invoice:
        """``issue_or_reuse``'s invoice, for the relay itself (renewals, the CLI)."""
        return (await self.issue_or_reuse(pubkey, plan, now, amount_sats, memo)).invoice

    async def issue_or_reuse(
        self, pubkey: str, plan: str, now: int, amount_sats: int | None = None, memo: str = "", *, source: str = ""
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
        invoice = await self.issue_grant(
            pubkey, grant, now, memo=memo, capped_per_pubkey=not fixed_price, source=source
        )
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
        source: str = "",
        expiry_seconds: int | None = None,
    ) -> Invoice:
        """A new invoice for a grant computed by the caller (a zap's, ``lightning.zap``),
        within the caps (the per-pubkey one unless ``capped_per_pubkey`` is false); with
        ``hashed_description`` it commits to it (BOLT11 ``h``) and keeps it. ``source`` is
        the requester's address group (``relay.net.limits.address_group``), "" for the relay's
        own invoices (renewals), which no share limits and no eviction touches. The shares
        are checked here before the wallet is asked, and again with the insert, where a full
        pool evicts (``PendingCaps``). ``expiry_seconds``: the invoice's life, when not the
        relay's usual (a renewal left for the member to pay lives days). Raises like
        ``issue_or_reuse``."""
        expiry = self.expiry_seconds if expiry_seconds is None else expiry_seconds
        per_pubkey = self.caps.per_pubkey if capped_per_pubkey else None
        mine, held, _total = await self.store.pending_invoice_counts(pubkey, now, source)
        self._check_shares(mine, held, per_pubkey, source)
        created = await self.backend.create_invoice(
            grant.amount_msat,
            memo or f"{grant.plan} for {pubkey[:12]}",
            expiry,
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
            expires_at=created.expires_at if created.expires_at > now else now + expiry,
            admit_seconds=grant.admit_seconds,
            admit_forever=grant.admit_forever,
            credit_msat=grant.credit_msat,
            role=grant.role,
            description=hashed_description,
            source=source,
        )
        per_source = self.caps.per_source if source else None
        added = await self.store.add_invoice(
            invoice,
            max_pending=self.caps.total,
            max_pending_per_pubkey=per_pubkey,
            max_pending_per_source=per_source,
            evict=True,
        )
        if not added:
            # Lost a race with concurrent requests: the wallet's invoice is never shown.
            mine, held, _total = await self.store.pending_invoice_counts(pubkey, now, source)
            self._check_shares(mine, held, per_pubkey, source)
            raise TooManyPending("too many unpaid invoices at this relay; try again later", per_pubkey=False)
        return invoice

    def _check_shares(self, mine: int, held: int, per_pubkey: int | None, source: str) -> None:
        if per_pubkey is not None and mine >= per_pubkey:
            raise TooManyPending(
                f"this pubkey has {mine} unpaid invoices; pay one or wait for them to expire", per_pubkey=True
            )
        if source and self.caps.per_source is not None and held >= self.caps.per_source:
            raise TooManyPending(
                f"your address has {held} unpaid invoices; pay one or wait for them to expire", per_pubkey=True
            )

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
        if await self.store.settle_invoice(payment_hash, paid, now, status.fee_msat, terms=self.terms):
            log.info("invoice %s paid: %d msat, %s for %s", payment_hash, paid, invoice.plan, invoice.pubkey)
            return ConfirmResult(Confirmation.CREDITED, invoice, status.fee_msat, status.preimage, status.paid_at)
        return ConfirmResult(Confirmation.ALREADY_PAID, invoice)
