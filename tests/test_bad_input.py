"""Bad input over a real WebSocket: garbage, wrong types, bad filters, floods. Each gets its
exact NIP-01 reply; the same connection keeps working and a bystander never notices."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import sqlite3
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from relay.nostr import crypto
from relay.session.server import Relay
from relay.store.sqlite_schema import sqlite_path_from_url
from tests.conftest import RelayFactory
from tests.nostr_client import NostrClient, signed
from tests.store.test_storable_property import event_objects, filter_objects


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
    "unknown_field": ({"vote": "sats"}, "unsupported: filter field 'vote' is not supported"),
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


# --- issue 8: one client's unstorable value never costs anyone else anything ------------------

INT64_PAST = 2**63  # 9223372036854775808: one past the largest signed 64-bit integer


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def store_relay(request: pytest.FixtureRequest, relay_factory: RelayFactory) -> AsyncIterator[Relay]:
    """A relay on each store: SQLite (a temp file) and PostgreSQL (a fresh schema), taking
    messages of up to 1 MiB so a filter can list as many values as the parser allows."""
    limits = {"max_message_length": 1 << 20}
    if request.param == "sqlite":
        async with relay_factory(limits=limits) as r:
            yield r
        return
    dsn = os.environ.get("SATSRELAY_TEST_POSTGRES")
    if not dsn:
        pytest.skip("SATSRELAY_TEST_POSTGRES is unset (e.g. postgresql://postgres@127.0.0.1:5432/test)")
    schema = f"bad_{uuid.uuid4().hex[:16]}"
    try:
        async with relay_factory(storage={"url": dsn, "schema_name": schema}, limits=limits) as r:
            yield r
    finally:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()


def assert_no_traceback_logged(caplog: pytest.LogCaptureFixture) -> None:
    """The standard for client-caused failures: no traceback, nothing above WARNING."""
    noisy = [r for r in caplog.records if r.exc_info is not None or r.levelno > logging.WARNING]
    assert not noisy, [r.getMessage() for r in noisy]


def unstorable_events(secret: bytes) -> list[tuple[dict[str, Any], bool, str]]:
    """The shapes that failed whole batches (issue 8 and the property test), each with the
    reply it must get now: correctly signed events that pass every policy."""
    pubkey = crypto.public_key(secret).hex()
    return [
        (signed(secret, 1, "never expires?", [["expiration", "99999999999999999999"]]).to_dict(), False,
         "invalid: expiration tag must be a unix timestamp between 0 and 4611686018427387904"),
        (signed(secret, 1, "nul in a tag", [["t", "a\u0000b"]]).to_dict(), False,
         "invalid: tags must not contain U+0000"),
        (signed(secret, 30023, "nul in an address", [["d", "x\u0000"]]).to_dict(), False,
         "invalid: tags must not contain U+0000"),
        (signed(secret, 1, "index row too big", [["r", secrets.token_hex(1500)]]).to_dict(), False,
         "invalid: the first value of a single-letter tag must be at most 1024 bytes"),
        # A NIP-09 ``a`` tag whose kind "²" passes str.isdigit() but not int(): the deletion
        # is a valid event and is stored; its odd address is simply not an address.
        (signed(secret, 5, "delete", [["a", f"\u00b2:{pubkey}:x"]]).to_dict(), True, ""),
    ]


async def test_unstorable_events_never_fail_bystanders(
    store_relay: Relay, alice: bytes, bob: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 8's shape: 5 unstorable events interleaved among 1,000 of a bystander's
    pipelined events (they used to share group commits: 100 bystander events got
    ``error:``). Each bad event gets its own reply; every bystander event gets OK true."""
    caplog.set_level(logging.WARNING)
    good = [signed(alice, 1, f"bystander {i}") for i in range(1000)]
    bad = unstorable_events(bob)
    async with NostrClient(store_relay.url) as bystander, NostrClient(store_relay.url) as attacker:
        for i, event in enumerate(good):
            await bystander.send(["EVENT", event.to_dict()])
            if i % 200 == 100:
                await attacker.send(["EVENT", bad[i // 200][0]])
        replies = [await bystander.recv_where(lambda m: m[0] == "OK") for _ in good]
        assert sorted(r[1] for r in replies) == sorted(e.id for e in good)
        assert [r for r in replies if r[2] is not True] == []
        attacked = {}
        for _ in bad:
            msg = await attacker.recv_where(lambda m: m[0] == "OK")
            attacked[msg[1]] = (msg[2], msg[3])
        assert attacked == {obj["id"]: (accepted, text) for obj, accepted, text in bad}
        await bystander.send(["COUNT", "n", {"authors": [good[0].pubkey]}])
        assert await bystander.recv() == ["COUNT", "n", {"count": 1000}]
    assert_no_traceback_logged(caplog)


async def _poison_store(relay: Relay) -> None:
    """Make the store itself refuse events whose content starts with "poison": a fault
    the parser cannot foresee, as a real store constraint (a trigger) raises it."""
    storage = relay.settings.storage
    if storage.url.startswith("sqlite"):
        with contextlib.closing(sqlite3.connect(sqlite_path_from_url(storage.url))) as db:
            db.execute(
                "CREATE TRIGGER poison BEFORE INSERT ON events"
                " WHEN CAST(NEW.raw AS TEXT) LIKE '%\"content\":\"poison%'"
                " BEGIN SELECT RAISE(ABORT, 'poisoned event'); END"
            )
            db.commit()
        return
    conn = await asyncpg.connect(storage.url)
    schema = f'"{storage.schema_name}"'
    try:
        await conn.execute(
            f"CREATE FUNCTION {schema}.poison() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
            " IF position('\"content\":\"poison' in convert_from(NEW.raw, 'UTF8')) > 0 THEN"
            " RAISE EXCEPTION 'poisoned event'; END IF; RETURN NEW; END $$"
        )
        await conn.execute(
            f"CREATE TRIGGER poison BEFORE INSERT ON {schema}.events FOR EACH ROW EXECUTE FUNCTION {schema}.poison()"
        )
    finally:
        await conn.close()


async def test_event_the_store_refuses_fails_alone(
    store_relay: Relay, alice: bytes, bob: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """Should a store refuse an event anyway, the writer retries its batch in parts: only
    that event gets ``error:``, every neighbour its real OK, and the log gets one WARNING
    line per refused event, no traceback."""
    caplog.set_level(logging.WARNING)
    await _poison_store(store_relay)
    good = [signed(alice, 1, f"bystander {i}") for i in range(1000)]
    poison = [signed(bob, 1, f"poison {i}") for i in range(5)]
    async with NostrClient(store_relay.url) as bystander, NostrClient(store_relay.url) as attacker:
        for i, event in enumerate(good):
            await bystander.send(["EVENT", event.to_dict()])
            if i % 200 == 100:
                await attacker.send(["EVENT", poison[i // 200].to_dict()])
        replies = [await bystander.recv_where(lambda m: m[0] == "OK") for _ in good]
        assert [r for r in replies if r[2] is not True] == []
        refused = [await attacker.recv_where(lambda m: m[0] == "OK") for _ in poison]
        assert sorted(refused) == sorted(
            ["OK", e.id, False, "error: the store could not hold this event"] for e in poison
        )
        await bystander.send(["COUNT", "n", {"authors": [good[0].pubkey]}])
        assert await bystander.recv() == ["COUNT", "n", {"count": 1000}]
    assert_no_traceback_logged(caplog)
    lines = [r for r in caplog.records if r.name == "relay.store.writer"]
    assert 1 <= len(lines) <= 5 and all("poisoned event" in r.getMessage() for r in lines)


UNSTORABLE_FILTERS: dict[str, tuple[dict[str, Any], str]] = {
    "since_past_int64": ({"since": INT64_PAST}, "invalid: since must be at most 9223372036854775807"),
    "until_past_int64": ({"until": INT64_PAST}, "invalid: until must be at most 9223372036854775807"),
    "limit_past_int64": ({"limit": 2**64 - 1}, "invalid: limit must be at most 9223372036854775807"),
    "kind_past_65535": ({"kinds": [65536]}, "invalid: kinds must be at most 65535"),
    "kind_past_int32": ({"kinds": [2**31]}, "invalid: kinds must be at most 65535"),
    "nul_in_tag_value": ({"#t": ["a\u0000b"]}, "invalid: #t values must not contain U+0000"),
    "nul_in_d_value": ({"#d": ["\u0000"]}, "invalid: #d values must not contain U+0000"),
    "too_many_values": ({"#t": [f"v{i}" for i in range(20_001)]},
                        "invalid: a filter may list at most 20000 values"),
}


@pytest.mark.parametrize("verb", ["REQ", "COUNT"])
@pytest.mark.parametrize("case", list(UNSTORABLE_FILTERS))
async def test_filter_value_no_store_can_take_is_invalid_on_every_store(
    store_relay: Relay, alice: bytes, caplog: pytest.LogCaptureFixture, verb: str, case: str
) -> None:
    """Issue 8 item 9: ``{"since": 9223372036854775808}`` answered ``CLOSED error:`` with a
    traceback; a U+0000 tag value did the same on PostgreSQL only."""
    caplog.set_level(logging.WARNING)
    bad, text = UNSTORABLE_FILTERS[case]
    async with NostrClient(store_relay.url) as client:
        await client.send([verb, "bad", bad])
        assert await client.recv() == ["CLOSED", "bad", text]
        note = signed(alice, 1, "still answering")
        assert await client.publish(note) == (True, "")
        assert await client.req("ok", {"ids": [note.id]}) == [note.to_dict()]
    assert_no_traceback_logged(caplog)


async def test_largest_accepted_values_are_answered_on_every_store(store_relay: Relay, alice: bytes) -> None:
    """The bounds are the stores' own: the largest since/until/limit/kind still query."""
    note = signed(alice, 65535, "top kind")
    async with NostrClient(store_relay.url) as client:
        assert await client.publish(note) == (True, "")
        wide = {"kinds": [65535], "since": 0, "until": 2**63 - 1, "limit": 2**63 - 1}
        assert await client.req("s", wide) == [note.to_dict()]
        assert await client.req("t", {"#t": [f"v{i}" for i in range(20_000)]}) == []
        await client.send(["COUNT", "c", wide])
        assert await client.recv() == ["COUNT", "c", {"count": 1}]


async def test_nul_in_content_is_stored_losslessly_on_every_store(store_relay: Relay, alice: bytes) -> None:
    """The decision for U+0000 (relay.nostr.event._check_tags): valid JSON in content, so kept,
    byte for byte, on both stores; only tags refuse it."""
    note = signed(alice, 1, "before\u0000after \u0001 \u001f")
    async with NostrClient(store_relay.url) as client:
        assert await client.publish(note) == (True, "")
        await client.send(["REQ", "s", {"ids": [note.id]}])
        assert client.ws is not None
        frame = await client.ws.recv()
        assert frame == '["EVENT","s",' + note.raw.decode() + "]"
        assert '\\u0000' in frame


BAD_EXPIRATIONS = ["99999999999999999999", "4611686018427387905", "-1", "+5", " 5", "5_0", "\u0663", "1e3", "",
                   "soon"]


@pytest.mark.parametrize("value", BAD_EXPIRATIONS)
async def test_malformed_expiration_is_invalid(client: NostrClient, alice: bytes, value: str) -> None:
    """NIP-40: the expiration tag holds a unix timestamp. ``int()`` took "+5", " 5", "5_0"
    and "٣"; an unreadable one was ignored, storing forever what the author meant to expire."""
    event = signed(alice, 1, "expiring", [["expiration", value]])
    assert await client.publish(event) == (
        False, "invalid: expiration tag must be a unix timestamp between 0 and 4611686018427387904"
    )


def _client_messages() -> st.SearchStrategy[list[Any]]:
    """Every kind of message a client can send, built from the parser's edge cases."""
    json_values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
        max_leaves=8,
    )
    sub_id = st.one_of(st.text(max_size=70), json_values)
    event = event_objects().map(lambda drawn: drawn[0])
    return st.one_of(
        st.tuples(st.just("EVENT"), event).map(list),
        st.tuples(st.just("AUTH"), event).map(list),
        st.tuples(st.sampled_from(["REQ", "COUNT"]), sub_id, st.lists(filter_objects(), max_size=3)).map(
            lambda t: [t[0], t[1], *t[2]]
        ),
        st.tuples(st.sampled_from(["CLOSE", "EVENT", "REQ", "COUNT", "AUTH", "HELLO"]), json_values).map(list),
        st.lists(json_values, max_size=4),
    )


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(msg=_client_messages())
async def test_no_client_message_logs_a_traceback(
    relay: Relay, caplog: pytest.LogCaptureFixture, msg: list[Any]
) -> None:
    """Issue 8, "Also": whatever a client sends (the parser's edges: integers past int64,
    U+0000, lone surrogates as JSON escapes, odd shapes) is answered and the connection
    lives; the relay logs no traceback and nothing above WARNING."""
    caplog.set_level(logging.WARNING)
    # json, not orjson: it writes integers past 64 bits and lone surrogates (as escapes)
    frame = json.dumps(msg)
    assume(len(frame.encode()) <= relay.settings.limits.max_message_length)  # longer: NOTICE, tested above
    async with NostrClient(relay.url) as client:
        await client.send_raw(frame)
        await client.assert_alive()
    assert_no_traceback_logged(caplog)
