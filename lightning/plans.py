"""Prices and what each payment grants, derived once from settings.

Pure: no I/O, no clock. What an invoice grants is copied onto the invoice when it is
issued (see ``lightning.store.base.Invoice``), so changing prices never alters an invoice
someone is already paying.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lightning.billing import PlanTerms, Terms
from lightning.settings import PaymentSettings

DAY = 86400


class UnknownPlan(ValueError):
    """The requested plan does not exist, is disabled, or its amount is out of range."""


@dataclass(frozen=True, slots=True)
class Grant:
    """One purchasable thing: its price and what settlement applies to the account."""

    plan: str
    amount_msat: int
    admit_seconds: int = 0
    admit_forever: bool = False
    credit_msat: int = 0
    role: str = ""  # a tier: the NIP-43 role settlement gives


@dataclass(frozen=True, slots=True)
class Tier:
    """A tier (``[payments.tiers.<name>]``): a plan with its own limits, and the NIP-43 role
    of that name. ``None`` limits are the relay's own."""

    name: str
    label: str
    description: str
    color: int | None
    order: int
    amount_msat: int
    period_seconds: int  # 0: admitted for good
    grace_seconds: int = 0
    events_per_second: float | None = None
    events_per_day: int | None = None
    max_bytes_stored: int | None = None
    max_event_bytes: int | None = None
    kinds: frozenset[int] | None = None
    free_inbox: bool = True
    linked_keys: int | None = None  # other keys a member may link; None: ``Plans.linked_keys``

    def offer_text(self) -> str:
        term = "for good" if self.period_seconds == 0 else f"for {_days(self.period_seconds)}"
        return f"{msat_text(self.amount_msat)} {term}"


def _better(limit: float | None, than: float | None) -> bool:
    """Whether ``limit`` gives more than ``than`` (None: no tier limit, the most)."""
    if than is None:
        return False
    return limit is None or limit > than


@dataclass(frozen=True, slots=True)
class PlanOffer:
    """A plan as the join page and NIP-11 describe it."""

    name: str
    title: str
    description: str
    amount_msat: int | None  # None: buyer chooses (credit top-up)
    period_seconds: int | None = None


@dataclass(frozen=True, slots=True)
class Plans:
    admission_msat: int | None
    admission_term_seconds: int  # 0 = for good
    subscription_msat: int | None
    subscription_period_seconds: int
    credit_enabled: bool
    credit_min_msat: int
    credit_max_msat: int
    credit_default_msat: int
    default_price_msat: int
    kind_prices_msat: dict[int, int]
    tiers: tuple[Tier, ...] = ()  # by order, then name
    linked_keys: int = 3  # keys a member of a plan that is no tier (or sets none) may link

    @classmethod
    def from_settings(cls, settings: PaymentSettings) -> Plans:
        credit = settings.credit
        return cls(
            admission_msat=settings.admission.fee_sats * 1000 if settings.admission.enabled else None,
            admission_term_seconds=round(settings.admission.term_days * DAY),
            subscription_msat=settings.subscription.fee_sats * 1000 if settings.subscription.enabled else None,
            subscription_period_seconds=round(settings.subscription.period_days * DAY),
            credit_enabled=credit.enabled,
            credit_min_msat=credit.min_topup_sats * 1000,
            credit_max_msat=credit.max_topup_sats * 1000,
            credit_default_msat=credit.default_topup_sats * 1000,
            default_price_msat=credit.default_price_msat,
            kind_prices_msat=dict(credit.kind_prices_msat),
            tiers=tuple(
                sorted(
                    (
                        Tier(
                            name=name,
                            label=t.label or name.capitalize(),
                            description=t.description,
                            color=t.color,
                            order=t.order,
                            amount_msat=t.price_sats * 1000,
                            period_seconds=round(t.period_days * DAY),
                            grace_seconds=round(t.grace_days * DAY),
                            events_per_second=t.events_per_second,
                            events_per_day=t.events_per_day,
                            max_bytes_stored=t.max_bytes_stored,
                            max_event_bytes=t.max_event_bytes,
                            kinds=frozenset(t.kinds) if t.kinds is not None else None,
                            free_inbox=t.free_inbox,
                            linked_keys=t.linked_keys,
                        )
                        for name, t in settings.tiers.items()
                    ),
                    key=lambda tier: (tier.order, tier.name),
                )
            ),
            linked_keys=settings.linked_keys,
        )

    def terms(self) -> Terms:
        """The price list the settlement rule reads (``lightning.billing``): each tier by
        rank (display order), and "" for the single plans' time when it is sold per period
        (the subscription plan, else admission with a term), ranked below every tier."""
        plans = {
            tier.name: PlanTerms(rank, tier.amount_msat, tier.period_seconds, tier.grace_seconds)
            for rank, tier in enumerate(self.tiers)
        }
        if self.subscription_msat is not None:
            plans[""] = PlanTerms(-1, self.subscription_msat, self.subscription_period_seconds)
        elif self.admission_msat is not None and self.admission_term_seconds:
            plans[""] = PlanTerms(-1, self.admission_msat, self.admission_term_seconds)
        return Terms(plans)

    def tier(self, name: str) -> Tier | None:
        """The tier of that name (an account's role); None for "" or a role that is no tier."""
        for tier in self.tiers:
            if tier.name == name:
                return tier
        return None

    def keys_to_link(self, role: str) -> int:
        """How many other keys a member holding ``role`` may link to the plan (README "One
        plan, several keys"): its tier's ``linked_keys``, else ``[payments] linked_keys``."""
        tier = self.tier(role)
        if tier is not None and tier.linked_keys is not None:
            return tier.linked_keys
        return self.linked_keys

    def upgrade(self, tier: Tier, limit: str, event_kind: int | None = None) -> Tier | None:
        """The first tier after ``tier`` (in display order) that gives more of ``limit`` (a
        ``Tier`` field: ``events_per_second``, ``max_event_bytes``, ...; ``kinds`` with
        ``event_kind``: one that allows it): what a refusal names as the way past it."""
        later = self.tiers[self.tiers.index(tier) + 1 :] if tier in self.tiers else ()
        for other in later:
            if limit == "kinds":
                if other.kinds is None or event_kind in other.kinds:
                    return other
            elif _better(getattr(other, limit), getattr(tier, limit)):
                return other
        return None

    def price_msat(self, kind: int) -> int:
        """What one accepted event of ``kind`` costs a credit-plan account."""
        return self.kind_prices_msat.get(kind, self.default_price_msat)

    def grant(self, plan: str, amount_sats: int | None = None) -> Grant:
        """The grant for buying ``plan``; ``amount_sats`` is the top-up for ``credit``."""
        if plan == "admission" and self.admission_msat is not None:
            term = self.admission_term_seconds
            return Grant("admission", self.admission_msat, admit_seconds=term, admit_forever=term == 0)
        if plan == "subscription" and self.subscription_msat is not None:
            return Grant("subscription", self.subscription_msat, admit_seconds=self.subscription_period_seconds)
        if plan == "credit" and self.credit_enabled:
            amount = self.credit_default_msat if amount_sats is None else amount_sats * 1000
            if not self.credit_min_msat <= amount <= self.credit_max_msat:
                raise UnknownPlan(
                    f"credit top-up must be {self.credit_min_msat // 1000}-{self.credit_max_msat // 1000} sats"
                )
            return Grant("credit", amount, credit_msat=amount)
        tier = self.tier(plan)
        if tier is not None:
            term = tier.period_seconds
            return Grant(tier.name, tier.amount_msat, admit_seconds=term, admit_forever=term == 0, role=tier.name)
        raise UnknownPlan(f"no plan {plan!r} here")

    def offers(self) -> list[PlanOffer]:
        out = []
        if self.admission_msat is not None:
            term = self.admission_term_seconds
            out.append(
                PlanOffer(
                    "admission",
                    "Admission",
                    "write for good" if term == 0 else f"write for {_days(term)}",
                    self.admission_msat,
                    period_seconds=term or None,
                )
            )
        if self.subscription_msat is not None:
            period = self.subscription_period_seconds
            out.append(
                PlanOffer(
                    "subscription",
                    "Subscription",
                    f"write for {_days(period)}; paying again extends it",
                    self.subscription_msat,
                    period_seconds=period,
                )
            )
        for tier in self.tiers:
            period = tier.period_seconds
            out.append(
                PlanOffer(
                    tier.name,
                    tier.label,
                    tier.description
                    or ("write for good" if period == 0 else f"write for {_days(period)}; paying again extends it"),
                    tier.amount_msat,
                    period_seconds=period or None,
                )
            )
        if self.credit_enabled:
            out.append(
                PlanOffer(
                    "credit",
                    "Prepaid credit",
                    f"each event costs {msat_text(self.default_price_msat)}"
                    + (" (some kinds differ)" if self.kind_prices_msat else ""),
                    None,
                )
            )
        return out

    def nip11_fees(self) -> dict[str, Any]:
        """NIP-11 ``fees``: admission, subscription (with period) and publication per kind."""
        fees: dict[str, Any] = {}
        if self.admission_msat is not None:
            entry: dict[str, Any] = {"amount": self.admission_msat, "unit": "msats"}
            if self.admission_term_seconds:
                entry["period"] = self.admission_term_seconds
            fees["admission"] = [entry]
        if self.subscription_msat is not None:
            fees["subscription"] = [
                {"amount": self.subscription_msat, "unit": "msats", "period": self.subscription_period_seconds}
            ]
        for tier in self.tiers:
            # NIP-11 has one list per fee kind; a tier's entry is told apart by its
            # ``tier`` (the NIP-43 role id) and ``label``, beside the NIP's own fields.
            tier_entry: dict[str, Any] = {"amount": tier.amount_msat, "unit": "msats", "tier": tier.name}
            tier_entry["label"] = tier.label
            if tier.period_seconds:
                tier_entry["period"] = tier.period_seconds
                fees.setdefault("subscription", []).append(tier_entry)
            else:
                fees.setdefault("admission", []).append(tier_entry)
        if self.credit_enabled:
            by_price: dict[int, list[int]] = {}
            for kind, price in sorted(self.kind_prices_msat.items()):
                by_price.setdefault(price, []).append(kind)
            publication: list[dict[str, Any]] = [
                {"kinds": kinds, "amount": price, "unit": "msats"} for price, kinds in by_price.items()
            ]
            # NIP-11 has no "every other kind" marker: an entry without "kinds" says it.
            publication.append({"amount": self.default_price_msat, "unit": "msats"})
            fees["publication"] = publication
        return fees


def _days(seconds: int) -> str:
    days = seconds / DAY
    if days >= 1 and days == int(days):
        return f"{int(days)} day" + ("s" if days != 1 else "")
    return f"{seconds // 3600} hours" if seconds >= 3600 else f"{seconds} seconds"


def msat_text(msat: int) -> str:
    if msat == 0:
        return "nothing"
    if msat % 1000 == 0:
        return f"{msat // 1000} sat" + ("s" if msat != 1000 else "")
    return f"{msat} msat"
