"""Prices and what each payment grants, derived once from settings.

Pure: no I/O, no clock. What an invoice grants is copied onto the invoice when it is
issued (see ``lightning.store.base.Invoice``), so changing prices never alters an invoice
someone is already paying.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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
        )

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
        if self.credit_enabled:
            out.append(
                PlanOffer(
                    "credit",
                    "Prepaid credit",
                    f"each event costs {_msat_text(self.default_price_msat)}"
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


def _msat_text(msat: int) -> str:
    if msat == 0:
        return "nothing"
    if msat % 1000 == 0:
        return f"{msat // 1000} sat" + ("s" if msat != 1000 else "")
    return f"{msat} msat"
