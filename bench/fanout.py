"""Fan-out: how long a published event takes to reach 1,000 live subscribers.

Subscribers (spread over processes) each hold one connection with one open subscription
matching every published event. One publisher sends pre-signed events at a steady rate;
the delay of each delivery is the subscriber's arrival time minus the publisher's write
time, both read from CLOCK_MONOTONIC (``perf_counter``), which every process on the
machine shares. It includes the group commit: NIP-01 fan-out happens after the event is
stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.events import read_events
from bench.latency import summary_ms
from bench.loadproc import Ready, WorkerGroup
from bench.relayproc import cpu_seconds, machine_busy_seconds
from bench.wsclient import RawWebSocket, client_frame

SUB_FRAME = client_frame(b'["REQ","f",{"kinds":[1],"limit":0}]')


@dataclass(frozen=True, slots=True)
class SubscriberJob:
    url: str
    connections: int
    expected_events: int
    max_seconds: float


@dataclass(frozen=True, slots=True)
class SubscriberResult:
    arrivals: dict[bytes, list[float]]
    cpu_seconds: float


async def subscriber_worker(job: SubscriberJob, ready: Ready) -> SubscriberResult:
    arrivals: dict[bytes, list[float]] = {}
    eosed = 0
    received = 0
    loop = asyncio.get_running_loop()
    all_eose: asyncio.Future[None] = loop.create_future()
    all_received: asyncio.Future[None] = loop.create_future()
    expected = job.expected_events * job.connections

    def on_message(payload: bytes, now: float) -> None:
        nonlocal eosed, received
        if payload.startswith(b'["EVENT"'):
            i = payload.find(b'"id":"') + 6  # strfry sends keys sorted (content, created_at, id, ...)
            arrivals.setdefault(payload[i : i + 64], []).append(now)
            received += 1
            if received >= expected and not all_received.done():
                all_received.set_result(None)
        elif payload.startswith(b'["EOSE"'):
            eosed += 1
            if eosed == job.connections and not all_eose.done():
                all_eose.set_result(None)

    conns = []
    for _ in range(job.connections):
        ws = await RawWebSocket.connect(job.url, on_message)
        ws.send_frames(SUB_FRAME)
        conns.append(ws)
    await asyncio.wait_for(all_eose, 60)
    await ready()
    cpu0 = time.process_time()
    with contextlib.suppress(TimeoutError):  # missing deliveries are counted by the parent
        await asyncio.wait_for(all_received, job.max_seconds)
    cpu = time.process_time() - cpu0
    for ws in conns:
        ws.close()
    return SubscriberResult(arrivals, cpu)


async def run_fanout(
    url: str,
    events_file: Path,
    *,
    subscribers: int,
    processes: int,
    rate: float,
    seconds: float,
    relay_pid: int | None,
    publish_url: str | None = None,
) -> dict[str, Any]:
    """Subscribers on ``url``; the publisher on ``publish_url`` (another node) or ``url``."""
    count = max(1, int(rate * seconds))
    lines = list(read_events(events_file, 0, count))
    frames = [client_frame(b'["EVENT",' + line + b"]") for line in lines]
    ids = [line[7:71] for line in lines]
    per = [subscribers // processes + (1 if i < subscribers % processes else 0) for i in range(processes)]
    jobs = [SubscriberJob(url, n, count, seconds + 30) for n in per if n]
    group = WorkerGroup(subscriber_worker, jobs)
    oks = 0
    oks_true = 0
    ok_done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_publisher_message(payload: bytes, now: float) -> None:
        nonlocal oks, oks_true
        if payload.startswith(b'["OK"'):
            oks += 1
            oks_true += payload[73:78] == b"true,"
            if oks == count and not ok_done.done():
                ok_done.set_result(None)

    publisher = await RawWebSocket.connect(publish_url or url, on_publisher_message)
    sent_at: dict[bytes, float] = {}
    try:
        await group.start_and_wait_ready()
        relay_cpu0 = cpu_seconds(relay_pid) if relay_pid else 0.0
        busy0 = machine_busy_seconds()
        group.go()
        await asyncio.sleep(0.2)  # let every worker leave its start barrier
        wall0 = time.perf_counter()
        interval = 1.0 / rate
        for i, frame in enumerate(frames):
            delay = wall0 + i * interval - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            sent_at[ids[i]] = time.perf_counter()
            publisher.send_frames(frame)
        await asyncio.wait_for(ok_done, 30)
        results: list[SubscriberResult] = await group.results(seconds + 90)
        wall = time.perf_counter() - wall0
        busy = machine_busy_seconds() - busy0
        relay_cpu = cpu_seconds(relay_pid) - relay_cpu0 if relay_pid else None
    finally:
        publisher.close()
        group.kill()
    delays = [t - sent_at[eid] for r in results for eid, ts in r.arrivals.items() if eid in sent_at for t in ts]
    # Split each event's delay: until its first delivery (verify + group commit + the first
    # send) and from first to last delivery (the fan-out loop over 1,000 connections).
    first: dict[bytes, float] = {}
    last: dict[bytes, float] = {}
    for r in results:
        for eid, ts in r.arrivals.items():
            if eid in sent_at and ts:
                first[eid] = min(first.get(eid, ts[0]), min(ts))
                last[eid] = max(last.get(eid, ts[0]), max(ts))
    expected = count * subscribers
    out: dict[str, Any] = {
        "subscribers": subscribers,
        "events_published": count,
        "publisher_ok_true": oks_true,
        "publish_rate_per_second": rate,
        "deliveries": len(delays),
        "deliveries_expected": expected,
        "deliveries_per_second": round(len(delays) / wall, 1),
        "delivery_latency": summary_ms(delays),
        "per_event_first_delivery": summary_ms([first[eid] - sent_at[eid] for eid in first]),
        "per_event_first_to_last_delivery": summary_ms([last[eid] - first[eid] for eid in first]),
        # which published event (0 = first) waited longest for its first delivery: tells a
        # cold start from a stall in steady state
        "slowest_first_delivery_index": max(
            range(len(ids)), key=lambda i: first.get(ids[i], 0.0) - sent_at.get(ids[i], 0.0)
        ),
        "client_cpu_cores_used": round(sum(r.cpu_seconds for r in results) / wall, 2),
        "machine_busy_cores": round(busy / wall, 2),
    }
    if relay_cpu is not None:
        out["relay_cpu_cores_used"] = round(relay_cpu / wall, 2)
    return out
