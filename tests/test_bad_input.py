"""Bad input over a real WebSocket: garbage, wrong types, bad filters, floods. Each gets its
exact NIP-01 reply; the same connection keeps working and a bystander never notices."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from relay.server import Relay
from tests.nostr_client import NostrClient, signed


@pytest.fixture
async def bystander(relay: Relay) -> AsyncIterator[NostrClient]:
    """A well-behaved client with a live subscription open during the abuse."""
    async with NostrClient(relay.url) as c:
        assert await c.req("feed", {"kinds": [1]}) == []
        yield c


async def bystander_unaffected(bystander: NostrClient, alice: bytes, publisher: NostrClient) -> None:
    note = signed(alice, 1, "business as usual")
    assert await publisher.publish(note) == (True, "")
    assert await bystander.recv_where(lambda m: m[0] == "EVENT") == ["EVENT", "feed", note.to_dict()]
    await bystander.assert_alive()


NOT_JSON = "invalid: message is not valid JSON"
NOT_ARRAY = "invalid: message must be a JSON array starting with a verb"

NOTICE_CASES: dict[str, tuple[str | bytes, str]] = {
    "garbage_text": ("hello relay", NOT_JSON),
    "truncated_json": ('["REQ","s",{', NOT_JSON),
    "binary_non_utf8": (b"\xff\xfe\x00garbage", NOT_JSON),
    "nan": ('["REQ","s",{"limit":NaN}]', NOT_JSON),
    "deep_nesting": ("[" * 5000 + "]" * 5000, NOT_JSON),
    "lone_surrogate": ('["EVENT",{"content":"\\ud800"}]', NOT_JSON),
    "object": ('{"EVENT":{}}', NOT_ARRAY),
    "empty_array": ("[]", NOT_ARRAY),
    "number_verb": ("[1,2]", NOT_ARRAY),
    "string": ('"REQ"', NOT_ARRAY),
    "null": ("null", NOT_ARRAY),
    "unknown_verb": ('["HELLO","x"]', "invalid: unknown message type 'HELLO'"),
    "lowercase_verb": ('["event",{}]', "invalid: unknown message type 'event'"),
    "event_without_payload": ('["EVENT"]', "invalid: EVENT takes exactly one event"),
    "event_string_payload": ('["EVENT","x"]', "invalid: event must be a JSON object"),
    "event_array_payload": ('["EVENT",[1,2]]', "invalid: event must be a JSON object"),
    "event_empty_object": ('["EVENT",{}]', "invalid: missing field id"),
    "req_without_sub_id": ('["REQ"]', "invalid: REQ needs a subscription id"),
    "req_numeric_sub_id": ('["REQ",5,{}]', "invalid: subscription id must be a non-empty string"),
    "req_empty_sub_id": ('["REQ","",{}]', "invalid: subscription id must be a non-empty string"),
    "count_without_sub_id": ('["COUNT"]', "invalid: COUNT needs a subscription id"),
    "close_without_sub_id": ('["CLOSE"]', "invalid: CLOSE takes exactly one subscription id"),
    "close_numeric_sub_id": ('["CLOSE",1]', "invalid: subscription id must be a non-empty string"),
    "auth_string": ('["AUTH","challenge"]', "invalid: AUTH takes exactly one signed event"),
    "auth_without_payload": ('["AUTH"]', "invalid: AUTH takes exactly one signed event"),
}


@pytest.mark.parametrize("case", list(NOTICE_CASES))
async def test_bad_message_gets_notice_and_nothing_breaks(
    client: NostrClient, bystander: NostrClient, alice: bytes, case: str
) -> None:
    frame, text = NOTICE_CASES[case]
    assert client.ws is not None
    await client.ws.send(frame)
    assert await client.recv() == ["NOTICE", text]
    await client.assert_alive()
    await bystander_unaffected(bystander, alice, client)


BAD_FILTERS: dict[str, tuple[Any, str]] = {
    "no_filter": (None, "invalid: REQ needs at least one filter"),
    "filter_not_object": ("x", "invalid: filter must be a JSON object"),
    "kinds_not_array": ({"kinds": 1}, "invalid: kinds must be an array"),
    "kind_negative": ({"kinds": [-1]}, "invalid: kinds must be a non-negative integer"),
    "kind_string": ({"kinds": ["1"]}, "invalid: kinds must be a non-negative integer"),
    "ids_short": ({"ids": ["abc"]}, "invalid: ids must hold 64-character lowercase hex values"),
    "ids_not_array": ({"ids": "a" * 64}, "invalid: ids must be an array"),
    "authors_uppercase": ({"authors": ["A" * 64]}, "invalid: authors must hold 64-character lowercase hex values"),
    "e_tag_not_hex": ({"#e": ["note1xyz"]}, "invalid: #e must hold 64-character lowercase hex values"),
    "p_tag_not_hex": ({"#p": ["npub1xyz"]}, "invalid: #p must hold 64-character lowercase hex values"),
    "t_tag_number": ({"#t": [1]}, "invalid: #t must be an array of strings"),
    "t_tag_not_array": ({"#t": "x"}, "invalid: #t must be an array of strings"),
    "since_string": ({"since": "yesterday"}, "invalid: since must be a non-negative integer"),
    "until_float": ({"until": 1.5}, "invalid: until must be a non-negative integer"),
    "limit_negative": ({"limit": -1}, "invalid: limit must be a non-negative integer"),
    "limit_beyond_64_bits": ({"limit": 123456789012345678901234567890},
                             "invalid: limit must be a non-negative integer"),
    "limit_bool": ({"limit": True}, "invalid: limit must be a non-negative integer"),
    "unknown_field": ({"search": "sats"}, "unsupported: filter field 'search' is not supported"),
    "multi_letter_tag": ({"#tt": ["x"]}, "unsupported: filter field '#tt' is not supported"),
}


@pytest.mark.parametrize("case", list(BAD_FILTERS))
async def test_bad_filter_gets_closed_with_reason(
    client: NostrClient, bystander: NostrClient, alice: bytes, case: str
) -> None:
    bad, text = BAD_FILTERS[case]
    await client.send_raw(json.dumps(["REQ", "bad", bad] if bad is not None else ["REQ", "bad"]))
    assert await client.recv() == ["CLOSED", "bad", text]
    await client.assert_alive()
    await bystander_unaffected(bystander, alice, client)


async def test_bad_filter_in_second_position_refuses_the_whole_req(client: NostrClient) -> None:
    await client.send(["REQ", "s", {"kinds": [1]}, {"kinds": "x"}])
    assert await client.recv() == ["CLOSED", "s", "invalid: kinds must be an array"]
    await client.expect_silence(0.2)


async def test_event_message_with_two_events_is_refused(client: NostrClient, alice: bytes) -> None:
    one, two = signed(alice, 1, "1"), signed(alice, 1, "2")
    await client.send(["EVENT", one.to_dict(), two.to_dict()])
    assert await client.recv() == ["OK", one.id, False, "invalid: EVENT takes exactly one event"]
    assert await client.req("s", {"ids": [one.id, two.id]}) == []


async def test_garbage_flood_is_answered_and_bystander_unaffected(
    client: NostrClient, bystander: NostrClient, alice: bytes
) -> None:
    n = 500
    assert client.ws is not None
    for i in range(n):
        await client.ws.send(f"garbage {i}")
    for _ in range(n):
        assert await client.recv() == ["NOTICE", NOT_JSON]
    await client.assert_alive()
    await bystander_unaffected(bystander, alice, client)


async def test_bad_signature_flood_gets_one_reply_each(
    client: NostrClient, bystander: NostrClient, alice: bytes, bob: bytes
) -> None:
    n = 1500
    forged = []
    for i in range(n):
        event = signed(alice, 1, f"forged {i}")
        forged.append(event.to_dict() | {"sig": "00" * 64})
    for obj in forged:
        await client.send(["EVENT", obj])
    replies: dict[str, list[Any]] = {}
    for _ in range(n):
        msg = await client.recv_where(lambda m: m[0] == "OK")
        assert msg[1] not in replies, "two replies for one event"
        replies[msg[1]] = msg
    assert set(replies) == {obj["id"] for obj in forged}
    for msg in replies.values():
        assert msg[2] is False
        assert msg[3] in ("invalid: signature is invalid",
                          "rate-limited: slow down: too many events from this connection")
    await client.send(["COUNT", "c", {"authors": [forged[0]["pubkey"]]}])
    assert await client.recv() == ["COUNT", "c", {"count": 0}]
    await bystander_unaffected(bystander, bob, client)


async def test_req_flood_with_reused_ids_leaves_one_subscription(
    relay: Relay, client: NostrClient, alice: bytes
) -> None:
    for i in range(300):
        await client.send(["REQ", "same", {"kinds": [1], "limit": i % 3}])
    eoses = 0
    while eoses < 300:
        msg = await client.recv()
        assert msg[0] == "EOSE", msg
        eoses += 1
    note = signed(alice, 1, "one copy")
    await client.publish(note)
    assert await client.recv_where(lambda m: m[0] == "EVENT") == ["EVENT", "same", note.to_dict()]
    await client.expect_silence(0.2)
    assert len(relay.index) == 1


async def test_abrupt_disconnect_mid_publish_does_not_hurt_relay(relay: Relay, alice: bytes) -> None:
    events = [signed(alice, 1, f"abandoned {i}") for i in range(200)]
    async with NostrClient(relay.url) as gone:
        for event in events:
            await gone.send(["EVENT", event.to_dict()])
        assert gone.ws is not None
        gone.ws.transport.abort()
    async with NostrClient(relay.url) as after:
        fine = signed(alice, 1, "still fine")
        assert await after.publish(fine) == (True, "")
        # whatever was accepted before the abort is stored whole and served byte-exact
        stored = await after.req("s", {"authors": [fine.pubkey], "limit": 500})
        by_id = {e.id: e.to_dict() for e in [*events, fine]}
        assert all(by_id[e["id"]] == e for e in stored)
        assert fine.to_dict() in stored
