"""Fair shares of the readers (issue 17, item 2): a flood of expensive reads from one
address group - NEG-OPEN ``{}``, COUNT ``{}``, a NIP-50 search of a word every event holds -
within every advertised limit, over many connections, must not make an ordinary bystander's
``REQ {"limit":1}`` from another address slow.

The store is filled through its own write path (``Store.write_batch``, as the writer would),
then the attackers and the bystander speak to the relay over real WebSockets; the relay
tells their addresses apart by ``X-Forwarded-For`` (``real_ip_header``), since every test
connection comes from 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import itertools
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect

from relay.nostr import crypto
from relay.nostr.event import Event, sign_event
from relay.nostr.negentropy import ItemSet, Negentropy
from relay.session.heavy_reads import HeavyReads
from relay.session.server import Relay
from relay.store.base import WriteRequest
from tests.conftest import RelayFactory
from tests.waiting import eventually

EVENTS = 30_000
ATTACKER = "198.51.100.7"
BYSTANDER = "203.0.113.77"
ATTACK_CONNECTIONS = 40
REPO = Path(__file__).resolve().parent.parent
MEASURE_SECONDS = 6.0
GIVE_UP = 10.0  # a REQ unanswered this long counts as this long


@pytest.fixture(scope="module")
def stored_events() -> list[Event]:
    """Signed once for the module: kind 1 notes from 50 authors, every one with the word
    "common" (indexed for NIP-50), one per second up to now."""
    keys = [crypto.generate_secret() for _ in range(50)]
    now = int(time.time())
    text = "a common note, number {} of the bystander test"
    return [sign_event(keys[i % 50], 1, text.format(i), [["t", "flood"]], now - EVENTS + i) for i in range(EVENTS)]


async def fill(relay: Relay, events: list[Event]) -> None:
    now = int(time.time())
    for i in range(0, len(events), 1000):
        await relay.store.write_batch([WriteRequest(ev) for ev in events[i : i + 1000]], now)


def as_address(ip: str) -> dict[str, str]:
    return {"X-Forwarded-For": ip}


async def recv_json(ws: ClientConnection, timeout: float) -> list[Any]:
    return list(orjson.loads(await asyncio.wait_for(ws.recv(), timeout)))


class Attack:
    """Many connections from one address, each sending one kind of expensive request as
    often as the relay lets it (``tests.flood``, in a process of its own); counts the
    answers they get (so a test can tell the attack really ran)."""

    def __init__(self, url: str, connections: int, kind: str) -> None:
        self.url = url
        self.connections = connections
        self.kind = kind
        self.answers: dict[str, int] = {}
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Attack:
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.flood", self.url, self.kind, str(self.connections), ATTACKER,
            cwd=REPO, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        proc = self._proc
        assert proc is not None and proc.stdin is not None and self._reader is not None
        proc.stdin.close()  # the flood's signal to stop and print its last count
        try:
            await asyncio.wait_for(self._reader, 10)
            await asyncio.wait_for(proc.wait(), 10)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()

    async def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        async for line in self._proc.stdout:
            self.answers = orjson.loads(line)


async def bystander_latencies(url: str, seconds: float) -> list[float]:
    """``REQ {"limit":1}`` again and again from another address: seconds to each EOSE."""
    out: list[float] = []
    async with connect(url, additional_headers=as_address(BYSTANDER), max_size=None) as ws:
        deadline = time.monotonic() + seconds
        for i in itertools.count():
            if time.monotonic() > deadline:
                break
            started = time.monotonic()
            await ws.send(orjson.dumps(["REQ", f"b{i}", {"limit": 1}]).decode())
            try:
                while (await recv_json(ws, GIVE_UP - (time.monotonic() - started)))[:2] != ["EOSE", f"b{i}"]:
                    pass
            except TimeoutError:
                out.append(GIVE_UP)
                break
            out.append(time.monotonic() - started)
            await ws.send(orjson.dumps(["CLOSE", f"b{i}"]).decode())
            await asyncio.sleep(0.02)
    return out


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


async def neg_open_once(ws: ClientConnection, i: int) -> None:
    await ws.send(orjson.dumps(["NEG-OPEN", f"n{i}", {}, Negentropy(ItemSet([])).initiate().hex()]).decode())
    while (msg := await recv_json(ws, GIVE_UP))[:2] != ["NEG-MSG", f"n{i}"]:
        assert msg[:2] != ["NEG-ERR", f"n{i}"], msg
    await ws.send(orjson.dumps(["NEG-CLOSE", f"n{i}"]).decode())


async def count_once(ws: ClientConnection, i: int) -> None:
    await ws.send(orjson.dumps(["COUNT", f"n{i}", {}]).decode())
    while (msg := await recv_json(ws, GIVE_UP))[:2] != ["COUNT", f"n{i}"]:
        assert msg[:2] != ["CLOSED", f"n{i}"], msg


async def search_once(ws: ClientConnection, i: int) -> None:
    await ws.send(orjson.dumps(["REQ", f"n{i}", {"search": "common", "limit": 10}]).decode())
    while (msg := await recv_json(ws, GIVE_UP))[:2] != ["EOSE", f"n{i}"]:
        assert msg[:2] != ["CLOSED", f"n{i}"], msg
    await ws.send(orjson.dumps(["CLOSE", f"n{i}"]).decode())


async def huge_req_once(ws: ClientConnection, i: int) -> None:
    # Smaller than the flood's: a 5,000-event answer would measure this client's parsing
    # (on the relay's event loop) as much as the relay.
    await ws.send(orjson.dumps(["REQ", f"n{i}", {"limit": 500}]).decode())
    while (msg := await recv_json(ws, GIVE_UP))[:2] != ["EOSE", f"n{i}"]:
        assert msg[:2] != ["CLOSED", f"n{i}"], msg
    await ws.send(orjson.dumps(["CLOSE", f"n{i}"]).decode())


async def bystander_heavy_latencies(url: str, ask: Callable[[ClientConnection, int], Awaitable[None]]) -> list[float]:
    """The flood's own kind of request, a few times, from the bystander's address: it waits
    for a turn, but behind one turn per other address group, not behind every attacking
    connection."""
    out: list[float] = []
    async with connect(url, additional_headers=as_address(BYSTANDER), max_size=None) as ws:
        for i in range(5):
            started = time.monotonic()
            await ask(ws, i)
            out.append(time.monotonic() - started)
    return out


FLOODS = {  # the flood (tests.flood), the answer it gets, the bystander's own request of its kind
    "neg-open": ("NEG-MSG", neg_open_once),
    "count": ("COUNT", count_once),
    "search": ("EOSE", search_once),
    "huge-req": ("EOSE", huge_req_once),
}


@pytest.mark.parametrize("flood", sorted(FLOODS))
async def test_bystander_req_stays_fast_under_an_expensive_read_flood_from_one_address(
    relay_factory: RelayFactory, storage: dict[str, str], stored_events: list[Event], flood: str
) -> None:
    """Old main (30,000 events, 40 connections): the bystander's REQ waited 2-10 s on
    SQLite (COUNT and search: no EOSE within 10 s) and 10 s for NEG-OPEN on PostgreSQL;
    under huge REQs, before pages took turns, p50 0.4-1.3 s."""
    answer, ask = FLOODS[flood]
    settings: dict[str, Any] = {"server": {"real_ip_header": "X-Forwarded-For"}, "storage": storage}
    async with relay_factory(**settings) as relay:
        await fill(relay, stored_events)
        async with Attack(relay.url, ATTACK_CONNECTIONS, flood) as attack:

            async def attack_is_answered() -> bool:
                return attack.answers.get(answer, 0) >= ATTACK_CONNECTIONS // 4

            await eventually(attack_is_answered, timeout=GIVE_UP, what=f"answers to the {flood} flood")
            latencies = await bystander_latencies(relay.url, MEASURE_SECONDS)
            heavy = await bystander_heavy_latencies(relay.url, ask)
            answered = dict(attack.answers)
    ordered = sorted(latencies)
    print(
        f"\n{flood} flood ({relay.settings.storage.url.split(':')[0]}): bystander REQ p50 "
        f"{ordered[len(ordered) // 2] * 1000:.1f} ms, p99 {p99(latencies) * 1000:.1f} ms, "
        f"max {ordered[-1] * 1000:.1f} ms over {len(latencies)} REQs; its own {flood} "
        f"max {max(heavy) * 1000:.1f} ms; attacker answers {answered}"
    )
    assert answered.get(answer, 0) >= ATTACK_CONNECTIONS, answered  # the flood really ran
    assert len(latencies) >= 20, latencies
    assert ordered[len(ordered) // 2] < 0.05, f"bystander REQ p50 {ordered[len(ordered) // 2]:.3f} s"
    assert p99(latencies) < 1.0, f"bystander REQ p99 {p99(latencies):.3f} s"
    assert max(heavy) < 2.0, f"bystander {flood} waited {max(heavy):.3f} s"


# --- the shares themselves ------------------------------------------------------------------


async def neg_open_answer(ws: ClientConnection, sub_id: str) -> list[Any]:
    await ws.send(orjson.dumps(["NEG-OPEN", sub_id, {}, Negentropy(ItemSet([])).initiate().hex()]).decode())
    while (msg := await recv_json(ws, GIVE_UP))[:2] not in (["NEG-MSG", sub_id], ["NEG-ERR", sub_id]):
        pass
    return msg


async def test_neg_open_items_are_shared_per_address_group_not_per_connection(
    relay_factory: RelayFactory, stored_events: list[Event]
) -> None:
    """Three connections of one IPv6 /64 may together hold two full item sets (the default
    ``max_items_per_ip``, 2 x max_items); a connection of another /64 still gets its own. On
    old main only each connection's session count and the relay-wide total bounded them."""
    settings: dict[str, Any] = {
        "server": {"real_ip_header": "X-Forwarded-For"},
        "negentropy": {"max_items": 20, "opens_per_second": 10_000},
    }
    async with relay_factory(**settings) as relay:
        await fill(relay, stored_events[-20:])

        def link(ip: str) -> Any:
            return connect(relay.url, additional_headers=as_address(ip), max_size=None)

        async with (
            link("2001:db8:7:7::1") as one,
            link("2001:db8:7:7::2") as two,
            link("2001:db8:7:7:ffff::3") as three,
            link("2001:db8:7:8::1") as elsewhere,
        ):
            assert (await neg_open_answer(one, "a"))[0] == "NEG-MSG"
            assert (await neg_open_answer(two, "b"))[0] == "NEG-MSG"
            assert await neg_open_answer(three, "c") == [
                "NEG-ERR", "c", "blocked: reconciliations from your address hold too many events, close some first"]
            assert (await neg_open_answer(elsewhere, "d"))[0] == "NEG-MSG"
            await one.send(orjson.dumps(["NEG-CLOSE", "a"]).decode())
            await one.send(orjson.dumps(["REQ", "probe", {"limit": 0}]).decode())  # answered after the NEG-CLOSE
            while (await recv_json(one, GIVE_UP))[:2] != ["EOSE", "probe"]:
                pass
            assert (await neg_open_answer(three, "c"))[0] == "NEG-MSG"


async def test_heavy_read_turns_go_round_robin_over_address_groups() -> None:
    """One turn at a time: group a's queue of four waits its turn between b's and c's
    instead of going first because it queued first."""
    reads = HeavyReads(total=1, per_group=1)
    order: list[str] = []
    release = asyncio.Event()

    async def read(group: str, tag: str) -> None:
        async with reads.turn(group):
            order.append(tag)
            if tag == "a0":
                await release.wait()
            await asyncio.sleep(0)

    first = asyncio.create_task(read("a", "a0"))
    await asyncio.sleep(0)
    tags = ["a1", "a2", "a3", "a4", "b1", "b2", "c1"]
    waiting = [asyncio.create_task(read(tag[0], tag)) for tag in tags]
    await asyncio.sleep(0)
    assert order == ["a0"] and reads.running == 1
    release.set()
    await asyncio.gather(first, *waiting)
    assert order == ["a0", "b1", "c1", "a1", "b2", "a2", "a3", "a4"]
    assert reads.running == 0


async def test_heavy_read_turns_given_to_a_cancelled_waiter_are_passed_on() -> None:
    reads = HeavyReads(total=1, per_group=1)
    release = asyncio.Event()
    done: list[str] = []

    async def read(group: str) -> None:
        async with reads.turn(group):
            await release.wait()
            done.append(group)

    holder = asyncio.create_task(read("a"))
    await asyncio.sleep(0)
    gone, later = asyncio.create_task(read("b")), asyncio.create_task(read("c"))
    await asyncio.sleep(0)
    gone.cancel()
    release.set()
    await asyncio.gather(holder, later)
    assert done == ["a", "c"] and reads.running == 0
