"""The billing rule (``lightning.billing``) at its boundaries: an upgrade on the first and
the last second of a period, during grace and after lapse, the same tier (a renewal),
downgrades at the period end, the single plans beside tiers, comps and time for good.

The rule is pure, so these tests give it moments directly; the same rule running inside
both stores' settlement, with a clock moved over days, is in test_tier_billing.py."""

from __future__ import annotations

from lightning.billing import FOREVER, Holding, PlanTerms, Terms, after_payment, credit_seconds

DAY = 86400
T0 = 1_900_000_000
SUPPORTER = PlanTerms(rank=0, amount_msat=2_000_000, period_seconds=30 * DAY, grace_seconds=3 * DAY)
PRO = PlanTerms(rank=1, amount_msat=20_000_000, period_seconds=365 * DAY, grace_seconds=7 * DAY)
PLAIN = PlanTerms(rank=-1, amount_msat=1_000_000, period_seconds=30 * DAY)  # the subscription plan
TERMS = Terms({"supporter": SUPPORTER, "pro": PRO, "": PLAIN})
MONTH, YEAR = 30 * DAY, 365 * DAY


def pay(held: Holding, plan: str, now: int, seconds: int | None = None, *, forever: bool = False) -> Holding:
    period = {"supporter": MONTH, "pro": YEAR, "": MONTH}[plan] if seconds is None else seconds
    return after_payment(held, plan, period, forever, now, TERMS)


def supporter_from(start: int) -> Holding:
    return Holding("supporter", start + MONTH)


def test_proration_values_unused_time_at_the_old_price_and_buys_the_new_one() -> None:
    # 30 days of supporter (2,000 sats) are worth 2,000 sats: 36.5 days of pro at 20,000 a year.
    assert credit_seconds(SUPPORTER, MONTH, PRO) == 36 * DAY + DAY // 2
    # Rounded down to the second: a second of supporter is worth 1.22 s of pro, one of pro 0.82 s of supporter.
    assert credit_seconds(SUPPORTER, 1, PRO) == 1
    assert credit_seconds(PRO, 1, SUPPORTER) == 0  # 0.82 s: never more than was paid for
    assert credit_seconds(SUPPORTER, 0, PRO) == 0
    assert credit_seconds(SUPPORTER, -5, PRO) == 0
    # Time without a price per period counts second for second: never lost.
    assert credit_seconds(None, 1234, PRO) == 1234
    assert credit_seconds(SUPPORTER, 1234, None) == 1234
    assert credit_seconds(PlanTerms(0, 5000, 0), 1234, PRO) == 1234


def test_upgrade_on_the_first_second_credits_the_whole_old_period() -> None:
    after = pay(supporter_from(T0), "pro", T0)
    assert after == Holding("pro", T0 + YEAR + credit_seconds(SUPPORTER, MONTH, PRO))
    assert after.until == T0 + YEAR + 36 * DAY + DAY // 2


def test_upgrade_on_the_last_second_credits_one_second() -> None:
    end = T0 + MONTH
    after = pay(supporter_from(T0), "pro", end - 1)
    assert after == Holding("pro", end - 1 + YEAR + 1)


def test_upgrade_mid_period_credits_the_unused_part() -> None:
    now = T0 + 10 * DAY
    after = pay(supporter_from(T0), "pro", now)
    unused = credit_seconds(SUPPORTER, 20 * DAY, PRO)
    assert unused == 20 * DAY * 2000 * 365 // (30 * 20000)
    assert after == Holding("pro", now + YEAR + unused)
    assert after.role_at(now) == "pro"


def test_at_the_end_and_during_grace_nothing_is_left_to_credit() -> None:
    end = T0 + MONTH
    for now in (end, end + DAY, end + 3 * DAY - 1):  # the end itself is past: grace starts there
        assert pay(supporter_from(T0), "pro", now) == Holding("pro", now + YEAR)


def test_renewal_during_grace_extends_from_the_old_end_date() -> None:
    end = T0 + MONTH
    assert pay(supporter_from(T0), "supporter", end) == Holding("supporter", end + MONTH)
    assert pay(supporter_from(T0), "supporter", end + 3 * DAY - 1) == Holding("supporter", end + MONTH)


def test_after_lapse_a_payment_starts_now() -> None:
    lapsed = T0 + MONTH + 3 * DAY  # the end and its whole grace are past
    assert pay(supporter_from(T0), "supporter", lapsed) == Holding("supporter", lapsed + MONTH)
    assert pay(supporter_from(T0), "pro", lapsed + DAY) == Holding("pro", lapsed + DAY + YEAR)
    assert pay(Holding(), "supporter", T0) == Holding("supporter", T0 + MONTH)  # never paid


def test_same_tier_mid_period_is_a_renewal_after_the_end() -> None:
    assert pay(supporter_from(T0), "supporter", T0) == Holding("supporter", T0 + 2 * MONTH)
    assert pay(supporter_from(T0), "supporter", T0 + MONTH - 1) == Holding("supporter", T0 + 2 * MONTH)


def test_downgrade_applies_at_the_period_end() -> None:
    pro = Holding("pro", T0 + YEAR)
    after = pay(pro, "supporter", T0 + 100 * DAY)
    assert after == Holding("pro", T0 + YEAR + MONTH, "supporter", T0 + YEAR)
    assert after.role_at(T0 + YEAR - 1) == "pro"
    assert after.role_at(T0 + YEAR) == "supporter"
    assert after.last_role == "supporter"
    # Renewing what comes last extends it; renewing the current tier moves the change later.
    assert pay(after, "supporter", T0 + 200 * DAY) == Holding("pro", T0 + YEAR + 2 * MONTH, "supporter", T0 + YEAR)
    assert pay(after, "pro", T0 + 200 * DAY) == Holding("pro", T0 + 2 * YEAR + MONTH, "supporter", T0 + 2 * YEAR)
    # Once the change came, the holding is plain supporter time (renewal, grace, upgrade).
    assert pay(after, "supporter", T0 + YEAR + MONTH + DAY) == Holding("supporter", T0 + YEAR + 2 * MONTH)
    upgraded = pay(after, "pro", T0 + YEAR + 10 * DAY)
    assert upgraded == Holding("pro", T0 + YEAR + 10 * DAY + YEAR + credit_seconds(SUPPORTER, 20 * DAY, PRO))


def test_a_second_downgrade_replaces_the_scheduled_one_crediting_its_time() -> None:
    scheduled = Holding("pro", T0 + YEAR + MONTH, "supporter", T0 + YEAR)
    after = pay(scheduled, "", T0 + DAY)  # the single plan instead of supporter, after pro
    assert after == Holding("pro", T0 + YEAR + MONTH + credit_seconds(SUPPORTER, MONTH, PLAIN), "", T0 + YEAR)
    # the month paid for, and supporter's 2,000 sats as 60 days at 1,000 sats a month
    assert after.until - after.switch_at == 3 * MONTH


def test_upgrade_keeps_a_scheduled_change_after_the_new_tier() -> None:
    ultra = PlanTerms(rank=2, amount_msat=50_000_000, period_seconds=YEAR)
    terms = Terms({**TERMS.plans, "ultra": ultra})
    scheduled = Holding("pro", T0 + YEAR + MONTH, "supporter", T0 + YEAR)
    now = T0 + 65 * DAY
    after = after_payment(scheduled, "ultra", YEAR, False, now, terms)
    end = now + YEAR + credit_seconds(PRO, YEAR - 65 * DAY, ultra)
    assert after == Holding("ultra", end + MONTH, "supporter", end)


def test_the_single_plans_rank_below_every_tier() -> None:
    plain = Holding("", T0 + MONTH)
    # subscription time upgrades to a tier at the subscription's price
    assert pay(plain, "supporter", T0 + 10 * DAY) == Holding(
        "supporter", T0 + 10 * DAY + MONTH + credit_seconds(PLAIN, 20 * DAY, SUPPORTER)
    )
    # a subscription bought while holding a tier follows the tier
    assert pay(supporter_from(T0), "", T0 + DAY) == Holding("supporter", T0 + 2 * MONTH, "", T0 + MONTH)
    # bought in a tier's grace it starts now: the tier's renewal-from-the-end is for the tier
    assert pay(supporter_from(T0), "", T0 + MONTH + DAY) == Holding("", T0 + 2 * MONTH + DAY)


def test_time_for_good_resumes_after_a_tier_and_is_never_converted() -> None:
    for_good = Holding("", FOREVER)
    after = pay(for_good, "pro", T0)
    assert after == Holding("pro", FOREVER, "", T0 + YEAR)
    assert after.role_at(T0 + YEAR) == ""
    # a plan bought under a tier held for good has no end to wait for: nothing changes
    assert pay(Holding("pro", FOREVER), "supporter", T0) == Holding("pro", FOREVER)
    # buying time for good
    assert pay(supporter_from(T0), "pro", T0, 0, forever=True) == Holding("pro", FOREVER)
    assert pay(Holding("pro", T0 + YEAR), "", T0, 0, forever=True) == Holding("pro", FOREVER, "", T0 + YEAR)


def test_a_comp_survives_single_plan_payments_and_ends_with_a_tier_bought() -> None:
    comped = Holding("moderator", 0, comped=True)
    assert pay(comped, "", T0) == Holding("moderator", T0 + MONTH, comped=True)
    assert pay(comped, "supporter", T0) == Holding("supporter", T0 + MONTH)
    comped_with_time = Holding("moderator", T0 + MONTH, comped=True)
    assert pay(comped_with_time, "pro", T0 + 10 * DAY) == Holding(
        "pro", T0 + 10 * DAY + YEAR + credit_seconds(PLAIN, 20 * DAY, PRO)
    )


def test_credit_and_zero_time_payments_leave_the_holding_alone() -> None:
    held = Holding("pro", T0 + YEAR, "supporter", T0 + 100)
    assert after_payment(held, "", 0, False, T0, TERMS) is held
