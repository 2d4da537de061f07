"""EVENT over a real WebSocket: acceptance, duplicates, every shape check with its exact
NIP-01 reply, and the canonical id computed independently of relay/nostr/event.py."""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

import pytest

from relay.nostr import crypto
from relay.session.server import Relay
from tests.nostr_client import NostrClient, signed


def independent_event(secret: bytes, kind: int, content: str, tags: list[list[str]], created_at: int) -> dict[str, Any]:
    """An event whose id comes from Python's json module + hashlib, not from relay.nostr.event."""
    pubkey = crypto.public_key(secret).hex()
    canonical = json.dumps([0, pubkey, created_at, kind, tags, content], ensure_ascii=False, separators=(",", ":"))
    id_ = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    sig = crypto.sign_schnorr(bytes.fromhex(id_), secret).hex()
    return {"id": id_, "pubkey": pubkey, "created_at": created_at, "kind": kind, "tags": tags,
            "content": content, "sig": sig}


async def test_valid_event_gets_ok_true_with_empty_message(client: NostrClient, alice: bytes) -> None:
    event = signed(alice, 1, "hello")
    await client.send(["EVENT", event.to_dict()])
    assert await client.recv() == ["OK", event.id, True, ""]


async def test_republished_event_is_ok_true_with_duplicate_prefix(client: NostrClient, alice: bytes) -> None:
    event = signed(alice, 1, "twice")
    assert await client.publish(event) == (True, "")
    assert await client.publish(event) == (True, "duplicate: already have this event")
    assert len(await client.req("s", {"ids": [event.id]})) == 1


async def test_stored_event_is_served_byte_identical(client: NostrClient, alice: bytes) -> None:
    event = signed(alice, 1, "same bytes", [["t", "x"], ["p", "a" * 64, "wss://r.example"]])
    await client.publish(event)
    await client.send(["REQ", "s", {"ids": [event.id]}])
    assert client.ws is not None
    frame = await client.ws.recv()
    assert frame == '["EVENT","s",' + event.raw.decode() + "]"


CANONICAL_CONTENTS = {
    "quotes": 'she said "hi"',
    "backslashes": "C:\\path\\to\\file \\\\ end\\",
    "short_escapes": "line\nbreak\rreturn\ttab\bbackspace\fformfeed",
    "other_control_chars": "nul\x00 soh\x01 us\x1f del\x7f",
    "emoji": "sats ⚡🔥👩‍💻",
    "non_bmp": "𝄞 music 𠜎 cjk-ext-b 🀄",
    "bmp_non_ascii": "é ü ñ 中文 русский ‮rtl",
    "line_separators": "u2028\u2028 u2029\u2029",
    "slash_and_html": "</script> & <b> / '",
    "empty": "",
}


@pytest.mark.parametrize("content", list(CANONICAL_CONTENTS.values()), ids=list(CANONICAL_CONTENTS))
async def test_canonical_id_matches_independent_serialization(client: NostrClient, alice: bytes, content: str) -> None:
    # U+0000 stays in content (stored losslessly) but is refused in tags, where PostgreSQL
    # text cannot hold it (relay.nostr.event._check_tags; tests/test_bad_input.py).
    tag_text = content.replace("\x00", "")
    tags = [["t", tag_text], ["e", "0" * 64, "", tag_text]]
    obj = independent_event(alice, 1, content, tags, int(time.time()))
    assert await client.publish(obj) == (True, "")
    (stored,) = await client.req("s", {"ids": [obj["id"]]})
    assert stored == obj


async def test_id_computed_with_ascii_escapes_is_refused(client: NostrClient, alice: bytes) -> None:
    """NIP-01 wants non-ASCII verbatim: an id hashed over ``\\u00e9`` escapes is wrong."""
    pubkey = crypto.public_key(alice).hex()
    created_at, content = int(time.time()), "café ⚡"
    wrong = json.dumps([0, pubkey, created_at, 1, [], content], separators=(",", ":"))  # ensure_ascii=True
    id_ = hashlib.sha256(wrong.encode()).hexdigest()
    obj = {"id": id_, "pubkey": pubkey, "created_at": created_at, "kind": 1, "tags": [], "content": content,
           "sig": crypto.sign_schnorr(bytes.fromhex(id_), alice).hex()}
    assert await client.publish(obj) == (False, "invalid: event id does not match its content")


def _mutated(secret: bytes, **changes: Any) -> dict[str, Any]:
    obj = signed(secret, 1, "x").to_dict()
    for key, value in changes.items():
        if value is _DROP:
            del obj[key]
        else:
            obj[key] = value
    return obj


_DROP = object()

SHAPE_CASES: dict[str, tuple[dict[str, Any], str]] = {
    "missing_sig": ({"sig": _DROP}, "invalid: missing field sig"),
    "missing_tags": ({"tags": _DROP}, "invalid: missing field tags"),
    "missing_content": ({"content": _DROP}, "invalid: missing field content"),
    "uppercase_pubkey": ({"pubkey": "A" * 64}, "invalid: pubkey must be 64 lowercase hex characters"),
    "short_pubkey": ({"pubkey": "ab" * 31}, "invalid: pubkey must be 64 lowercase hex characters"),
    "pubkey_not_string": ({"pubkey": 12}, "invalid: pubkey must be 64 lowercase hex characters"),
    "short_sig": ({"sig": "ab" * 63}, "invalid: sig must be 128 lowercase hex characters"),
    "uppercase_sig": ({"sig": "AB" * 64}, "invalid: sig must be 128 lowercase hex characters"),
    "created_at_string": ({"created_at": "1700000000"}, "invalid: created_at must be a non-negative integer"),
    "created_at_float": ({"created_at": 1700000000.5}, "invalid: created_at must be a non-negative integer"),
    "created_at_negative": ({"created_at": -1}, "invalid: created_at must be a non-negative integer"),
    "created_at_bool": ({"created_at": True}, "invalid: created_at must be a non-negative integer"),
    "kind_negative": ({"kind": -1}, "invalid: kind must be an integer between 0 and 65535"),
    "kind_too_big": ({"kind": 65536}, "invalid: kind must be an integer between 0 and 65535"),
    "kind_string": ({"kind": "1"}, "invalid: kind must be an integer between 0 and 65535"),
    "kind_float": ({"kind": 1.0}, "invalid: kind must be an integer between 0 and 65535"),
    "content_number": ({"content": 5}, "invalid: content must be a string"),
    "content_null": ({"content": None}, "invalid: content must be a string"),
    "tags_object": ({"tags": {"t": "x"}}, "invalid: tags must be an array"),
    "tag_not_array": ({"tags": ["t"]}, "invalid: each tag must be a non-empty array of strings"),
    "tag_empty": ({"tags": [[]]}, "invalid: each tag must be a non-empty array of strings"),
    "tag_number_item": ({"tags": [["t", 1]]}, "invalid: each tag must be a non-empty array of strings"),
    "tag_null_item": ({"tags": [["e", None]]}, "invalid: each tag must be a non-empty array of strings"),
    "content_changed": ({"content": "y"}, "invalid: event id does not match its content"),
    "created_at_changed": ({"created_at": 1}, "invalid: event id does not match its content"),
}


@pytest.mark.parametrize("case", list(SHAPE_CASES))
async def test_malformed_event_gets_exact_invalid_reply_and_connection_lives(
    client: NostrClient, alice: bytes, case: str
) -> None:
    changes, reply = SHAPE_CASES[case]
    obj = _mutated(alice, **changes)
    assert await client.publish(obj) == (False, reply)
    assert await client.publish(signed(alice, 1, "after " + case)) == (True, "")


@pytest.mark.parametrize("bad_id", ["A" * 64, "ab" * 31, "zz" * 32, 7])
async def test_malformed_id_is_refused_with_notice_or_ok(client: NostrClient, alice: bytes, bad_id: object) -> None:
    """The OK echoes the id when it is a short string; otherwise the reply is a NOTICE."""
    obj = _mutated(alice, id=bad_id)
    await client.send(["EVENT", obj])
    msg = await client.recv()
    text = "invalid: id must be 64 lowercase hex characters"
    if isinstance(bad_id, str):
        assert msg == ["OK", bad_id, False, text]
    else:
        assert msg == ["NOTICE", text]
    await client.assert_alive()


async def test_bad_signature_is_refused(client: NostrClient, alice: bytes, bob: bytes) -> None:
    event = signed(alice, 1, "forged")
    other = signed(bob, 1, "forged")
    obj = event.to_dict() | {"sig": other.sig}
    assert await client.publish(obj) == (False, "invalid: signature is invalid")
    assert await client.req("s", {"ids": [event.id]}) == []


async def test_an_author_verified_before_still_has_each_signature_checked(
    client: NostrClient, alice: bytes, bob: bytes
) -> None:
    """The verifier remembers parsed keys (relay.nostr.crypto): that must not let a forged
    event by a known author through."""
    assert await client.publish(signed(alice, 1, "genuine")) == (True, "")
    event = signed(alice, 1, "forged later")
    obj = event.to_dict() | {"sig": signed(bob, 1, "forged later").sig}
    assert await client.publish(obj) == (False, "invalid: signature is invalid")
    assert await client.req("s", {"ids": [event.id]}) == []


async def test_a_stream_of_new_keys_keeps_the_key_memo_bounded_and_costs_others_nothing(
    relay: Relay, client: NostrClient, alice: bytes, bob: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stranger who signs every event with a new key fills the parsed-key memo
    (relay.nostr.crypto): it is cleared when full, so it stays bounded, and a regular
    author's events (valid or forged) are judged as before."""
    monkeypatch.setattr(crypto, "_PARSED_KEYS_MAX", 16)
    monkeypatch.setattr(crypto, "_parsed_keys", {})
    assert await client.publish(signed(alice, 1, "before the stream")) == (True, "")
    verified = 0
    async with NostrClient(relay.url) as stranger:
        for i in range(60):
            ok, message = await stranger.publish(signed(crypto.generate_secret(), 1, f"new key {i}"))
            assert ok or message.startswith("rate-limited:"), message
            verified += ok
            assert len(crypto._parsed_keys) <= 16
    assert verified > 16  # more new keys than the memo holds were verified: it was cleared
    for i in range(3):
        assert await client.publish(signed(alice, 1, f"after the stream {i}")) == (True, "")
    forged = signed(alice, 1, "forged after the stream").to_dict() | {"sig": signed(bob, 1, "x").sig}
    assert await client.publish(forged) == (False, "invalid: signature is invalid")


async def test_pubkey_off_the_curve_is_a_bad_signature(client: NostrClient) -> None:
    """An x coordinate with no curve point cannot verify (it must not crash the verifier)."""
    pubkey = "f" * 64  # > field size p: not a valid x-only key
    created_at = int(time.time())
    canonical = json.dumps([0, pubkey, created_at, 1, [], ""], separators=(",", ":"))
    id_ = hashlib.sha256(canonical.encode()).hexdigest()
    obj = {"id": id_, "pubkey": pubkey, "created_at": created_at, "kind": 1, "tags": [], "content": "",
           "sig": "00" * 64}
    assert await client.publish(obj) == (False, "invalid: signature is invalid")
    await client.assert_alive()


async def test_extra_event_fields_are_not_stored(client: NostrClient, alice: bytes) -> None:
    event = signed(alice, 1, "extra")
    assert await client.publish(event.to_dict() | {"seen_on": ["x"]}) == (True, "")
    (stored,) = await client.req("s", {"ids": [event.id]})
    assert stored == event.to_dict()


async def test_kind_22242_cannot_be_published(client: NostrClient, alice: bytes) -> None:
    event = signed(alice, 22242, "", [["relay", "ws://x"], ["challenge", "c"]])
    assert await client.publish(event) == (False, "invalid: kind 22242 events are sent with AUTH, not published")


async def test_event_is_delivered_to_other_clients_live(relay: Relay, client: NostrClient, alice: bytes) -> None:
    async with NostrClient(relay.url) as watcher:
        assert await watcher.req("live", {"authors": [crypto.public_key(alice).hex()]}) == []
        event = signed(alice, 1, "live one")
        assert await client.publish(event) == (True, "")
        assert await watcher.recv() == ["EVENT", "live", event.to_dict()]
