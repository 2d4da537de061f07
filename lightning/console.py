"""The payments pages of the operator console (issue 11 item 3): revenue, members, invoices.

The console (relay/ops/console.py) checks NIP-98 and ``[admin] pubkeys`` before it calls a
panel's ``render`` with the page's query parameters; each render answers a document in the
console's page language (relay/ops/console_blocks.py). Figures are aggregated by the store in
SQL, never by loading every invoice, and every list is paged (``PAGE_ROWS`` a page). Query
parameters are the operator's typing: an unknown or garbled value falls back to the
default, and a search that is not a pubkey or payment hash says so in a line of text.

Definitions, as the pages state them:

- **Period**: the last 7, 30 or 365 UTC days, today included (default 30), so a day's bar
  always covers a whole day.
- **Sats received**: what payers sent for invoices paid in the period (``paid_msat``);
  **wallet fees**: what the wallet kept of those payments (e.g. Phoenixd's liquidity fees).
- **Monthly recurring revenue (MRR)**: over the accounts admitted right now for a time (not
  for good) and not banned, the price each paid for the time bought by its latest paid
  time-granting invoice (subscription, admission with a term, or the time part of a zap),
  normalised to a 30-day month: a 30-day subscription at 2,000 sats adds 2,000; a 365-day
  admission at 12,000 sats adds 986. Admission for good, credit top-ups and time granted by
  the operator without an invoice are not recurring and add nothing.
- **Invoice funnel**: the invoices created in the period, and what became of them: paid,
  expired (marked expired, or still unpaid past their expiry) or still payable. Never-paid
  invoices the watcher deletes a while after expiry still count (the store tallies them).
- **Member status** (``lightning.store.base.MemberStatus``): active = admitted for good or for
  more than 7 days more; expiring = admission ends within 7 days; expired = was admitted,
  has ended; credit only = never admitted for a time (or revoked) but holds credit.
- **Tiers** (with ``[payments.tiers]``; ``lightning.store.base.TierCount``): members = hold
  the tier now by payment (a downgrade paid for counts at its period end); comped = given
  it by the operator; in grace = their period ended, the grace of the tier they held last
  has not (they still write); renewing = their period ends within 7 days; moving here = a
  downgrade paid for brings them at their period end. Revenue per tier = what payers sent
  for the tier's invoices paid in the period (renewals, upgrades and downgrades alike).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from lightning.charts import DAY, NARROW, WIDTH, daily_bars, plan_bars
from lightning.plans import Tier
from lightning.pubkeys import npub_encode, parse_pubkey
from lightning.store.base import (
    FOREVER,
    Account,
    Invoice,
    InvoiceState,
    LedgerStore,
    MemberStatus,
    TierCount,
    member_status,
)
from relay.ops import console_blocks as blocks
from relay.plugins.hooks import ConsolePanel

PERIODS = (7, 30, 365)
DEFAULT_DAYS = 30
MONTH_SECONDS = 30 * DAY
EXPIRING_SECONDS = 7 * DAY
PAGE_ROWS = 25  # rows per page of a list: a phone shows each row as a card
# Pages reachable by "Next": each page asks the store for every row before it too (the
# ledger's queries take a limit, not an offset), so past 10,000 rows the operator searches.
MAX_PAGES = 400
MIN_PREFIX = 4  # hex characters a prefix search needs (shorter ones match a sixteenth of everything)
ECHO_CHARS = 80  # of an unparsable search, shown back
REVOKE_METHOD = "payments.revoke"  # NIP-86, lightning's management methods

STATUS_TITLES = {
    MemberStatus.ACTIVE: "Active",
    MemberStatus.EXPIRING: "Expiring within 7 days",
    MemberStatus.EXPIRED: "Expired",
    MemberStatus.CREDIT_ONLY: "Credit only",
    MemberStatus.NONE: "No plan",
}


def sats(msat: int) -> str:
    """Sats with thousands separators; msat shown only when there are some."""
    if msat % 1000 == 0:
        return f"{msat // 1000:,}"
    return f"{msat / 1000:,.3f}".rstrip("0")


def percent(part: int, whole: int) -> str:
    return f"{part / whole * 100:.1f}%" if whole else "-"


def utc(moment: int | None) -> str:
    if moment is None or moment <= 0:
        return "-"
    if moment >= FOREVER:
        return "forever"
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(moment))


def page_number(params: Mapping[str, str]) -> int:
    """The ``page`` asked for (1 to ``MAX_PAGES``); anything else is the first page."""
    value = params.get("page", "")
    if len(value) <= 4 and value.isascii() and value.isdigit() and 1 <= int(value) <= MAX_PAGES:
        return int(value)
    return 1


def paged(
    params: Mapping[str, str], keep: Sequence[str], page: int, shown: int, more: bool, what: str
) -> list[dict[str, Any]]:
    """The blocks under one page of a list: a pager when there is more than one page (its
    queries keep the search in ``keep``), and a line when the last reachable page is full."""
    if page == 1 and not more:
        return []
    base = {key: params[key] for key in keep if params.get(key)}
    previous = {**base, "page": str(page - 1)} if page > 1 else None
    following = {**base, "page": str(page + 1)} if more and page < MAX_PAGES else None
    first = (page - 1) * PAGE_ROWS + 1
    label = f"{what} {first:,}\u2013{first + shown - 1:,}" if shown else f"no {what} on page {page}"
    out = [blocks.pager(label, previous, following)]
    if more and page >= MAX_PAGES:
        out.append(blocks.text(f"Only the first {MAX_PAGES * PAGE_ROWS:,} can be paged through: search to narrow."))
    return out


def period_days(params: Mapping[str, str]) -> int:
    value = params.get("days", "")
    return int(value) if value in {str(d) for d in PERIODS} else DEFAULT_DAYS


class Search:
    """What a search box held: a whole pubkey (hex or npub), a whole or partial hex string
    (a pubkey or a payment hash), nothing, or something else (``problem`` says what)."""

    def __init__(self, raw: str, what: str) -> None:
        self.raw = raw.strip()
        self.prefix = ""  # lowercase hex, up to 64 characters
        self.npub = False  # the prefix is a pubkey for certain (typed as an npub)
        self.problem = ""
        if not self.raw:
            return
        pubkey = parse_pubkey(self.raw)
        if pubkey is not None:
            self.prefix = pubkey
            self.npub = self.raw.lower().startswith("npub1")
            return
        lowered = self.raw.lower()
        if MIN_PREFIX <= len(lowered) < 64 and all(c in "0123456789abcdef" for c in lowered):
            self.prefix = lowered
            return
        shown = self.raw if len(self.raw) <= ECHO_CHARS else self.raw[:ECHO_CHARS] + "\u2026"
        self.problem = f"{shown!r} is not a {what}: type an npub, 64 hex characters, or at least {MIN_PREFIX} of them"


def short_npub(pubkey: str) -> str:
    """Shortened as clients show it, to recognise; the hex beside it is whole, to copy and act on."""
    npub = npub_encode(pubkey)
    return f"{npub[:12]}\u2026{npub[-6:]}"


class PaymentsConsole:
    """The three pages over one store; ``clock`` is the relay's (tests move it);
    ``tiers`` the config's, whose figures the Members and Revenue pages add."""

    def __init__(
        self, store: LedgerStore, clock: Callable[[], float] = time.time, *, tiers: Sequence[Tier] = ()
    ) -> None:
        self.store = store
        self.clock = clock
        self.tiers = tuple(tiers)
        self._graces = {tier.name: tier.grace_seconds for tier in self.tiers}
        self._labels = {tier.name: tier.label for tier in self.tiers}

    def _label(self, role: str) -> str:
        if not role:
            return "no tier (single plans)"
        return self._labels.get(role, f"{role} (role)")

    async def _tier_counts(self, now: int) -> dict[str, TierCount]:
        counts = await self.store.tier_counts(now, now + EXPIRING_SECONDS, self._graces)
        return {count.role: count for count in counts}

    def panels(self) -> Sequence[ConsolePanel]:
        return (
            ConsolePanel("revenue", "Revenue", self.revenue),
            ConsolePanel("members", "Members", self.members),
            ConsolePanel("invoices", "Invoices", self.invoices),
        )

    async def revenue(self, params: Mapping[str, str]) -> dict[str, Any]:
        days = period_days(params)
        now = int(self.clock())
        first_day = now // DAY - days + 1
        since = first_day * DAY
        per_day = [0] * days
        per_plan: dict[str, int] = {}
        invoices_per_plan: dict[str, int] = {}
        received = fees = paid = 0
        for row in await self.store.revenue_by_day(since):
            if 0 <= row.day - first_day < days:  # paid_at in the future (a clock step) is left out
                per_day[row.day - first_day] += row.paid_msat
            per_plan[row.plan] = per_plan.get(row.plan, 0) + row.paid_msat
            invoices_per_plan[row.plan] = invoices_per_plan.get(row.plan, 0) + row.invoices
            received += row.paid_msat
            fees += row.fee_msat
            paid += row.invoices
        funnel = await self.store.invoice_funnel(since, now)
        mrr = await self.store.recurring_msat(now, MONTH_SECONDS)
        span = f"{time.strftime('%Y-%m-%d', time.gmtime(since))} to {time.strftime('%Y-%m-%d', time.gmtime(now))} UTC"
        nothing = "no payments in this period"

        def per_day_chart(width: int) -> str:  # drawn for a desk and for a phone
            sats_per_day = [v / 1000 for v in per_day]
            return daily_bars(f"Sats per day, last {days} days", first_day, sats_per_day, empty=nothing, width=width)

        def per_plan_chart(width: int) -> str:
            sats_per_plan = [(k, v / 1000) for k, v in per_plan.items()]
            return plan_bars(f"Sats per plan, last {days} days", sats_per_plan, empty=nothing, width=width)

        tier_blocks: list[dict[str, Any]] = []
        if self.tiers:
            counts = await self._tier_counts(now)
            tier_blocks.append(
                blocks.table(
                    f"Revenue per tier, last {days} days",
                    ["tier", "price", "sats received", "paid invoices", "members now", "in grace"],
                    [
                        [
                            tier.label,
                            tier.offer_text(),
                            sats(per_plan.get(tier.name, 0)),
                            f"{invoices_per_plan.get(tier.name, 0):,}",
                            f"{counts.get(tier.name, TierCount(tier.name)).members:,}",
                            f"{counts.get(tier.name, TierCount(tier.name)).in_grace:,}",
                        ]
                        for tier in self.tiers
                    ],
                )
            )
        return blocks.document(
            "Revenue",
            [
                blocks.form(
                    [blocks.select_field("days", "Period", [(str(d), f"last {d} days") for d in PERIODS], str(days))]
                ),
                blocks.stats(
                    [
                        ("Sats received", sats(received)),
                        ("Paid invoices", f"{paid:,}"),
                        ("Wallet fees (sats)", sats(fees)),
                        ("Net of fees (sats)", sats(received - fees)),
                        ("Monthly recurring revenue (sats)", sats(mrr)),
                    ],
                    title=f"Last {days} days: {span}",
                ),
                blocks.chart("Sats per day", per_day_chart(WIDTH), per_day_chart(NARROW)),
                blocks.chart("Sats per plan", per_plan_chart(WIDTH), per_plan_chart(NARROW)),
                *tier_blocks,
                blocks.stats(
                    [
                        ("Created", f"{funnel.created:,}"),
                        ("Paid", f"{funnel.paid:,} ({percent(funnel.paid, funnel.created)})"),
                        ("Expired", f"{funnel.expired:,} ({percent(funnel.expired, funnel.created)})"),
                        ("Still payable", f"{funnel.pending:,} ({percent(funnel.pending, funnel.created)})"),
                    ],
                    title="Invoice funnel: invoices created in the period, and what became of them",
                ),
                blocks.text(
                    "Monthly recurring revenue: for each account admitted now for a time (not for good, not"
                    " banned), the price of the time its latest paid time-granting invoice bought, per 30 days."
                ),
            ],
        )

    async def members(self, params: Mapping[str, str]) -> dict[str, Any]:
        now = int(self.clock())
        soon = now + EXPIRING_SECONDS
        search = Search(params.get("q", ""), "pubkey")
        statuses = {s.value: s for s in MemberStatus}
        status = statuses.get(params.get("status", ""))
        counts = await self.store.member_counts(now, soon)
        found: list[dict[str, Any]] = [
            blocks.form(
                [
                    blocks.text_field("q", "Pubkey", search.raw if not search.problem else "", "npub or hex"),
                    blocks.select_field(
                        "status",
                        "Status",
                        [("", "any"), *((s.value, STATUS_TITLES[s]) for s in MemberStatus)],
                        status.value if status else "",
                    ),
                ]
            ),
            blocks.stats(
                [(STATUS_TITLES[s], f"{counts[s]:,}") for s in MemberStatus]
                + [("Accounts in all", f"{sum(counts.values()):,}")],
                title="Accounts by status (admission ending within 7 days: expiring)",
            ),
        ]
        if search.problem:
            found.append(blocks.text(search.problem))
            return blocks.document("Members", found)
        page = page_number(params)
        accounts = await self.store.find_accounts(
            now, soon, status=status, pubkey_prefix=search.prefix, limit=page * PAGE_ROWS + 1
        )
        shown = accounts[(page - 1) * PAGE_ROWS : page * PAGE_ROWS]
        found.append(
            blocks.table(
                "Accounts",
                ["npub", "pubkey (hex)", "status", "admitted until (UTC)", "credit (sats)", "flags", "tier"],
                [self._account_row(a, now, soon) for a in shown],
                actions=[
                    # Kept credit still pays for events (credit plan): the first stops writing.
                    blocks.action(
                        "Revoke, zero credit",
                        REVOKE_METHOD,
                        1,
                        options={"credit": True},
                        confirm="Revoke this member? Admission and allow-listing end and the credit is set"
                        " to zero: the key can no longer write.",
                    ),
                    blocks.action(
                        "Revoke, keep credit",
                        REVOKE_METHOD,
                        1,
                        confirm="End this member's admission and allow-listing, keeping its credit? With the"
                        " credit plan, kept credit still pays for the key's events.",
                    ),
                ],
                empty="no account matches" if search.prefix or status else "no accounts yet",
            )
        )
        found += paged(params, ("q", "status"), page, len(shown), len(accounts) > page * PAGE_ROWS, "accounts")
        if self.tiers:  # below the accounts: the pager scrolls to the page's first table
            found += await self._tier_blocks(now)
        return blocks.document("Members", found)

    def _account_row(self, account: Account, now: int, soon: int) -> list[str]:
        flags = ", ".join(f for f, on in (("banned", account.banned), ("allowed", account.allowed)) if on)
        return [
            short_npub(account.pubkey),
            account.pubkey,
            member_status(account, now, soon).value,
            utc(account.admitted_until),
            sats(account.credit_msat),
            flags,
            self._tier_cell(account, now),
        ]

    def _tier_cell(self, account: Account, now: int) -> str:
        role = account.role_at(now)
        if not role and not account.switch_at:
            return ""
        cell = self._label(role) + (" (comped)" if account.comped else "")
        if account.switch_at > now:
            cell += f", then {self._label(account.next_role)} from {utc(account.switch_at)}"
        return cell

    async def _tier_blocks(self, now: int) -> list[dict[str, Any]]:
        """Members per tier, those in grace, and the renewals due within 7 days."""
        counts = await self._tier_counts(now)
        roles = [tier.name for tier in self.tiers]
        roles += sorted(role for role in counts if role and role not in self._labels)  # comped non-tier roles
        roles += [""] if "" in counts else []
        per_tier = blocks.table(
            "Members per tier (renewing: period ends within 7 days)",
            ["tier", "members", "comped", "in grace", "renewing", "moving here at period end"],
            [
                [
                    self._label(role),
                    *(
                        f"{getattr(counts.get(role, TierCount(role)), what):,}"
                        for what in ("members", "comped", "in_grace", "renewing", "joining")
                    ),
                ]
                for role in roles
            ],
        )
        in_grace = await self.store.find_in_grace(now, self._graces, limit=PAGE_ROWS)
        grace_total = sum(count.in_grace for count in counts.values())
        grace_rows = []
        for account in in_grace:
            tier = self._labels.get(account.last_role, account.last_role)
            ends = account.admitted_until + self._graces.get(account.last_role, 0)
            ended = utc(account.admitted_until)
            grace_rows.append([short_npub(account.pubkey), account.pubkey, tier, ended, utc(ends)])
        out = [
            per_tier,
            blocks.table(
                "Members in grace: their period ended, they still write until their grace ends",
                ["npub", "pubkey (hex)", "tier", "period ended (UTC)", "grace ends (UTC)"],
                grace_rows,
                empty="nobody is in grace",
            ),
        ]
        if grace_total > len(grace_rows):
            out.append(blocks.text(f"The {len(grace_rows)} whose grace ends soonest of {grace_total:,} in grace."))
        soon = now + EXPIRING_SECONDS
        due = [
            a
            for a in await self.store.find_accounts(now, soon, status=MemberStatus.EXPIRING, limit=PAGE_ROWS)
            if not a.banned and not a.comped
        ]
        wallets = {link.pubkey for link in await self.store.nwc_links()} if due else set()
        out.append(
            blocks.table(
                "Upcoming renewals: periods ending within 7 days, soonest first",
                ["npub", "pubkey (hex)", "renews", "period ends (UTC)", "auto-renewal"],
                [
                    [
                        short_npub(a.pubkey),
                        a.pubkey,
                        self._label(a.last_role) if a.last_role else "subscription",
                        utc(a.admitted_until),
                        "wallet connected (NWC)" if a.pubkey in wallets else "-",
                    ]
                    for a in due
                ],
                empty="no period ends within 7 days",
            )
        )
        renewing = sum(count.renewing for count in counts.values())
        if renewing > len(due):
            out.append(blocks.text(f"The {len(due)} soonest of {renewing:,} renewals due within 7 days."))
        return out

    async def invoices(self, params: Mapping[str, str]) -> dict[str, Any]:
        now = int(self.clock())
        search = Search(params.get("q", ""), "pubkey or payment hash")
        found: list[dict[str, Any]] = [
            blocks.form(
                [
                    blocks.text_field(
                        "q", "Search", search.raw if not search.problem else "", "pubkey, npub or payment hash"
                    )
                ]
            )
        ]
        if search.problem:
            found.append(blocks.text(search.problem))
            return blocks.document("Invoices", found)
        page = page_number(params)
        invoices = await self.store.find_invoices(
            pubkey_prefix=search.prefix,
            hash_prefix="" if search.npub else search.prefix,
            limit=page * PAGE_ROWS + 1,
        )
        shown = invoices[(page - 1) * PAGE_ROWS : page * PAGE_ROWS]
        found.append(
            blocks.table(
                "Invoices, newest first",
                ["payment hash", "pubkey", "plan", "sats", "state", "created (UTC)", "paid (UTC)", "wallet fee (sats)"],
                [self._invoice_row(i, now) for i in shown],
                empty="no invoice matches" if search.prefix else "no invoices yet",
            )
        )
        found += paged(params, ("q",), page, len(shown), len(invoices) > page * PAGE_ROWS, "invoices")
        return blocks.document("Invoices", found)

    @staticmethod
    def _invoice_row(invoice: Invoice, now: int) -> list[str]:
        state = invoice.state.value
        if invoice.state is InvoiceState.PENDING and invoice.expires_at <= now:
            state = InvoiceState.EXPIRED.value  # the watcher marks it soon; no wallet pays it now
        return [
            invoice.payment_hash,
            invoice.pubkey,
            invoice.plan,
            sats(invoice.amount_msat),
            state,
            utc(invoice.created_at),
            utc(invoice.paid_at),
            "" if invoice.fee_msat is None else sats(invoice.fee_msat),
        ]
