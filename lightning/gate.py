"""The write gate: may this pubkey write this event, and what does it cost?

Called for every event after its signature checked out, so it must not hit the database
per event: account state is cached in memory (unknown pubkeys too, since spam comes from
them). The cache is dropped for a pubkey when one of its invoices settles on this node,
and every entry lives at most ``account_cache_seconds`` so a grant made by the CLI or on
another node is seen soon. A stale "has credit" entry is harmless: the Store charges the
credit inside the event's insert transaction and refuses when it ran out.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from lightning.plans import Plans
from lightning.settings import PaymentSettings
from relay.errors import Blocked, Restricted
from relay.event import Event
from relay.extension import WriteContext
from relay.store.base import Account, Store

MAX_P_TAGS_CHECKED = 10  # an inbox event names a few recipients; do not look up hundreds
CACHE_ENTRIES = 50_000


@dataclass(frozen=True, slots=True)
class _Cached:
    account: Account | None
    fetched_at: float


class AccountCache:
    """Bounded LRU of accounts (or their absence) with a time-to-live."""

    def __init__(self, store: Store, ttl: float, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._store = store
        self._ttl = ttl
        self._monotonic = monotonic
        self._entries: OrderedDict[str, _Cached] = OrderedDict()

    async def get(self, pubkey: str) -> Account | None:
        now = self._monotonic()
        cached = self._entries.get(pubkey)
        if cached is not None and now - cached.fetched_at < self._ttl:
            self._entries.move_to_end(pubkey)
            return cached.account
        account = await self._store.get_account(pubkey)
        self._entries[pubkey] = _Cached(account, now)
        self._entries.move_to_end(pubkey)
        while len(self._entries) > CACHE_ENTRIES:
            self._entries.popitem(last=False)
        return account

    def invalidate(self, pubkey: str) -> None:
        self._entries.pop(pubkey, None)


class Gate:
    def __init__(self, settings: PaymentSettings, plans: Plans, accounts: AccountCache, payments_url: str) -> None:
        self._plans = plans
        self._accounts = accounts
        self._payments_url = payments_url
        self._free_kinds = frozenset(settings.free_kinds)
        self._allow = frozenset(settings.allow_pubkeys)
        self._ban = frozenset(settings.ban_pubkeys)
        self._free_p_tags = settings.free_if_p_tags_member
        self._credit = settings.credit.enabled

    async def admit(self, event: Event, ctx: WriteContext) -> int:
        """The charge in msat, or raise ``Blocked`` (banned) / ``Restricted`` (unpaid)."""
        pubkey = event.pubkey
        if pubkey in self._ban:
            raise Blocked("this pubkey is banned from this relay")
        if pubkey in self._allow:
            return 0
        account = await self._accounts.get(pubkey)
        if account is not None:
            if account.banned:
                raise Blocked("this pubkey is banned from this relay")
            if account.allowed or account.admitted(ctx.now):
                return 0
        if event.kind in self._free_kinds:
            return 0
        price = self._plans.price_msat(event.kind) if self._credit else None
        if price == 0:
            return 0
        if price is not None and account is not None and account.credit_msat >= price:
            return price
        if self._free_p_tags and await self._p_tags_member(event, ctx.now):
            return 0
        if price is not None and account is not None and account.credit_msat > 0:
            raise Restricted(f"not enough credit for this event ({price} msat); pay at {self._payments_url}")
        if account is not None and account.admitted_until > 0:
            raise Restricted(f"your paid period has ended; pay at {self._payments_url}")
        raise Restricted(f"writing here needs a payment; pay at {self._payments_url}")

    def insufficient_credit(self, event: Event) -> Restricted:
        """The refusal when the Store refused the charge at commit: the cached credit was stale."""
        self._accounts.invalidate(event.pubkey)
        return Restricted(f"credit ran out; pay at {self._payments_url}")

    async def is_member(self, pubkey: str, now: int) -> bool:
        """A paying (or operator-allowed) account in good standing."""
        if pubkey in self._ban:
            return False
        if pubkey in self._allow:
            return True
        account = await self._accounts.get(pubkey)
        if account is None or account.banned:
            return False
        return account.allowed or account.admitted(now) or account.credit_msat > 0

    async def _p_tags_member(self, event: Event, now: int) -> bool:
        checked = 0
        for tag in event.tags:
            if len(tag) > 1 and tag[0] == "p" and len(tag[1]) == 64:
                if await self.is_member(tag[1], now):
                    return True
                checked += 1
                if checked >= MAX_P_TAGS_CHECKED:
                    break
        return False
