"""The payments plug-in's tables as the rest of ``lightning`` sees them: the ``LedgerStore``
protocol, its values, and the rules both implementations share.

The ledger lives in the relay's own database, beside the events, through the store's
plug-in seam (``relay.store.database``): ``lightning.store.sqlite`` and
``lightning.store.postgres`` implement this protocol, ``lightning.store.migrations`` keeps
their tables on the ``payments`` version line, and ``lightning.store.open_ledger`` picks
one for the relay's store. The relay core knows none of it.

A per-event price is charged in the event's own transaction: the payments gate attaches
a ``Charge`` to the event's ``WriteRequest``, and the ledger's write hook (installed by
``charge_events``) debits the author's credit inside ``write_batch`` when the store is
about to keep the event, or refuses it (nothing stored, nothing charged). A duplicate,
superseded or deleted event is never charged; an ephemeral event never reaches the
store, so its price is taken by ``charge_credit`` in its own transaction.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from lightning.billing import FOREVER as FOREVER  # admitted_until for "admitted for good"
from lightning.billing import NO_TERMS, Holding, Terms
from relay.nostr.errors import Rejection
from relay.nostr.event import Event

COMPONENT = "payments"  # the ledger's version line (relay.store.database)


class InviteOutcome(enum.Enum):
    """What a NIP-43 claim of an invite code came to (``LedgerStore.redeem_invite``)."""

    REDEEMED = "redeemed"  # this call used the code and applied its grant
    ALREADY_MINE = "already-mine"  # the claimer redeemed it before: nothing changes
    INVALID = "invalid"  # unknown, revoked, or used by someone else (not told apart)
    EXPIRED = "expired"


@dataclass(frozen=True, slots=True)
class Invite:
    """A single-use invite code (NIP-43 ``claim``), kept as the SHA-256 of the code so a
    copy of the database hands out no usable codes. What it grants is fixed at creation,
    like an invoice's."""

    code_hash: str
    plan: str
    created_at: int
    expires_at: int | None  # None: never
    created_by: str  # "operator", or the hex pubkey of the member who asked for it (kind 28935)
    admit_seconds: int = 0
    admit_forever: bool = False
    credit_msat: int = 0
    redeemed_by: str | None = None
    redeemed_at: int | None = None


@dataclass(frozen=True, slots=True)
class NwcLink:
    """A member's Nostr Wallet Connect URI for renewals, sealed (encrypted) by the relay."""

    pubkey: str
    sealed_uri: str
    budget_msat: int  # the most one renewal may cost
    created_at: int


@dataclass(frozen=True, slots=True)
class RenewalAttempt:
    """One renewal of one period: bound to one invoice; ``tries`` counts payment requests."""

    pubkey: str
    period_end: int
    payment_hash: str
    state: str  # "paying", "invoice" (left for the member to pay), "paid", "failed", "cancelled"
    tries: int
    detail: str
    created_at: int
    updated_at: int


RENEWAL_COLUMNS = "pubkey, period_end, payment_hash, state, tries, detail, created_at, updated_at"


INVITE_COLUMNS = (
    "code_hash, plan, created_at, expires_at, created_by, admit_seconds, admit_forever, credit_msat, "
    "redeemed_by, redeemed_at"
)


def invite_from_row(row: Sequence[Any]) -> Invite:
    return Invite(
        code_hash=row[0],
        plan=row[1],
        created_at=row[2],
        expires_at=row[3],
        created_by=row[4],
        admit_seconds=row[5],
        admit_forever=bool(row[6]),
        credit_msat=row[7],
        redeemed_by=row[8],
        redeemed_at=row[9],
    )


def invite_refusal(found: Sequence[Any] | None, pubkey: str, now: int) -> InviteOutcome:
    """Why a claim did not redeem, from the code's ``(expires_at, redeemed_by)`` (None: no
    such code). A code someone else used is "invalid", not "used": a guesser learns nothing."""
    if found is None:
        return InviteOutcome.INVALID
    expires_at, redeemed_by = found
    if redeemed_by is not None:
        return InviteOutcome.ALREADY_MINE if redeemed_by == pubkey else InviteOutcome.INVALID
    if expires_at is not None and expires_at <= now:
        return InviteOutcome.EXPIRED
    return InviteOutcome.INVALID



class InvoiceState(enum.Enum):
    PENDING = "pending"
    PAID = "paid"
    EXPIRED = "expired"


@dataclass(frozen=True, slots=True)
class Invoice:
    """A Lightning invoice as the ledger keeps it, stored *before* it is shown to anyone.

    What settlement grants is fixed here at creation (``admit_seconds``, ``admit_forever``,
    ``credit_msat``), so a price change between issue and payment cannot alter it.
    """

    payment_hash: str
    pubkey: str
    plan: str
    amount_msat: int
    bolt11: str
    created_at: int
    expires_at: int
    admit_seconds: int = 0
    admit_forever: bool = False
    credit_msat: int = 0
    state: InvoiceState = InvoiceState.PENDING
    paid_at: int | None = None
    paid_msat: int | None = None
    fee_msat: int | None = None  # what the wallet kept of the payment (the operator's cost)
    description: str | None = None  # what the BOLT11 ``h`` tag commits to (a NIP-57 zap request)
    # The address group (``relay.net.limits.address_group``) that asked for it, while it is
    # unpaid: its share of the pending pool is counted by this. "" for the relay's own
    # (renewals, the CLI); erased when the invoice is paid or marked expired.
    source: str = ""
    role: str = ""  # a tier's invoice: the NIP-43 role (tier) settlement gives the account


@dataclass(frozen=True, slots=True)
class Account:
    pubkey: str
    admitted_until: int = 0  # unix time; FOREVER for good; 0 never admitted
    credit_msat: int = 0
    banned: bool = False
    allowed: bool = False  # operator allow-list: writes free of charge
    updated_at: int = 0
    role: str = ""  # the NIP-43 role (a tier, ``lightning.plans.Tier``) whose limits apply; "" none
    comped: bool = False  # the operator gave the role without payment (NIP-86 ``assignrole``)
    # A change paid for and scheduled (a downgrade at the period end, ``lightning.billing``):
    # ``role`` until ``switch_at``, then ``next_role`` until ``admitted_until``; 0: none.
    next_role: str = ""
    switch_at: int = 0

    def admitted(self, now: int) -> bool:
        return self.admitted_until > now

    @property
    def holding(self) -> Holding:
        """The account's time as the billing rule sees it."""
        return Holding(self.role, self.admitted_until, self.next_role, self.switch_at, self.comped)

    def role_at(self, now: int) -> str:
        """The role whose limits apply at ``now``: ``next_role`` once ``switch_at`` passed."""
        return self.holding.role_at(now)

    @property
    def last_role(self) -> str:
        """The role held when the paid time ends: what renewal buys, whose grace follows."""
        return self.holding.last_role


# Column order both stores use for the ledger tables, so one mapping reads either.
INVOICE_COLUMNS = (
    "payment_hash, pubkey, plan, amount_msat, bolt11, created_at, expires_at, admit_seconds, "
    "admit_forever, credit_msat, state, paid_at, paid_msat, fee_msat, description, source, role"
)
ACCOUNT_COLUMNS = "pubkey, admitted_until, credit_msat, banned, allowed, updated_at, role, comped, next_role, switch_at"
ACCOUNT_WIDTH = len(ACCOUNT_COLUMNS.split(","))  # a row's account part, when more columns follow


def invoice_from_row(row: Sequence[Any]) -> Invoice:
    """An ``Invoice`` from a row selected as ``INVOICE_COLUMNS``."""
    return Invoice(
        payment_hash=row[0],
        pubkey=row[1],
        plan=row[2],
        amount_msat=row[3],
        bolt11=row[4],
        created_at=row[5],
        expires_at=row[6],
        admit_seconds=row[7],
        admit_forever=bool(row[8]),  # SQLite keeps booleans as 0/1
        credit_msat=row[9],
        state=InvoiceState(row[10]),
        paid_at=row[11],
        paid_msat=row[12],
        fee_msat=row[13],
        description=row[14],
        source=row[15],
        role=row[16],
    )


def account_from_row(row: Sequence[Any]) -> Account:
    """An ``Account`` from a row selected as ``ACCOUNT_COLUMNS``."""
    return Account(
        pubkey=row[0],
        admitted_until=row[1],
        credit_msat=row[2],
        banned=bool(row[3]),
        allowed=bool(row[4]),
        updated_at=row[5],
        role=row[6],
        comped=bool(row[7]),
        next_role=row[8],
        switch_at=row[9],
    )


DAY_SECONDS = 86400


class MemberStatus(enum.Enum):
    """Where an account stands at a moment ``now``, with ``soon`` the end of the "expiring"
    window (the console uses now + 7 days). Exactly one applies to every account."""

    ACTIVE = "active"  # admitted for good, or until after ``soon``
    EXPIRING = "expiring"  # admitted until a moment in (now, soon]
    EXPIRED = "expired"  # was admitted; that ended at or before now
    CREDIT_ONLY = "credit-only"  # never admitted by time (or revoked), holds credit
    NONE = "none"  # neither: e.g. revoked, only allowed/banned, credit spent


def member_status(account: Account, now: int, soon: int) -> MemberStatus:
    """The Python twin of ``member_status_conditions`` (the stores count and filter in SQL)."""
    until = account.admitted_until
    if until > soon:
        return MemberStatus.ACTIVE
    if until > now:
        return MemberStatus.EXPIRING
    if until > 0:
        return MemberStatus.EXPIRED
    return MemberStatus.CREDIT_ONLY if account.credit_msat > 0 else MemberStatus.NONE


def member_status_conditions(now: str, soon: str) -> dict[MemberStatus, str]:
    """SQL conditions over the ``accounts`` columns, one per status, disjoint and covering
    every row; ``now`` and ``soon`` are the store's placeholders for those two moments."""
    return {
        MemberStatus.ACTIVE: f"admitted_until > {soon}",
        MemberStatus.EXPIRING: f"(admitted_until > {now} AND admitted_until <= {soon})",
        MemberStatus.EXPIRED: f"(admitted_until > 0 AND admitted_until <= {now})",
        MemberStatus.CREDIT_ONLY: "(admitted_until <= 0 AND credit_msat > 0)",
        MemberStatus.NONE: "(admitted_until <= 0 AND credit_msat <= 0)",
    }


@dataclass(frozen=True, slots=True)
class TierCount:
    """Accounts of one role (a tier's name; "" the single plans) at a moment, for the
    console's Members and Revenue pages (``LedgerStore.tier_counts``). Banned accounts
    count nowhere."""

    role: str
    members: int = 0  # hold it now by payment: in their period, under ``Account.role_at(now)``
    comped: int = 0  # given it by the operator (NIP-86 ``assignrole``)
    in_grace: int = 0  # period ended, within the grace of the tier held last; writes go on
    renewing: int = 0  # period ends within the "soon" window: a renewal is due
    joining: int = 0  # a downgrade paid for moves them here at their period end


ROLE_NOW_SQL = "(CASE WHEN switch_at > 0 AND switch_at <= {now} THEN next_role ELSE role END)"  # Account.role_at
LAST_ROLE_SQL = "(CASE WHEN switch_at > 0 THEN next_role ELSE role END)"  # Account.last_role


def grace_sql(graces: Sequence[tuple[str, str]]) -> str:
    """The grace of the tier held last, in seconds, from ``(role, seconds)`` placeholder pairs."""
    if not graces:
        return "0"
    return f"(CASE {LAST_ROLE_SQL} " + " ".join(f"WHEN {r} THEN {g}" for r, g in graces) + " ELSE 0 END)"


def in_grace_sql(now: str, graces: Sequence[tuple[str, str]]) -> str:
    """SQL twin of the payments gate's grace (``Gate.in_standing`` past the end): the period
    ended, its tier's grace has not; neither banned nor comped (a comp has no end)."""
    return (
        f"(NOT banned AND NOT comped AND admitted_until > 0 AND admitted_until <= {now}"
        f" AND admitted_until + {grace_sql(graces)} > {now})"
    )


def tier_counts_sql(now: str, soon: str, graces: Sequence[tuple[str, str]]) -> str:
    """One statement for ``LedgerStore.tier_counts``: rows of (what, role, count)."""
    role_now = ROLE_NOW_SQL.format(now=now)
    return " UNION ALL ".join(
        (
            f"SELECT 'members', {role_now}, count(*) FROM accounts"
            f" WHERE NOT banned AND NOT comped AND admitted_until > {now} GROUP BY 2",
            "SELECT 'comped', role, count(*) FROM accounts WHERE NOT banned AND comped GROUP BY 2",
            f"SELECT 'in_grace', {LAST_ROLE_SQL}, count(*) FROM accounts WHERE {in_grace_sql(now, graces)} GROUP BY 2",
            f"SELECT 'renewing', {LAST_ROLE_SQL}, count(*) FROM accounts WHERE NOT banned AND NOT comped"
            f" AND admitted_until > {now} AND admitted_until <= {soon} GROUP BY 2",
            f"SELECT 'joining', next_role, count(*) FROM accounts WHERE NOT banned AND switch_at > {now} GROUP BY 2",
        )
    )


def tier_counts_from_rows(rows: Sequence[Sequence[Any]]) -> list[TierCount]:
    """``TierCount`` per role from ``tier_counts_sql``'s rows, by role."""
    found: dict[str, dict[str, int]] = {}
    for what, role, count in rows:
        found.setdefault(role, {})[what] = int(count)
    return [TierCount(role, **counts) for role, counts in sorted(found.items())]


def hex_prefix_range(prefix: str) -> tuple[str, str]:
    """``[low, high)`` holding exactly the lowercase-hex strings that start with ``prefix``,
    for an index range scan on a text column: every hex digit sorts below ``g`` in the C
    collation and in the usual locale ones alike, where ``LIKE 'ab%'`` could not use a
    PostgreSQL index outside the C locale. ``prefix`` must be lowercase hex already."""
    return prefix, prefix + "g"


@dataclass(frozen=True, slots=True)
class RevenueRow:
    """Paid invoices of one plan settled on one UTC day."""

    day: int  # unix time // DAY_SECONDS
    plan: str
    paid_msat: int  # what payers sent
    fee_msat: int  # what the wallet kept of it
    invoices: int


@dataclass(frozen=True, slots=True)
class InvoiceFunnel:
    """What became of the invoices created since a moment: paid, expired (marked so, or
    still pending past ``expires_at``), or still payable."""

    created: int
    paid: int
    expired: int

    @property
    def pending(self) -> int:
        return self.created - self.paid - self.expired


@dataclass(frozen=True, slots=True)
class Charge:
    """What an event costs, attached to its ``WriteRequest`` by the payments gate; the
    ledger's write hook debits it in the event's own transaction. ``payer``: the account
    that pays, when it is not the event's author (a key linked to another's plan)."""

    msat: int
    payer: str = ""


def charge_of(attachments: tuple[object, ...]) -> int:
    """The price in msat among a write request's attachments (0: none)."""
    return sum(a.msat for a in attachments if isinstance(a, Charge))


def payer_of(attachments: tuple[object, ...], author: str) -> str:
    """The account a write request's charge is debited from: its ``Charge``'s payer, else
    the event's author."""
    for a in attachments:
        if isinstance(a, Charge) and a.payer:
            return a.payer
    return author


# --- one plan, several keys (issue 20 item 4) -----------------------------------------


@dataclass(frozen=True, slots=True)
class LinkedKey:
    """A key linked to another key's plan (its ``owner``): it writes as the owner's account
    does, and the plan's quotas count its events with the owner's."""

    pubkey: str
    owner: str
    linked_at: int


class LinkOutcome(enum.Enum):
    """What ``LedgerStore.link_key`` came to; every refusal is a rule the member can read."""

    LINKED = "linked"
    ALREADY = "already"  # linked to this owner before: nothing changes
    FULL = "full"  # the plan has as many linked keys as it allows
    TAKEN = "taken"  # the key is linked to another plan: unlink it there first
    OWNER_IS_LINKED = "owner-is-linked"  # the owner is itself a linked key: no chains
    KEY_HAS_LINKS = "key-has-links"  # the key has keys linked to its own plan: no chains


LINKED_COLUMNS = "pubkey, owner, linked_at"


def plan_account(own: Account | None, plan: Account | None, now: int) -> Account | None:
    """The account a key writes as: its own, or the plan of the key it is linked to
    (``plan``, None when it is linked to none). A ban is per key and the key's own standing
    wins while it lasts (it paid, or was given something, for itself); otherwise a linked
    key writes as its plan, whose ``pubkey`` is then the owner's."""
    if plan is None or own is None:
        return own if plan is None else plan
    if own.banned or own.allowed or own.comped or own.admitted(now) or own.credit_msat > 0:
        return own
    return plan


@dataclass(frozen=True, slots=True)
class RoleDefinition:
    """A NIP-43 role (kind 33534) made by the operator through NIP-86 ``createrole``; the
    tiers of the config file are roles too, but live in the config, not here."""

    id: str  # the event's ``d`` tag
    label: str = ""
    description: str = ""
    color: int | None = None  # a hue, 0-360
    order: int | None = None  # for client display only (NIP-43)


ROLE_COLUMNS = "id, label, description, color, ord"


ChargeRefusal = Callable[[Event], Rejection]
"""The reply to an event whose charge the ledger refused at commit (its credit ran out)."""


class LedgerStore(Protocol):
    """Invoices, accounts, invites, reminders, wallet connections and renewals: the payments
    plug-in's own tables, in the relay's database."""

    async def open(self) -> None:
        """Bring the ledger's tables to this code's version (the store must be open)."""
        ...

    def charge_events(self, refusal: ChargeRefusal, refused: Callable[[str], None]) -> None:
        """Install the write hook that debits each event's ``Charge`` in its own
        transaction: an account with less credit gets nothing stored and ``refusal(event)``
        as its reply, and ``refused(pubkey)`` is called on the event loop (a cached balance
        was stale)."""
        ...

    # --- invoices and accounts -------------------------------------------------------

    async def add_invoice(
        self,
        invoice: Invoice,
        *,
        max_pending: int | None = None,
        max_pending_per_pubkey: int | None = None,
        max_pending_per_source: int | None = None,
        evict: bool = False,
    ) -> bool:
        """Store ``invoice``. With caps, only while fewer than ``max_pending`` unexpired
        pending invoices exist in all (``max_pending_per_pubkey`` for its pubkey,
        ``max_pending_per_source`` for its ``source``): counted and inserted in one
        transaction serialised across nodes, so concurrent requests cannot overshoot. False
        (nothing stored) when a cap is reached.

        With ``evict``, a full pool makes room instead of refusing (issue 17: strangers
        filled it and locked every payer out): the oldest pending invoice of the source
        holding the most unexpired ones (of the invoice's own source when it holds as
        many) gets ``expires_at = invoice.created_at``, so it no longer counts. It stays
        pending and creditable: a payment that still reaches it is found by the wallet's
        push, by polling while its page is watched, or by the next reconciliation. Invoices
        with source "" (the relay's own) are never evicted. False when nothing can be."""
        ...

    async def find_pending_invoice(self, pubkey: str, plan: str, amount_msat: int, valid_after: int) -> Invoice | None:
        """The newest pending invoice of ``pubkey`` for ``plan`` and ``amount_msat`` that
        expires after ``valid_after``: the join page hands it out again instead of a new one."""
        ...

    async def pending_invoice_counts(self, pubkey: str, now: int, source: str = "") -> tuple[int, int, int]:
        """(pending invoices of ``pubkey``, of ``source`` (0 for ""), in all), counting only
        those that expire after ``now``: a cheap look before asking the wallet for a new one."""
        ...

    async def delete_unpaid_invoices(self, expired_before: int) -> int:
        """Delete invoices marked expired whose ``expires_at`` is before ``expired_before``;
        paid invoices are never deleted (accounting). In the same transaction, add them to
        the tally of pruned invoices per UTC day of creation, so the console's invoice
        funnel still counts them. Returns how many."""
        ...

    async def get_invoice(self, payment_hash: str) -> Invoice | None: ...

    async def list_invoices(
        self,
        *,
        pending_only: bool = False,
        pubkey: str | None = None,
        valid_after: int | None = None,
        paid_after: int | None = None,
        limit: int | None = None,
    ) -> list[Invoice]:
        """Newest first: every invoice, or those that are pending, of ``pubkey``, expiring
        after ``valid_after``, paid after ``paid_after``, at most ``limit`` of them (the
        ledger grows for ever: callers that show or scan it say how much they need)."""
        ...

    async def settle_invoice(
        self, payment_hash: str, paid_msat: int, now: int, fee_msat: int = 0, *, terms: Terms = NO_TERMS
    ) -> bool:
        """Mark a pending (or locally expired) invoice paid and apply its grant to the
        account, in one transaction, exactly once: True only for the call that did it,
        even when several nodes race on the same payment hash. The caller has already
        checked the amount against the invoice. ``paid_msat`` is what the payer sent;
        ``fee_msat`` what the wallet kept of it (recorded, never charged to the payer).
        The time granted follows ``lightning.billing.after_payment`` with ``terms`` (the
        relay's tiers: renewal, grace, upgrade, downgrade)."""
        ...

    async def expire_invoices(self, now: int) -> int:
        """Mark pending invoices past ``expires_at`` expired; return how many."""
        ...

    async def charge_credit(self, pubkey: str, amount_msat: int, now: int) -> bool:
        """Debit ``amount_msat`` from the account's credit in one transaction; False (and
        nothing changed) when the account has less. For events that never reach the
        store's ``write_batch`` (ephemeral kinds, NIP-01 20000-29999)."""
        ...

    async def get_account(self, pubkey: str) -> Account | None: ...

    async def account_and_owner(self, pubkey: str) -> tuple[Account | None, str | None]:
        """The key's own account and the owner of the plan it is linked to (None: none), in
        one read: what the write gate's cache needs for a key it has not seen."""
        ...

    # --- one plan, several keys -----------------------------------------------------

    async def link_key(self, owner: str, pubkey: str, limit: int, now: int) -> LinkOutcome:
        """Link ``pubkey`` to ``owner``'s plan unless the plan has ``limit`` linked keys
        already (counted and inserted in one transaction, serialised across nodes), the key
        is linked elsewhere, or a link would make a chain. Creates the owner's account when
        missing; bumps the account change counter."""
        ...

    async def unlink_key(self, owner: str, pubkey: str, now: int) -> bool:
        """End the link of ``pubkey`` to ``owner``'s plan; False when there was none."""
        ...

    async def unlink_all(self, pubkey: str, now: int) -> int:
        """End every link of ``pubkey``, as a linked key or as an owner (it left the relay)."""
        ...

    async def linked_keys(self, owner: str) -> list[LinkedKey]:
        """The keys linked to ``owner``'s plan, oldest link first."""
        ...

    async def list_accounts(self) -> list[Account]: ...

    # --- the operator console's figures (lightning/console.py), aggregated in SQL --------

    async def revenue_by_day(self, since: int) -> list[RevenueRow]:
        """Invoices paid at or after ``since``, summed per (UTC day of ``paid_at``, plan),
        ordered by day then plan."""
        ...

    async def invoice_funnel(self, since: int, now: int) -> InvoiceFunnel:
        """Invoices created at or after ``since`` and what became of them by ``now``. Never-
        paid invoices pruned by ``delete_unpaid_invoices`` still count (created and
        expired), through the per-day tally it keeps: exact when ``since`` is a UTC midnight."""
        ...

    async def recurring_msat(self, now: int, per_seconds: int) -> int:
        """Recurring revenue per ``per_seconds``: over accounts admitted at ``now`` for a
        time (not for good) and not banned, the price of the time each one bought with its
        latest paid time-granting invoice (amount less its credit part), normalised to
        ``per_seconds`` (price x per_seconds / admit_seconds)."""
        ...

    async def member_counts(self, now: int, soon: int) -> dict[MemberStatus, int]:
        """Accounts per ``MemberStatus`` (every status present, zeros included)."""
        ...

    async def find_accounts(
        self, now: int, soon: int, *, status: MemberStatus | None = None, pubkey_prefix: str = "", limit: int = 100
    ) -> list[Account]:
        """At most ``limit`` accounts in ``status`` (None: any) whose pubkey starts with
        ``pubkey_prefix`` (lowercase hex; 64 characters: that one), those expiring soonest
        first for ``EXPIRING``, else those admitted longest (for good first)."""
        ...

    async def tier_counts(self, now: int, soon: int, graces: Mapping[str, int]) -> list[TierCount]:
        """Accounts per role (``TierCount``), by role; ``graces``: each tier's grace in
        seconds (the config's), ``soon`` the end of the renewal window."""
        ...

    async def find_in_grace(self, now: int, graces: Mapping[str, int], limit: int = 100) -> list[Account]:
        """At most ``limit`` accounts in the grace of the tier they held last (as
        ``TierCount.in_grace``), those whose grace ends soonest first."""
        ...

    async def find_invoices(self, *, pubkey_prefix: str = "", hash_prefix: str = "", limit: int = 100) -> list[Invoice]:
        """At most ``limit`` invoices, newest first, whose pubkey starts with
        ``pubkey_prefix`` or whose payment hash starts with ``hash_prefix`` (lowercase hex;
        only the prefixes given count; neither: every invoice)."""
        ...

    async def account_changes(self) -> int:
        """A counter that grows with every ``update_account`` and settlement, from any
        process or node: relays poll it (cheaply) to drop cached account state at once."""
        ...

    async def update_account(
        self,
        pubkey: str,
        now: int,
        *,
        admitted_until: int | None = None,
        credit_delta_msat: int = 0,
        banned: bool | None = None,
        allowed: bool | None = None,
        role: str | None = None,
        comped: bool | None = None,
    ) -> Account:
        """Operator changes (grant/revoke/ban/allow, assign a role); creates the account
        when missing. Setting ``admitted_until`` or ``role`` drops a scheduled change
        (``next_role``): the operator's word is the whole new state."""
        ...

    # --- NIP-43 roles made through NIP-86 (createrole, editrole, deleterole) -----------

    async def list_roles(self) -> list[RoleDefinition]:
        """By id."""
        ...

    async def save_role(self, role: RoleDefinition, *, create: bool, now: int) -> bool:
        """``create``: add it, False when the id exists; else change it, False when absent."""
        ...

    async def delete_role(self, role_id: str, now: int) -> bool:
        """Remove it and take it from every account that holds it (not comped any more);
        False when there was none."""
        ...


    # --- NIP-43 membership: invite codes and leaving -------------------------------

    async def add_invites(self, invites: Sequence[Invite]) -> None:
        """Store new invite codes (all or none)."""
        ...

    async def redeem_invite(self, code_hash: str, pubkey: str, now: int, *, terms: Terms = NO_TERMS) -> InviteOutcome:
        """Use the code for ``pubkey`` and apply its grant to the account, in one
        transaction, exactly once: of two claims racing for one code (on any node) one
        gets ``REDEEMED``, the other ``INVALID``. Its time follows ``settle_invoice``'s rule."""
        ...

    async def list_invites(self) -> list[Invite]:
        """Newest first."""
        ...

    async def open_invite_count(self, created_by: str, now: int) -> int:
        """Unused, unexpired codes made by ``created_by`` (bounds what a member may ask for)."""
        ...

    async def revoke_invite(self, code_hash: str) -> bool:
        """Delete an unused code; False when there is none (or it was used)."""
        ...

    async def end_membership(self, pubkey: str, now: int) -> bool:
        """A NIP-43 leave request: admission, credit and the allowed flag end (nothing is
        refunded). False when the pubkey had none of them."""
        ...

    # --- reminders in Nostr (issue 10 item 5) ----------------------------------------

    async def set_reminders(self, pubkey: str, on: bool, now: int) -> None:
        """Opt in to (or out of) reminders by DM; only opted-in pubkeys ever get one."""
        ...

    async def reminders_on(self, pubkey: str) -> bool: ...

    async def reminder_targets(self) -> list[tuple[Account, bool]]:
        """Every opted-in account, with whether a low-credit reminder is outstanding."""
        ...

    async def claim_reminder(self, pubkey: str, reason: str, term_end: int, now: int) -> bool:
        """Record that this reminder is sent; True only for the one caller (on any node)
        that recorded it, which then sends it: each reminder goes out at most once."""
        ...

    async def rearm_reminder(self, pubkey: str, reason: str) -> None:
        """Forget a sent reminder (credit back above the threshold: the next dip reminds again)."""
        ...

    # --- renewal by Nostr Wallet Connect (issue 10 item 6) --------------------------------

    async def set_nwc_link(self, link: NwcLink) -> None:
        """Keep (or replace) a member's sealed NWC URI."""
        ...

    async def forget_nwc_link(self, pubkey: str) -> bool: ...

    async def nwc_links(self) -> list[NwcLink]: ...

    async def claim_renewal(self, pubkey: str, period_end: int, payment_hash: str, now: int) -> bool:
        """Start the renewal of the period ending ``period_end`` with this invoice; True only
        for the one caller (on any node) that started it."""
        ...

    async def get_renewal(self, pubkey: str, period_end: int) -> RenewalAttempt | None: ...

    async def record_renewal(
        self, pubkey: str, period_end: int, state: str, detail: str, now: int, *, tried: bool
    ) -> None:
        """Note what happened (``tried``: one more payment request was sent)."""
        ...

    async def rebind_renewal(
        self, pubkey: str, period_end: int, old_hash: str, new_hash: str, state: str, detail: str, now: int
    ) -> bool:
        """Bind the renewal to a new invoice (the next try of its schedule, or the invoice
        left for the member to pay), only while it is still bound to ``old_hash``: of two
        nodes starting the next try, one rebinds, the other's invoice is never shown."""
        ...

    async def list_renewals(self, pubkey: str) -> list[RenewalAttempt]:
        """Newest period first."""
        ...
