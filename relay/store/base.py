"""The storage seam: the only thing the server and the lightning package know about storage.

Both implementations (``sqlite.SqliteStore``, ``postgres.PostgresStore``) pass one shared
test suite (``tests/store/``). Events and the payments ledger live in the same database
so that a per-event credit charge commits in the very transaction that stores the event.

Rules every implementation applies inside ``write_batch``'s single transaction (NIP-01/09/40):

- an id already stored -> ``DUPLICATE`` (the event *is* stored: OK true);
- an id removed by a NIP-09 deletion (``e`` tag by the same author), or an addressable /
  replaceable version at or before a NIP-09 ``a``-tag deletion's created_at -> ``DELETED``;
- replaceable (0, 3, 10000-19999) keeps the newest per (pubkey, kind), addressable
  (30000-39999) per (pubkey, kind, d tag); equal created_at keeps the lowest id. An event
  that loses to a stored version -> ``SUPERSEDED`` (not stored: OK false);
- a kind-5 event deletes the author's own events named by its ``e`` tags and, for ``a``
  tags ``kind:pubkey:d`` with the author's pubkey, every version with created_at <= its own;
  kind-5 events themselves are never deleted (NIP-09: deleting a deletion has no effect);
- ``charge_msat`` > 0 debits the author's credit; not enough credit -> ``INSUFFICIENT_CREDIT``
  and nothing is stored or charged; a DUPLICATE/SUPERSEDED/DELETED event is never charged;
- ephemeral events never reach the store (their price is taken by ``charge_credit``).

Queries never return expired events (NIP-40, ``expiration`` tag <= now).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from array import array
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from relay.event import Event
from relay.filters import Filter

if TYPE_CHECKING:
    from relay.policy import ReadScope

FOREVER = 2**62  # admitted_until value for "admitted for good"


class InviteOutcome(enum.Enum):
    """What a NIP-43 claim of an invite code came to (``Store.redeem_invite``)."""

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
    state: str  # "paying", "paid", "failed"
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


# Stored answers (issue 8, item 2): a REQ's answer is read from the store in pages of about
# PAGE_BYTES so that what one connection holds stays near its outgoing_queue_bytes whatever
# its filters ask for (16 clients REQ-ing limit 5000 over 60 KB events took the relay to
# 2.5 GB when whole answers were read at once). An answer of at most FAST_ROWS rows (the
# sum of the filters' limits) is still one statement, as before: small REQs, the common
# case, pay no extra round trip; at most FAST_ROWS x max_message_length bytes.
PAGE_BYTES = 256 * 1024
PAGE_ROWS = 1000  # keys fetched per page statement, whatever their size
FAST_ROWS = 64


class ReadLanes:
    """Fair turns at a store's ``readers`` (issue 17): at most ``heavy`` of them at once
    for expensive reads (NIP-77 item sets, NIP-50 ranking, COUNT), so however many of
    those wait, ``readers - heavy`` readers are left to ordinary reads: REQ always has one.

    Turns go first come, first served, and a freed reader is handed to the waiter itself.
    ``asyncio.Queue`` (the old SQLite pool, and asyncpg's) lets a newcomer take a reader
    put back before the waiter it woke runs, and that waiter goes to the back of the line
    again: on old main a bystander's ``REQ {"limit":1}`` waited over 10 s for one of two
    readers while 40 connections sent COUNTs back to back. A heavy read held back by the
    heavy cap does not hold up the ordinary reads queued behind it."""

    def __init__(self, readers: int, heavy: int) -> None:
        if not 1 <= heavy < readers:
            raise ValueError("need 1 <= heavy < readers: ordinary reads keep at least one reader")
        self.readers = readers
        self.heavy = heavy
        self.busy = 0
        self.busy_heavy = 0
        self._waiting: deque[tuple[asyncio.Future[None], bool]] = deque()

    def _fits(self, heavy: bool) -> bool:
        return self.busy < self.readers and (not heavy or self.busy_heavy < self.heavy)

    @contextlib.asynccontextmanager
    async def turn(self, *, heavy: bool = False) -> AsyncIterator[None]:
        await self._acquire(heavy)
        try:
            yield
        finally:
            self._release(heavy)

    async def _acquire(self, heavy: bool) -> None:
        # Every release hands out what fits at once, so when this read fits nobody who
        # could use the reader is waiting for it: no line is jumped.
        if self._fits(heavy):
            self._take(heavy)
            return
        entry = (asyncio.get_running_loop().create_future(), heavy)
        self._waiting.append(entry)
        try:
            await entry[0]
        except BaseException:
            if entry[0].done() and not entry[0].cancelled():
                self._release(heavy)  # given a reader, but the caller is gone: pass it on
            else:
                with contextlib.suppress(ValueError):
                    self._waiting.remove(entry)
            raise

    def _take(self, heavy: bool) -> None:
        self.busy += 1
        if heavy:
            self.busy_heavy += 1

    def _release(self, heavy: bool) -> None:
        self.busy -= 1
        if heavy:
            self.busy_heavy -= 1
        held_back: deque[tuple[asyncio.Future[None], bool]] = deque()
        while self._waiting and self.busy < self.readers:
            waiter, wants_heavy = entry = self._waiting.popleft()
            if waiter.done():  # its caller was cancelled
                continue
            if not self._fits(wants_heavy):
                held_back.append(entry)
                continue
            self._take(wants_heavy)
            waiter.set_result(None)
        held_back.extend(self._waiting)
        self._waiting = held_back


class StoreUnavailable(Exception):
    """The store cannot be opened (no such folder, permissions, wrong password, server
    down): an operator's problem, reported as one line naming the store, not a traceback."""


class WriteOutcome(enum.Enum):
    STORED = "stored"
    DUPLICATE = "duplicate"
    SUPERSEDED = "superseded"
    DELETED = "deleted"
    INSUFFICIENT_CREDIT = "insufficient-credit"


@dataclass(frozen=True, slots=True)
class WriteRequest:
    event: Event
    charge_msat: int = 0


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
    # The address group (``relay.limits.address_group``) that asked for it, while it is
    # unpaid: its share of the pending pool is counted by this. "" for the relay's own
    # (renewals, the CLI); erased when the invoice is paid or marked expired.
    source: str = ""


@dataclass(frozen=True, slots=True)
class Account:
    pubkey: str
    admitted_until: int = 0  # unix time; FOREVER for good; 0 never admitted
    credit_msat: int = 0
    banned: bool = False
    allowed: bool = False  # operator allow-list: writes free of charge
    updated_at: int = 0

    def admitted(self, now: int) -> bool:
        return self.admitted_until > now


# Column order both stores use for the ledger tables, so one mapping reads either.
INVOICE_COLUMNS = (
    "payment_hash, pubkey, plan, amount_msat, bolt11, created_at, expires_at, admit_seconds, "
    "admit_forever, credit_msat, state, paid_at, paid_msat, fee_msat, description, source"
)
ACCOUNT_COLUMNS = "pubkey, admitted_until, credit_msat, banned, allowed, updated_at"


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


def hex_prefix_range(prefix: str) -> tuple[str, str]:
    """``[low, high)`` holding exactly the lowercase-hex strings that start with ``prefix``,
    for an index range scan on a text column: every hex digit sorts below ``g`` in the C
    collation and in the usual locale ones alike, where ``LIKE 'ab%'`` could not use a
    PostgreSQL index outside the C locale. ``prefix`` must be lowercase hex already."""
    return prefix, prefix + "g"


@dataclass(frozen=True, slots=True)
class UseLimit:
    """One count ``Store.take_uses`` keeps: at most ``limit`` uses of ``key`` in a window
    that opens with the key's first use and ends at ``expires_at`` (fixed when it opens).

    Guards that must hold for the relay as a whole live here rather than in a process's
    memory, so neither a restart, another ``--workers`` process nor another node on the
    same PostgreSQL resets them (issue 17 items 3 and 9): a NIP-98 header is honoured once
    (``limit`` 1, its event id, until it can no longer pass the time check), free inbox
    messages are counted per sender and per address group for an hour."""

    key: str
    limit: int
    expires_at: int


USES_PRUNED_PER_CALL = 64  # ended windows deleted by each take_uses: the table holds ~the live ones


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


def answerable(filters: Sequence[Filter]) -> list[Filter]:
    """The filters that can contribute to an answer: not empty, and not ``limit: 0`` (NIP-01:
    that REQ wants only live events)."""
    return [f for f in filters if f.limit != 0 and not f.is_empty()]


def answer_rows(filters: Sequence[Filter]) -> int | None:
    """The most rows an answer to ``filters`` can hold (None: unbounded)."""
    total = 0
    for f in filters:
        if f.limit is None:
            return None
        total += f.limit
    return total


@dataclass(slots=True)
class AnswerKeys:
    """A stored answer as keys, in answer order: the store's row key (SQLite rid,
    PostgreSQL seq), the event id and the raw JSON's size; ~48 bytes a row instead of the
    events themselves. The id is checked again when the page is read, so a row key reused
    meanwhile (SQLite hands out max(rid) + 1) can never substitute another event."""

    keys: array[int] = field(default_factory=lambda: array("q"))
    sizes: array[int] = field(default_factory=lambda: array("q"))
    ids: bytearray = field(default_factory=bytearray)

    def add(self, key: int, event_id: bytes, size: int) -> None:
        self.keys.append(key)
        self.ids += event_id
        self.sizes.append(size)

    def __len__(self) -> int:
        return len(self.keys)


RowFetch = Callable[[list[int]], Awaitable[Sequence[tuple[int, bytes, bytes]]]]


async def read_pages(answer: AnswerKeys, fetch: RowFetch, page_bytes: int) -> AsyncGenerator[list[bytes], None]:
    """The raw JSON of ``answer``'s events in answer order, in pages of at most
    ``page_bytes`` (or one event) and ``PAGE_ROWS`` rows. ``fetch(keys)`` returns ``(key,
    id, raw)`` rows in any order; an event deleted since the keys were read is skipped."""
    n = len(answer)
    i = 0
    while i < n:
        j, total = i, 0
        while j < n and j - i < PAGE_ROWS and (j == i or total + answer.sizes[j] <= page_bytes):
            total += answer.sizes[j]
            j += 1
        found = {key: (eid, raw) for key, eid, raw in await fetch(list(answer.keys[i:j]))}
        page: list[bytes] = []
        for k in range(i, j):
            row = found.get(answer.keys[k])
            if row is not None and row[0] == answer.ids[32 * k : 32 * k + 32]:
                page.append(row[1])
        if page:
            yield page
        i = j


AnswerOf = Callable[[str], Awaitable[Sequence[Sequence[Any]]]]


async def answer_pages(
    live: list[Filter], answer_of: AnswerOf, key_columns: str, fetch: RowFetch, page_bytes: int
) -> AsyncGenerator[list[bytes], None]:
    """``Store.query_pages`` over a store's two primitives: ``answer_of(columns)`` runs the
    answer query selecting ``columns`` of ``events e``, ``fetch`` reads rows by key. A small
    answer (at most ``FAST_ROWS``) is one query for the raw events, as ``query`` does; a
    larger one reads ``key_columns`` (row key, id, raw size) first, then the events in pages,
    so a REQ never holds more than a page of events (issue 8)."""
    if not live:
        return
    rows = answer_rows(live)
    if rows is not None and rows <= FAST_ROWS:
        raws = [row[0] for row in await answer_of("e.raw")]
        if raws:
            yield raws
        return
    answer = AnswerKeys()
    for key, eid, size in await answer_of(key_columns):
        answer.add(key, eid, size)
    async for page in read_pages(answer, fetch, page_bytes):
        yield page


class Store(Protocol):
    """Events, deletions and the payments ledger in one database."""

    async def open(self) -> None:
        """Connect and apply pending schema migrations."""

    async def close(self) -> None: ...

    # --- events -------------------------------------------------------------------

    async def write_batch(self, batch: Sequence[WriteRequest], now: int) -> list[WriteOutcome]:
        """Apply a batch in ONE transaction (see module docstring); one outcome per request,
        in order. Returns only after the commit is durable. Called by the writer alone."""
        ...

    async def query(self, filters: Sequence[Filter], now: int, scope: ReadScope | None = None) -> list[bytes]:
        """Raw JSON of matching events: each filter contributes at most its ``limit`` newest;
        the union is de-duplicated and ordered newest first, ties by lowest id. A filter
        with a NIP-50 ``search`` contributes its ``limit`` best matches, best first
        (``relay.search``); with other filters, each search filter's answer in its own
        order, then the other filters' union newest first. With a ``scope``, only events
        its rules let that connection read are candidates (NIP-42 private kinds, NIP-86
        bans: ``relay.policy.ReadScope``), so a ``limit`` counts visible events only
        (issue 8: hidden DMs used to fill it and an authenticated ``{"kinds":[4],
        "limit":10}`` could come back empty; issue 11: a banned spammer's newest events
        emptied the global feed). Same SQL conditions as ``count``; the bans are read from
        the store's own ``management`` table (``apply_management``)."""
        ...

    def query_pages(
        self,
        filters: Sequence[Filter],
        now: int,
        scope: ReadScope | None = None,
        *,
        page_bytes: int = PAGE_BYTES,
    ) -> AsyncGenerator[list[bytes], None]:
        """``query``'s answer (same order, limits and de-duplication) in pages of about
        ``page_bytes``, each read from the store only when the consumer asks for it, so a
        REQ can wait for its client to drain one page before the next is read. An answer of
        at most ``FAST_ROWS`` rows is one page from one statement (no extra round trip);
        a larger one reads its ``AnswerKeys`` first (one statement, one snapshot), then the
        events page by page (``read_pages``); an event deleted between the two is left out."""
        ...

    async def count(self, filters: Sequence[Filter], now: int, scope: ReadScope | None = None) -> int:
        """Distinct events matching any filter (NIP-45); ``limit`` is ignored. With a
        ``scope``, only events its rules let that connection read are counted (private
        kinds and bans, ``relay.policy.ReadScope``), so COUNT agrees with REQ."""
        ...

    async def count_registers(
        self, f: Filter, now: int, scope: ReadScope | None, offset: int
    ) -> list[tuple[int, bytes]]:
        """NIP-45 HyperLogLog's material for the events ``count([f])`` counts (same scope):
        per distinct pubkey byte at ``offset`` (the register), the smallest 7 bytes after it
        (``relay.hyperloglog``). At most 256 rows, aggregated by the database."""
        ...

    async def sync_items(
        self, f: Filter, now: int, scope: ReadScope | None, max_items: int
    ) -> list[tuple[int, bytes]]:
        """NIP-77 negentropy's item set: ``(created_at, 32-byte id)`` of the events ``f``
        matches (unexpired; within ``scope`` as REQ would show them; with ``f.limit``, the
        newest ``limit``), read from the indexes without loading the events' JSON, in no
        particular order. At most ``max_items + 1`` rows, so a caller can tell "too many"
        without reading them all."""
        ...

    async def purge_expired(self, now: int) -> int:
        """Delete events whose NIP-40 expiration has passed; return how many."""
        ...

    # --- payments ledger ----------------------------------------------------------

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

    async def settle_invoice(self, payment_hash: str, paid_msat: int, now: int, fee_msat: int = 0) -> bool:
        """Mark a pending (or locally expired) invoice paid and apply its grant to the
        account, in one transaction, exactly once: True only for the call that did it,
        even when several nodes race on the same payment hash. The caller has already
        checked the amount against the invoice. ``paid_msat`` is what the payer sent;
        ``fee_msat`` what the wallet kept of it (recorded, never charged to the payer)."""
        ...

    async def expire_invoices(self, now: int) -> int:
        """Mark pending invoices past ``expires_at`` expired; return how many."""
        ...

    async def charge_credit(self, pubkey: str, amount_msat: int, now: int) -> bool:
        """Debit ``amount_msat`` from the account's credit in one transaction; False (and
        nothing changed) when the account has less. For events that never reach
        ``write_batch`` (ephemeral kinds, NIP-01 20000-29999)."""
        ...

    async def get_account(self, pubkey: str) -> Account | None: ...

    async def list_accounts(self) -> list[Account]: ...

    # --- the operator console's figures (lightning/console.py), aggregated in SQL ----------

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

    async def find_invoices(self, *, pubkey_prefix: str = "", hash_prefix: str = "", limit: int = 100) -> list[Invoice]:
        """At most ``limit`` invoices, newest first, whose pubkey starts with
        ``pubkey_prefix`` or whose payment hash starts with ``hash_prefix`` (lowercase hex;
        only the prefixes given count; neither: every invoice)."""
        ...

    async def purge_older(self, kind: int, before: int, limit: int) -> int:
        """Retention: delete at most ``limit`` events of ``kind`` created before ``before``
        (oldest first), in one short transaction; return how many."""
        ...

    async def stored_bytes(self, pubkey: str) -> int:
        """Raw JSON bytes stored for ``pubkey`` (the storage quota's measure)."""
        ...

    async def database_bytes(self) -> int:
        """What the database occupies on disk (the operator console's overview): tables,
        indexes and SQLite's WAL. Cheap enough to ask every few seconds: sizes the engine
        already keeps, never a scan."""
        ...

    async def vanish(self, pubkey: str, until: int, now: int) -> int:
        """NIP-62: delete every event of ``pubkey`` with created_at <= ``until`` (kind 5
        included) and the gift wraps (kind 1059) ``p``-tagging it up to then, in one
        transaction; when anything was deleted, record (pubkey, until) and bump the
        ``vanish`` change counter. Return how many events were deleted."""
        ...

    async def list_vanished(self) -> dict[str, int]:
        """Every recorded NIP-62 request: pubkey -> until."""
        ...

    async def vanish_changes(self) -> int:
        """A counter that grows with every recorded NIP-62 request, from any node."""
        ...

    async def list_management(self) -> list[tuple[str, str, str]]:
        """NIP-86 state rows (topic, key, value); relay/management.py reads them."""
        ...

    async def apply_management(self, changes: Sequence[tuple[str, str, str | None]]) -> None:
        """Upsert (value) or delete (None) NIP-86 rows in one transaction and bump the
        ``management`` change counter, so every node reloads the state."""
        ...

    async def management_changes(self) -> int:
        """A counter that grows with every ``apply_management``, from any node."""
        ...

    async def take_uses(self, uses: Sequence[UseLimit], now: int) -> str | None:
        """Count one use of every key of ``uses``, all or none, in one transaction that
        concurrent callers on any process or node cannot interleave: None when every key
        had fewer than its ``limit`` uses in its current window (a window that ended at or
        before ``now`` is replaced by a new one ending at the use's ``expires_at``), else
        the key found at its limit, and nothing is counted. Also deletes up to
        ``USES_PRUNED_PER_CALL`` windows that ended, so the table stays near the live ones."""
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
    ) -> Account:
        """Operator changes (grant/revoke/ban/allow); creates the account when missing."""
        ...

    # --- NIP-43 membership: invite codes and leaving -------------------------------

    async def add_invites(self, invites: Sequence[Invite]) -> None:
        """Store new invite codes (all or none)."""
        ...

    async def redeem_invite(self, code_hash: str, pubkey: str, now: int) -> InviteOutcome:
        """Use the code for ``pubkey`` and apply its grant to the account, in one
        transaction, exactly once: of two claims racing for one code (on any node) one
        gets ``REDEEMED``, the other ``INVALID``."""
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

    async def list_renewals(self, pubkey: str) -> list[RenewalAttempt]:
        """Newest period first."""
        ...
