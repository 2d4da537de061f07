"""Every limit NIP-11 publishes, enforced over a real WebSocket with its exact reply; the
connection that hit it and other clients carry on. Slow readers are dropped."""

from __future__ import annotations

import asyncio
import socket
import time

import httpx
import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.conftest import RelayFactory
from tests.nostr_client import NostrClient, signed


async def test_event_longer_than_max_message_length_gets_ok_false(relay_factory: RelayFactory, alice: bytes) -> None:
    async with relay_factory(limits={"max_message_length": 2048}) as relay, NostrClient(relay.url) as client:
        big = signed(alice, 1, "x" * 2500)
        assert await client.publish(big) == (False, "invalid: message longer than 2048 bytes")
        assert await client.req("s", {"ids": [big.id]}) == []
        assert await client.publish(signed(alice, 1, "small")) == (True, "")


async def test_max_message_length_counts_utf8_bytes_not_characters(relay_factory: RelayFactory, alice: bytes) -> None:
    """NIP-11: the limit is bytes after UTF-8 encoding. 600 emoji are 600 characters but
    2,400 bytes, so this event is over a 2,048-byte limit."""
    async with relay_factory(limits={"max_message_length": 2048}) as relay, NostrClient(relay.url) as client:
        wide = signed(alice, 1, "\U0001f600" * 600)
        assert len(orjson.dumps(["EVENT", wide.to_dict()]).decode()) < 2048
        assert await client.publish(wide) == (False, "invalid: message longer than 2048 bytes")
        assert await client.publish(signed(alice, 1, "\U0001f600" * 100)) == (True, "")


async def test_other_message_longer_than_max_message_length_gets_notice(relay_factory: RelayFactory) -> None:
    async with relay_factory(limits={"max_message_length": 2048}) as relay, NostrClient(relay.url) as client:
        await client.send(["REQ", "s", {"ids": ["a" * 64] * 40}])
        assert await client.recv() == ["NOTICE", "invalid: message longer than 2048 bytes"]
        await client.assert_alive()


async def test_message_far_beyond_the_limit_closes_only_that_connection(
    relay_factory: RelayFactory, alice: bytes
) -> None:
    async with relay_factory(limits={"max_message_length": 2048}) as relay, NostrClient(relay.url) as bystander:
        async with NostrClient(relay.url) as abuser:
            await abuser.send(["EVENT", signed(alice, 1, "x" * 10_000).to_dict()])
            code, _ = await abuser.recv_closed()
        assert code == 1009  # message too big
        assert await bystander.publish(signed(alice, 1, "fine")) == (True, "")


async def test_max_subscriptions_per_connection(relay_factory: RelayFactory) -> None:
    async with relay_factory(limits={"max_subscriptions": 3}) as relay, NostrClient(relay.url) as client:
        for i in range(3):
            assert await client.req(f"s{i}", {"kinds": [1]}) == []
        await client.send(["REQ", "s3", {"kinds": [1]}])
        assert await client.recv() == ["CLOSED", "s3", "blocked: at most 3 open subscriptions per connection"]
        assert await client.req("s0", {"kinds": [7]}) == []  # replacing an open one is fine
        await client.send(["CLOSE", "s1"])
        assert await client.req("s3", {"kinds": [1]}) == []
        async with NostrClient(relay.url) as other:
            assert await other.req("s0", {"kinds": [1]}) == []  # the cap is per connection


async def test_max_filters_per_req(relay_factory: RelayFactory) -> None:
    async with relay_factory(limits={"max_filters": 2}) as relay, NostrClient(relay.url) as client:
        await client.send(["REQ", "s", {}, {}, {}])
        assert await client.recv() == ["CLOSED", "s", "invalid: at most 2 filters per REQ"]
        await client.send(["COUNT", "c", {}, {}, {}])
        assert await client.recv() == ["CLOSED", "c", "invalid: at most 2 filters per COUNT"]
        assert await client.req("s", {}, {}) == []


async def test_limit_above_max_limit_is_clamped(relay_factory: RelayFactory, alice: bytes) -> None:
    async with relay_factory(limits={"max_limit": 4, "default_limit": 3}) as relay, NostrClient(relay.url) as client:
        now = int(time.time())
        events = [signed(alice, 1, str(i), created_at=now - 20 + i) for i in range(8)]
        for event in events:
            await client.publish(event)
        got = await client.req("big", {"kinds": [1], "limit": 1000})
        assert [e["id"] for e in got] == [e.id for e in reversed(events[-4:])]
        assert len(await client.req("default", {"kinds": [1]})) == 3


async def test_max_event_tags(relay_factory: RelayFactory, alice: bytes) -> None:
    async with relay_factory(limits={"max_event_tags": 3}) as relay, NostrClient(relay.url) as client:
        assert await client.publish(signed(alice, 1, "", [["t", str(i)] for i in range(4)])) == (
            False, "invalid: too many tags (4 > 3)")
        assert await client.publish(signed(alice, 1, "", [["t", str(i)] for i in range(3)])) == (True, "")


async def test_max_content_length_counts_characters(relay_factory: RelayFactory, alice: bytes) -> None:
    async with relay_factory(limits={"max_content_length": 10}) as relay, NostrClient(relay.url) as client:
        assert await client.publish(signed(alice, 1, "x" * 11)) == (False, "invalid: content longer than 10 characters")
        assert await client.publish(signed(alice, 1, "⚡" * 10)) == (True, "")


async def test_subscription_id_longer_than_64_is_refused(client: NostrClient) -> None:
    await client.send(["REQ", "x" * 65, {}])
    assert await client.recv() == ["NOTICE", "invalid: subscription id longer than 64 characters"]
    assert await client.req("x" * 64, {}) == []


# --- rate limits ---------------------------------------------------------------------------

async def test_events_per_second_per_connection(relay_factory: RelayFactory, alice: bytes) -> None:
    limits = {"events_per_second": 0.01, "events_burst": 3}
    async with relay_factory(limits=limits) as relay, NostrClient(relay.url) as client:
        events = [signed(alice, 1, str(i)) for i in range(5)]
        for event in events:
            await client.send(["EVENT", event.to_dict()])
        replies = {}
        for _ in events:
            msg = await client.recv_where(lambda m: m[0] == "OK")
            replies[msg[1]] = (msg[2], msg[3])
        assert [replies[e.id] for e in events] == [(True, "")] * 3 + [
            (False, "rate-limited: slow down: too many events from this connection")] * 2
        async with NostrClient(relay.url) as other:  # a fresh connection has its own bucket
            assert await other.publish(signed(alice, 1, "other")) == (True, "")
        await client.assert_alive()  # reading is not rate limited


async def test_events_per_second_per_ip_spans_connections(relay_factory: RelayFactory, alice: bytes) -> None:
    limits = {"ip_events_per_second": 0.01, "ip_events_burst": 3}
    async with relay_factory(limits=limits) as relay, NostrClient(relay.url) as one, NostrClient(relay.url) as two:
        assert await one.publish(signed(alice, 1, "1")) == (True, "")
        assert await two.publish(signed(alice, 1, "2")) == (True, "")
        assert await one.publish(signed(alice, 1, "3")) == (True, "")
        assert await two.publish(signed(alice, 1, "4")) == (
            False, "rate-limited: slow down: too many events from this address")
        assert await one.publish(signed(alice, 1, "5")) == (
            False, "rate-limited: slow down: too many events from this address")


async def test_max_connections_per_ip(relay_factory: RelayFactory) -> None:
    async with relay_factory(limits={"max_connections_per_ip": 2}) as relay:
        async with NostrClient(relay.url) as one, NostrClient(relay.url) as two:
            with pytest.raises(InvalidStatus) as refused:
                async with connect(relay.url):
                    pass
            assert refused.value.response.status_code == 429
            await one.assert_alive()
            await two.assert_alive()
        # once those are closed, the address may connect again
        deadline = time.monotonic() + 5
        while relay.ips.connections("127.0.0.1") > 0:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        async with NostrClient(relay.url) as three:
            await three.assert_alive()
        async with httpx.AsyncClient() as http:
            metrics = (await http.get(f"http://127.0.0.1:{relay.port}/metrics")).text
        assert 'satsrelay_connections_rejected_total{reason="per-ip-limit"} 1.0' in metrics


# --- slow readers --------------------------------------------------------------------------

async def test_slow_reader_is_dropped_and_others_are_unaffected(
    relay_factory: RelayFactory, alice: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    limits = {"outgoing_queue_bytes": 65536, "max_content_length": 60000}
    async with relay_factory(limits=limits) as relay:
        # a client that subscribes and then never reads again; a tiny receive buffer and
        # websockets' own flow control (max_queue=1) make the backlog land on the relay
        slow = await connect(relay.url, max_queue=1, compression=None, max_size=None)
        sock = slow.transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        await slow.send(orjson.dumps(["REQ", "all", {"kinds": [1]}]).decode())
        async with NostrClient(relay.url) as healthy, NostrClient(relay.url) as publisher:
            assert await healthy.req("h", {"kinds": [1]}) == []
            received = 0
            deadline = time.monotonic() + 20
            while relay.metrics.slow_clients_dropped._value.get() == 0:
                assert time.monotonic() < deadline, "slow reader was never dropped"
                event = signed(alice, 1, f"{received} " + "y" * 50_000)
                assert await publisher.publish(event) == (True, "")
                msg = await healthy.recv_where(lambda m: m[0] == "EVENT")
                assert msg[2]["id"] == event.id
                received += 1
            while len(relay.connections) != 2:  # the dropped one is gone, not lingering
                assert time.monotonic() < deadline, "dropped connection lingers"
                await asyncio.sleep(0.02)
            # the healthy reader saw every event and keeps working
            assert received > 0
            await healthy.assert_alive()
            assert await publisher.publish(signed(alice, 1, "after")) == (True, "")
        slow.transport.abort()
    assert any("dropping slow client 127.0.0.1" in r.getMessage() for r in caplog.records)
