"""The pure core without a network: canonical serialization (property-tested against the
stdlib json module), kind classes, filter matching, NIP-13 bits, NIP-42 URL comparison,
rate-limit buckets and relay message encoding."""

from __future__ import annotations

import hashlib
import json

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.net.limits import IpTable, TokenBucket
from relay.nostr import messages
from relay.nostr.errors import Invalid, Unsupported
from relay.nostr.event import KindClass, compute_id, kind_class, serialize_for_id, sign_event
from relay.nostr.filters import Filter, parse_filter
from relay.nostr.policy import check_auth_event, leading_zero_bits

# every code point except lone surrogates, which are not valid in UTF-8 text
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=60)
PUBKEY = "79be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798"


@settings(max_examples=300, deadline=None)
@given(content=TEXT, tags=st.lists(st.lists(TEXT, min_size=1, max_size=4), max_size=4),
       kind=st.integers(0, 65535), created_at=st.integers(0, 2**40))
def test_canonical_serialization_equals_stdlib_json(
    content: str, tags: list[list[str]], kind: int, created_at: int
) -> None:
    expected = json.dumps([0, PUBKEY, created_at, kind, tags, content], ensure_ascii=False, separators=(",", ":"))
    assert serialize_for_id(PUBKEY, created_at, kind, tags, content) == expected.encode()
    assert compute_id(PUBKEY, created_at, kind, tags, content) == hashlib.sha256(expected.encode()).hexdigest()


def test_canonical_escapes_exactly_as_nip01() -> None:
    raw = serialize_for_id(PUBKEY, 1, 1, [], '"\\\n\r\t\b\f\x00\x1f\x7f é 𝄞')
    assert raw.endswith(b',"\\"\\\\\\n\\r\\t\\b\\f\\u0000\\u001f\x7f \xc3\xa9 \xf0\x9d\x84\x9e"]')


@pytest.mark.parametrize(("kind", "cls"), [
    (0, KindClass.REPLACEABLE), (1, KindClass.REGULAR), (2, KindClass.REGULAR), (3, KindClass.REPLACEABLE),
    (4, KindClass.REGULAR), (9999, KindClass.REGULAR), (10000, KindClass.REPLACEABLE),
    (19999, KindClass.REPLACEABLE), (20000, KindClass.EPHEMERAL), (29999, KindClass.EPHEMERAL),
    (30000, KindClass.ADDRESSABLE), (39999, KindClass.ADDRESSABLE), (40000, KindClass.REGULAR),
    (65535, KindClass.REGULAR),
])
def test_kind_class_boundaries(kind: int, cls: KindClass) -> None:
    assert kind_class(kind) is cls


def test_filter_limit_is_clamped_and_defaulted() -> None:
    assert parse_filter({"limit": 10_000}, max_limit=100).limit == 100
    assert parse_filter({}, max_limit=100, default_limit=20).limit == 20
    assert parse_filter({"limit": 0}, max_limit=100, default_limit=20).limit == 0


def test_filter_rejects_unknown_fields_and_bad_types() -> None:
    with pytest.raises(Unsupported):
        parse_filter({"vote": "x"}, 10)
    with pytest.raises(Invalid):
        parse_filter({"#e": ["x"]}, 10)


def test_filter_matches_all_conditions() -> None:
    secret = bytes.fromhex("01" * 32)
    event = sign_event(secret, 1, "x", [["t", "a", "b"], ["p", "ab" * 32]], 100)
    f = parse_filter({"kinds": [1], "authors": [event.pubkey], "#t": ["a"], "since": 100, "until": 100}, 10)
    assert f.matches(event)
    assert not parse_filter({"#t": ["b"]}, 10).matches(event)  # only the first value is indexed
    assert not parse_filter({"since": 101}, 10).matches(event)
    assert not parse_filter({"ids": []}, 10).matches(event)
    assert Filter(ids=frozenset()).is_empty()
    assert Filter(since=5, until=4).is_empty()


@pytest.mark.parametrize(("hex_id", "bits"), [
    ("f" + "0" * 63, 0), ("7" + "f" * 63, 1), ("0" * 8 + "1" + "0" * 55, 35), ("00000fff" + "f" * 56, 20),
    ("0" * 64, 256),
])
def test_nip13_leading_zero_bits(hex_id: str, bits: int) -> None:
    assert leading_zero_bits(hex_id) == bits


@pytest.mark.parametrize(("tag_url", "ok"), [
    ("wss://relay.example.com", True), ("wss://relay.example.com/", True), ("WSS://Relay.Example.com", True),
    ("wss://relay.example.com:443", True), ("ws://relay.example.com", False), ("wss://other.example.com", False),
    ("wss://relay.example.com/sub", False),
])
def test_nip42_relay_url_comparison(tag_url: str, ok: bool) -> None:
    secret = bytes.fromhex("02" * 32)
    event = sign_event(secret, 22242, "", [["relay", tag_url], ["challenge", "c"]], 1000)
    assert (check_auth_event(event, "c", "wss://relay.example.com", 1000) is None) is ok


def test_token_bucket_refills_at_rate_up_to_burst() -> None:
    bucket = TokenBucket(rate=2.0, burst=3)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(0.5)  # one token back after half a second
    assert not bucket.take(0.5)
    assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]  # capped at burst


def test_ip_table_caps_connections_and_keeps_buckets_past_reconnects() -> None:
    table = IpTable(max_connections=2, rate=1.0, burst=1)
    assert table.admit("1.2.3.4") and table.admit("1.2.3.4")
    assert not table.admit("1.2.3.4")
    assert table.admit("5.6.7.8")
    assert table.take_event("1.2.3.4", 0.0) and not table.take_event("1.2.3.4", 0.0)
    table.release("1.2.3.4")
    table.release("1.2.3.4")
    assert table.connections("1.2.3.4") == 0
    assert table.admit("1.2.3.4")
    assert not table.take_event("1.2.3.4", 0.0)  # the drained bucket outlived its connections
    assert table.take_event("1.2.3.4", 1.0)  # and refills at its rate


def test_relay_messages_encode_as_nip01_arrays() -> None:
    raw = b'{"id":"x"}'
    assert messages.event("s", raw) == b'["EVENT","s",{"id":"x"}]'
    assert orjson.loads(messages.ok("ab", False, "invalid: x")) == ["OK", "ab", False, "invalid: x"]
    assert orjson.loads(messages.eose("s")) == ["EOSE", "s"]
    assert orjson.loads(messages.closed("s", "error: x")) == ["CLOSED", "s", "error: x"]
    assert orjson.loads(messages.notice("hi")) == ["NOTICE", "hi"]
    assert orjson.loads(messages.count("s", 3)) == ["COUNT", "s", {"count": 3}]
    assert messages.event('s"\\', raw) == b'["EVENT","s\\"\\\\",{"id":"x"}]'  # sub ids are escaped
