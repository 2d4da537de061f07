"""Idle connections: relay memory per open connection, compression off and on.

Uses the websockets client rather than the thin one, because only it negotiates
permessage-deflate the way browsers do (the thin client would make the compression-on
figure meaningless). Each connection sends one small REQ (a live subscription, as a real
idle client holds) and then does nothing. The figure is the growth of the relay's VmRSS
over a baseline taken after a warm-up connection, divided by the number of connections.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect

from bench.loadproc import Ready, WorkerGroup
from bench.relayproc import rss_kib


@dataclass(frozen=True, slots=True)
class IdleJob:
    url: str
    connections: int
    compression: bool


async def _open(url: str, compression: bool) -> tuple[ClientConnection, bool]:
    """A connection holding one live subscription, and whether its REQ got its EOSE
    (rather than CLOSED)."""
    ws = await connect(url, compression="deflate" if compression else None, ping_interval=None, max_size=None,
                       open_timeout=60)
    await ws.send(orjson.dumps(["REQ", "i", {"authors": [os.urandom(32).hex()], "limit": 1}]).decode())
    while True:
        msg = orjson.loads(await asyncio.wait_for(ws.recv(), 60))
        if msg[0] in ("EOSE", "CLOSED"):
            return ws, msg[0] == "EOSE"


@dataclass(frozen=True, slots=True)
class IdleResult:
    negotiated: int  # connections that agreed on permessage-deflate
    eose: int  # connections whose REQ got its EOSE


async def idle_worker(job: IdleJob, ready: Ready) -> IdleResult:
    opened: list[tuple[ClientConnection, bool]] = []
    for start in range(0, job.connections, 50):  # in waves: a 2,000-connection SYN burst only measures the backlog
        opened.extend(await asyncio.gather(*(_open(job.url, job.compression)
                                             for _ in range(start, min(job.connections, start + 50)))))
    conns = [ws for ws, _ in opened]
    negotiated = sum(1 for ws in conns if ws.response is not None
                     and "permessage-deflate" in ws.response.headers.get("Sec-WebSocket-Extensions", ""))
    await ready()
    await asyncio.gather(*(ws.close() for ws in conns), return_exceptions=True)
    return IdleResult(negotiated, sum(1 for _, eose in opened if eose))


async def run_idle(url: str, relay_pid: int, *, connections: int, processes: int, compression: bool) -> dict[str, Any]:
    warm, _ = await _open(url, compression)
    await warm.close()
    await asyncio.sleep(1.0)
    baseline = rss_kib(relay_pid)
    per = [connections // processes + (1 if i < connections % processes else 0) for i in range(processes)]
    group = WorkerGroup(idle_worker, [IdleJob(url, n, compression) for n in per if n])
    try:
        started = time.perf_counter()
        await group.start_and_wait_ready(timeout=300)
        opened_in = time.perf_counter() - started
        await asyncio.sleep(2.0)  # let the relay settle (freed buffers, finished tasks)
        loaded = rss_kib(relay_pid)
        group.go()
        results: list[IdleResult] = await group.results(120)
    finally:
        group.kill()
    return {
        "connections": connections,
        "eose_received": sum(r.eose for r in results),
        "compression_offered": compression,
        "compression_negotiated": sum(r.negotiated for r in results),
        "open_seconds": round(opened_in, 2),
        "rss_baseline_kib": baseline,
        "rss_with_connections_kib": loaded,
        "kib_per_connection": round((loaded - baseline) / connections, 2),
    }
