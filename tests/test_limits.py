"""Every limit NIP-11 publishes, enforced over a real WebSocket with its exact reply; the
connection that hit it and other clients carry on. Slow readers are dropped."""

from __future__ import annotations

import asyncio
import os
import random
import socket
import time
from collections.abc import Callable, Iterator

import httpx
import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from relay.net.limits import BucketTable, IpTable, TokenBucket, address_group
from relay.net.shared_limits import SharedLimits
from relay.nostr import crypto
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
            assert refused.value.response.headers["Retry-After"] == "10"
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
            metrics = (await http.get(f"http://127.0.0.1:{relay.metrics_port}/metrics")).text
        assert 'satsrelay_connections_rejected_total{reason="per-ip-limit"} 1.0' in metrics



async def nip11_on(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    """One NIP-11 GET on an open keep-alive connection: its status line, body read off."""
    writer.write(b"GET / HTTP/1.1\r\nHost: relay\r\nAccept: application/nostr+json\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lines = head.split(b"\r\n")
    await reader.readexactly(next(int(x.split(b":")[1]) for x in lines if x.lower().startswith(b"content-length")))
    return lines[0]


async def test_one_address_cannot_hold_more_idle_http_connections_than_its_cap(relay_factory: RelayFactory) -> None:
    """Connections that never upgrade (idle keep-alive, half-sent requests) count per address
    too: past the cap the next one is answered 429 and closed at once; the held ones work,
    an upgrade frees its HTTP slot, and a freed slot admits the next connection."""
    async with relay_factory(limits={"max_connections_per_ip": 3}) as relay:
        held = [await asyncio.open_connection("127.0.0.1", relay.port) for _ in range(3)]
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
        refused = await asyncio.wait_for(reader.read(), 5)  # the answer, then EOF
        assert refused.startswith(b"HTTP/1.1 429 "), refused
        writer.close()
        first_reader, first_writer = held[0]
        assert (await nip11_on(first_reader, first_writer)).startswith(b"HTTP/1.1 200 ")
        for _, w in held[1:]:
            w.close()
            await w.wait_closed()
        deadline = time.monotonic() + 5
        while True:  # the relay frees the slots once it has seen the two closes
            try:
                upgraded = await NostrClient(relay.url).__aenter__()
                break
            except InvalidStatus:
                assert time.monotonic() < deadline, "closed connections never freed their slots"
                await asyncio.sleep(0.02)
        async with upgraded:  # in the WebSocket table now, not an HTTP slot
            more = [await asyncio.open_connection("127.0.0.1", relay.port) for _ in range(2)]
            await upgraded.assert_alive()
            over_reader, over_writer = await asyncio.open_connection("127.0.0.1", relay.port)
            assert (await asyncio.wait_for(over_reader.read(), 5)).startswith(b"HTTP/1.1 429 ")
            over_writer.close()
            assert (await nip11_on(first_reader, first_writer)).startswith(b"HTTP/1.1 200 ")  # kept alive
            for _, w in more:
                w.close()
        first_writer.close()


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


# --- rate limits that survive reconnects (issue 8, item 3) ---------------------------------

async def test_reconnecting_in_a_loop_cannot_exceed_the_address_rate(relay_factory: RelayFactory, alice: bytes) -> None:
    """The address's bucket outlives its connections: before, it was dropped with the last
    connection and each reconnect started with a full burst (6,572 events/s accepted from
    one IP against an advertised 100/s)."""
    rate, burst = 5.0, 5
    limits = {"ip_events_per_second": rate, "ip_events_burst": burst}
    accepted = refused = 0
    async with relay_factory(limits=limits) as relay:
        started = time.monotonic()
        while time.monotonic() - started < 1.5:
            async with NostrClient(relay.url) as client:
                for i in range(3):
                    ok, text = await client.publish(signed(alice, 1, f"{accepted + refused} {i}"))
                    if ok:
                        accepted += 1
                    else:
                        assert text == "rate-limited: slow down: too many events from this address"
                        refused += 1
        elapsed = time.monotonic() - started
    assert refused > 0
    assert accepted <= burst + rate * elapsed + 1, (accepted, elapsed)


async def test_ipv6_clients_share_limits_per_64(relay_factory: RelayFactory, alice: bytes) -> None:
    """Two addresses of one /64 (as a proxy reports them) are one client for the
    connection cap and the event bucket; another /64 is not."""
    settings = {"server": {"real_ip_header": "X-Forwarded-For"},
                "limits": {"max_connections_per_ip": 1, "ip_events_per_second": 0.01, "ip_events_burst": 1}}
    async with relay_factory(**settings) as relay:
        def as_ip(ip: str) -> dict[str, str]:
            return {"X-Forwarded-For": ip}

        async def publish(ws: ClientConnection, text: str) -> list[object]:
            await ws.send(orjson.dumps(["EVENT", signed(alice, 1, text).to_dict()]).decode())
            while (msg := orjson.loads(await ws.recv()))[0] != "OK":
                pass
            return list(msg[2:])

        async with connect(relay.url, additional_headers=as_ip("2001:db8:1:2::1")) as first:
            with pytest.raises(InvalidStatus) as refused:
                async with connect(relay.url, additional_headers=as_ip("2001:db8:1:2:ffff::9")):
                    pass
            assert refused.value.response.status_code == 429
            async with connect(relay.url, additional_headers=as_ip("2001:db8:1:3::1")) as other:
                assert await publish(other, "other /64") == [True, ""]
            assert await publish(first, "first") == [True, ""]
        async with connect(relay.url, additional_headers=as_ip("2001:db8:1:2:abcd::5")) as again:
            assert await publish(again, "same /64") == [
                False, "rate-limited: slow down: too many events from this address"]


def test_address_groups() -> None:
    assert address_group("203.0.113.7") == "203.0.113.7"
    assert address_group("2001:db8:1:2:3:4:5:6") == address_group("2001:db8:1:2::ffff") == "2001:db8:1:2::/64"
    assert address_group("2001:db8:1:3::1") != address_group("2001:db8:1:2::1")
    assert address_group("2001:db8:1:2:3::1", 48) == address_group("2001:db8:1:ffff::1", 48) == "2001:db8:1::/48"
    assert address_group("2001:db8::1", 128) == "2001:db8::1/128"
    assert address_group("::ffff:203.0.113.7") == "203.0.113.7"  # IPv4-mapped is the IPv4 client
    assert address_group("fe80::1%eth0") == "fe80::/64"
    assert address_group("not an address " * 10) == ("not an address " * 10)[:64]


def test_bucket_table_is_bounded_and_least_recently_used_goes_first() -> None:
    table = BucketTable(rate=0.001, burst=1, capacity=1000)
    assert table.take("a", 0.0) and not table.take("a", 0.0)
    for i in range(999):
        table.take(f"k{i}", 1.0)
    assert len(table) == 1000 and not table.take("a", 2.0)  # still remembered, still empty
    table.take("one more", 3.0)  # evicts k0, the least recently used
    assert len(table) == 1000 and table.take("k0", 4.0)


# --- the table the workers of --workers share (issue 17, item 10) ---------------------------

SharedViews = Callable[..., list[SharedLimits]]


@pytest.fixture
def shared_views() -> Iterator[SharedViews]:
    """``shared_views(workers=2)``: a segment as the supervisor creates it, and each
    worker's mapping of it (all closed afterwards)."""
    opened: list[SharedLimits] = []

    def make(workers: int = 2, bucket_slots: int = 4096) -> list[SharedLimits]:
        segment = SharedLimits.create(workers=workers, bucket_slots=bucket_slots, connection_slots=4096)
        views = [SharedLimits.attach(os.dup(segment.fd), worker) for worker in range(workers)]
        opened.extend([segment, *views])
        return views

    yield make
    for segment in opened:
        segment.close()


def test_shared_bucket_answers_as_the_in_process_bucket_does(shared_views: SharedViews) -> None:
    """GCRA in the shared slot, a token bucket in process: the same answer for every take
    of an irregular stream, over rates and bursts from a claim's 0.1/s to an address's 100/s."""
    (view,) = shared_views(workers=1)
    rng = random.Random(17)
    for trial in range(100):
        rate, burst = rng.choice([0.1, 1.0, 5.0, 100.0]), rng.choice([1, 3, 10, 500])
        local, shared = TokenBucket(rate, burst), BucketTable(rate, burst, 1000, name=f"t{trial}", shared=view)
        now = 1000.0
        for _ in range(300):
            now += rng.expovariate(1.5 * rate)
            assert local.take(now) == shared.take("203.0.113.7", now), (trial, rate, burst, now)


def test_shared_buckets_and_connection_counts_are_one_for_every_worker(shared_views: SharedViews) -> None:
    one, two = shared_views()
    events = [BucketTable(0.001, 4, 1000, name="address-events", shared=view) for view in (one, two)]
    assert [events[i % 2].take("198.51.100.1", 1.0) for i in range(6)] == [True] * 4 + [False] * 2
    assert BucketTable(0.001, 4, 1000, name="other", shared=two).take("198.51.100.1", 1.0)  # tables apart

    caps = [IpTable(3, 1.0, 1, shared=view) for view in (one, two)]
    assert caps[0].admit("2001:db8::1") and caps[1].admit("2001:db8::2") and caps[1].admit("2001:db8::3")
    assert not caps[0].admit("2001:db8::4") and caps[0].refusal("2001:db8::4") == "per-ip-limit"  # one /64
    assert caps[0].total == 1 and caps[1].total == 2  # max_connections stays each worker's own
    caps[1].release("2001:db8::2")
    assert caps[0].connections("2001:db8::9") == 2 and caps[0].admit("2001:db8::4")
    one.forget_worker(1)  # worker 1 died with its connection: only worker 0's two remain
    assert caps[1].connections("2001:db8::9") == 2


def test_a_full_shared_stripe_evicts_the_bucket_full_soonest_never_a_drained_one(
    shared_views: SharedViews,
) -> None:
    """One stripe of 64 slots. A bucket whose full moment has passed is forgotten at no cost;
    past that, the one full soonest goes. An address that drained its bucket keeps it
    however many fresh keys come after it (the in-process LRU forgets it after
    ``capacity``), until a whole stripe is drained further than it."""
    (view,) = shared_views(workers=1, bucket_slots=64)
    table = BucketTable(rate=0.001, burst=5, capacity=64, name="events", shared=view)
    assert all(table.take("attacker", 0.0) for _ in range(5)) and not table.take("attacker", 0.0)
    for i in range(1000):  # each used once: full again 1,000 s after, long before the attacker's 5,000
        assert table.take(f"fresh {i}", 1.0 + i / 100)
    assert not table.take("attacker", 20.0)  # still remembered, still empty
    # the newest fresh key kept its bucket too: four tokens left, not a new five
    assert [table.take("fresh 999", 20.0) for _ in range(5)] == [True] * 4 + [False]
    assert table.take("late", 6000.0)  # every bucket is full by now: reusing a slot changes nothing
    assert all(table.take("attacker", 6000.0) for _ in range(5)) and not table.take("attacker", 6000.0)


async def test_pubkey_rate_spans_connections_and_forgeries_do_not_drain_it(
    relay_factory: RelayFactory, alice: bytes, bob: bytes
) -> None:
    limits = {"pubkey_events_per_second": 0.01, "pubkey_events_burst": 2}
    async with relay_factory(limits=limits) as relay, NostrClient(relay.url) as one, NostrClient(relay.url) as two:
        # an attacker sends events claiming alice's pubkey with bad signatures first
        for i in range(5):
            forged = signed(bob, 1, f"forged {i}").to_dict() | {"pubkey": crypto.public_key(alice).hex()}
            ok, text = await one.publish(forged)
            assert not ok and text.startswith("invalid:")
        assert await one.publish(signed(alice, 1, "1")) == (True, "")
        assert await two.publish(signed(alice, 1, "2")) == (True, "")
        assert await one.publish(signed(alice, 1, "3")) == (
            False, "rate-limited: slow down: too many events from this author")
        async with NostrClient(relay.url) as three:  # a new connection does not help
            assert await three.publish(signed(alice, 1, "4")) == (
                False, "rate-limited: slow down: too many events from this author")
            assert await three.publish(signed(bob, 1, "bob is not alice")) == (True, "")


async def test_global_connection_cap_refuses_with_503_and_logs_rate_limited(
    relay_factory: RelayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    async with relay_factory(limits={"max_connections": 2}) as relay:
        async with NostrClient(relay.url) as one, NostrClient(relay.url) as two:
            for _ in range(20):
                with pytest.raises(InvalidStatus) as refused:
                    async with connect(relay.url):
                        pass
                assert refused.value.response.status_code == 503
            await one.assert_alive()
            await two.assert_alive()
        deadline = time.monotonic() + 5
        while relay.ips.total > 0:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        async with NostrClient(relay.url) as three:  # room again once they closed
            await three.assert_alive()
        async with httpx.AsyncClient() as http:
            metrics = (await http.get(f"http://127.0.0.1:{relay.metrics_port}/metrics")).text
    assert 'satsrelay_connections_rejected_total{reason="global-limit"} 20.0' in metrics
    lines = [r.getMessage() for r in caplog.records if "rejected connection" in r.getMessage()]
    assert lines == ["rejected connection from 127.0.0.1: the relay is at max_connections"]


# --- stored answers are bounded too (issue 8, item 2) -------------------------------------

def _rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


async def test_req_answers_are_paged_against_the_outgoing_bound(relay_factory: RelayFactory, alice: bytes) -> None:
    """Clients that REQ limit 5000 over big stored events and never read used to make the
    relay frame every answer at once (16 of them: 2.5 GB RSS, nobody dropped, a bystander's
    EOSE 3.8 s). Now each holds about a page: relay memory stays flat, the bystander's EOSE
    stays fast, and once live events push a stalled client past outgoing_queue_bytes it is
    dropped."""
    n_clients, n_events, size = 8, 240, 60_000
    limits = {"outgoing_queue_bytes": 1 << 20, "max_content_length": 65536}
    async with relay_factory(limits=limits) as relay:
        async with NostrClient(relay.url) as publisher:
            for i in range(n_events):
                await publisher.send(["EVENT", signed(alice, 1, f"{i} " + "z" * size).to_dict()])
            for _ in range(n_events):
                assert (await publisher.recv_where(lambda m: m[0] == "OK"))[2] is True
        # a reader that reads gets the whole answer, in order (both read connections warm)
        async with NostrClient(relay.url) as r1, NostrClient(relay.url) as r2:
            answers = await asyncio.gather(r1.req("all", {"limit": 5000}), r2.req("all", {"limit": 5000}))
            assert [len(a) for a in answers] == [n_events, n_events]
            assert [e["created_at"] for e in answers[0]] == sorted((e["created_at"] for e in answers[0]), reverse=True)
        baseline = _rss_bytes()
        stalled = []
        for _ in range(n_clients):
            ws = await connect(relay.url, max_queue=1, compression=None, max_size=None)
            ws.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            ws.transport.pause_reading()  # never read again
            await ws.send(orjson.dumps(["REQ", "all", {"limit": 5000}]).decode())
            stalled.append(ws)
        peak = baseline
        eose_ms: list[float] = []
        async with NostrClient(relay.url) as bystander:
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:
                started = time.perf_counter()
                assert len(await bystander.req(f"b{len(eose_ms)}", {"kinds": [1], "limit": 3})) == 3
                eose_ms.append((time.perf_counter() - started) * 1000)
                await bystander.send(["CLOSE", f"b{len(eose_ms) - 1}"])
                peak = max(peak, _rss_bytes())
                await asyncio.sleep(0.05)
            assert max(eose_ms) < 500, eose_ms
            # every stalled client is either dropped already or still waiting mid-answer
            others = [c for c in relay.connections if c.subs.get("all") is not None]
            assert all(c._pending_live for c in others) and len(others) <= n_clients
            growth = peak - baseline
            # whole answers framed at once cost 2 x 240 x 60 KB = 29 MB per client here
            assert growth < 40 * 2**20, f"relay RSS grew {growth / 2**20:.0f} MiB"
            # live events matching their subscriptions push them past the bound: dropped
            async with NostrClient(relay.url) as publisher:
                for i in range(30):
                    assert await publisher.publish(signed(alice, 1, f"live {i} " + "z" * size)) == (True, "")
            drop_deadline = time.monotonic() + 10
            while relay.metrics.slow_clients_dropped._value.get() < n_clients:
                assert time.monotonic() < drop_deadline, relay.metrics.slow_clients_dropped._value.get()
                await asyncio.sleep(0.05)
            await bystander.assert_alive()
        for ws in stalled:
            ws.transport.abort()
