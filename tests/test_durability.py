"""The relay as a process: graceful shutdown on SIGTERM and crash durability under
``kill -9`` — every event that got ``OK true`` is there after a restart on the same file."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable

from websockets.exceptions import ConnectionClosed

from relay.nostr import crypto
from relay.nostr.event import Event
from tests.conftest import RelayProcess
from tests.nostr_client import NostrClient, signed

MakeRelay = Callable[..., RelayProcess]


async def stored_ids(url: str, author: str) -> set[str]:
    async with NostrClient(url) as reader:
        await reader.send(["COUNT", "n", {"authors": [author]}])
        count = (await reader.recv())[2]["count"]
        events = await reader.req("all", {"authors": [author], "limit": 5000})
        assert len(events) == count
        return {e["id"] for e in events}


async def test_kill_9_loses_no_event_that_got_ok_true(relay_process: MakeRelay, alice: bytes) -> None:
    relay = relay_process(extra_toml="[limits]\nevents_per_second = 100000\nevents_burst = 100000\n"
                          "ip_events_per_second = 100000\nip_events_burst = 100000\n"
                          "pubkey_events_per_second = 100000\npubkey_events_burst = 100000\n")
    author = crypto.public_key(alice).hex()
    events = [signed(alice, 1, f"durable {i}") for i in range(3000)]
    acked: set[str] = set()
    async with NostrClient(relay.url) as client:
        async def pump() -> None:
            for event in events:
                await client.send(["EVENT", event.to_dict()])
                await asyncio.sleep(0)

        sender = asyncio.create_task(pump())
        replies = 0
        with contextlib.suppress(ConnectionClosed, TimeoutError):
            while replies < len(events):
                msg = await client.recv(timeout=5)
                if msg[0] != "OK":
                    continue
                replies += 1
                if msg[2] is True:
                    acked.add(msg[1])
                else:  # past MAX_IN_FLIGHT a pipelining client is told to slow down
                    assert msg[3].startswith("rate-limited:"), msg
                if len(acked) == 500:  # mid-stream: more is in flight and queued
                    assert relay.proc is not None
                    relay.proc.send_signal(signal.SIGKILL)
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
            await sender
    assert relay.proc is not None
    assert relay.proc.wait() == -signal.SIGKILL
    assert 500 <= len(acked) < len(events), "the kill should land mid-stream"

    again = relay_process(port=relay.port)
    present = await stored_ids(again.url, author)
    missing = acked - present
    assert not missing, f"{len(missing)} events got OK true and were lost"
    assert present <= {e.id for e in events}


async def test_sigterm_delivers_pending_oks_and_exits_cleanly(relay_process: MakeRelay, alice: bytes) -> None:
    relay = relay_process(extra_toml="[limits]\nevents_per_second = 100000\nevents_burst = 100000\n"
                          "ip_events_per_second = 100000\nip_events_burst = 100000\n"
                          "pubkey_events_per_second = 100000\npubkey_events_burst = 100000\n")
    author = crypto.public_key(alice).hex()
    # fewer than MAX_IN_FLIGHT (1000), so none is refused for pipelining too deep
    events: list[Event] = [signed(alice, 1, f"graceful {i}") for i in range(900)]
    replies: dict[str, list[object]] = {}
    async with NostrClient(relay.url) as client:
        for event in events:
            await client.send(["EVENT", event.to_dict()])
        # A COUNT after the EVENTs is answered only once the relay has read all of them:
        # every event is then either answered or in flight when SIGTERM arrives.
        await client.send(["COUNT", "barrier", {"ids": [events[0].id]}])
        await client.recv_where(lambda m: m[0] == "COUNT")
        assert relay.proc is not None
        relay.proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(ConnectionClosed):
            while len(replies) < len(events):
                msg = await client.recv(timeout=10)
                if msg[0] == "OK":
                    replies[msg[1]] = msg
        assert set(replies) == {e.id for e in events}, f"{len(events) - len(replies)} OKs never came"
        assert all(msg[2] is True for msg in replies.values())
    assert relay.proc.wait(timeout=20) == 0
    log = relay.stderr_text()
    assert "satsrelay stopped" in log
    again = relay_process(port=relay.port)
    assert await stored_ids(again.url, author) == {e.id for e in events}


async def test_sigterm_closes_idle_connections_and_stops_accepting(relay_process: MakeRelay) -> None:
    relay = relay_process()
    async with NostrClient(relay.url) as client:
        await client.assert_alive()
        assert relay.proc is not None
        relay.proc.send_signal(signal.SIGTERM)
        code, _ = await client.recv_closed(timeout=15)
        assert code == 1001
    assert relay.proc.wait(timeout=20) == 0
    assert "satsrelay stopped" in relay.stderr_text()
