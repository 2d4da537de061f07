"""Reminders in Nostr: NIP-17 DMs from the relay's key before a member's access runs out.

Only to pubkeys that opted in (the join page, signed with NIP-07 and NIP-98, or
``satsrelay accounts reminders <pubkey> on``); the opt-in lives in the store, so every
node and every restart agrees. For each opted-in account, every ``check_interval_seconds``:

- a term that ends (subscription period, or an admission with a term) gets one reminder at
  each of ``days_before`` (7 and 1 by default): the reminder for the smallest horizon the
  remaining time falls within, keyed by (pubkey, "<days>d", end of term). A renewal moves
  the end, so the next term is reminded afresh;
- prepaid credit under ``credit_below_sats`` (for an account that is neither admitted nor
  allowed) gets one reminder; once the balance is back above it, the next dip reminds again.

The reminder is recorded (``LedgerStore.claim_reminder``, a unique key) *before* it is sent, so
it goes out at most once across restarts and nodes; a crash between the two loses one
reminder rather than sending two. Each message says how to renew: zap the relay's lightning
address from any client, or the join link; a tier's, only the join link and the tier's price
(a zap buys the single plans' time, which would follow the tier, not renew it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from lightning.giftwrap import gift_wrap
from lightning.plans import DAY, Plans
from lightning.settings import ReminderSettings
from lightning.store.base import FOREVER, Account, LedgerStore
from relay.nostr.event import Event
from relay.ops.periodic import run_every
from relay.store.identity import RelayIdentity

log = logging.getLogger(__name__)

Publish = Callable[[Event], Awaitable[object]]


def term_reason(account: Account, now: int, days_before: list[float]) -> str | None:
    """Which term reminder is due now ("7d", "1d"), or None. ``days_before`` is sorted
    largest first; the smallest horizon the remaining time is within wins."""
    until = account.admitted_until
    if until <= now or until >= FOREVER:
        return None
    remaining = until - now
    due = None
    for days in days_before:
        if remaining <= days * DAY:
            due = f"{days:g}d"
    return due


class Reminders:
    def __init__(
        self,
        settings: ReminderSettings,
        *,
        store: LedgerStore,
        plans: Plans,
        identity: RelayIdentity,
        publish: Publish,
        relay_name: str,
        relay_url: str,
        payments_url: str,
        zap_address: str | None,
        allow: frozenset[str] = frozenset(),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self._store = store
        self._plans = plans
        self._identity = identity
        self._publish = publish
        self._relay_name = relay_name
        self._relay_url = relay_url
        self._payments_url = payments_url
        self._zap_address = zap_address
        self._allow = allow
        self._clock = clock
        below = settings.credit_below_sats
        self._credit_below_msat = below * 1000 if below is not None else plans.credit_min_msat
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="reminders")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        await run_every(self.settings.check_interval_seconds, self.check, log, "sending reminders failed")

    async def check(self) -> int:
        """Send what is due now; returns how many reminders were sent."""
        now = int(self._clock())
        sent = 0
        for account, credit_reminded in await self._store.reminder_targets():
            if account.banned or account.allowed or account.pubkey in self._allow:
                continue
            reason = term_reason(account, now, self.settings.days_before)
            if reason is not None and await self._store.claim_reminder(
                account.pubkey, reason, account.admitted_until, now
            ):
                await self._send(account.pubkey, self._term_text(account, now), now)
                sent += 1
            if not self._plans.credit_enabled or account.admitted(now):
                continue
            if account.credit_msat < self._credit_below_msat:
                if not credit_reminded and await self._store.claim_reminder(account.pubkey, "credit", 0, now):
                    await self._send(account.pubkey, self._credit_text(account), now)
                    sent += 1
            elif credit_reminded:
                await self._store.rearm_reminder(account.pubkey, "credit")
        return sent

    async def _send(self, pubkey: str, text: str, now: int) -> None:
        await self._publish(gift_wrap(self._identity.secret, pubkey, text, now))
        log.info("reminder sent to %s", pubkey)

    def _link(self, pubkey: str) -> str:
        return self._payments_url + ("&" if "?" in self._payments_url else "?") + f"pubkey={pubkey}"

    def _how_to_renew(self, pubkey: str, sats: int | None) -> str:
        link = self._link(pubkey)
        if self._zap_address is not None and sats:
            return f"To renew, zap {self._zap_address} {sats:,} sats from your Nostr client, or pay at {link}"
        return f"To renew, pay at {link}"

    def _term_text(self, account: Account, now: int) -> str:
        until = account.admitted_until
        left = until - now
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(until))
        hours = max(1, left // 3600)
        span = f"{left // DAY} days" if left >= 2 * DAY else ("1 hour" if hours == 1 else f"{hours} hours")
        tier = self._plans.tier(account.last_role)
        if tier is not None:
            # A tier is renewed only by paying for it: a zap (or the subscription) buys the
            # single plans' time, which follows the tier instead of renewing it (README "Tiers").
            what = f"Your {tier.label} plan on {self._relay_name} ({self._relay_url})"
            how = f"To renew it ({tier.offer_text()}), pay at {self._link(account.pubkey)}"
        else:
            price = self._plans.subscription_msat or self._plans.admission_msat
            what = f"Your access to {self._relay_name} ({self._relay_url})"
            how = self._how_to_renew(account.pubkey, price // 1000 if price else None)
        return (
            f"{what} ends on {when}, in about {span}. {how}"
            ". (You get this because you asked for reminders; this key does not read replies.)"
        )

    def _credit_text(self, account: Account) -> str:
        left = account.credit_msat
        amount = f"{left // 1000:,} sats" if left % 1000 == 0 else f"{left:,} msat"
        return (
            f"Your prepaid credit at {self._relay_name} ({self._relay_url}) is down to {amount}. "
            + self._how_to_renew(account.pubkey, self._plans.credit_default_msat // 1000).replace("renew", "top up")
            + "."
        )
