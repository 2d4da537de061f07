"""Write policies over a real WebSocket: NIP-13 proof of work, NIP-22 created_at window,
NIP-40 expiration (refused, never served, purged)."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from relay.nostr import crypto
from relay.session.server import Relay
from tests.conftest import RelayFactory
from tests.nostr_client import NostrClient, signed
from tests.waiting import eventually


def leading_zero_bits(hex_id: str) -> int:
    bits = 0
    for ch in hex_id:
        nibble = int(ch, 16)
        if nibble:
            return bits + 4 - nibble.bit_length()
        bits += 4
    return bits


def mined(secret: bytes, target: int, *, at_least: bool = True) -> dict[str, Any]:
    """A kind-1 event with a NIP-13 nonce tag whose id has >= ``target`` zero bits
    (or, with ``at_least=False``, fewer), hashed with json+hashlib."""
    pubkey = crypto.public_key(secret).hex()
    created_at = int(time.time())
    for nonce in range(10_000_000):
        tags = [["nonce", str(nonce), str(target)]]
        canonical = json.dumps([0, pubkey, created_at, 1, tags, "pow"], ensure_ascii=False, separators=(",", ":"))
        id_ = hashlib.sha256(canonical.encode()).hexdigest()
        if (leading_zero_bits(id_) >= target) == at_least:
            sig = crypto.sign_schnorr(bytes.fromhex(id_), secret).hex()
            return {"id": id_, "pubkey": pubkey, "created_at": created_at, "kind": 1, "tags": tags,
                    "content": "pow", "sig": sig}
    raise AssertionError("no nonce found")


# --- NIP-13 --------------------------------------------------------------------------------

async def test_pow_below_minimum_is_refused_with_pow_prefix(relay_factory: RelayFactory, alice: bytes) -> None:
    async with relay_factory(limits={"min_pow_difficulty": 10}) as relay, NostrClient(relay.url) as client:
        weak = mined(alice, 10, at_least=False)
        bits = leading_zero_bits(weak["id"])
        assert await client.publish(weak) == (False, f"pow: difficulty {bits} is less than 10")


async def test_pow_at_minimum_is_accepted(relay_factory: RelayFactory, alice: bytes) -> None:
    async with relay_factory(limits={"min_pow_difficulty": 10}) as relay, NostrClient(relay.url) as client:
        strong = mined(alice, 10)
        assert await client.publish(strong) == (True, "")


async def test_no_pow_required_by_default(client: NostrClient, alice: bytes) -> None:
    weak = mined(alice, 4, at_least=False)
    assert await client.publish(weak) == (True, "")


# --- NIP-22 --------------------------------------------------------------------------------

async def test_event_too_far_in_future_is_refused(relay_factory: RelayFactory, alice: bytes) -> None:
    async with relay_factory(limits={"created_at_upper_limit": 60}) as relay, NostrClient(relay.url) as client:
        future = signed(alice, 1, "future", created_at=int(time.time()) + 600)
        assert await client.publish(future) == (False, "invalid: created_at is more than 60 seconds in the future")
        near = signed(alice, 1, "near", created_at=int(time.time()) + 30)
        assert await client.publish(near) == (True, "")


async def test_event_too_far_in_past_is_refused(relay_factory: RelayFactory, alice: bytes) -> None:
    async with relay_factory(limits={"created_at_lower_limit": 3600}) as relay, NostrClient(relay.url) as client:
        old = signed(alice, 1, "old", created_at=int(time.time()) - 7200)
        assert await client.publish(old) == (False, "invalid: created_at is more than 3600 seconds in the past")
        recent = signed(alice, 1, "recent", created_at=int(time.time()) - 1800)
        assert await client.publish(recent) == (True, "")


async def test_old_events_accepted_without_lower_limit(client: NostrClient, alice: bytes) -> None:
    assert await client.publish(signed(alice, 1, "2001", created_at=1_000_000_000)) == (True, "")


async def test_default_upper_limit_is_900_seconds(client: NostrClient, alice: bytes) -> None:
    future = signed(alice, 1, "future", created_at=int(time.time()) + 2000)
    assert await client.publish(future) == (False, "invalid: created_at is more than 900 seconds in the future")


# --- NIP-40 --------------------------------------------------------------------------------

async def test_expired_event_is_refused(client: NostrClient, alice: bytes) -> None:
    expired = signed(alice, 1, "stale", [["expiration", str(int(time.time()) - 1)]])
    assert await client.publish(expired) == (False, "invalid: event has expired")
    assert await client.req("s", {"ids": [expired.id]}) == []


async def test_event_is_served_until_it_expires_then_never_and_purged(
    relay: Relay, client: NostrClient, alice: bytes, tmp_path: Path
) -> None:
    expires = int(time.time()) + 2
    event = signed(alice, 1, "brief", [["expiration", str(expires)]])
    keeper = signed(alice, 1, "keeper", [["expiration", str(expires + 3600)]])
    assert await client.publish(event) == (True, "")
    assert await client.publish(keeper) == (True, "")
    assert await client.req("before", {"ids": [event.id]}) == [event.to_dict()]

    async def past_expiry() -> bool:
        return time.time() >= expires

    await eventually(past_expiry)
    # never served once expired, whether or not the purge has run yet
    assert await client.req("after", {"ids": [event.id, keeper.id]}) == [keeper.to_dict()]
    await client.send(["COUNT", "c", {"ids": [event.id, keeper.id]}])
    assert await client.recv() == ["COUNT", "c", {"count": 1}]

    def row_count() -> int:
        with sqlite3.connect(tmp_path / "relay.db") as db:
            return int(db.execute("SELECT count(*) FROM events WHERE id = ?", (bytes.fromhex(event.id),)).fetchone()[0])

    async def purged() -> bool:
        return row_count() == 0

    await eventually(purged)


async def test_expiring_event_is_delivered_live_before_expiry(relay: Relay, client: NostrClient, alice: bytes) -> None:
    async with NostrClient(relay.url) as listener:
        assert await listener.req("l", {"kinds": [1]}) == []
        event = signed(alice, 1, "soon gone", [["expiration", str(int(time.time()) + 60)]])
        assert await client.publish(event) == (True, "")
        assert await listener.recv() == ["EVENT", "l", event.to_dict()]
