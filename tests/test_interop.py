"""Interop: the relay driven by rust-nostr through its Python bindings (``nostr-sdk``), a
client that shares no code with ours, to publish, query, subscribe and authenticate."""

from __future__ import annotations

import asyncio
import datetime
import time
from collections.abc import AsyncIterator

import pytest

from relay.session.server import Relay
from tests.conftest import RelayFactory
from tests.nostr_client import NostrClient, signed

n = pytest.importorskip("nostr_sdk", reason="nostr-sdk (rust-nostr bindings) not installed")

TIMEOUT = datetime.timedelta(seconds=5)
TRICKY = 'rust ⚡ "quoted" back\\slash\nnew line\ttab \x01 𝄞 😀'


@pytest.fixture
def keys() -> n.Keys:
    return n.Keys.generate()


@pytest.fixture
async def sdk(relay: Relay) -> AsyncIterator[n.Client]:
    client = n.Client()
    await client.add_relay(n.RelayUrl.parse(relay.url))
    await client.connect()
    try:
        yield client
    finally:
        await client.shutdown()


def note(keys: n.Keys, content: str, *tags: n.Tag) -> n.Event:
    return n.EventBuilder(n.Kind(1), content).tags(list(tags)).finalize(keys)


async def test_sdk_publishes_and_our_client_reads_it_back(relay: Relay, sdk: n.Client, keys: n.Keys) -> None:
    event = note(keys, TRICKY, n.Tag.hashtag("interop"))
    output = await sdk.send_event(event)
    assert len(output.success) == 1
    assert output.failed == {}
    async with NostrClient(relay.url) as ours:
        (got,) = await ours.req("s", {"ids": [event.id().to_hex()]})
    assert got["content"] == TRICKY
    assert got["pubkey"] == keys.public_key().to_hex()
    assert got["tags"] == [["t", "interop"]]


async def test_sdk_queries_with_its_own_filters(relay: Relay, sdk: n.Client, keys: n.Keys) -> None:
    events = [note(keys, f"n{i}", n.Tag.hashtag("x" if i % 2 else "y")) for i in range(6)]
    for event in events:
        assert (await sdk.send_event(event)).failed == {}
    by_tag = await sdk.fetch_events(n.ReqTarget.auto([n.Filter().author(keys.public_key()).hashtag("x")]), TIMEOUT)
    assert sorted(e.id().to_hex() for e in by_tag) == sorted(e.id().to_hex() for e in events[1::2])
    limited = await sdk.fetch_events(n.ReqTarget.auto([n.Filter().kind(n.Kind(1)).limit(2)]), TIMEOUT)
    assert len(limited) == 2
    assert all(e.verify() for e in limited)


async def test_sdk_reads_events_published_by_our_client(relay: Relay, sdk: n.Client, alice: bytes) -> None:
    ours = signed(alice, 1, TRICKY, [["t", "from-python"]])
    async with NostrClient(relay.url) as client:
        assert await client.publish(ours) == (True, "")
    got = await sdk.fetch_events(n.ReqTarget.auto([n.Filter().hashtag("from-python")]), TIMEOUT)
    (event,) = list(got)
    assert event.id().to_hex() == ours.id
    assert event.verify()  # rust-nostr recomputes the id and checks the signature
    assert event.content() == TRICKY


async def test_sdk_subscription_receives_live_events(relay: Relay, sdk: n.Client, alice: bytes) -> None:
    pubkey = signed(alice, 1).pubkey
    sub = await sdk.subscribe(n.ReqTarget.auto([n.Filter().author(n.PublicKey.parse(pubkey)).kind(n.Kind(1))]))
    stream = sdk.notifications()
    live = signed(alice, 1, "live to rust")
    await asyncio.sleep(0)  # the subscription is sent by the sdk's own task

    async def next_event() -> n.Event:
        while True:
            item = await stream.next()
            assert item is not None
            if item.is_new_event() and item.subscription_id == sub.id:
                return item.event

    async with NostrClient(relay.url) as client:
        # publish only once the relay has the subscription, so the event is live, not stored
        deadline = time.monotonic() + 5
        while len(relay.index) == 0:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        assert await client.publish(live) == (True, "")
        event = await asyncio.wait_for(next_event(), 5)
    assert event.id().to_hex() == live.id


async def test_sdk_sees_rejection_reason(sdk: n.Client, keys: n.Keys) -> None:
    future = n.EventBuilder(n.Kind(1), "from the future").custom_created_at(
        n.Timestamp.from_secs(int(time.time()) + 3600)).finalize(keys)
    output = await sdk.send_event(future)
    assert output.success == []
    assert list(output.failed.values()) == ["invalid: created_at is more than 900 seconds in the future"]


async def test_sdk_replaceable_event_keeps_newest(relay: Relay, sdk: n.Client, keys: n.Keys) -> None:
    now = int(time.time())
    old = n.EventBuilder(n.Kind(0), '{"name":"old"}').custom_created_at(n.Timestamp.from_secs(now - 10)).finalize(keys)
    new = n.EventBuilder(n.Kind(0), '{"name":"new"}').custom_created_at(n.Timestamp.from_secs(now - 5)).finalize(keys)
    assert (await sdk.send_event(old)).failed == {}
    assert (await sdk.send_event(new)).failed == {}
    got = await sdk.fetch_events(n.ReqTarget.auto([n.Filter().author(keys.public_key()).kind(n.Kind(0))]), TIMEOUT)
    assert [e.id().to_hex() for e in got] == [new.id().to_hex()]


async def test_sdk_authenticates_for_protected_event(relay_factory: RelayFactory, keys: n.Keys) -> None:
    """NIP-42 + NIP-70: rust-nostr answers our challenge with its own AUTH event."""
    # The bindings call the Python signer from a Rust thread; uniffi must be told which loop
    # to run it on (without this the callback fails with "no running event loop").
    n.uniffi_set_event_loop(asyncio.get_running_loop())
    async with relay_factory() as relay:
        client = n.ClientBuilder().authenticator(n.SignerAuthenticator(keys)).build()
        await client.add_relay(n.RelayUrl.parse(relay.url))
        await client.connect()
        try:
            protected = n.EventBuilder(n.Kind(1), "members only").tags([n.Tag.protected()]).finalize(keys)
            output = await client.send_event(protected)
            assert output.failed == {}, output.failed
        finally:
            await client.shutdown()
            n.uniffi_set_event_loop(None)  # the loop dies with this test
        async with NostrClient(relay.url) as ours:
            assert len(await ours.req("s", {"ids": [protected.id().to_hex()]})) == 1
