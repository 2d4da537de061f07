"""Events: query shapes, ordering, limits, replaceable/addressable rules, outcomes, count.

Runs against every backend (see conftest). Events are real, signed with ``sign_event``.
"""

from __future__ import annotations

import contextlib

import orjson

from relay.nostr.errors import Rejection
from relay.nostr.event import Event, sign_event
from relay.nostr.filters import Filter
from relay.store.base import Store, WriteOutcome, WriteRequest

NOW = 1_700_000_000
ALICE = (1).to_bytes(32, "big")
BOB = (2).to_bytes(32, "big")
CAROL = (3).to_bytes(32, "big")
HEX_A = "aa" * 32
HEX_B = "bb" * 32


async def put(store: Store, *events: Event, now: int = NOW) -> list[WriteOutcome | Rejection]:
    return await store.write_batch([WriteRequest(e) for e in events], now)


def ids(raws: list[bytes]) -> list[str]:
    return [orjson.loads(r)["id"] for r in raws]


def newest_first(*events: Event) -> list[str]:
    return [e.id for e in sorted(events, key=lambda e: (-e.created_at, e.id))]


async def test_query_returns_stored_raw_json_byte_for_byte(store: Store) -> None:
    ev = sign_event(ALICE, 1, 'héllo "quoted" \n', [["t", "x"]], 100)
    assert await put(store, ev) == [WriteOutcome.STORED]
    assert await store.query([Filter()], NOW) == [ev.raw]


async def test_query_by_ids(store: Store) -> None:
    a, b, c = (sign_event(ALICE, 1, str(i), [], 100 + i) for i in range(3))
    await put(store, a, b, c)
    assert ids(await store.query([Filter(ids=frozenset([a.id, c.id]))], NOW)) == newest_first(a, c)
    assert await store.query([Filter(ids=frozenset(["00" * 32]))], NOW) == []


async def test_query_by_authors_and_kinds(store: Store) -> None:
    a1 = sign_event(ALICE, 1, "a1", [], 100)
    a7 = sign_event(ALICE, 7, "a7", [], 101)
    b1 = sign_event(BOB, 1, "b1", [], 102)
    c1 = sign_event(CAROL, 1, "c1", [], 103)
    await put(store, a1, a7, b1, c1)
    authors = frozenset([a1.pubkey, b1.pubkey])
    assert ids(await store.query([Filter(authors=authors)], NOW)) == newest_first(a1, a7, b1)
    assert ids(await store.query([Filter(authors=authors, kinds=frozenset([1]))], NOW)) == newest_first(a1, b1)
    assert ids(await store.query([Filter(kinds=frozenset([7]))], NOW)) == [a7.id]
    assert ids(await store.query([Filter(kinds=frozenset([1, 7]))], NOW)) == newest_first(a1, a7, b1, c1)


async def test_query_by_single_letter_tags_first_value_only(store: Store) -> None:
    e1 = sign_event(ALICE, 1, "1", [["e", HEX_A], ["p", HEX_B]], 100)
    e2 = sign_event(ALICE, 1, "2", [["e", HEX_B, HEX_A]], 101)  # HEX_A is a second value: not indexed
    e3 = sign_event(BOB, 7, "3", [["t", "nostr"], ["t", "zaps"]], 102)
    e4 = sign_event(BOB, 1, "4", [["title", "nostr"]], 103)  # multi-letter names are not indexed
    await put(store, e1, e2, e3, e4)
    assert ids(await store.query([Filter(tags=(("e", frozenset([HEX_A])),))], NOW)) == [e1.id]
    assert ids(await store.query([Filter(tags=(("e", frozenset([HEX_A, HEX_B])),))], NOW)) == newest_first(e1, e2)
    assert ids(await store.query([Filter(tags=(("p", frozenset([HEX_B])),))], NOW)) == [e1.id]
    # Two values of one tag both present: the event comes back once.
    assert ids(await store.query([Filter(tags=(("t", frozenset(["nostr", "zaps"])),))], NOW)) == [e3.id]
    # Several tag conditions must all hold.
    both = Filter(tags=(("e", frozenset([HEX_A])), ("p", frozenset([HEX_B]))))
    assert ids(await store.query([both], NOW)) == [e1.id]
    neither = Filter(tags=(("e", frozenset([HEX_B])), ("p", frozenset([HEX_B]))))
    assert await store.query([neither], NOW) == []
    # Tags combined with kinds and authors.
    assert ids(await store.query([Filter(kinds=frozenset([7]), tags=(("t", frozenset(["nostr"])),))], NOW)) == [e3.id]
    assert await store.query([Filter(kinds=frozenset([1]), tags=(("t", frozenset(["nostr"])),))], NOW) == []
    assert await store.query([Filter(authors=frozenset([e1.pubkey]), tags=(("t", frozenset(["nostr"])),))], NOW) == []


async def test_query_since_until_inclusive(store: Store) -> None:
    evs = [sign_event(ALICE, 1, str(t), [["t", "x"]], t) for t in (100, 200, 300, 400)]
    await put(store, *evs)
    assert ids(await store.query([Filter(since=200, until=300)], NOW)) == newest_first(evs[1], evs[2])
    assert ids(await store.query([Filter(since=300)], NOW)) == newest_first(evs[2], evs[3])
    assert ids(await store.query([Filter(until=100)], NOW)) == [evs[0].id]
    tagged = Filter(since=150, until=350, tags=(("t", frozenset(["x"])),))
    assert ids(await store.query([tagged], NOW)) == newest_first(evs[1], evs[2])
    by_author = Filter(authors=frozenset([evs[0].pubkey]), since=350)
    assert ids(await store.query([by_author], NOW)) == [evs[3].id]


async def test_order_newest_first_ties_lowest_id(store: Store) -> None:
    tied = [sign_event(ALICE, 1, f"tie {i}", [["t", "x"]], 500) for i in range(6)]
    older = sign_event(BOB, 1, "older", [["t", "x"]], 499)
    newer = sign_event(BOB, 1, "newer", [["t", "x"]], 501)
    await put(store, *tied, older, newer)
    expected = [newer.id, *sorted(e.id for e in tied), older.id]
    assert ids(await store.query([Filter()], NOW)) == expected
    assert ids(await store.query([Filter(tags=(("t", frozenset(["x"])),))], NOW)) == expected
    # The limit cuts the same order: the two lowest ids among the tied events.
    assert ids(await store.query([Filter(limit=3)], NOW)) == expected[:3]
    assert ids(await store.query([Filter(kinds=frozenset([1]), limit=3)], NOW)) == expected[:3]


async def test_limit_applies_per_filter(store: Store) -> None:
    alice = [sign_event(ALICE, 1, f"a{i}", [], 100 + i) for i in range(5)]
    bob = [sign_event(BOB, 1, f"b{i}", [], 200 + i) for i in range(5)]
    await put(store, *alice, *bob)
    fa = Filter(authors=frozenset([alice[0].pubkey]), limit=2)
    fb = Filter(authors=frozenset([bob[0].pubkey]), limit=1)
    # Bob's are all newer; a global limit of 3 would return only Bob's.
    assert ids(await store.query([fa, fb], NOW)) == [bob[4].id, alice[4].id, alice[3].id]
    assert await store.query([Filter(limit=0)], NOW) == []
    assert ids(await store.query([Filter(limit=0), fb], NOW)) == [bob[4].id]


async def test_multi_filter_union_is_deduplicated_and_ordered(store: Store) -> None:
    e1 = sign_event(ALICE, 1, "1", [["t", "x"]], 100)
    e2 = sign_event(BOB, 1, "2", [["t", "x"]], 300)
    e3 = sign_event(BOB, 7, "3", [], 200)
    await put(store, e1, e2, e3)
    filters = [
        Filter(tags=(("t", frozenset(["x"])),)),
        Filter(authors=frozenset([e2.pubkey])),
        Filter(ids=frozenset([e1.id])),
    ]
    assert ids(await store.query(filters, NOW)) == [e2.id, e3.id, e1.id]
    assert await store.count(filters, NOW) == 3


async def test_empty_filters_match_nothing(store: Store) -> None:
    await put(store, sign_event(ALICE, 1, "x", [], 100))
    assert await store.query([], NOW) == []
    assert await store.query([Filter(authors=frozenset())], NOW) == []
    assert await store.query([Filter(since=200, until=100)], NOW) == []
    assert await store.count([Filter(kinds=frozenset())], NOW) == 0


async def test_count_ignores_limit_and_counts_distinct(store: Store) -> None:
    evs = [sign_event(ALICE, 1, str(i), [["t", "x"], ["t", "y"]], 100 + i) for i in range(7)]
    await put(store, *evs, sign_event(BOB, 7, "other", [], 50))
    assert await store.count([Filter(kinds=frozenset([1]), limit=2)], NOW) == 7
    assert await store.count([Filter(tags=(("t", frozenset(["x", "y"])),))], NOW) == 7
    assert await store.count([Filter(tags=(("t", frozenset(["x"])),)), Filter(kinds=frozenset([1, 7]))], NOW) == 8
    assert await store.count([Filter(since=103)], NOW) == 4


async def test_duplicate_outcome_stores_once(store: Store) -> None:
    ev = sign_event(ALICE, 1, "x", [], 100)
    assert await put(store, ev) == [WriteOutcome.STORED]
    assert await put(store, ev) == [WriteOutcome.DUPLICATE]
    assert await put(store, ev, ev) == [WriteOutcome.DUPLICATE, WriteOutcome.DUPLICATE]
    fresh = sign_event(ALICE, 1, "y", [], 100)
    assert await put(store, fresh, fresh) == [WriteOutcome.STORED, WriteOutcome.DUPLICATE]
    assert await store.count([Filter()], NOW) == 2


async def test_replaceable_keeps_newest_tie_lowest_id(store: Store) -> None:
    old = sign_event(ALICE, 0, "old", [], 100)
    new = sign_event(ALICE, 0, "new", [], 200)
    assert await put(store, old, new) == [WriteOutcome.STORED, WriteOutcome.STORED]
    assert ids(await store.query([Filter(kinds=frozenset([0]))], NOW)) == [new.id]
    assert await put(store, old) == [WriteOutcome.SUPERSEDED]
    tie_a, tie_b = sorted((sign_event(ALICE, 0, f"tie{i}", [], 300) for i in range(2)), key=lambda e: e.id)
    # Higher id first, then the lower id at the same second replaces it ...
    assert await put(store, tie_b, tie_a) == [WriteOutcome.STORED, WriteOutcome.STORED]
    assert await put(store, tie_b) == [WriteOutcome.SUPERSEDED]  # the higher id cannot come back
    late = sign_event(ALICE, 0, "tie-late", [], 300)
    expected = WriteOutcome.STORED if late.id < tie_a.id else WriteOutcome.SUPERSEDED
    assert await put(store, late) == [expected]
    stored = ids(await store.query([Filter(kinds=frozenset([0]), authors=frozenset([old.pubkey]))], NOW))
    assert stored == [min(tie_a.id, late.id)]
    # Other authors and other replaceable kinds are separate slots.
    bob0 = sign_event(BOB, 0, "bob", [], 50)
    alice3 = sign_event(ALICE, 3, "contacts", [], 50)
    alice10002 = sign_event(ALICE, 10002, "relays", [], 50)
    assert await put(store, bob0, alice3, alice10002) == [WriteOutcome.STORED] * 3
    assert await store.count([Filter()], NOW) == 4


async def test_replaceable_tie_keeps_lowest_id_regardless_of_arrival(store: Store) -> None:
    a, b = sorted((sign_event(BOB, 10000, f"t{i}", [], 300) for i in range(2)), key=lambda e: e.id)
    assert await put(store, a, b) == [WriteOutcome.STORED, WriteOutcome.SUPERSEDED]
    assert ids(await store.query([Filter(authors=frozenset([a.pubkey]))], NOW)) == [a.id]


async def test_replaced_version_leaves_no_tags_behind(store: Store) -> None:
    old = sign_event(ALICE, 10002, "old", [["r", "wss://old"]], 100)
    new = sign_event(ALICE, 10002, "new", [["r", "wss://new"]], 200)
    await put(store, old, new)
    assert await store.query([Filter(tags=(("r", frozenset(["wss://old"])),))], NOW) == []
    assert ids(await store.query([Filter(tags=(("r", frozenset(["wss://new"])),))], NOW)) == [new.id]


async def test_addressable_keeps_newest_per_d_tag(store: Store) -> None:
    a1 = sign_event(ALICE, 30023, "a v1", [["d", "a"]], 100)
    a2 = sign_event(ALICE, 30023, "a v2", [["d", "a"]], 200)
    b1 = sign_event(ALICE, 30023, "b v1", [["d", "b"]], 150)
    nod = sign_event(ALICE, 30023, "no d", [], 150)  # missing d tag is the "" address
    empty_d = sign_event(ALICE, 30023, "empty d", [["d", ""]], 160)
    bob_a = sign_event(BOB, 30023, "bob a", [["d", "a"]], 50)
    outcomes = await put(store, a1, a2, b1, nod, empty_d, bob_a)
    assert outcomes == [WriteOutcome.STORED] * 6
    got = ids(await store.query([Filter(kinds=frozenset([30023]))], NOW))
    assert got == newest_first(a2, b1, empty_d, bob_a)
    assert await put(store, a1) == [WriteOutcome.SUPERSEDED]
    assert ids(await store.query([Filter(tags=(("d", frozenset(["a"])),), authors=frozenset([a1.pubkey]))], NOW)) == [
        a2.id
    ]


async def test_superseded_in_same_batch(store: Store) -> None:
    new = sign_event(ALICE, 3, "new", [], 200)
    old = sign_event(ALICE, 3, "old", [], 100)
    assert await put(store, new, old) == [WriteOutcome.STORED, WriteOutcome.SUPERSEDED]
    assert ids(await store.query([Filter()], NOW)) == [new.id]


async def test_ephemeral_events_are_refused(store: Store) -> None:
    ev = sign_event(ALICE, 20001, "typing", [], 100)
    with contextlib.suppress(ValueError):
        await put(store, ev)
    assert await store.query([Filter()], NOW) == []
