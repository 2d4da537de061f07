"""REQ, CLOSE and COUNT over a real WebSocket: every filter field, ordering, limits,
EOSE then live, subscription replacement (NIP-01) and COUNT (NIP-45)."""

from __future__ import annotations

import time

from relay.nostr import crypto
from relay.nostr.event import Event
from relay.session.server import Relay
from tests.nostr_client import NostrClient, signed


async def publish_all(client: NostrClient, events: list[Event]) -> None:
    for event in events:
        assert await client.publish(event) == (True, ""), event


def ids(events: list[dict[str, object]]) -> list[object]:
    return [e["id"] for e in events]


async def test_filter_by_ids(client: NostrClient, alice: bytes) -> None:
    events = [signed(alice, 1, f"n{i}") for i in range(3)]
    await publish_all(client, events)
    got = await client.req("s", {"ids": [events[0].id, events[2].id]})
    assert sorted(ids(got)) == sorted([events[0].id, events[2].id])


async def test_filter_by_authors(client: NostrClient, alice: bytes, bob: bytes) -> None:
    a, b = signed(alice, 1, "a"), signed(bob, 1, "b")
    await publish_all(client, [a, b])
    assert ids(await client.req("s", {"authors": [b.pubkey]})) == [b.id]


async def test_filter_by_kinds(client: NostrClient, alice: bytes) -> None:
    events = [signed(alice, k, "k") for k in (1, 7, 30)]
    await publish_all(client, events)
    got = await client.req("s", {"kinds": [7, 30]})
    assert sorted(ids(got)) == sorted([events[1].id, events[2].id])


async def test_filter_by_tag_matches_any_value(client: NostrClient, alice: bytes) -> None:
    x = signed(alice, 1, "x", [["t", "x"]])
    y = signed(alice, 1, "y", [["t", "other"], ["t", "y"]])
    z = signed(alice, 1, "z", [["t", "z"]])
    await publish_all(client, [x, y, z])
    got = await client.req("s", {"#t": ["x", "y"]})
    assert sorted(ids(got)) == sorted([x.id, y.id])


async def test_tag_filters_on_several_letters_are_anded(client: NostrClient, alice: bytes) -> None:
    p = crypto.public_key(alice).hex()
    both = signed(alice, 1, "", [["t", "x"], ["p", p]])
    only_t = signed(alice, 1, "", [["t", "x"]])
    await publish_all(client, [both, only_t])
    assert ids(await client.req("s", {"#t": ["x"], "#p": [p]})) == [both.id]


async def test_tag_filter_matches_only_the_first_value_of_a_tag(client: NostrClient, alice: bytes) -> None:
    event = signed(alice, 1, "", [["t", "first", "second"]])
    await publish_all(client, [event])
    assert await client.req("a", {"#t": ["second"]}) == []
    assert ids(await client.req("b", {"#t": ["first"]})) == [event.id]


async def test_uppercase_tag_letter_is_a_distinct_tag(client: NostrClient, alice: bytes) -> None:
    upper = signed(alice, 1, "", [["T", "v"]])
    lower = signed(alice, 1, "", [["t", "v"]])
    await publish_all(client, [upper, lower])
    assert ids(await client.req("s", {"#T": ["v"]})) == [upper.id]


async def test_since_and_until_are_inclusive(client: NostrClient, alice: bytes) -> None:
    base = int(time.time()) - 100
    events = [signed(alice, 1, str(i), created_at=base + i) for i in range(5)]
    await publish_all(client, events)
    got = await client.req("s", {"authors": [events[0].pubkey], "since": base + 1, "until": base + 3})
    assert ids(got) == [events[3].id, events[2].id, events[1].id]


async def test_results_newest_first_ties_lowest_id_first(client: NostrClient, alice: bytes) -> None:
    now = int(time.time())
    same = [signed(alice, 1, f"tie {i}", created_at=now - 5) for i in range(6)]
    older = signed(alice, 1, "older", created_at=now - 50)
    newer = signed(alice, 1, "newer", created_at=now - 1)
    await publish_all(client, [older, *same, newer])
    got = await client.req("s", {"authors": [newer.pubkey]})
    assert ids(got) == [newer.id, *sorted(e.id for e in same), older.id]


async def test_limit_returns_the_newest_n(client: NostrClient, alice: bytes) -> None:
    now = int(time.time())
    events = [signed(alice, 1, str(i), created_at=now - 10 + i) for i in range(6)]
    await publish_all(client, events)
    got = await client.req("s", {"authors": [events[0].pubkey], "limit": 2})
    assert ids(got) == [events[5].id, events[4].id]


async def test_limit_zero_sends_only_eose_then_live(client: NostrClient, alice: bytes) -> None:
    await publish_all(client, [signed(alice, 1, "stored")])
    assert await client.req("s", {"kinds": [1], "limit": 0}) == []
    live = signed(alice, 1, "live")
    await client.publish(live)
    assert await client.recv_where(lambda m: m[0] == "EVENT") == ["EVENT", "s", live.to_dict()]


async def test_several_filters_are_ored_and_limit_applies_per_filter(
    client: NostrClient, alice: bytes, bob: bytes
) -> None:
    now = int(time.time())
    a = [signed(alice, 1, f"a{i}", created_at=now - 20 + i) for i in range(4)]
    b = [signed(bob, 7, f"b{i}", created_at=now - 40 + i) for i in range(4)]
    await publish_all(client, a + b)
    got = await client.req("s", {"authors": [a[0].pubkey], "limit": 2}, {"kinds": [7], "limit": 3})
    assert ids(got) == [a[3].id, a[2].id, b[3].id, b[2].id, b[1].id]


async def test_event_matching_two_filters_is_sent_once(client: NostrClient, alice: bytes) -> None:
    event = signed(alice, 1, "once")
    await publish_all(client, [event])
    got = await client.req("s", {"ids": [event.id]}, {"authors": [event.pubkey]})
    assert ids(got) == [event.id]
    again = signed(alice, 1, "live once")
    await client.publish(again)
    assert await client.recv_where(lambda m: m[0] == "EVENT") == ["EVENT", "s", again.to_dict()]
    await client.expect_silence(0.2)


async def test_eose_follows_stored_events_then_live_events_match(
    relay: Relay, client: NostrClient, alice: bytes, bob: bytes
) -> None:
    stored = signed(alice, 1, "stored")
    await publish_all(client, [stored])
    async with NostrClient(relay.url) as reader:
        await reader.send(["REQ", "feed", {"authors": [stored.pubkey]}])
        assert await reader.recv() == ["EVENT", "feed", stored.to_dict()]
        assert await reader.recv() == ["EOSE", "feed", ["finish"]]  # NIP-67: the one match was sent
        other = signed(bob, 1, "not for feed")
        live = signed(alice, 1, "live")
        await publish_all(client, [other, live])
        assert await reader.recv() == ["EVENT", "feed", live.to_dict()]
        await reader.expect_silence(0.2)


async def test_reusing_a_subscription_id_replaces_the_subscription(client: NostrClient, alice: bytes) -> None:
    assert await client.req("s", {"kinds": [1]}) == []
    assert await client.req("s", {"kinds": [7]}) == []
    note, reaction = signed(alice, 1, "note"), signed(alice, 7, "+")
    await publish_all(client, [note, reaction])
    assert await client.recv_where(lambda m: m[0] == "EVENT") == ["EVENT", "s", reaction.to_dict()]
    await client.expect_silence(0.2)


async def test_close_stops_live_events(client: NostrClient, alice: bytes) -> None:
    assert await client.req("s", {"kinds": [1]}) == []
    await client.send(["CLOSE", "s"])
    await publish_all(client, [signed(alice, 1, "after close")])
    await client.expect_silence(0.2)


async def test_close_of_unknown_subscription_is_silent(client: NostrClient) -> None:
    await client.send(["CLOSE", "never-opened"])
    await client.expect_silence(0.2)
    await client.assert_alive()


async def test_empty_id_list_matches_nothing(client: NostrClient, alice: bytes) -> None:
    await publish_all(client, [signed(alice, 1, "x")])
    assert await client.req("s", {"ids": []}) == []
    assert await client.req("t", {"kinds": []}) == []


async def test_live_events_respect_since_and_until(client: NostrClient, alice: bytes) -> None:
    now = int(time.time())
    assert await client.req("s", {"kinds": [1], "until": now - 100}) == []
    await publish_all(client, [signed(alice, 1, "too new")])
    await client.expect_silence(0.2)


async def test_subscription_ids_are_per_connection(relay: Relay, alice: bytes) -> None:
    async with NostrClient(relay.url) as one, NostrClient(relay.url) as two:
        assert await one.req("same", {"kinds": [1]}) == []
        assert await two.req("same", {"kinds": [7]}) == []
        note = signed(alice, 1, "n")
        await one.publish(note)
        assert await one.recv_where(lambda m: m[0] == "EVENT") == ["EVENT", "same", note.to_dict()]
        await two.expect_silence(0.2)


# --- NIP-45 COUNT --------------------------------------------------------------------

async def test_count_returns_number_of_matching_events(client: NostrClient, alice: bytes, bob: bytes) -> None:
    await publish_all(client, [signed(alice, 1, str(i)) for i in range(3)] + [signed(bob, 1, "b")])
    await client.send(["COUNT", "c", {"authors": [crypto.public_key(alice).hex()]}])
    assert await client.recv() == ["COUNT", "c", {"count": 3}]


async def test_count_ors_filters_without_double_counting_and_ignores_limit(
    client: NostrClient, alice: bytes, bob: bytes
) -> None:
    a = [signed(alice, 1, str(i)) for i in range(3)]
    await publish_all(client, [*a, signed(bob, 7, "b")])
    await client.send(["COUNT", "c", {"authors": [a[0].pubkey], "limit": 1}, {"kinds": [1]}, {"kinds": [7]}])
    assert await client.recv() == ["COUNT", "c", {"count": 4}]


async def test_count_does_not_open_a_subscription(client: NostrClient, alice: bytes) -> None:
    await client.send(["COUNT", "c", {"kinds": [1]}])
    assert await client.recv() == ["COUNT", "c", {"count": 0}]
    await client.publish(signed(alice, 1, "x"))
    await client.expect_silence(0.2)


async def test_count_with_bad_filter_is_closed_with_reason(client: NostrClient) -> None:
    await client.send(["COUNT", "c", {"authors": ["nope"]}])
    assert await client.recv() == ["CLOSED", "c", "invalid: authors must hold 64-character lowercase hex values"]


async def test_events_published_during_a_req_arrive_exactly_once(relay: Relay, alice: bytes) -> None:
    """The live subscription is registered before the stored query: an event committed
    while the query runs comes either with the stored ones or after EOSE, never twice,
    never lost."""
    events = [signed(alice, 1, f"race {i}") for i in range(400)]
    async with NostrClient(relay.url) as publisher, NostrClient(relay.url) as reader:
        for event in events[:200]:
            await publisher.send(["EVENT", event.to_dict()])
        for event in events[200:]:
            await publisher.send(["EVENT", event.to_dict()])
            if event is events[250]:
                await reader.send(["REQ", "race", {"authors": [event.pubkey], "limit": 1000}])
        seen: list[str] = []
        oks = 0
        while oks < len(events):
            msg = await publisher.recv()
            if msg[0] == "OK":
                assert msg[2] is True, msg
                oks += 1
        eose = False
        while len(seen) < len(events) or not eose:
            msg = await reader.recv()
            if msg[0] == "EOSE":
                assert not eose
                eose = True
                continue
            assert msg[0] == "EVENT", msg
            seen.append(msg[2]["id"])
        assert sorted(seen) == sorted(e.id for e in events)
        await reader.expect_silence(0.2)
