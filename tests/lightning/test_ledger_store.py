"""The payments ledger (``lightning.store``): invoices, exactly-once settlement, accounts,
and the per-event credit charge that its write hook takes in the event's own transaction
(``relay.store.database``). Against every backend."""

from __future__ import annotations

import asyncio
import dataclasses

from lightning.store.base import FOREVER, Account, Charge, Invoice, InvoiceState, LedgerStore
from relay.nostr import crypto
from relay.nostr.errors import Rejection, Restricted
from relay.nostr.event import Event, sign_event
from relay.nostr.filters import Filter
from relay.store.base import Store, WriteOutcome, WriteRequest

NOW = 1_700_000_000
ALICE = (1).to_bytes(32, "big")
ALICE_PK = crypto.public_key(ALICE).hex()
BOB_PK = crypto.public_key((2).to_bytes(32, "big")).hex()


def invoice(payment_hash: str, pubkey: str = ALICE_PK, created_at: int = NOW, **grant: int | bool | str) -> Invoice:
    return Invoice(
        payment_hash=payment_hash,
        pubkey=pubkey,
        plan="test",
        amount_msat=21_000,
        bolt11=f"lnbc210n1{payment_hash[:10]}",
        created_at=created_at,
        expires_at=created_at + 600,
        **grant,  # type: ignore[arg-type]
    )


async def test_invoice_round_trip(ledger: LedgerStore) -> None:
    inv = invoice("01" * 32, admit_seconds=3600, credit_msat=5)
    await ledger.add_invoice(inv)
    assert await ledger.get_invoice(inv.payment_hash) == inv
    assert await ledger.get_invoice("ff" * 32) is None


async def test_list_invoices_newest_first_with_filters(ledger: LedgerStore) -> None:
    a = invoice("01" * 32, created_at=NOW)
    b = invoice("02" * 32, pubkey=BOB_PK, created_at=NOW + 1)
    c = invoice("03" * 32, created_at=NOW + 2)
    for inv in (a, b, c):
        await ledger.add_invoice(inv)
    assert [i.payment_hash for i in await ledger.list_invoices()] == [c.payment_hash, b.payment_hash, a.payment_hash]
    assert [i.payment_hash for i in await ledger.list_invoices(pubkey=ALICE_PK)] == [c.payment_hash, a.payment_hash]
    assert await ledger.settle_invoice(c.payment_hash, 21_000, NOW + 5)
    assert [i.payment_hash for i in await ledger.list_invoices(pending_only=True)] == [b.payment_hash, a.payment_hash]
    assert [i.payment_hash for i in await ledger.list_invoices(limit=2)] == [c.payment_hash, b.payment_hash]
    assert [i.payment_hash for i in await ledger.list_invoices(paid_after=NOW + 4)] == [c.payment_hash]
    assert await ledger.list_invoices(paid_after=NOW + 5) == []
    # a expires at NOW + 600, b at NOW + 601
    still_valid = await ledger.list_invoices(pending_only=True, valid_after=NOW + 600)
    assert [i.payment_hash for i in still_valid] == [b.payment_hash]


async def test_settle_admission_extends_from_now_or_current(ledger: LedgerStore) -> None:
    await ledger.add_invoice(invoice("01" * 32, admit_seconds=1000))
    await ledger.add_invoice(invoice("02" * 32, admit_seconds=500))
    assert await ledger.settle_invoice("01" * 32, 21_000, NOW)
    account = await ledger.get_account(ALICE_PK)
    assert account is not None and account.admitted_until == NOW + 1000
    assert account.admitted(NOW + 999) and not account.admitted(NOW + 1000)
    # Paying again before it runs out stacks on the current end, not on now.
    assert await ledger.settle_invoice("02" * 32, 21_000, NOW + 100)
    account = await ledger.get_account(ALICE_PK)
    assert account is not None and account.admitted_until == NOW + 1500
    paid = await ledger.get_invoice("02" * 32)
    assert paid is not None
    assert (paid.state, paid.paid_at, paid.paid_msat) == (InvoiceState.PAID, NOW + 100, 21_000)


async def test_settle_after_lapse_extends_from_now(ledger: LedgerStore) -> None:
    await ledger.update_account(ALICE_PK, NOW, admitted_until=NOW - 50)
    await ledger.add_invoice(invoice("01" * 32, admit_seconds=1000))
    assert await ledger.settle_invoice("01" * 32, 21_000, NOW)
    account = await ledger.get_account(ALICE_PK)
    assert account is not None and account.admitted_until == NOW + 1000


async def test_settle_forever_and_credit(ledger: LedgerStore) -> None:
    await ledger.add_invoice(invoice("01" * 32, admit_forever=True))
    await ledger.add_invoice(invoice("02" * 32, credit_msat=7_000))
    await ledger.add_invoice(invoice("03" * 32, admit_seconds=100, credit_msat=1_000))
    for h in ("01", "02", "03"):
        assert await ledger.settle_invoice(h * 32, 21_000, NOW)
    account = await ledger.get_account(ALICE_PK)
    assert account is not None
    assert account.admitted_until == FOREVER
    assert account.credit_msat == 8_000


async def test_settle_is_exactly_once(ledger: LedgerStore) -> None:
    await ledger.add_invoice(invoice("01" * 32, credit_msat=5_000))
    assert await ledger.settle_invoice("01" * 32, 21_000, NOW) is True
    assert await ledger.settle_invoice("01" * 32, 21_000, NOW + 1) is False
    account = await ledger.get_account(ALICE_PK)
    assert account is not None and account.credit_msat == 5_000
    settled = await ledger.get_invoice("01" * 32)
    assert settled is not None and settled.paid_at == NOW
    assert await ledger.settle_invoice("ff" * 32, 21_000, NOW) is False


async def test_concurrent_settlements_credit_once(ledger: LedgerStore) -> None:
    await ledger.add_invoice(invoice("01" * 32, credit_msat=5_000, admit_seconds=60))
    results = await asyncio.gather(*(ledger.settle_invoice("01" * 32, 21_000, NOW) for _ in range(50)))
    assert results.count(True) == 1
    account = await ledger.get_account(ALICE_PK)
    assert account is not None
    assert (account.credit_msat, account.admitted_until) == (5_000, NOW + 60)


async def test_expired_invoice_can_still_be_settled_once(ledger: LedgerStore) -> None:
    await ledger.add_invoice(invoice("01" * 32, credit_msat=3_000))
    await ledger.add_invoice(invoice("02" * 32, created_at=NOW + 1_000))
    assert await ledger.expire_invoices(NOW + 601) == 1
    assert await ledger.expire_invoices(NOW + 601) == 0
    expired = await ledger.get_invoice("01" * 32)
    assert expired is not None and expired.state is InvoiceState.EXPIRED
    # A payment that arrives late (the wallet settled it anyway) is honoured.
    assert await ledger.settle_invoice("01" * 32, 21_000, NOW + 700)
    assert not await ledger.settle_invoice("01" * 32, 21_000, NOW + 701)
    account = await ledger.get_account(ALICE_PK)
    assert account is not None and account.credit_msat == 3_000
    # A paid invoice is never expired afterwards.
    assert await ledger.expire_invoices(NOW + 10_000) == 1
    paid = await ledger.get_invoice("01" * 32)
    assert paid is not None and paid.state is InvoiceState.PAID


async def test_update_account_creates_and_changes(ledger: LedgerStore) -> None:
    assert await ledger.get_account(BOB_PK) is None
    created = await ledger.update_account(BOB_PK, NOW, credit_delta_msat=500, allowed=True)
    assert created == Account(BOB_PK, admitted_until=0, credit_msat=500, banned=False, allowed=True, updated_at=NOW)
    changed = await ledger.update_account(BOB_PK, NOW + 1, admitted_until=NOW + 99, banned=True, credit_delta_msat=-200)
    assert changed == dataclasses.replace(
        created, admitted_until=NOW + 99, banned=True, credit_msat=300, updated_at=NOW + 1
    )
    assert await ledger.get_account(BOB_PK) == changed
    revoked = await ledger.update_account(BOB_PK, NOW + 2, admitted_until=0, allowed=False)
    assert (revoked.admitted_until, revoked.allowed, revoked.banned) == (0, False, True)
    await ledger.update_account(ALICE_PK, NOW)
    assert [a.pubkey for a in await ledger.list_accounts()] == sorted([ALICE_PK, BOB_PK])


async def test_update_account_grants_forever_to_a_new_account(ledger: LedgerStore) -> None:
    """``satsrelay accounts grant --forever`` on a pubkey with no account: PostgreSQL typed
    the new row's admitted_until from ``coalesce($2, 0)`` as int4 and refused FOREVER (2**62)."""
    granted = await ledger.update_account(BOB_PK, NOW, admitted_until=FOREVER, credit_delta_msat=2**40)
    assert (granted.admitted_until, granted.credit_msat) == (FOREVER, 2**40)
    assert (await ledger.get_account(BOB_PK)) == granted


def charging(ledger: LedgerStore) -> list[str]:
    """Install the ledger's charge hook; the list collects the pubkeys it refused."""
    refused: list[str] = []
    ledger.charge_events(lambda ev: Restricted(f"credit ran out for {ev.pubkey[:8]}"), refused.append)
    return refused


def charged(ev: Event, msat: int) -> WriteRequest:
    return WriteRequest(ev, attachments=(Charge(msat),))


def refused(outcome: WriteOutcome | Rejection) -> bool:
    return isinstance(outcome, Restricted) and str(outcome).startswith("restricted: credit ran out")


async def test_charge_debits_credit_with_the_event(ledger: LedgerStore, store: Store) -> None:
    charging(ledger)
    await ledger.update_account(ALICE_PK, NOW, credit_delta_msat=1_000)
    ev = sign_event(ALICE, 1, "paid note", [], 100)
    assert await store.write_batch([charged(ev, 300)], NOW) == [WriteOutcome.STORED]
    account = await ledger.get_account(ALICE_PK)
    assert account is not None and account.credit_msat == 700


async def test_insufficient_credit_stores_nothing_and_charges_nothing(ledger: LedgerStore, store: Store) -> None:
    refusals = charging(ledger)
    await ledger.update_account(ALICE_PK, NOW, credit_delta_msat=500)
    cheap = sign_event(ALICE, 1, "cheap", [], 100)
    dear = sign_event(ALICE, 1, "dear", [], 101)
    outcomes = await store.write_batch([charged(cheap, 400), charged(dear, 400)], NOW)
    assert outcomes[0] is WriteOutcome.STORED and refused(outcomes[1])
    assert await store.query([Filter()], NOW) == [cheap.raw]
    account = await ledger.get_account(ALICE_PK)
    assert account is not None and account.credit_msat == 100
    # No account at all is no credit at all.
    stranger = sign_event((9).to_bytes(32, "big"), 1, "who", [], 100)
    (outcome,) = await store.write_batch([charged(stranger, 1)], NOW)
    assert refused(outcome)
    assert await ledger.get_account(stranger.pubkey) is None
    assert await store.count([Filter()], NOW) == 1
    assert refusals == [ALICE_PK, stranger.pubkey]  # the gate's cache is told, on the event loop


async def test_insufficient_credit_replaceable_keeps_old_version(ledger: LedgerStore, store: Store) -> None:
    charging(ledger)
    await ledger.update_account(ALICE_PK, NOW, credit_delta_msat=100)
    old = sign_event(ALICE, 0, "old profile", [], 100)
    new = sign_event(ALICE, 0, "new profile", [], 200)
    outcomes = await store.write_batch([charged(old, 100), charged(new, 100)], NOW)
    assert outcomes[0] is WriteOutcome.STORED and refused(outcomes[1])
    assert await store.query([Filter()], NOW) == [old.raw]


async def test_duplicates_superseded_and_deleted_are_not_charged(ledger: LedgerStore, store: Store) -> None:
    charging(ledger)
    await ledger.update_account(ALICE_PK, NOW, credit_delta_msat=1_000)
    note = sign_event(ALICE, 1, "note", [], 100)
    newer = sign_event(ALICE, 3, "contacts v2", [], 200)
    older = sign_event(ALICE, 3, "contacts v1", [], 100)
    gone = sign_event(ALICE, 1, "gone", [], 100)
    request = sign_event(ALICE, 5, "", [["e", gone.id]], 150)
    batch = [charged(e, 100) for e in (note, newer, request)]
    assert await store.write_batch(batch, NOW) == [WriteOutcome.STORED] * 3
    again = [charged(e, 100) for e in (note, older, gone)]
    outcomes = await store.write_batch(again, NOW)
    assert outcomes == [WriteOutcome.DUPLICATE, WriteOutcome.SUPERSEDED, WriteOutcome.DELETED]
    account = await ledger.get_account(ALICE_PK)
    assert account is not None and account.credit_msat == 700


async def test_batches_racing_to_charge_one_account_never_overdraw_it(ledger: LedgerStore, store: Store) -> None:
    """Twenty batches at once (as several nodes write) charging one author: exactly the
    events the credit covers are stored, each charged once."""
    charging(ledger)
    await ledger.update_account(ALICE_PK, NOW, credit_delta_msat=3_000)

    async def batch(i: int) -> list[WriteOutcome | Rejection]:
        return await store.write_batch(
            [charged(sign_event(ALICE, 1, f"b{i} e{j}", [], 100), 100) for j in range(5)], NOW
        )

    outcomes = [o for r in await asyncio.gather(*(batch(i) for i in range(20))) for o in r]
    assert outcomes.count(WriteOutcome.STORED) == 30
    assert all(o is WriteOutcome.STORED or refused(o) for o in outcomes)
    assert await store.count([Filter()], NOW) == 30
    account = await ledger.get_account(ALICE_PK)
    assert account is not None and account.credit_msat == 0


async def test_charge_credit_debits_atomically_or_not_at_all(ledger: LedgerStore) -> None:
    await ledger.update_account(ALICE_PK, NOW, credit_delta_msat=1_000)
    results = await asyncio.gather(*(ledger.charge_credit(ALICE_PK, 300, NOW) for _ in range(5)))
    assert sorted(results) == [False, False, True, True, True]
    account = await ledger.get_account(ALICE_PK)
    assert account is not None and account.credit_msat == 100
    assert await ledger.charge_credit(BOB_PK, 1, NOW) is False  # no account: nothing to take
    assert await ledger.get_account(BOB_PK) is None


async def test_add_invoice_caps_pending_per_pubkey_and_overall(ledger: LedgerStore) -> None:
    caps = {"max_pending": 3, "max_pending_per_pubkey": 2}
    assert await ledger.add_invoice(invoice("01" * 32), **caps)
    assert await ledger.add_invoice(invoice("02" * 32), **caps)
    assert not await ledger.add_invoice(invoice("03" * 32), **caps)  # Alice's two are pending
    assert await ledger.add_invoice(invoice("04" * 32, pubkey=BOB_PK), **caps)
    assert not await ledger.add_invoice(invoice("05" * 32, pubkey="ab" * 32), **caps)  # 3 in all
    assert await ledger.get_invoice("03" * 32) is None and await ledger.get_invoice("05" * 32) is None
    # a paid invoice and one past its expiry no longer count
    await ledger.settle_invoice("01" * 32, 21_000, NOW + 1)
    assert await ledger.add_invoice(invoice("06" * 32, created_at=NOW + 1), **caps)
    later = NOW + 10_000
    for n in range(3):
        assert await ledger.add_invoice(invoice(f"1{n}" * 32, pubkey="cd" * 32, created_at=later), max_pending=3)


async def test_pending_invoice_counts_skip_paid_and_expired(ledger: LedgerStore) -> None:
    await ledger.add_invoice(invoice("01" * 32))
    await ledger.add_invoice(invoice("02" * 32))
    await ledger.add_invoice(invoice("03" * 32, pubkey=BOB_PK))
    await ledger.add_invoice(invoice("04" * 32, created_at=NOW - 1_000))  # expired at NOW-400
    await ledger.settle_invoice("02" * 32, 21_000, NOW)
    assert await ledger.pending_invoice_counts(ALICE_PK, NOW) == (1, 0, 2)
    assert await ledger.pending_invoice_counts("ab" * 32, NOW) == (0, 0, 2)


async def test_pending_invoice_counts_per_source(ledger: LedgerStore) -> None:
    await ledger.add_invoice(invoice("01" * 32, source="10.0.0.1"))
    await ledger.add_invoice(invoice("02" * 32, pubkey=BOB_PK, source="10.0.0.1"))
    await ledger.add_invoice(invoice("03" * 32, source=""))  # the relay's own
    assert await ledger.pending_invoice_counts(ALICE_PK, NOW, "10.0.0.1") == (2, 2, 3)
    assert await ledger.pending_invoice_counts(ALICE_PK, NOW, "") == (2, 0, 3)
    assert await ledger.pending_invoice_counts(ALICE_PK, NOW, "2001:db8::/64") == (2, 0, 3)


async def test_a_full_pool_evicts_the_oldest_invoice_of_the_biggest_holder(ledger: LedgerStore) -> None:
    """Issue 17: a full pool makes room instead of refusing; who gives way is the source
    holding the most (its oldest invoice), or the requester itself when it holds as many.
    The evicted invoice stays pending (creditable) but no longer counts."""
    caps: dict[str, int | bool] = {"max_pending": 5, "max_pending_per_source": 3, "evict": True}
    rows = [("a1", "A", 0), ("a2", "A", 1), ("a3", "A", 2), ("b1", "B", 3), ("e1", "", 4)]
    for name, source, age in rows:
        added = await ledger.add_invoice(invoice(name * 32, created_at=NOW + age, source=source), **caps)
        assert added, name
    # A fourth from A is over its share; a newcomer C evicts A's oldest.
    assert not await ledger.add_invoice(invoice("a4" * 32, created_at=NOW + 5, source="A"), **caps)
    assert await ledger.add_invoice(invoice("c1" * 32, created_at=NOW + 5, source="C"), **caps)
    evicted = await ledger.get_invoice("a1" * 32)
    assert evicted is not None and evicted.state is InvoiceState.PENDING and evicted.expires_at == NOW + 5
    assert await ledger.pending_invoice_counts(ALICE_PK, NOW + 5, "A") == (5, 2, 5)
    # A holds 2, the most: its oldest goes next, even for a request from B.
    assert await ledger.add_invoice(invoice("b2" * 32, created_at=NOW + 6, source="B"), **caps)
    assert (await ledger.get_invoice("a2" * 32)).expires_at == NOW + 6  # type: ignore[union-attr]
    # Now A, B, C hold 1, 2, 1: B asks again and, holding the most, gives up its own oldest.
    assert await ledger.add_invoice(invoice("b3" * 32, created_at=NOW + 7, source="B"), **caps)
    assert (await ledger.get_invoice("b1" * 32)).expires_at == NOW + 7  # type: ignore[union-attr]
    # The relay's own invoices (source "") are never evicted, but may evict: B holds the most.
    assert await ledger.add_invoice(invoice("e2" * 32, created_at=NOW + 8), **caps)
    assert (await ledger.get_invoice("b2" * 32)).expires_at == NOW + 8  # type: ignore[union-attr]
    remaining = {i.payment_hash[:2] for i in await ledger.list_invoices(pending_only=True, valid_after=NOW + 8)}
    assert remaining == {"a3", "b3", "c1", "e1", "e2"}
    # A request whose clock reads a second behind the last eviction cannot "evict" an
    # invoice that was evicted already and overshoot the pool.
    assert await ledger.add_invoice(invoice("d1" * 32, created_at=NOW + 7, source="D"), **caps)
    assert len(await ledger.list_invoices(pending_only=True, valid_after=NOW + 8)) == 5
    # Paying or marking expired erases the source (the address is kept only while it counts).
    await ledger.settle_invoice("c1" * 32, 21_000, NOW + 9)
    assert (await ledger.get_invoice("c1" * 32)).source == ""  # type: ignore[union-attr]
    await ledger.expire_invoices(NOW + 10_000)
    assert {i.source for i in await ledger.list_invoices()} == {""}


async def test_a_pool_of_the_relays_own_invoices_cannot_evict(ledger: LedgerStore) -> None:
    caps: dict[str, int | bool] = {"max_pending": 2, "evict": True}
    assert await ledger.add_invoice(invoice("01" * 32), **caps)
    assert await ledger.add_invoice(invoice("02" * 32), **caps)
    assert not await ledger.add_invoice(invoice("03" * 32, source="10.0.0.1"), **caps)


async def test_add_invoice_caps_hold_under_concurrent_requests(ledger: LedgerStore) -> None:
    results = await asyncio.gather(
        *(ledger.add_invoice(invoice(f"{n:064x}", pubkey=f"{n % 7:064x}"), max_pending=10) for n in range(40))
    )
    assert results.count(True) == 10
    assert len(await ledger.list_invoices(pending_only=True)) == 10


async def test_find_pending_invoice_matches_pubkey_plan_amount_and_time_left(ledger: LedgerStore) -> None:
    await ledger.add_invoice(invoice("01" * 32))
    await ledger.add_invoice(invoice("02" * 32, created_at=NOW + 5))
    found = await ledger.find_pending_invoice(ALICE_PK, "test", 21_000, NOW)
    assert found is not None and found.payment_hash == "02" * 32
    assert await ledger.find_pending_invoice(ALICE_PK, "other", 21_000, NOW) is None
    assert await ledger.find_pending_invoice(ALICE_PK, "test", 22_000, NOW) is None
    assert await ledger.find_pending_invoice(BOB_PK, "test", 21_000, NOW) is None
    assert await ledger.find_pending_invoice(ALICE_PK, "test", 21_000, NOW + 605) is None  # too little time left
    await ledger.settle_invoice("02" * 32, 21_000, NOW + 6)
    found = await ledger.find_pending_invoice(ALICE_PK, "test", 21_000, NOW)
    assert found is not None and found.payment_hash == "01" * 32


async def test_delete_unpaid_invoices_keeps_paid_and_pending_ones(ledger: LedgerStore) -> None:
    await ledger.add_invoice(invoice("01" * 32))  # will expire
    await ledger.add_invoice(invoice("02" * 32))  # paid
    await ledger.add_invoice(invoice("03" * 32, created_at=NOW + 5_000))  # still pending
    await ledger.settle_invoice("02" * 32, 21_000, NOW + 1)
    assert await ledger.expire_invoices(NOW + 1_000) == 1
    assert await ledger.delete_unpaid_invoices(NOW + 600) == 0  # expired at NOW+600: not before it
    assert await ledger.delete_unpaid_invoices(NOW + 10_000) == 1
    remaining = {inv.payment_hash for inv in await ledger.list_invoices()}
    assert remaining == {"02" * 32, "03" * 32}
