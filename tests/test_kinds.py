"""Kind classes over a real WebSocket (NIP-01): regular, replaceable, ephemeral, addressable."""

from __future__ import annotations

import time

import pytest

from relay.session.server import Relay
from tests.nostr_client import NostrClient, signed


@pytest.mark.parametrize("kind", [0, 3, 10000, 19999])
async def test_replaceable_keeps_only_the_newest_per_pubkey_and_kind(
    client: NostrClient, alice: bytes, kind: int
) -> None:
    now = int(time.time())
    old = signed(alice, kind, "old", created_at=now - 10)
    new = signed(alice, kind, "new", created_at=now - 5)
    assert await client.publish(old) == (True, "")
    assert await client.publish(new) == (True, "")
    got = await client.req("s", {"authors": [old.pubkey], "kinds": [kind]})
    assert got == [new.to_dict()]


async def test_older_replaceable_version_is_refused_after_newer(client: NostrClient, alice: bytes) -> None:
    now = int(time.time())
    new = signed(alice, 0, "new", created_at=now - 5)
    old = signed(alice, 0, "old", created_at=now - 10)
    assert await client.publish(new) == (True, "")
    assert await client.publish(old) == (
        False, "duplicate: a newer version of this replaceable event is stored")
    assert await client.req("s", {"authors": [new.pubkey], "kinds": [0]}) == [new.to_dict()]


async def test_replaceable_tie_on_created_at_keeps_lowest_id(client: NostrClient, alice: bytes) -> None:
    at = int(time.time()) - 3
    a, b = signed(alice, 10002, "a", created_at=at), signed(alice, 10002, "b", created_at=at)
    low, high = sorted([a, b], key=lambda e: e.id)
    assert await client.publish(high) == (True, "")
    assert await client.publish(low) == (True, "")
    assert await client.publish(high) == (False, "duplicate: a newer version of this replaceable event is stored")
    assert await client.req("s", {"authors": [a.pubkey], "kinds": [10002]}) == [low.to_dict()]


async def test_replaceable_is_per_author(client: NostrClient, alice: bytes, bob: bytes) -> None:
    a, b = signed(alice, 0, "alice"), signed(bob, 0, "bob")
    await client.publish(a)
    await client.publish(b)
    got = await client.req("s", {"kinds": [0]})
    assert sorted(e["id"] for e in got) == sorted([a.id, b.id])


async def test_replaced_version_is_not_found_by_its_tags(client: NostrClient, alice: bytes) -> None:
    now = int(time.time())
    old = signed(alice, 3, "", [["p", "1" * 64]], created_at=now - 10)
    new = signed(alice, 3, "", [["p", "2" * 64]], created_at=now - 5)
    await client.publish(old)
    await client.publish(new)
    assert await client.req("s", {"#p": ["1" * 64]}) == []
    assert await client.req("t", {"#p": ["2" * 64]}) == [new.to_dict()]


async def test_ephemeral_is_delivered_live_and_never_stored(relay: Relay, client: NostrClient, alice: bytes) -> None:
    async with NostrClient(relay.url) as listener:
        assert await listener.req("eph", {"kinds": [20001]}) == []
        event = signed(alice, 20001, "fleeting")
        assert await client.publish(event) == (True, "")
        assert await listener.recv() == ["EVENT", "eph", event.to_dict()]
    assert await client.req("s", {"ids": [event.id]}) == []
    await client.send(["COUNT", "c", {"kinds": [20001]}])
    assert await client.recv() == ["COUNT", "c", {"count": 0}]


async def test_addressable_keeps_newest_per_d_tag(client: NostrClient, alice: bytes) -> None:
    now = int(time.time())
    a1 = signed(alice, 30023, "a1", [["d", "a"]], created_at=now - 10)
    a2 = signed(alice, 30023, "a2", [["d", "a"]], created_at=now - 5)
    b1 = signed(alice, 30023, "b1", [["d", "b"]], created_at=now - 10)
    no_d = signed(alice, 30023, "no d", created_at=now - 10)
    empty_d = signed(alice, 30023, "empty d", [["d", ""]], created_at=now - 5)
    for event in (a1, a2, b1, no_d, empty_d):
        assert await client.publish(event) == (True, "")
    got = await client.req("s", {"authors": [a1.pubkey], "kinds": [30023]})
    # a missing d tag and an empty one name the same address (NIP-01)
    assert sorted(e["id"] for e in got) == sorted([a2.id, b1.id, empty_d.id])
    assert await client.req("t", {"#d": ["a"]}) == [a2.to_dict()]


async def test_addressable_is_per_kind(client: NostrClient, alice: bytes) -> None:
    x = signed(alice, 30000, "", [["d", "same"]])
    y = signed(alice, 30001, "", [["d", "same"]])
    await client.publish(x)
    await client.publish(y)
    assert len(await client.req("s", {"#d": ["same"]})) == 2


async def test_regular_kinds_are_all_kept(client: NostrClient, alice: bytes) -> None:
    at = int(time.time()) - 1
    events = [signed(alice, 1, str(i), created_at=at) for i in range(3)]
    for event in events:
        await client.publish(event)
    assert len(await client.req("s", {"kinds": [1]})) == 3


async def test_replacement_is_delivered_live(relay: Relay, client: NostrClient, alice: bytes) -> None:
    now = int(time.time())
    await client.publish(signed(alice, 0, "v1", created_at=now - 10))
    async with NostrClient(relay.url) as listener:
        assert len(await listener.req("meta", {"kinds": [0]})) == 1
        v2 = signed(alice, 0, "v2", created_at=now - 5)
        await client.publish(v2)
        assert await listener.recv() == ["EVENT", "meta", v2.to_dict()]
        stale = signed(alice, 0, "stale", created_at=now - 20)
        assert (await client.publish(stale))[0] is False
        await listener.expect_silence(0.2)
