"""The operator console's payments figures, aggregated by the store (both backends):
revenue per UTC day and plan, the invoice funnel (pruned invoices included), recurring
revenue, member counts by status, and bounded searches of accounts and invoices."""

from __future__ import annotations

from lightning.store.base import (
    DAY_SECONDS,
    FOREVER,
    Invoice,
    InvoiceFunnel,
    LedgerStore,
    MemberStatus,
    RevenueRow,
    member_status,
)

DAY0 = 19_700  # a UTC day number
MIDNIGHT = DAY0 * DAY_SECONDS
NOW = MIDNIGHT + 5 * DAY_SECONDS + 3600  # 01:00 on day DAY0 + 5
SOON = NOW + 7 * DAY_SECONDS
MONTH = 30 * DAY_SECONDS


def pk(n: int) -> str:
    return f"{n:064x}"


def make(
    n: int,
    *,
    pubkey: str = "",
    plan: str = "subscription",
    msat: int = 21_000,
    created_at: int = MIDNIGHT,
    expires_in: int = 900,
    admit_seconds: int = 0,
    admit_forever: bool = False,
    credit_msat: int = 0,
) -> Invoice:
    return Invoice(
        payment_hash=f"{n:064x}"[::-1],  # distinct from the pubkeys
        pubkey=pubkey or pk(n),
        plan=plan,
        amount_msat=msat,
        bolt11=f"lnbcrt{n}",
        created_at=created_at,
        expires_at=created_at + expires_in,
        admit_seconds=admit_seconds,
        admit_forever=admit_forever,
        credit_msat=credit_msat,
    )


async def paid(ledger: LedgerStore, inv: Invoice, at: int, fee_msat: int = 0) -> None:
    await ledger.add_invoice(inv)
    assert await ledger.settle_invoice(inv.payment_hash, inv.amount_msat, at, fee_msat)


async def test_revenue_is_summed_per_utc_day_and_plan_since_the_start(ledger: LedgerStore) -> None:
    await paid(ledger, make(1, msat=10_000), MIDNIGHT - 1)  # the day before: left out
    await paid(ledger, make(2, msat=20_000), MIDNIGHT, fee_msat=400)
    await paid(ledger, make(3, msat=30_000), MIDNIGHT + DAY_SECONDS - 1, fee_msat=100)
    await paid(ledger, make(4, plan="credit", msat=5_000), MIDNIGHT + 10)
    await paid(ledger, make(5, msat=7_000), MIDNIGHT + 2 * DAY_SECONDS)
    await ledger.add_invoice(make(6, msat=99_000))  # never paid
    assert await ledger.revenue_by_day(MIDNIGHT) == [
        RevenueRow(DAY0, "credit", 5_000, 0, 1),
        RevenueRow(DAY0, "subscription", 50_000, 500, 2),
        RevenueRow(DAY0 + 2, "subscription", 7_000, 0, 1),
    ]
    assert await ledger.revenue_by_day(NOW) == []


async def test_funnel_counts_paid_expired_and_pending_past_expiry(ledger: LedgerStore) -> None:
    await ledger.add_invoice(make(1, created_at=MIDNIGHT - 1))  # before the period
    await paid(ledger, make(2, created_at=MIDNIGHT), NOW)
    await paid(ledger, make(3, created_at=MIDNIGHT + 100), MIDNIGHT + 200)
    await ledger.add_invoice(make(4, created_at=MIDNIGHT + 300))  # pending past expiry
    await ledger.add_invoice(make(5, created_at=NOW - 10))  # still payable
    await ledger.add_invoice(make(6, created_at=NOW - 5000, expires_in=4000))  # marked expired below
    assert await ledger.expire_invoices(NOW - 900) == 3  # 1, 4 and 6
    await ledger.add_invoice(make(7, created_at=NOW - 100, expires_in=100))  # expires exactly now
    assert await ledger.invoice_funnel(MIDNIGHT, NOW) == InvoiceFunnel(created=6, paid=2, expired=3)
    assert (await ledger.invoice_funnel(MIDNIGHT, NOW)).pending == 1


async def test_funnel_still_counts_invoices_the_watcher_pruned(ledger: LedgerStore) -> None:
    for n, created in ((1, MIDNIGHT - 10), (2, MIDNIGHT + 10), (3, MIDNIGHT + DAY_SECONDS), (4, MIDNIGHT + 20)):
        await ledger.add_invoice(make(n, created_at=created))
    await paid(ledger, make(5, created_at=MIDNIGHT + 30), MIDNIGHT + 40)
    assert await ledger.expire_invoices(NOW) == 4
    before = await ledger.invoice_funnel(MIDNIGHT, NOW)
    assert before == InvoiceFunnel(created=4, paid=1, expired=3)
    # Pruned in two rounds (the tally adds up per day); the paid one is never deleted.
    assert await ledger.delete_unpaid_invoices(MIDNIGHT + 20 + 900) == 2  # 1 and 2
    assert await ledger.delete_unpaid_invoices(NOW) == 2  # 3 and 4
    assert await ledger.find_invoices() == [await ledger.get_invoice(make(5).payment_hash)]
    assert await ledger.invoice_funnel(MIDNIGHT, NOW) == before
    # The day before the period holds invoice 1 only.
    assert await ledger.invoice_funnel(MIDNIGHT - DAY_SECONDS, NOW) == InvoiceFunnel(created=5, paid=1, expired=4)
    assert await ledger.invoice_funnel(MIDNIGHT + DAY_SECONDS, NOW) == InvoiceFunnel(created=1, paid=0, expired=1)


async def test_recurring_revenue_normalises_each_current_members_latest_time_invoice(ledger: LedgerStore) -> None:
    # 1: monthly subscription, renewed at a new price: the latest counts (3,000 sats).
    await paid(ledger, make(1, pubkey=pk(1), msat=2_000_000, admit_seconds=MONTH), NOW - 40 * DAY_SECONDS)
    await paid(ledger, make(11, pubkey=pk(1), msat=3_000_000, admit_seconds=MONTH), NOW - 20 * DAY_SECONDS)
    # ... a credit top-up afterwards grants no time: it does not replace the subscription.
    await paid(ledger, make(12, pubkey=pk(1), plan="credit", msat=9_000_000, credit_msat=9_000_000), NOW - DAY_SECONDS)
    # 2: a 360-day admission term, 12,000 sats: 1,000 sats a month.
    await paid(ledger, make(2, plan="admission", msat=12_000_000, admit_seconds=12 * MONTH), NOW - DAY_SECONDS)
    # 3: a zap that bought two periods and 500 sats of credit: 4,000 sats for 60 days.
    await paid(
        ledger, make(3, plan="zap", msat=4_500_000, admit_seconds=2 * MONTH, credit_msat=500_000), NOW - DAY_SECONDS
    )
    # Not recurring: admitted for good; lapsed; banned; operator-granted time without an invoice.
    await paid(ledger, make(4, plan="admission", msat=50_000_000, admit_forever=True), NOW - DAY_SECONDS)
    await paid(ledger, make(5, msat=2_000_000, admit_seconds=MONTH), NOW - 31 * DAY_SECONDS)
    await paid(ledger, make(6, msat=2_000_000, admit_seconds=MONTH), NOW - DAY_SECONDS)
    await ledger.update_account(pk(6), NOW, banned=True)
    await ledger.update_account(pk(7), NOW, admitted_until=NOW + MONTH)
    assert await ledger.recurring_msat(NOW, MONTH) == 3_000_000 + 1_000_000 + 2_000_000
    # Per day instead of per month: each member's share divided by 30, in whole msat.
    assert await ledger.recurring_msat(NOW, DAY_SECONDS) == 100_000 + 33_333 + 66_666
    assert await ledger.recurring_msat(NOW + 400 * DAY_SECONDS, MONTH) == 0


async def accounts_in_every_status(ledger: LedgerStore) -> dict[str, MemberStatus]:
    """Two of each status, at the boundaries where one could slip into the next."""
    made = {
        pk(1): (FOREVER, 0, MemberStatus.ACTIVE),
        pk(2): (SOON + 1, 0, MemberStatus.ACTIVE),
        pk(3): (SOON, 0, MemberStatus.EXPIRING),
        pk(4): (NOW + 1, 5_000, MemberStatus.EXPIRING),
        pk(5): (NOW, 0, MemberStatus.EXPIRED),
        pk(6): (1, 7_000, MemberStatus.EXPIRED),
        pk(7): (0, 1, MemberStatus.CREDIT_ONLY),
        pk(8): (0, 9_000, MemberStatus.CREDIT_ONLY),
        pk(9): (0, 0, MemberStatus.NONE),
    }
    for pubkey, (until, credit, _) in made.items():
        await ledger.update_account(pubkey, NOW, admitted_until=until, credit_delta_msat=credit)
    return {pubkey: status for pubkey, (_, _, status) in made.items()}


async def test_member_counts_by_status_match_the_python_rule(ledger: LedgerStore) -> None:
    made = await accounts_in_every_status(ledger)
    counts = await ledger.member_counts(NOW, SOON)
    assert counts == {
        MemberStatus.ACTIVE: 2,
        MemberStatus.EXPIRING: 2,
        MemberStatus.EXPIRED: 2,
        MemberStatus.CREDIT_ONLY: 2,
        MemberStatus.NONE: 1,
    }
    for account in await ledger.list_accounts():
        assert member_status(account, NOW, SOON) is made[account.pubkey]


async def test_find_accounts_by_status_and_pubkey_prefix_bounded(ledger: LedgerStore) -> None:
    made = await accounts_in_every_status(ledger)
    for status in MemberStatus:
        found = await ledger.find_accounts(NOW, SOON, status=status)
        assert {a.pubkey for a in found} == {p for p, s in made.items() if s is status}
    # Expiring soonest first; otherwise admitted longest first.
    assert [a.pubkey for a in await ledger.find_accounts(NOW, SOON, status=MemberStatus.EXPIRING)] == [pk(4), pk(3)]
    everyone = await ledger.find_accounts(NOW, SOON)
    assert [a.pubkey for a in everyone[:3]] == [pk(1), pk(2), pk(3)]
    assert len(everyone) == 9
    assert [a.pubkey for a in await ledger.find_accounts(NOW, SOON, limit=4)] == [a.pubkey for a in everyone[:4]]
    # Prefixes: exact, a shared prefix, with a status, and none matching.
    assert [a.pubkey for a in await ledger.find_accounts(NOW, SOON, pubkey_prefix=pk(7))] == [pk(7)]
    assert len(await ledger.find_accounts(NOW, SOON, pubkey_prefix="0" * 63)) == 9
    assert [
        a.pubkey for a in await ledger.find_accounts(NOW, SOON, status=MemberStatus.EXPIRED, pubkey_prefix="0" * 63)
    ] == [pk(5), pk(6)]
    assert await ledger.find_accounts(NOW, SOON, pubkey_prefix="f") == []


async def test_find_invoices_by_pubkey_or_hash_prefix_newest_first_bounded(ledger: LedgerStore) -> None:
    alice, bob = "ab" * 32, "abcd" + "00" * 30
    invoices = [
        make(1, pubkey=alice, created_at=NOW - 30),
        make(2, pubkey=bob, created_at=NOW - 20),
        make(3, pubkey=alice, created_at=NOW - 10),
        make(4, pubkey="cd" * 32, created_at=NOW),
    ]
    for inv in invoices:
        await ledger.add_invoice(inv)
    one, two, three, four = (inv.payment_hash for inv in invoices)

    async def hashes(**search: str | int) -> list[str]:
        return [i.payment_hash for i in await ledger.find_invoices(**search)]  # type: ignore[arg-type]

    assert await hashes() == [four, three, two, one]
    assert await hashes(limit=2) == [four, three]
    assert await hashes(pubkey_prefix=alice) == [three, one]
    assert await hashes(pubkey_prefix="abcd") == [two]
    assert await hashes(pubkey_prefix="ab") == [three, two, one]
    assert await hashes(hash_prefix=two) == [two]
    assert await hashes(hash_prefix=three[:6]) == [three]
    # One search text, either column: a pubkey prefix or a payment-hash prefix.
    assert await hashes(pubkey_prefix="cdcd", hash_prefix="cdcd") == [four]
    assert await hashes(pubkey_prefix=one[:8], hash_prefix=one[:8]) == [one]
    assert await hashes(pubkey_prefix="ee", hash_prefix="ee") == []
