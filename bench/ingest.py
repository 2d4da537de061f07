"""Ingest: signed kind-1 events per second answered ``OK true``, and the OK latency.

Each client process holds a few connections; each connection keeps at most ``window``
EVENTs in flight and sends the next as each OK arrives (closed loop), so the figure is
the relay's sustained rate at a bounded queue, and the latency is what a pipelining
client sees at that rate. Events come pre-signed from the cache; the client only writes
ready-made frames and reads OKs, and its CPU is measured so the report can say whether
the client or the relay was the limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from bench.latency import summary_ms
from bench.loadproc import Ready, WorkerGroup
from bench.relayproc import cpu_seconds, machine_busy_seconds, postgres_cpu_seconds, writer_metrics
from bench.wsclient import RawWebSocket, client_frame


@dataclass(frozen=True, slots=True)
class IngestJob:
    url: str
    events_file: str
    start: int
    stop: int
    connections: int
    window: int
    timeout: float


@dataclass(frozen=True, slots=True)
class IngestResult:
    accepted: int
    duplicates: int
    rejected: dict[str, int]
    missing: int
    latencies: list[float]
    first_send: float
    last_ok: float
    cpu_seconds: float


class _Pipeline:
    """One connection's share of the events, sent with a bounded window of in-flight EVENTs."""

    def __init__(self, frames: list[bytes], ids: list[bytes], window: int, shared: _Tally) -> None:
        self.frames = frames
        self.ids = ids
        self.window = window
        self.next = 0
        self.sent_at: dict[bytes, float] = {}
        self.shared = shared
        self.ws: RawWebSocket | None = None
        self._outbox: list[bytes] = []
        self._flush_scheduled = False

    def _queue_next(self, now: float) -> None:
        i = self.next
        if i < len(self.frames):
            self.next = i + 1
            self.sent_at[self.ids[i]] = now
            self._outbox.append(self.frames[i])
            if not self._flush_scheduled:
                self._flush_scheduled = True
                asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        # One write per batch of OKs read, not one syscall per EVENT.
        self._flush_scheduled = False
        if self.ws is not None and self._outbox:
            self.ws.send_frames(b"".join(self._outbox))
        self._outbox.clear()

    def start(self) -> None:
        now = time.perf_counter()
        for _ in range(min(self.window, len(self.frames))):
            self._queue_next(now)

    def on_message(self, payload: bytes, now: float) -> None:
        if not payload.startswith(b'["OK","'):
            return  # the AUTH challenge; nothing else is expected
        sent = self.sent_at.pop(payload[7:71], None)
        if sent is None:
            return
        tally = self.shared
        tally.latencies.append(now - sent)
        if payload[73:78] == b"true,":
            if payload[78:89] == b'"duplicate:':
                tally.duplicates += 1
            else:
                tally.accepted += 1
        else:
            reason = str(orjson.loads(payload)[3])
            tally.rejected[reason.split(":", 1)[0] + ": " + reason.split(":", 1)[-1].strip()[:60]] += 1
        tally.last_ok = now
        tally.answered += 1
        if tally.answered == tally.expected and not tally.done.done():
            tally.done.set_result(None)
        self._queue_next(now)


class _Tally:
    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.answered = 0
        self.accepted = 0
        self.duplicates = 0
        self.rejected: Counter[str] = Counter()
        self.latencies: list[float] = []
        self.last_ok = 0.0
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()


async def ingest_worker(job: IngestJob, ready: Ready) -> IngestResult:
    from bench.events import read_events

    lines = list(read_events(Path(job.events_file), job.start, job.stop))
    frames = [client_frame(b'["EVENT",' + line + b"]") for line in lines]
    ids = [line[7:71] for line in lines]  # raw events start with {"id":"
    tally = _Tally(len(lines))
    pipes = [
        _Pipeline(frames[c :: job.connections], ids[c :: job.connections], job.window, tally)
        for c in range(job.connections)
    ]
    for pipe in pipes:
        pipe.ws = await RawWebSocket.connect(job.url, pipe.on_message)
    await ready()
    cpu0 = time.process_time()
    first_send = time.perf_counter()
    for pipe in pipes:
        pipe.start()
    with contextlib.suppress(TimeoutError):  # unanswered events are reported, not fatal
        await asyncio.wait_for(asyncio.shield(tally.done), job.timeout)
    cpu = time.process_time() - cpu0
    for pipe in pipes:
        assert pipe.ws is not None
        pipe.ws.close()
    return IngestResult(
        accepted=tally.accepted,
        duplicates=tally.duplicates,
        rejected=dict(tally.rejected),
        missing=tally.expected - tally.answered,
        latencies=tally.latencies,
        first_send=first_send,
        last_ok=tally.last_ok,
        cpu_seconds=cpu,
    )


async def run_ingest(
    url: str,
    events_file: Path,
    count: int,
    *,
    processes: int,
    connections: int,
    window: int,
    relay_pid: int | None,
    timeout: float = 300.0,
) -> dict[str, Any]:
    per = count // processes
    jobs = [
        IngestJob(url, str(events_file), i * per, count if i == processes - 1 else (i + 1) * per, connections, window,
                  timeout)
        for i in range(processes)
    ]
    group = WorkerGroup(ingest_worker, jobs)
    try:
        await group.start_and_wait_ready()
        relay_cpu0 = cpu_seconds(relay_pid) if relay_pid else None
        writer0 = await _writer_metrics_or_empty(url)
        busy0 = machine_busy_seconds()
        pg0 = postgres_cpu_seconds()
        wall0 = time.perf_counter()
        group.go()
        results: list[IngestResult] = await group.results(timeout + 60)
        wall = time.perf_counter() - wall0
        busy = machine_busy_seconds() - busy0
        pg = postgres_cpu_seconds() - pg0
        relay_cpu = cpu_seconds(relay_pid) - relay_cpu0 if relay_pid and relay_cpu0 is not None else None
        writer1 = await _writer_metrics_or_empty(url)
    finally:
        group.kill()
    accepted = sum(r.accepted for r in results)
    duplicates = sum(r.duplicates for r in results)
    rejected: Counter[str] = Counter()
    for r in results:
        rejected.update(r.rejected)
    latencies = [x for r in results for x in r.latencies]
    span = max(r.last_ok for r in results) - min(r.first_send for r in results)
    client_cpu = sum(r.cpu_seconds for r in results)
    out: dict[str, Any] = {
        "events_sent": count,
        "ok_true": accepted,
        "ok_true_duplicate": duplicates,
        "ok_false": dict(rejected),
        "unanswered": sum(r.missing for r in results),
        "seconds": round(span, 3),
        "events_per_second": round(accepted / span) if span > 0 else 0,
        "ok_latency": summary_ms(latencies),
        "client": {
            "processes": processes,
            "connections_per_process": connections,
            "window_per_connection": window,
            "in_flight_max": processes * connections * window,
            "cpu_cores_used": round(client_cpu / wall, 2),
            "cpu_us_per_event": round(client_cpu / max(1, accepted + duplicates) * 1e6, 1),
        },
    }
    if writer0 and writer1:
        batches = writer1["batches"] - writer0["batches"]
        commit = writer1["commit_seconds"] - writer0["commit_seconds"]
        out["group_commit"] = {
            "batches": int(batches),
            "mean_batch_events": round((writer1["events"] - writer0["events"]) / max(1, batches), 1),
            "mean_commit_ms": round(commit / max(1, batches) * 1000, 2),
            "writer_busy_fraction": round(commit / wall, 2),
        }
    out["machine_busy_cores"] = round(busy / wall, 2)
    if relay_cpu is not None:
        out["other_processes_cores"] = round(max(0.0, busy - relay_cpu - client_cpu - pg) / wall, 2)
        out["postgres_processes_cores"] = round(pg / wall, 2)
        out["relay"] = {
            "cpu_cores_used": round(relay_cpu / wall, 2),
            "cpu_us_per_event": round(relay_cpu / max(1, accepted + duplicates) * 1e6, 1),
        }
    return out


async def _writer_metrics_or_empty(url: str) -> dict[str, float]:
    try:
        return await writer_metrics(url)
    except Exception:  # a relay without /metrics still gets its ingest figures
        return {}
