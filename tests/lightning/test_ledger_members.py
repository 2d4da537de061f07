"""NIP-43 membership in both stores: single-use invite codes redeemed exactly once, with
their grant in the same transaction, and leaving. Against every backend."""

from __future__ import annotations

import asyncio

from lightning.store.base import FOREVER, Invite, InviteOutcome, LedgerStore
from relay.nostr import crypto

NOW = 1_700_000_000
ALICE_PK = crypto.public_key((1).to_bytes(32, "big")).hex()
BOB_PK = crypto.public_key((2).to_bytes(32, "big")).hex()


def invite(
    code_hash: str, *, expires_at: int | None = None, created_by: str = "operator", **grant: int | bool
) -> Invite:
    return Invite(
        code_hash=code_hash,
        plan="admission",
        created_at=NOW,
        expires_at=expires_at,
        created_by=created_by,
        **grant,  # type: ignore[arg-type]
    )


async def test_invite_redeems_once_and_applies_its_grant(ledger: LedgerStore) -> None:
    await ledger.add_invites([invite("aa" * 32, admit_seconds=3600, credit_msat=5000)])
    assert await ledger.redeem_invite("aa" * 32, ALICE_PK, NOW) is InviteOutcome.REDEEMED
    account = await ledger.get_account(ALICE_PK)
    assert account is not None and account.admitted_until == NOW + 3600 and account.credit_msat == 5000
    # the same claimer again: nothing changes; someone else: invalid (not "used": a guesser learns nothing)
    assert await ledger.redeem_invite("aa" * 32, ALICE_PK, NOW + 1) is InviteOutcome.ALREADY_MINE
    assert await ledger.redeem_invite("aa" * 32, BOB_PK, NOW + 1) is InviteOutcome.INVALID
    assert await ledger.get_account(BOB_PK) is None
    account = await ledger.get_account(ALICE_PK)
    assert account is not None and account.admitted_until == NOW + 3600 and account.credit_msat == 5000
    (listed,) = await ledger.list_invites()
    assert listed.redeemed_by == ALICE_PK and listed.redeemed_at == NOW


async def test_unknown_and_expired_codes_are_refused(ledger: LedgerStore) -> None:
    await ledger.add_invites([invite("bb" * 32, expires_at=NOW + 10, admit_forever=True)])
    assert await ledger.redeem_invite("cc" * 32, ALICE_PK, NOW) is InviteOutcome.INVALID
    assert await ledger.redeem_invite("bb" * 32, ALICE_PK, NOW + 10) is InviteOutcome.EXPIRED
    assert await ledger.get_account(ALICE_PK) is None
    assert await ledger.redeem_invite("bb" * 32, ALICE_PK, NOW + 9) is InviteOutcome.REDEEMED
    account = await ledger.get_account(ALICE_PK)
    assert account is not None and account.admitted_until == FOREVER


async def test_concurrent_claims_of_one_code_redeem_it_once(ledger: LedgerStore) -> None:
    await ledger.add_invites([invite("dd" * 32, credit_msat=1000)])
    claimers = [crypto.public_key((n).to_bytes(32, "big")).hex() for n in range(3, 13)]
    outcomes = await asyncio.gather(*(ledger.redeem_invite("dd" * 32, pk, NOW) for pk in claimers))
    assert outcomes.count(InviteOutcome.REDEEMED) == 1
    assert outcomes.count(InviteOutcome.INVALID) == 9
    credited = [a for pk in claimers if (a := await ledger.get_account(pk)) is not None and a.credit_msat]
    assert len(credited) == 1 and credited[0].credit_msat == 1000


async def test_open_invites_are_counted_per_creator_and_revocable(ledger: LedgerStore) -> None:
    await ledger.add_invites(
        [
            invite("01" * 32, created_by=ALICE_PK),
            invite("02" * 32, created_by=ALICE_PK, expires_at=NOW - 1),
            invite("03" * 32, created_by=ALICE_PK),
            invite("04" * 32),
        ]
    )
    assert await ledger.open_invite_count(ALICE_PK, NOW) == 2
    assert await ledger.redeem_invite("03" * 32, BOB_PK, NOW) is InviteOutcome.REDEEMED
    assert await ledger.open_invite_count(ALICE_PK, NOW) == 1
    assert await ledger.revoke_invite("01" * 32) is True
    assert await ledger.revoke_invite("03" * 32) is False  # used codes stay, for the record
    assert await ledger.redeem_invite("01" * 32, BOB_PK, NOW) is InviteOutcome.INVALID
    assert await ledger.open_invite_count(ALICE_PK, NOW) == 0


async def test_leaving_ends_admission_credit_and_allow_flag(ledger: LedgerStore) -> None:
    await ledger.update_account(ALICE_PK, NOW, admitted_until=FOREVER, credit_delta_msat=7000, allowed=True)
    assert await ledger.end_membership(ALICE_PK, NOW) is True
    account = await ledger.get_account(ALICE_PK)
    assert account is not None
    assert (account.admitted_until, account.credit_msat, account.allowed) == (0, 0, False)
    assert await ledger.end_membership(ALICE_PK, NOW) is False
    assert await ledger.end_membership(BOB_PK, NOW) is False


async def test_reminder_opt_in_and_each_reminder_claimed_once(ledger: LedgerStore) -> None:
    await ledger.update_account(ALICE_PK, NOW, admitted_until=NOW + 86400)
    await ledger.update_account(BOB_PK, NOW, credit_delta_msat=5)
    assert await ledger.reminder_targets() == []
    await ledger.set_reminders(ALICE_PK, True, NOW)
    await ledger.set_reminders(ALICE_PK, True, NOW + 1)  # twice is once
    assert await ledger.reminders_on(ALICE_PK) and not await ledger.reminders_on(BOB_PK)
    targets = await ledger.reminder_targets()
    assert [(a.pubkey, reminded) for a, reminded in targets] == [(ALICE_PK, False)]
    claims = await asyncio.gather(*(ledger.claim_reminder(ALICE_PK, "1d", NOW + 86400, NOW) for _ in range(5)))
    assert claims.count(True) == 1
    assert await ledger.claim_reminder(ALICE_PK, "1d", NOW + 2 * 86400, NOW) is True  # a new term, a new reminder
    assert await ledger.claim_reminder(ALICE_PK, "credit", 0, NOW) is True
    assert [reminded for _, reminded in await ledger.reminder_targets()] == [True]
    await ledger.rearm_reminder(ALICE_PK, "credit")
    assert [reminded for _, reminded in await ledger.reminder_targets()] == [False]
    assert await ledger.claim_reminder(ALICE_PK, "credit", 0, NOW) is True
    await ledger.set_reminders(ALICE_PK, False, NOW)
    assert await ledger.reminder_targets() == []


async def test_wallet_links_and_one_renewal_per_period(ledger: LedgerStore) -> None:
    from lightning.store.base import NwcLink

    await ledger.set_nwc_link(NwcLink(ALICE_PK, "sealed-1", 500_000, NOW))
    await ledger.set_nwc_link(NwcLink(ALICE_PK, "sealed-2", 700_000, NOW + 1))  # replaced, not added
    assert await ledger.nwc_links() == [NwcLink(ALICE_PK, "sealed-2", 700_000, NOW + 1)]
    end = NOW + 86400
    claims = await asyncio.gather(*(ledger.claim_renewal(ALICE_PK, end, f"{n:064x}", NOW) for n in range(5)))
    assert claims.count(True) == 1
    attempt = await ledger.get_renewal(ALICE_PK, end)
    assert attempt is not None and attempt.state == "paying" and attempt.tries == 0
    await ledger.record_renewal(ALICE_PK, end, "paying", "wallet timed out", NOW + 5, tried=True)
    await ledger.record_renewal(ALICE_PK, end, "paid", "renewed", NOW + 9, tried=False)
    (done,) = await ledger.list_renewals(ALICE_PK)
    assert (done.state, done.tries, done.detail, done.updated_at) == ("paid", 1, "renewed", NOW + 9)
    assert done.payment_hash == attempt.payment_hash
    assert await ledger.forget_nwc_link(ALICE_PK) is True
    assert await ledger.forget_nwc_link(ALICE_PK) is False
    assert await ledger.nwc_links() == []
