"""NIP-09 deletion over a real WebSocket: by ``e`` and ``a`` tags, own events only, and a
deleted event can never come back."""

from __future__ import annotations

import time

from relay.session.server import Relay
from tests.nostr_client import NostrClient, signed

DELETED = (False, "blocked: this event was deleted by its author")


async def test_delete_by_e_tag_removes_own_event(client: NostrClient, alice: bytes) -> None:
    note = signed(alice, 1, "oops")
    keep = signed(alice, 1, "keep")
    await client.publish(note)
    await client.publish(keep)
    deletion = signed(alice, 5, "mistake", [["e", note.id], ["k", "1"]])
    assert await client.publish(deletion) == (True, "")
    assert await client.req("s", {"ids": [note.id, keep.id]}) == [keep.to_dict()]


async def test_deletion_request_itself_stays_served(client: NostrClient, alice: bytes) -> None:
    note = signed(alice, 1, "x")
    await client.publish(note)
    deletion = signed(alice, 5, "", [["e", note.id]])
    await client.publish(deletion)
    assert await client.req("s", {"kinds": [5]}) == [deletion.to_dict()]


async def test_cannot_delete_someone_elses_event(client: NostrClient, alice: bytes, bob: bytes) -> None:
    note = signed(alice, 1, "mine")
    await client.publish(note)
    attack = signed(bob, 5, "", [["e", note.id]])
    assert await client.publish(attack) == (True, "")
    assert await client.req("s", {"ids": [note.id]}) == [note.to_dict()]


async def test_deleted_event_cannot_be_republished(client: NostrClient, alice: bytes) -> None:
    note = signed(alice, 1, "gone")
    await client.publish(note)
    await client.publish(signed(alice, 5, "", [["e", note.id]]))
    assert await client.publish(note) == DELETED
    assert await client.req("s", {"ids": [note.id]}) == []


async def test_deletion_arriving_before_its_target_still_blocks_it(client: NostrClient, alice: bytes) -> None:
    note = signed(alice, 1, "late")
    await client.publish(signed(alice, 5, "", [["e", note.id]]))
    assert await client.publish(note) == DELETED


async def test_other_author_can_still_publish_an_id_someone_tried_to_delete(
    client: NostrClient, alice: bytes, bob: bytes
) -> None:
    note = signed(alice, 1, "unrelated tombstone")
    await client.publish(signed(bob, 5, "", [["e", note.id]]))
    assert await client.publish(note) == (True, "")


async def test_delete_by_a_tag_removes_addressable_versions_up_to_its_time(client: NostrClient, alice: bytes) -> None:
    now = int(time.time())
    article = signed(alice, 30023, "v1", [["d", "post"]], created_at=now - 10)
    other = signed(alice, 30023, "other", [["d", "other"]], created_at=now - 10)
    await client.publish(article)
    await client.publish(other)
    deletion = signed(alice, 5, "", [["a", f"30023:{article.pubkey}:post"]], created_at=now - 5)
    assert await client.publish(deletion) == (True, "")
    assert await client.req("s", {"kinds": [30023]}) == [other.to_dict()]
    # a version dated at or before the deletion stays deleted; a newer one is a new article
    assert await client.publish(signed(alice, 30023, "v0", [["d", "post"]], created_at=now - 5)) == DELETED
    newer = signed(alice, 30023, "v2", [["d", "post"]], created_at=now - 1)
    assert await client.publish(newer) == (True, "")
    assert await client.req("t", {"#d": ["post"]}) == [newer.to_dict()]


async def test_delete_by_a_tag_for_replaceable_kind(client: NostrClient, alice: bytes) -> None:
    now = int(time.time())
    profile = signed(alice, 0, "{}", created_at=now - 10)
    await client.publish(profile)
    await client.publish(signed(alice, 5, "", [["a", f"0:{profile.pubkey}:"]], created_at=now - 5))
    assert await client.req("s", {"kinds": [0], "authors": [profile.pubkey]}) == []


async def test_a_tag_of_another_author_deletes_nothing(client: NostrClient, alice: bytes, bob: bytes) -> None:
    article = signed(alice, 30023, "", [["d", "x"]])
    await client.publish(article)
    await client.publish(signed(bob, 5, "", [["a", f"30023:{article.pubkey}:x"]]))
    assert await client.req("s", {"ids": [article.id]}) == [article.to_dict()]


async def test_deleting_a_deletion_has_no_effect(client: NostrClient, alice: bytes) -> None:
    note = signed(alice, 1, "x")
    await client.publish(note)
    first = signed(alice, 5, "", [["e", note.id]])
    await client.publish(first)
    await client.publish(signed(alice, 5, "", [["e", first.id]]))
    assert first.to_dict() in await client.req("s", {"kinds": [5]})
    assert await client.publish(note) == DELETED


async def test_deleted_event_is_not_counted(client: NostrClient, alice: bytes) -> None:
    note = signed(alice, 1, "x")
    await client.publish(note)
    await client.publish(signed(alice, 5, "", [["e", note.id]]))
    await client.send(["COUNT", "c", {"kinds": [1]}])
    assert await client.recv() == ["COUNT", "c", {"count": 0}]


async def test_deletion_is_delivered_live(relay: Relay, client: NostrClient, alice: bytes) -> None:
    note = signed(alice, 1, "x")
    await client.publish(note)
    async with NostrClient(relay.url) as listener:
        assert await listener.req("del", {"kinds": [5]}) == []
        deletion = signed(alice, 5, "", [["e", note.id]])
        await client.publish(deletion)
        assert await listener.recv() == ["EVENT", "del", deletion.to_dict()]
