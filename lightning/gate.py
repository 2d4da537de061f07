"""The write gate: may this pubkey write this event, and what does it cost?

Called for every event after its signature checked out, so it must not hit the database
per event: account state is cached in memory (unknown pubkeys too, since spam comes from
them). The cache is dropped for a pubkey when one of its invoices settles on this node,
every entry lives at most ``account_cache_seconds``, and the whole cache is dropped when
the store's change counter moves (a grant/revoke/ban by the CLI or on another node), which
the cache checks every ``CHANGES_POLL_SECONDS``. A stale "has credit" entry is harmless: the ledger's write
hook charges the credit inside the event's insert transaction and refuses when it ran out.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Collection
from dataclasses import dataclass

from lightning.plans import Plans, Tier, msat_text
from lightning.settings import PaymentSettings
from lightning.store.base import Account, Charge, LedgerStore, plan_account
from lightning.zap_receipts import ZAP_RECEIPT_KIND, receipt_problem
from relay.net.limits import BucketTable, address_group
from relay.nostr.errors import Blocked, RateLimited, Restricted
from relay.nostr.event import Event
from relay.nostr.management import REPORT_KIND
from relay.nostr.policy import WriteContext
from relay.ops.vanish import VANISH_KIND
from relay.store.base import Store, UseLimit

MAX_P_TAGS_CHECKED = 10  # an inbox event names a few recipients; do not look up hundreds
CACHE_ENTRIES = 50_000
CHANGES_POLL_SECONDS = 0.5  # how soon a change made elsewhere (CLI, other node) applies
INBOX_ENTRIES = 100_000  # refused senders (and address groups) remembered in memory
REFUSAL_MEMORY_SECONDS = 10  # how long a refused key is refused without asking the store again
HOUR = 3600
DAY = 86400
FREE = Charge(0)


@dataclass(frozen=True, slots=True)
class _Cached:
    account: Account | None  # the key's own
    owner: str | None  # the key whose plan it is linked to
    fetched_at: float


class AccountCache:
    """Bounded LRU of accounts (or their absence) and links to plans, with a time-to-live.

    ``get`` answers with the account a key writes as (``plan_account``): a key linked to
    another's plan finds the plan's account, looked up (and cached) under the owner's key,
    so a payment that drops the owner's entry reaches every linked key at once."""

    def __init__(
        self,
        store: LedgerStore,
        ttl: float,
        monotonic: Callable[[], float] = time.monotonic,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._ttl = ttl
        self._monotonic = monotonic
        self._clock = clock
        self._entries: OrderedDict[str, _Cached] = OrderedDict()
        self._keys: OrderedDict[str, tuple[tuple[str, ...], float]] = OrderedDict()  # owner -> its plan's keys
        self._changes_checked = float("-inf")
        self._changes: int | None = None

    async def get(self, pubkey: str) -> Account | None:
        """The account ``pubkey`` writes as: its own, or its plan's (whose ``pubkey`` is
        then the owner's: the key the plan's quotas and charges are counted under)."""
        entry = await self._entry(pubkey)
        if entry.owner is None:
            return entry.account
        plan = await self._entry(entry.owner)
        return plan_account(entry.account, plan.account, int(self._clock()))

    async def plan_keys(self, owner: str) -> tuple[str, ...]:
        """Every key of ``owner``'s plan: the owner, then the keys linked to it."""
        await self._check_changes()
        now = self._monotonic()
        cached = self._keys.get(owner)
        if cached is not None and now - cached[1] < self._ttl:
            self._keys.move_to_end(owner)
            return cached[0]
        keys = (owner, *(link.pubkey for link in await self._store.linked_keys(owner)))
        self._keys[owner] = (keys, now)
        self._keys.move_to_end(owner)
        while len(self._keys) > CACHE_ENTRIES:
            self._keys.popitem(last=False)
        return keys

    async def _check_changes(self) -> None:
        now = self._monotonic()
        if now - self._changes_checked >= CHANGES_POLL_SECONDS:
            # A grant/revoke/ban/link by the CLI or another node bumps the ledger's counter:
            # one primary-key read per interval makes it take effect at once, not after the TTL.
            self._changes_checked = now
            changes = await self._store.account_changes()
            if changes != self._changes:
                self._changes = changes
                self.invalidate_all()

    async def _entry(self, pubkey: str) -> _Cached:
        await self._check_changes()
        now = self._monotonic()
        cached = self._entries.get(pubkey)
        if cached is not None and now - cached.fetched_at < self._ttl:
            self._entries.move_to_end(pubkey)
            return cached
        account, owner = await self._store.account_and_owner(pubkey)
        entry = _Cached(account, owner, now)
        self._entries[pubkey] = entry
        self._entries.move_to_end(pubkey)
        while len(self._entries) > CACHE_ENTRIES:
            self._entries.popitem(last=False)
        return entry

    def invalidate(self, pubkey: str) -> None:
        self._entries.pop(pubkey, None)
        self._keys.pop(pubkey, None)

    def invalidate_all(self) -> None:
        """A change that touched many accounts at once (a role deleted from its holders)."""
        self._entries.clear()
        self._keys.clear()


class InboxAllowance:
    """Free inbox events (and NIP-56 reports) per sender pubkey and per address group, each
    at most ``per_hour`` in an hour, for the relay as a whole.

    Counted in the store (``Store.take_uses``, one transaction for both keys), not in a
    process's memory: per-process buckets gave each ``--workers`` process and each node
    its own allowance, and a restart a fresh one (issue 17 item 9). The store rather than
    the shared-memory rate tables: an hour-long allowance must also hold across nodes and
    restarts, and free events are few (the per-address event rate bounds the attempts), so
    one small write each costs little. Keyed by pubkey, not connection, so reconnecting
    does not refill it; the address group (IPv4 address, IPv6 /``ipv6_prefix``) bounds an
    attacker with fresh keys. The hour is a window that opens with the first free event.

    A refusal is remembered here for ``REFUSAL_MEMORY_SECONDS``: a flood of attempts past
    the allowance then costs a dict lookup each, not a store write.
    """

    def __init__(self, store: Store, per_hour: int, per_hour_per_ip: int, *, ipv6_prefix: int = 64) -> None:
        self._store = store
        self._per_hour = per_hour
        self._per_hour_ip = per_hour_per_ip
        self._ipv6_prefix = ipv6_prefix
        self._refused: OrderedDict[str, int] = OrderedDict()  # key -> refused until (unix time)

    async def take(self, pubkey: str, ip: str, now: int) -> bool:
        """Spend one free inbox event of ``pubkey`` from ``ip``; False (nothing spent) when
        either allowance is used up."""
        if self._per_hour < 1 or self._per_hour_ip < 1:
            return False
        keys = (f"inbox:pubkey:{pubkey}", f"inbox:ip:{address_group(ip, self._ipv6_prefix)}")
        for key in keys:
            until = self._refused.get(key)
            if until is not None:
                if until > now:
                    return False
                del self._refused[key]
        end = now + HOUR
        at_limit = await self._store.take_uses(
            [UseLimit(keys[0], self._per_hour, end), UseLimit(keys[1], self._per_hour_ip, end)], now
        )
        if at_limit is None:
            return True
        self._refused[at_limit] = now + REFUSAL_MEMORY_SECONDS
        self._refused.move_to_end(at_limit)
        while len(self._refused) > INBOX_ENTRIES:
            self._refused.popitem(last=False)
        return False


class Gate:
    """The write policy of a paid relay (README "Free rules").

    In order: banned -> ``blocked:``; allow-listed, allowed or admitted -> free; a kind in
    ``free_kinds`` -> free for anyone; a NIP-57 zap receipt signed by a trusted zapper ->
    free; a NIP-56 report from an account holding paid credit -> free; with the credit
    plan, a kind priced 0 -> free for a paying account, otherwise charged when the balance
    covers it; an inbox event to a member, or anyone's report -> free within the sender's
    allowance; anything else -> ``restricted: ...; pay at <url>``.

    A key linked to a member's plan is judged as that plan (``AccountCache.get``), and the
    plan's limits and charges are counted under the member's key (README "One plan,
    several keys").
    """

    def __init__(
        self,
        settings: PaymentSettings,
        plans: Plans,
        accounts: AccountCache,
        payments_url: str,
        *,
        trusted_zappers: Collection[str] = (),
        inbox: InboxAllowance,
        zap_hint: str | None = None,
        events: Store | None = None,
        rate_table_size: int = 100_000,
    ) -> None:
        """``trusted_zappers`` adds keys to ``settings.trusted_zappers`` (the relay's own
        key, once it signs receipts for zaps to itself). ``inbox``: the free inbox allowance."""
        self._plans = plans
        self._accounts = accounts
        self._payments_url = payments_url
        self._free_kinds = frozenset(settings.free_kinds)
        self._allow = frozenset(settings.allow_pubkeys)
        self._ban = frozenset(settings.ban_pubkeys)
        self._zappers = frozenset(settings.trusted_zappers) | frozenset(trusted_zappers)
        self._zap_max_bytes = settings.zap_receipt_max_bytes
        self._free_p_tags = settings.free_if_p_tags_member
        self._inbox_kinds = frozenset(settings.inbox_kinds)
        self._inbox_max_bytes = settings.inbox_max_bytes
        self._inbox_max_event_bytes = settings.inbox_max_event_bytes
        self._inbox_max_tags = settings.inbox_max_tags
        self._inbox = inbox
        self._credit = settings.credit.enabled
        self._zap_hint = zap_hint  # "zap relay@host 21 sats": the unpaid reply names both ways to pay
        # Tier limits (issue 20): a tier's events per second, one bucket per member and
        # tier (shared by --workers processes like the relay's own per-author buckets);
        # its events per day in the store (``take_uses``), so every node and restart
        # counts the same day.
        self._events = events
        self._tier_rates = {
            tier.name: BucketTable(
                tier.events_per_second,
                max(1.0, tier.events_per_second),
                rate_table_size,
                name=f"tier-events-{tier.name}",
            )
            for tier in plans.tiers
            if tier.events_per_second is not None
        }

    async def admit(self, event: Event, ctx: WriteContext) -> Charge:
        """What the event costs (``Charge.msat`` 0: free) and whose account pays (a key
        linked to another's plan: the plan's), or raise ``Blocked`` (banned) /
        ``Restricted`` (unpaid) / ``RateLimited``."""
        pubkey = event.pubkey
        if event.kind == VANISH_KIND:  # NIP-62: paid relays MUST honour it whatever the status
            return FREE
        if pubkey in self._ban:
            raise Blocked("this pubkey is banned from this relay")
        if pubkey in self._allow:
            return FREE
        account = await self._accounts.get(pubkey)
        # The key the plan is kept under: the event's author, or the owner of the plan it is
        # linked to (README "One plan, several keys"); its quotas count the plan's events.
        plan = account.pubkey if account is not None else pubkey
        if account is not None:
            if account.banned or plan in self._ban:
                raise Blocked("this pubkey is banned from this relay")
            if account.allowed or plan in self._allow:
                return FREE
            if self.in_standing(account, ctx.now):
                tier = self._plans.tier(account.role_at(ctx.now))
                if tier is not None and event.kind not in self._free_kinds:
                    await self._tier_limits(event, tier, plan, ctx)
                return FREE
        if event.kind in self._free_kinds:
            return FREE
        if event.kind == ZAP_RECEIPT_KIND and self._genuine_receipt(event):
            return FREE
        if event.kind == REPORT_KIND and account is not None and account.credit_msat > 0 and self._small(event):
            # A paying member's NIP-56 report is free and outside the strangers' allowance
            # (issue 22: the credit plan charged for it, while strangers filed theirs free):
            # reports feed the operators' moderation queue, and the member has paid already.
            return FREE
        price = self._plans.price_msat(event.kind) if self._credit else None
        if price is not None and account is not None and account.credit_msat > 0 and account.credit_msat >= price:
            # A kind priced 0 is free for an account that holds paid credit, not for everyone:
            # free-for-all kinds are exactly ``free_kinds``.
            return Charge(price, plan if plan != pubkey else "")
        if self._free_p_tags and self._inbox_eligible(event) and await self._p_tags_member(event, ctx.now):
            if await self._inbox.take(pubkey, ctx.ip, ctx.now):
                return FREE
            raise RateLimited(
                "free messages to members of this relay are used up for now; "
                f"pay to write without limits at {self.join_link(pubkey)}"
            )
        if event.kind == REPORT_KIND and self._small(event):
            # NIP-56 reports feed the operators' moderation queue (NIP-86): anyone may file
            # one, within the same hourly per-sender and per-IP allowance and size bounds
            # as inbox messages.
            if await self._inbox.take(pubkey, ctx.ip, ctx.now):
                return FREE
            raise RateLimited(
                f"free reports are used up for now; pay to write without limits at {self.join_link(pubkey)}"
            )
        raise self.unpaid(pubkey, account, price)

    def unpaid(self, pubkey: str, account: Account | None, price: int | None = None) -> Restricted:
        """The one-line refusal of a key that may not write (README "Payments"): what is
        wrong and what to do. Credit too low for this kind: its price and the top-up link; a
        plan that ended: its date (and grace) and the renewal link, for the plan's key; never
        paid: the cheapest price, the zap address and the join link."""
        if price is not None and account is not None and account.credit_msat > 0:
            left = msat_text(account.credit_msat)
            return Restricted(
                f"not enough credit for this event ({msat_text(price)}, {left} left); "
                f"pay at {self.join_link(account.pubkey)}"
            )
        if account is not None and account.admitted_until > 0:
            ended = time.strftime("%Y-%m-%d", time.gmtime(account.admitted_until))
            tier = self._plans.tier(account.last_role)
            what = f"your {tier.label} plan" if tier is not None else "your paid period"
            if tier is not None and tier.grace_seconds:
                ended += f" (and its {tier.grace_seconds // DAY}-day grace)"
            return Restricted(f"{what} ended on {ended}; renew at {self.join_link(account.pubkey)}")
        join = self.join_link(pubkey)
        if self._zap_hint is not None:  # the zap hint names the cheapest price
            return Restricted(f"writing here needs a payment; {self._zap_hint} or pay at {join}")
        return Restricted(f"writing here needs a payment{self._cheapest()}; pay at {join}")

    def join_link(self, pubkey: str) -> str:
        """The join page with the pubkey filled in (the unpaid and renewal replies name it)."""
        return self._payments_url + ("&" if "?" in self._payments_url else "?") + f"pubkey={pubkey}"

    def _cheapest(self) -> str:
        """" (from N sats)": the least a plan costs, for the unpaid reply; "" with none fixed."""
        prices = [o.amount_msat for o in self._plans.offers() if o.amount_msat is not None]
        if not prices:
            return ""
        sats = min(prices) // 1000
        return f" (from {sats} sat{'s' if sats != 1 else ''})"

    def in_standing(self, account: Account, now: int) -> bool:
        """Writes as a member: comped (a role given by the operator), admitted, or within
        the grace of its tier after the period ended (writes continue, renewal prompts go
        out; then the unpaid rules apply)."""
        if account.comped or account.admitted(now):
            return True
        tier = self._plans.tier(account.last_role)  # the grace of the tier held at the end
        return tier is not None and tier.grace_seconds > 0 and account.admitted(now - tier.grace_seconds)

    async def _tier_limits(self, event: Event, tier: Tier, plan: str, ctx: WriteContext) -> None:
        """A member's tier limits, each one rule, counted for the plan (``plan``: the key
        it is kept under), not per key; the refusal names the tier and the next tier that
        gives more of what ran out (README "Tiers")."""
        if tier.kinds is not None and event.kind not in tier.kinds:
            raise Restricted(
                f"kind {event.kind} is not part of the {tier.label} tier"
                + self._upgrade_hint(tier, "kinds", plan, event.kind)
            )
        size = len(event.raw)
        if tier.max_event_bytes is not None and size > tier.max_event_bytes:
            raise Restricted(
                f"this event is {size} bytes, over the {tier.label} tier's {tier.max_event_bytes}"
                + self._upgrade_hint(tier, "max_event_bytes", plan)
            )
        rate = self._tier_rates.get(tier.name)
        if rate is not None and not rate.take(plan, time.monotonic()):
            raise RateLimited(
                f"the {tier.label} tier allows {tier.events_per_second:g} events per second"
                + self._upgrade_hint(tier, "events_per_second", plan)
            )
        if tier.events_per_day is not None and self._events is not None:
            key = f"tier-day:{plan}"
            if await self._events.take_uses([UseLimit(key, tier.events_per_day, ctx.now + DAY)], ctx.now) is not None:
                raise Restricted(
                    f"the {tier.label} tier allows {tier.events_per_day} events a day, used up for now"
                    + self._upgrade_hint(tier, "events_per_day", plan)
                )

    def _upgrade_hint(self, tier: Tier, limit: str, pubkey: str, kind: int | None = None) -> str:
        better = self._plans.upgrade(tier, limit, kind)
        if better is None:
            return f"; no plan here gives more ({tier.label} is the largest)"
        return f"; the {better.label} tier ({better.offer_text()}) allows more: upgrade at {self.join_link(pubkey)}"

    def storage_refusal(self, tier: Tier, pubkey: str) -> Restricted:
        """The reply past a tier's storage quota (``max_bytes_stored``)."""
        return Restricted(
            f"storage quota of the {tier.label} tier ({tier.max_bytes_stored} bytes) reached"
            + self._upgrade_hint(tier, "max_bytes_stored", pubkey)
        )

    def credit_ran_out(self, event: Event) -> Restricted:
        """The reply when the ledger refused the charge at commit (the cached credit was
        stale). Pure: the ledger's write hook may call it on the store's writer thread."""
        return Restricted(f"credit ran out; pay at {self.join_link(event.pubkey)}")

    def insufficient_credit(self, event: Event) -> Restricted:
        """``credit_ran_out``, with the stale cache entry dropped (on the event loop)."""
        self._accounts.invalidate(event.pubkey)
        return self.credit_ran_out(event)

    async def is_member(self, pubkey: str, now: int) -> bool:
        """Whose inbox strangers may write to for free: an operator-allowed or admitted
        account, or one holding at least the minimum top-up in credit (what one real
        payment buys). A token grant of a few msat, or a drained balance, opens no inbox."""
        if pubkey in self._ban:
            return False
        if pubkey in self._allow:
            return True
        account = await self._accounts.get(pubkey)
        if account is None or account.banned or account.pubkey in self._ban:
            return False
        if account.allowed or account.pubkey in self._allow or self.in_standing(account, now):
            return True
        return self._credit and account.credit_msat >= max(1, self._plans.credit_min_msat)

    def _genuine_receipt(self, event: Event) -> bool:
        return receipt_problem(event, self._zappers, max_bytes=self._zap_max_bytes) is None

    def _inbox_eligible(self, event: Event) -> bool:
        return event.kind in self._inbox_kinds and self._small(event)

    def _small(self, event: Event) -> bool:
        """Within the free paths' bounds: the content, the whole event (its tags carried
        ~120 KB per free message when only the content was measured: issue 17 item 4) and
        the number of tags. Not ``free_kinds``: the operator made those free for anyone,
        and a kind-3 contact list has thousands of tags; they keep the relay's own limits."""
        return (
            len(event.raw) <= self._inbox_max_event_bytes
            and len(event.tags) <= self._inbox_max_tags
            and len(event.content.encode()) <= self._inbox_max_bytes
        )

    async def _inbox_included(self, pubkey: str, now: int) -> bool:
        """Whether the member's tier includes free inbox traffic (``free_inbox``)."""
        account = await self._accounts.get(pubkey)
        tier = self._plans.tier(account.role_at(now)) if account is not None else None
        return tier is None or tier.free_inbox

    async def _p_tags_member(self, event: Event, now: int) -> bool:
        checked = 0
        for tag in event.tags:
            if len(tag) > 1 and tag[0] == "p" and len(tag[1]) == 64:
                if await self.is_member(tag[1], now) and await self._inbox_included(tag[1], now):
                    return True
                checked += 1
                if checked >= MAX_P_TAGS_CHECKED:
                    break
        return False
