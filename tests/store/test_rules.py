"""NIP-01/09 write rules (relay/store/rules.py) without a database: the functions and the
batch plan both stores decide with. The store suite (tests/store/test_events.py,
test_deletion_expiration.py) proves the same rules through SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

from relay.nostr import crypto
from relay.nostr.errors import Rejection, Restricted
from relay.nostr.event import Event, sign_event
from relay.store.base import WriteOutcome, WriteRequest
from relay.store.database import BatchHook
from relay.store.rules import (
    BatchPlan,
    Present,
    a_tag_addresses,
    address_of,
    e_tag_targets,
    lookups,
    newer,
    simple_batch,
)

ALICE = crypto.generate_secret()
BOB = crypto.generate_secret()


def ev(secret: bytes, kind: int, created_at: int, tags: list[list[str]] | None = None, content: str = "") -> Event:
    return sign_event(secret, kind, content, tags or [], created_at)


def empty_plan(*hooks: BatchHook) -> BatchPlan:
    return BatchPlan({}, {}, {}, {}, hooks)


def run(plan: BatchPlan, *events: Event | WriteRequest) -> list[WriteOutcome | Rejection]:
    reqs = [e if isinstance(e, WriteRequest) else WriteRequest(e) for e in events]
    return [plan.apply(i, req) for i, req in enumerate(reqs)]


def test_address_of_kind_classes() -> None:
    regular = ev(ALICE, 1, 10)
    replaceable = ev(ALICE, 10002, 10)
    addressable = ev(ALICE, 30023, 10, [["d", "post"]])
    assert address_of(regular) is None
    assert address_of(replaceable) == (replaceable.pubkey, 10002, "")
    assert address_of(addressable) == (addressable.pubkey, 30023, "post")
    assert address_of(ev(ALICE, 30023, 10)) == (addressable.pubkey, 30023, "")  # no d tag: ""


def test_newest_wins_tie_goes_to_lowest_id() -> None:
    assert newer(11, "ff" * 32, 10, "00" * 32)
    assert not newer(9, "00" * 32, 10, "ff" * 32)
    assert newer(10, "00" * 32, 10, "ff" * 32)
    assert not newer(10, "ff" * 32, 10, "00" * 32)


def test_a_tags_only_own_replaceable_or_addressable_addresses() -> None:
    bob_pk = ev(BOB, 1, 1).pubkey
    deletion = ev(ALICE, 5, 20, [["a", "30023:{pk}:post"], ["a", "1:{pk}:x"], ["a", "10002:{pk}:"],
                                 ["a", f"30023:{bob_pk}:post"], ["a", "junk"], ["a", "x:{pk}:y"]])
    pk = deletion.pubkey
    deletion = ev(ALICE, 5, 20, [[t[0], t[1].replace("{pk}", pk)] for t in deletion.tags])
    assert a_tag_addresses(deletion) == [(pk, 30023, "post"), (pk, 10002, "")]


def test_e_tag_targets_skip_malformed_ids() -> None:
    deletion = ev(ALICE, 5, 20, [["e", "ab" * 32], ["e", "not-hex"], ["e", "AB" * 32], ["p", "cd" * 32]])
    assert e_tag_targets(deletion) == ["ab" * 32]


def test_replaceable_keeps_newest_tie_lowest_id_within_one_batch() -> None:
    a, b = ev(ALICE, 0, 100, content="a"), ev(ALICE, 0, 100, content="b")
    low, high = sorted((a, b), key=lambda e: e.id)
    older = ev(ALICE, 0, 50)
    plan = empty_plan()
    assert run(plan, high, low, older, high) == [
        WriteOutcome.STORED,  # first version
        WriteOutcome.STORED,  # same second, lower id: replaces it
        WriteOutcome.SUPERSEDED,  # older
        WriteOutcome.SUPERSEDED,  # high was removed from the plan, and loses the tie again
    ]
    assert set(plan.inserts) == {low.id}
    assert plan.current[address_of(low)] is not None
    assert plan.db_deletes == set()  # never stored, so nothing to delete from the database


def test_replacing_a_stored_version_deletes_its_row() -> None:
    stored = ev(ALICE, 10002, 10)
    addr = address_of(stored)
    entry = Present(stored.id, stored.pubkey, stored.kind, stored.created_at, addr)
    plan = BatchPlan({stored.id: entry}, {addr: entry} if addr else {}, {}, {})
    newer_version = ev(ALICE, 10002, 11)
    # the replaced version is gone: sent again, it loses to the newer one
    assert run(plan, newer_version, stored) == [WriteOutcome.STORED, WriteOutcome.SUPERSEDED]
    assert plan.db_deletes == {stored.id}


def test_deletion_removes_own_events_and_tombstones_them() -> None:
    note = ev(ALICE, 1, 10)
    bobs = ev(BOB, 1, 10)
    deletion = ev(ALICE, 5, 20, [["e", note.id], ["e", bobs.id]])
    plan = empty_plan()
    assert run(plan, note, bobs, deletion, note) == [
        WriteOutcome.STORED, WriteOutcome.STORED, WriteOutcome.STORED, WriteOutcome.DELETED
    ]
    assert set(plan.inserts) == {bobs.id, deletion.id}  # bob's note is not alice's to delete
    assert plan.new_tomb_ids == {(note.id, note.pubkey), (bobs.id, note.pubkey)}
    # the tombstone names alice: bob's event with that id would not be refused
    assert plan.tomb_ids[bobs.id] == {note.pubkey}


def test_deleting_a_deletion_has_no_effect() -> None:
    first = ev(ALICE, 5, 10, [["e", "ab" * 32]])
    second = ev(ALICE, 5, 20, [["e", first.id]])
    plan = empty_plan()
    assert run(plan, first, second) == [WriteOutcome.STORED, WriteOutcome.STORED]
    assert set(plan.inserts) == {first.id, second.id}
    # and a kind 5 whose id is tombstoned is still accepted
    plan2 = BatchPlan({}, {}, {first.id: {first.pubkey}}, {})
    assert run(plan2, first) == [WriteOutcome.STORED]


def test_a_tag_deletion_covers_versions_up_to_its_created_at() -> None:
    v1 = ev(ALICE, 30023, 10, [["d", "post"]])
    pk = v1.pubkey
    deletion = ev(ALICE, 5, 20, [["a", f"30023:{pk}:post"]])
    v_old = ev(ALICE, 30023, 20, [["d", "post"]], content="same second as the deletion")
    v_new = ev(ALICE, 30023, 21, [["d", "post"]])
    plan = empty_plan()
    assert run(plan, v1, deletion, v_old, v_new) == [
        WriteOutcome.STORED, WriteOutcome.STORED, WriteOutcome.DELETED, WriteOutcome.STORED
    ]
    assert set(plan.inserts) == {deletion.id, v_new.id}
    assert plan.new_tomb_addresses == {(pk, 30023, "post"): 20}


class Budget:
    """A write hook's batch part that admits ``left`` events with attachments, then refuses."""

    def __init__(self, left: int) -> None:
        self.left = left
        self.admitted: list[str] = []

    def admit(self, request: WriteRequest) -> Rejection | None:
        if self.left <= 0:
            return Restricted("budget spent")
        self.left -= 1
        self.admitted.append(request.event.id)
        return None

    def retract(self, request: WriteRequest) -> None:
        self.admitted.remove(request.event.id)
        self.left += 1

    async def write(self, conn: Any, now: int) -> None:
        raise AssertionError("the plan never writes")


def test_hooks_decide_only_events_about_to_be_stored_and_refusals_store_nothing() -> None:
    budget = Budget(2)
    plan = empty_plan(budget)
    first, second, third, free = ev(ALICE, 1, 1), ev(ALICE, 1, 2), ev(ALICE, 1, 3), ev(ALICE, 1, 4)
    paid = (object(),)
    outcomes = run(
        plan,
        WriteRequest(first, attachments=paid),
        WriteRequest(first, attachments=paid),  # a duplicate never meets the hook
        WriteRequest(second, attachments=paid),
        WriteRequest(third, attachments=paid),
        WriteRequest(free),  # nothing attached: no hook asked
    )
    assert outcomes[:3] == [WriteOutcome.STORED, WriteOutcome.DUPLICATE, WriteOutcome.STORED]
    assert isinstance(outcomes[3], Restricted) and outcomes[4] is WriteOutcome.STORED
    assert budget.admitted == [first.id, second.id]
    assert set(plan.inserts) == {first.id, second.id, free.id}
    plan.retract(WriteRequest(second, attachments=paid))  # another node stored it first
    assert budget.admitted == [first.id] and budget.left == 1


def test_a_later_hooks_refusal_retracts_the_earlier_admissions() -> None:
    generous, stingy = Budget(5), Budget(0)
    plan = empty_plan(generous, stingy)
    note = ev(ALICE, 1, 1)
    (outcome,) = run(plan, WriteRequest(note, attachments=(object(),)))
    assert isinstance(outcome, Restricted)
    assert generous.admitted == [] and generous.left == 5
    assert plan.inserts == {}


def test_simple_batch_and_lookups() -> None:
    note, other = ev(ALICE, 1, 1), ev(BOB, 1, 1)
    assert simple_batch([WriteRequest(note), WriteRequest(other)])
    assert not simple_batch([WriteRequest(note), WriteRequest(note)])
    assert not simple_batch([WriteRequest(note, attachments=(object(),))])
    assert not simple_batch([WriteRequest(ev(ALICE, 0, 1))])
    deletion = ev(ALICE, 5, 2, [["e", other.id], ["a", f"30023:{note.pubkey}:x"]])
    profile = ev(ALICE, 0, 3)
    ids, addresses = lookups([note, deletion, profile])
    assert ids == {note.id, deletion.id, profile.id, other.id}
    assert addresses == {(note.pubkey, 30023, "x"), (note.pubkey, 0, "")}

