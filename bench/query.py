"""Query: REQs per second and time to EOSE for limit-50 filters on a stored dataset.

Two phases per filter shape. *Serial*: one connection, one REQ at a time: the latency a
lone client sees, which is what the EOSE target is about. *Loaded*: several processes,
each connection with one REQ in flight, for a fixed time: the throughput, with the
latency under that load. Each REQ is ``["CLOSE","q"]`` then ``["REQ","q",filter]`` in one
write; the clock runs from that write to the EOSE frame, so it includes reading every
stored event the relay sent.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from typing import Any

import orjson

from bench.latency import summary_ms
from bench.loadproc import Ready, WorkerGroup
from bench.relayproc import cpu_seconds, machine_busy_seconds
from bench.wsclient import RawWebSocket, client_frame

CLOSE_FRAME = client_frame(b'["CLOSE","q"]')


def req_frames(filters: list[dict[str, Any]]) -> list[bytes]:
    return [CLOSE_FRAME + client_frame(orjson.dumps(["REQ", "q", f])) for f in filters]


def filter_shapes(authors: list[str], targets: list[str], n: int, seed: int) -> dict[str, list[dict[str, Any]]]:
    """``n`` filters per shape; authors and tag values drawn at random from the dataset's."""
    rng = random.Random(seed)
    return {
        "authors_limit50": [{"authors": [rng.choice(authors)], "limit": 50} for _ in range(n)],
        "kinds1_limit50": [{"kinds": [1], "limit": 50}] * n,
        "tag_p_limit50": [{"#p": [rng.choice(targets)], "limit": 50} for _ in range(n)],
    }


class _Requester:
    """One connection asking one REQ at a time."""

    def __init__(self, frames: list[bytes], offset: int) -> None:
        self.frames = frames
        self.i = offset
        self.events = 0
        self.latencies: list[float] = []
        self.event_counts: list[int] = []
        self.errors: list[str] = []
        self.ws: RawWebSocket | None = None
        self._sent = 0.0
        self._waiter: asyncio.Future[None] | None = None

    def on_message(self, payload: bytes, now: float) -> None:
        if payload.startswith(b'["EVENT"'):
            self.events += 1
        elif payload.startswith((b'["EOSE"', b'["CLOSED"')) and self._waiter is not None:
            if payload.startswith(b'["CLOSED"'):
                self.errors.append(payload.decode()[:200])
            self.latencies.append(now - self._sent)
            self.event_counts.append(self.events)
            if not self._waiter.done():
                self._waiter.set_result(None)

    async def one(self) -> None:
        assert self.ws is not None
        self._waiter = asyncio.get_running_loop().create_future()
        self.events = 0
        frame = self.frames[self.i % len(self.frames)]
        self.i += 1
        self._sent = time.perf_counter()
        self.ws.send_frames(frame)
        await asyncio.wait_for(self._waiter, 30)


@dataclass(frozen=True, slots=True)
class QueryJob:
    url: str
    frames: list[bytes]
    connections: int
    seconds: float
    offset: int


@dataclass(frozen=True, slots=True)
class QueryResult:
    latencies: list[float]
    event_counts: list[int]
    errors: list[str]
    cpu_seconds: float
    wall: float


async def query_worker(job: QueryJob, ready: Ready) -> QueryResult:
    reqs = [_Requester(job.frames, job.offset + 997 * c) for c in range(job.connections)]
    for r in reqs:
        r.ws = await RawWebSocket.connect(job.url, r.on_message)
    await ready()
    cpu0 = time.process_time()
    started = time.perf_counter()
    deadline = started + job.seconds

    async def loop(r: _Requester) -> None:
        while time.perf_counter() < deadline:
            await r.one()

    await asyncio.gather(*(loop(r) for r in reqs))
    wall = time.perf_counter() - started
    cpu = time.process_time() - cpu0
    for r in reqs:
        assert r.ws is not None
        r.ws.close()
    return QueryResult(
        [x for r in reqs for x in r.latencies],
        [x for r in reqs for x in r.event_counts],
        [x for r in reqs for x in r.errors][:5],
        cpu,
        wall,
    )


async def serial(url: str, frames: list[bytes], count: int) -> dict[str, Any]:
    r = _Requester(frames, 0)
    r.ws = await RawWebSocket.connect(url, r.on_message)
    try:
        for _ in range(10):  # warm the relay's statement cache and the page cache
            await r.one()
        r.latencies.clear()
        r.event_counts.clear()
        for _ in range(count):
            await r.one()
    finally:
        r.ws.close()
    return {
        "eose": summary_ms(r.latencies),
        "events_per_req_mean": round(sum(r.event_counts) / max(1, len(r.event_counts)), 1),
        "errors": r.errors[:5],
    }


async def loaded(
    url: str, frames: list[bytes], processes: int, connections: int, seconds: float, relay_pid: int | None
) -> dict[str, Any]:
    jobs = [QueryJob(url, frames, connections, seconds, 7919 * i) for i in range(processes)]
    group = WorkerGroup(query_worker, jobs)
    try:
        await group.start_and_wait_ready()
        relay_cpu0 = cpu_seconds(relay_pid) if relay_pid else 0.0
        busy0 = machine_busy_seconds()
        wall0 = time.perf_counter()
        group.go()
        results: list[QueryResult] = await group.results(seconds + 120)
        wall = time.perf_counter() - wall0
        busy = machine_busy_seconds() - busy0
        relay_cpu = cpu_seconds(relay_pid) - relay_cpu0 if relay_pid else None
    finally:
        group.kill()
    latencies = [x for r in results for x in r.latencies]
    span = max(r.wall for r in results)
    out: dict[str, Any] = {
        "reqs_per_second": round(len(latencies) / span, 1),
        "eose": summary_ms(latencies),
        "concurrent_reqs": processes * connections,
        "errors": [e for r in results for e in r.errors][:5],
        "client_cpu_cores_used": round(sum(r.cpu_seconds for r in results) / wall, 2),
        "machine_busy_cores": round(busy / wall, 2),
    }
    if relay_cpu is not None:
        out["relay_cpu_cores_used"] = round(relay_cpu / wall, 2)
    return out


async def run_query(
    url: str,
    shapes: dict[str, list[dict[str, Any]]],
    *,
    serial_count: int,
    processes: int,
    connections: int,
    seconds: float,
    relay_pid: int | None,
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, filters in shapes.items():
        frames = req_frames(filters)
        out[name] = {
            "filter_example": filters[0],
            "serial": await serial(url, frames, serial_count),
            "loaded": await loaded(url, frames, processes, connections, seconds, relay_pid),
        }
    return out
