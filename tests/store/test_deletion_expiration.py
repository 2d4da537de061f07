"""NIP-09 deletion requests and NIP-40 expiration, against every backend."""

from __future__ import annotations

import orjson

from relay.nostr.errors import Rejection
from relay.nostr.event import Event, sign_event
from relay.nostr.filters import Filter
from relay.store.base import Store, WriteOutcome, WriteRequest

NOW = 1_700_000_000
ALICE = (1).to_bytes(32, "big")
BOB = (2).to_bytes(32, "big")


async def put(store: Store, *events: Event, now: int = NOW) -> list[WriteOutcome | Rejection]:
    return await store.write_batch([WriteRequest(e) for e in events], now)


async def stored_ids(store: Store) -> set[str]:
    return {orjson.loads(r)["id"] for r in await store.query([Filter()], NOW)}


async def test_deletion_by_e_tag_removes_own_event_and_keeps_request(store: Store) -> None:
    note = sign_event(ALICE, 1, "oops", [["t", "x"]], 100)
    other = sign_event(ALICE, 1, "keep", [], 101)
    await put(store, note, other)
    request = sign_event(ALICE, 5, "", [["e", note.id], ["k", "1"]], 200)
    assert await put(store, request) == [WriteOutcome.STORED]
    assert await stored_ids(store) == {other.id, request.id}
    assert await store.query([Filter(tags=(("t", frozenset(["x"])),))], NOW) == []
    # NIP-09: the deletion request itself stays published.
    assert await store.query([Filter(kinds=frozenset([5]))], NOW) == [request.raw]


async def test_deletion_only_affects_own_events(store: Store) -> None:
    bobs = sign_event(BOB, 1, "bob's note", [], 100)
    await put(store, bobs)
    await put(store, sign_event(ALICE, 5, "", [["e", bobs.id]], 200))
    assert bobs.id in await stored_ids(store)


async def test_deleted_id_cannot_come_back(store: Store) -> None:
    note = sign_event(ALICE, 1, "oops", [], 100)
    await put(store, note)
    await put(store, sign_event(ALICE, 5, "", [["e", note.id]], 200))
    assert await put(store, note) == [WriteOutcome.DELETED]
    assert note.id not in await stored_ids(store)


async def test_deletion_arriving_first_blocks_later_event(store: Store) -> None:
    note = sign_event(ALICE, 1, "not yet here", [], 100)
    await put(store, sign_event(ALICE, 5, "", [["e", note.id]], 200))
    assert await put(store, note) == [WriteOutcome.DELETED]
    # ... but only for the deleter's own events: the same id by someone else is impossible,
    # and another author's events are untouched.
    unrelated = sign_event(BOB, 1, "fine", [], 100)
    assert await put(store, unrelated) == [WriteOutcome.STORED]


async def test_deletion_within_one_batch(store: Store) -> None:
    note = sign_event(ALICE, 1, "short-lived", [], 100)
    request = sign_event(ALICE, 5, "", [["e", note.id]], 200)
    assert await put(store, note, request) == [WriteOutcome.STORED, WriteOutcome.STORED]
    assert await stored_ids(store) == {request.id}


async def test_deleting_a_deletion_request_has_no_effect(store: Store) -> None:
    note = sign_event(ALICE, 1, "gone", [], 100)
    first = sign_event(ALICE, 5, "", [["e", note.id]], 200)
    await put(store, note, first)
    undo = sign_event(ALICE, 5, "", [["e", first.id]], 300)
    assert await put(store, undo) == [WriteOutcome.STORED]
    assert await stored_ids(store) == {first.id, undo.id}
    assert await put(store, note) == [WriteOutcome.DELETED]


async def test_deletion_request_named_before_it_arrives_is_still_stored(store: Store) -> None:
    first = sign_event(ALICE, 5, "", [["e", "ab" * 32]], 200)
    undo = sign_event(ALICE, 5, "", [["e", first.id]], 300)
    assert await put(store, undo, first) == [WriteOutcome.STORED, WriteOutcome.STORED]
    assert await stored_ids(store) == {first.id, undo.id}


async def test_deletion_by_a_tag_removes_versions_up_to_its_time(store: Store) -> None:
    article = sign_event(ALICE, 30023, "v1", [["d", "post"]], 100)
    other_d = sign_event(ALICE, 30023, "other", [["d", "other"]], 100)
    await put(store, article, other_d)
    address = f"30023:{article.pubkey}:post"
    request = sign_event(ALICE, 5, "", [["a", address]], 200)
    assert await put(store, request) == [WriteOutcome.STORED]
    assert await stored_ids(store) == {other_d.id, request.id}
    # Older (and equal-time) versions cannot come back; a newer one can.
    assert await put(store, sign_event(ALICE, 30023, "v1.5", [["d", "post"]], 150)) == [WriteOutcome.DELETED]
    assert await put(store, sign_event(ALICE, 30023, "same second", [["d", "post"]], 200)) == [WriteOutcome.DELETED]
    newer = sign_event(ALICE, 30023, "v2", [["d", "post"]], 250)
    assert await put(store, newer) == [WriteOutcome.STORED]
    assert await stored_ids(store) == {other_d.id, request.id, newer.id}


async def test_deletion_by_a_tag_keeps_newer_version(store: Store) -> None:
    newer = sign_event(ALICE, 30023, "v3", [["d", "post"]], 300)
    await put(store, newer)
    request = sign_event(ALICE, 5, "", [["a", f"30023:{newer.pubkey}:post"]], 200)
    await put(store, request)
    assert await stored_ids(store) == {newer.id, request.id}


async def test_deletion_by_a_tag_of_replaceable_kind(store: Store) -> None:
    profile = sign_event(ALICE, 10002, "relays", [], 100)
    await put(store, profile)
    await put(store, sign_event(ALICE, 5, "", [["a", f"10002:{profile.pubkey}:"]], 200))
    assert profile.id not in await stored_ids(store)
    assert await put(store, sign_event(ALICE, 10002, "old", [], 150)) == [WriteOutcome.DELETED]


async def test_deletion_by_a_tag_ignores_other_authors_address(store: Store) -> None:
    bobs = sign_event(BOB, 30023, "bob's", [["d", "post"]], 100)
    await put(store, bobs)
    await put(store, sign_event(ALICE, 5, "", [["a", f"30023:{bobs.pubkey}:post"]], 200))
    assert bobs.id in await stored_ids(store)
    assert await put(store, sign_event(BOB, 30023, "bob's v2", [["d", "post"]], 150)) == [WriteOutcome.STORED]


async def test_expired_events_are_hidden_from_query_and_count(store: Store) -> None:
    expiring = sign_event(ALICE, 1, "soon gone", [["expiration", str(NOW + 10)], ["t", "x"]], 100)
    lasting = sign_event(ALICE, 1, "stays", [["t", "x"]], 101)
    await put(store, expiring, lasting)
    assert await store.count([Filter()], NOW) == 2
    assert len(await store.query([Filter(tags=(("t", frozenset(["x"])),))], NOW + 9)) == 2
    # expiration <= now means expired (NIP-40).
    for query_now in (NOW + 10, NOW + 11):
        assert await store.query([Filter()], query_now) == [lasting.raw]
        assert await store.query([Filter(ids=frozenset([expiring.id]))], query_now) == []
        assert await store.count([Filter(tags=(("t", frozenset(["x"])),))], query_now) == 1


async def test_purge_expired_deletes_only_expired(store: Store) -> None:
    evs = [sign_event(ALICE, 1, str(i), [["expiration", str(NOW + i)], ["t", "x"]], 100) for i in range(5)]
    lasting = sign_event(ALICE, 1, "stays", [["expiration", "not a number"]], 100)
    await put(store, *evs, lasting)
    assert await store.purge_expired(NOW + 2) == 3
    assert await store.purge_expired(NOW + 2) == 0
    # Purged rows are gone even for a query "in the past".
    assert await store.count([Filter()], NOW - 1) == 3
    assert await store.count([Filter(tags=(("t", frozenset(["x"])),))], NOW - 1) == 2
    assert await store.purge_expired(NOW + 100) == 2
    assert await store.query([Filter()], NOW + 100) == [lasting.raw]
