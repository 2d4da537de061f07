"""What one payment does to the time an account holds: renewal, grace, upgrade with
proration, downgrade at the period end (issue 20 item 3; README "Tiers").

Pure: no I/O and no clock (``now`` is an argument). Both ledger stores call
``after_payment`` inside the transaction that marks an invoice paid (or redeems an invite
code), on the account row they hold locked, so the rule is written once and applied
exactly once per payment, on every node.

An account holds time as at most two segments: ``role`` until ``switch_at``, then
``next_role`` until ``until`` (the account's ``admitted_until``); without a change
scheduled (``switch_at`` 0), ``role`` until ``until``. A role is a tier's name, or "" for
the single plans (admission, subscription, zaps, invite codes), which rank below every
tier. The rule for a payment of ``plan`` buying ``seconds`` (or time for good), at ``now``:

1. **Nothing held** (never paid, or past the end and the grace of the tier held last):
   the plan starts now.
2. **In grace** (past the end, within the grace of the tier held last): paying for that
   same tier renews it from the old end date, so the grace days count as part of the new
   period; another plan starts now (nothing unused is left to credit).
3. **Renewal**: paying for the plan held last adds ``seconds`` after the end.
4. **Upgrade** (a tier ranked above the current one, by ``order``): it starts now; the
   unused part of the current tier is credited as time of the new tier, at the two prices
   (``credit_seconds``); a change already scheduled after the current tier keeps its
   length and follows the new one. A plan held for good is not converted: it resumes
   after the new tier's period.
5. **Downgrade** (a plan ranked below the current one): the current tier stays until
   its end, then the new plan runs ``seconds``. A different change already scheduled is
   replaced, its time credited to the new plan (``credit_seconds``). Under a plan held
   for good nothing changes: it has no end to change at.

A role the operator gave without payment (comped) keeps its comp through payments for
the single plans (only the time changes); a tier bought ends the comp and starts as in 1
or 4, counting time held before as the single plans' time.

Nothing is ever refunded: money paid is time held, converted, never given back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

FOREVER = 2**62  # ``until`` of time held for good (lightning.store.base.FOREVER)


@dataclass(frozen=True, slots=True)
class PlanTerms:
    """A plan's price per period, its rank and grace, as the rule needs them."""

    rank: int  # tiers by display order; the single plans rank below every tier (-1)
    amount_msat: int  # the price of one period
    period_seconds: int  # 0: for good (no price per second)
    grace_seconds: int = 0


@dataclass(frozen=True, slots=True)
class Terms:
    """The relay's price list for the rule: tiers by name, "" the single plans' time
    when it is sold per period (the subscription plan, else admission with a term)."""

    plans: Mapping[str, PlanTerms] = field(default_factory=dict)

    def rank(self, role: str) -> int:
        found = self.plans.get(role)
        return -1 if found is None else found.rank

    def grace(self, role: str) -> int:
        found = self.plans.get(role)
        return 0 if found is None else found.grace_seconds


NO_TERMS = Terms()


@dataclass(frozen=True, slots=True)
class Holding:
    """An account's time: ``role`` until ``switch_at``, then ``next_role`` until ``until``
    (``switch_at`` 0: ``role`` until ``until``)."""

    role: str = ""
    until: int = 0
    next_role: str = ""
    switch_at: int = 0
    comped: bool = False

    def at(self, now: int) -> Holding:
        """The same holding with a change whose moment has come applied."""
        if self.switch_at and self.switch_at <= now:
            return replace(self, role=self.next_role, next_role="", switch_at=0)
        return self

    def role_at(self, now: int) -> str:
        """The role whose limits apply at ``now`` (after the end too: grace, and what the
        ended-plan reply names)."""
        return self.at(now).role

    @property
    def last_role(self) -> str:
        """The role held at the end of the paid time: what renewal renews, whose grace follows."""
        return self.next_role if self.switch_at else self.role


def credit_seconds(old: PlanTerms | None, seconds: int, new: PlanTerms | None) -> int:
    """The proration rule, the one place it is written: ``seconds`` unused of ``old`` are
    worth ``old.amount_msat * seconds / old.period_seconds``; that value buys time of
    ``new`` at its price, ``value * new.period_seconds / new.amount_msat`` seconds, rounded
    down to the second (never more than was paid for). Time of a plan without a price per
    period (a role given by the operator, a plan for good, the single plans when only
    admission for good is sold) counts second for second: it is never lost."""
    if seconds <= 0:
        return 0
    if old is None or new is None or not (old.period_seconds and new.period_seconds and new.amount_msat):
        return seconds
    return seconds * old.amount_msat * new.period_seconds // (old.period_seconds * new.amount_msat)


def _after(start: int, seconds: int, forever: bool) -> int:
    if forever or start >= FOREVER:
        return FOREVER
    return min(FOREVER, start + seconds)


def after_payment(held: Holding, plan: str, seconds: int, forever: bool, now: int, terms: Terms) -> Holding:
    """The holding after a payment of ``plan`` ("" for the single plans) that buys
    ``seconds``, or time for good with ``forever``, settled at ``now`` (module docstring).
    A payment that buys no time (credit) changes nothing here."""
    if seconds <= 0 and not forever:
        return held
    held = held.at(now)
    if held.comped:
        if not plan:  # the comp stays; the single plans' time extends as it always did
            start = max(now, held.until)
            return replace(held, until=_after(start, seconds, forever))
        held = Holding("", held.until)
    last = held.last_role
    if held.until <= now:
        in_grace = held.until > 0 and now < held.until + terms.grace(last)
        if in_grace and plan == last:
            return Holding(plan, _after(held.until, seconds, forever))
        return Holding(plan, _after(now, seconds, forever))
    if plan == last:
        return replace(held, until=_after(held.until, seconds, forever))
    current_end = held.switch_at or held.until
    if terms.rank(plan) >= terms.rank(held.role):  # upgrade (equal: two roles that are no tier)
        if current_end >= FOREVER:  # held for good: it resumes after the new tier's period
            resume = _after(now, seconds, forever)
            return Holding(plan, FOREVER) if resume >= FOREVER else Holding(plan, FOREVER, held.role, resume)
        extra = credit_seconds(terms.plans.get(held.role), current_end - now, terms.plans.get(plan))
        end = _after(now, seconds + extra, forever)
        if not held.switch_at or end >= FOREVER:
            return Holding(plan, end)
        return Holding(plan, _after(end, held.until - held.switch_at, False), held.next_role, end)
    if current_end >= FOREVER:
        return held
    if not held.switch_at:
        return Holding(held.role, _after(held.until, seconds, forever), plan, held.until)
    extra = credit_seconds(terms.plans.get(held.next_role), held.until - held.switch_at, terms.plans.get(plan))
    return Holding(held.role, _after(held.switch_at, seconds + extra, forever), plan, held.switch_at)
