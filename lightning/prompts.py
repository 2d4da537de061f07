"""Renewal prompts where clients look: a ``NOTIFY`` message (nips PR #901) to a member's
client near and at the end of their plan, beside the NIP-17 reminders by DM.

The relay's connection asks (``relay.plugins.hooks.SessionNotice``) when a pubkey authenticates or
sends an event, once a day per pubkey, and sends at most one NOTIFY per connection and day;
Amethyst shows one per app session, nostr.wine has sent them for renewals since 2023. Here
a prompt goes only to members who opted in to reminders (the join page's "Remind me", or
``satsrelay reminders on``): the opt-in of the plan's key covers the keys linked to it. It is
due from ``max(days_before)`` days before the plan ends, through its grace, until that many
days after it lapsed; the text says what ends when and how to renew, and stays the same all
day (the PR asks relays to keep a prompt's text stable, so clients can tell it was
dismissed).
"""

from __future__ import annotations

import time

from lightning.gate import AccountCache
from lightning.plans import DAY, Plans, msat_text
from lightning.store.base import FOREVER, Account, LedgerStore


def _date(when: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(when))


class RenewalPrompts:
    def __init__(
        self,
        *,
        accounts: AccountCache,
        store: LedgerStore,
        plans: Plans,
        days_before: float,
        relay_name: str,
        join_link: str,
        zap_address: str | None,
    ) -> None:
        """``join_link``: the join page URL the plan's key is appended to (``?pubkey=``)."""
        self._accounts = accounts
        self._store = store
        self._plans = plans
        self._window = round(days_before * DAY)
        self._relay_name = relay_name
        self._join_link = join_link
        self._zap_address = zap_address

    async def prompt(self, pubkey: str, now: int) -> str | None:
        """The NOTIFY text for the user of ``pubkey`` now, or None: not a member with a
        plan ending (or just ended), or not opted in. The cached account is read first; the
        opt-in (a store read) only for a plan in its window."""
        account = await self._accounts.get(pubkey)
        if account is None or account.banned or account.allowed or account.comped:
            return None
        until = account.admitted_until
        if until <= 0 or until >= FOREVER:
            return None
        tier = self._plans.tier(account.last_role)
        grace = tier.grace_seconds if tier is not None else 0
        if not until - self._window <= now < until + grace + self._window:
            return None
        if not await self._store.reminders_on(account.pubkey):
            return None
        return self.text(account, now)

    def text(self, account: Account, now: int) -> str:
        until = account.admitted_until
        tier = self._plans.tier(account.last_role)
        name = self._relay_name
        what = f"Your {tier.label} plan on {name}" if tier is not None else f"Your access to {name}"
        grace = tier.grace_seconds if tier is not None else 0
        if now < until:
            state = f"{what} ends on {_date(until)}."
        elif now < until + grace:
            state = f"{what} ended on {_date(until)}; your events are accepted until {_date(until + grace)} (grace)."
        else:
            state = f"{what} ended on {_date(until)}; this relay no longer accepts your events."
        return f"{state} {self._how_to_renew(account)}"

    def _how_to_renew(self, account: Account) -> str:
        sep = "&" if "?" in self._join_link else "?"
        link = f"{self._join_link}{sep}pubkey={account.pubkey}"
        tier = self._plans.tier(account.last_role)
        if tier is not None:
            return f"Renew ({tier.offer_text()}) at {link}"
        price = self._plans.subscription_msat or self._plans.admission_msat
        if price and self._zap_address is not None and self._plans.subscription_msat:
            # A zap of the subscription fee buys a period (lightning.zapper); a tier has no zap path.
            return f"Renew: zap {self._zap_address} {msat_text(price)} from your client, or pay at {link}"
        return f"Renew{f' ({msat_text(price)})' if price else ''} at {link}"
