"""Idle connections, counted in allocations: what the relay's Python heap holds per open
connection, and where it was allocated (``tracemalloc``).

RSS (``bench.idle``) is the figure users pay for, but it moves with the allocator's arenas,
the page cache and whatever else the machine does; the bytes and blocks ``tracemalloc``
sees allocated and still alive are the same on a busy machine as on a quiet one, and name
the line that allocated them. So this scenario runs the relay *in this process* (with the
bench's settings: SQLite in a temp dir, compression off, limits lifted), opens the
connections from client processes (``bench.idle``'s workers: one small REQ each, then
nothing), and compares a snapshot taken after a warm-up connection with one taken while
every connection is open. What it cannot see: the kernel's socket buffers (not in RSS
either) and memory outside Python's allocators (C extensions' own mallocs).
"""

from __future__ import annotations

import asyncio
import gc
import shutil
import socket
import tempfile
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Any

from bench.idle import IdleJob, IdleResult, _open, idle_worker
from bench.loadproc import WorkerGroup
from bench.relayproc import REPO, UNLIMITED


def _type_counts() -> Counter[str]:
    """Objects the cyclic GC tracks, by type name (instances, dicts, lists, deques, ...)."""
    return Counter(type(o).__qualname__ for o in gc.get_objects())


def _site(frame: tracemalloc.Frame) -> str:
    try:
        return f"{Path(frame.filename).resolve().relative_to(REPO)}:{frame.lineno}"
    except ValueError:  # the standard library or a dependency
        parts = Path(frame.filename).parts
        tail = parts[parts.index("site-packages") + 1 :] if "site-packages" in parts else parts[-2:]
        return f"{'/'.join(tail)}:{frame.lineno}"


async def run_idle_alloc(*, connections: int, processes: int, top: int = 15, frames: int = 1) -> dict[str, Any]:
    """``frames`` > 1: each site is the chain of callers that allocated (innermost first)."""
    from relay.app import build_relay
    from relay.config import load_settings

    tmp = Path(tempfile.mkdtemp(prefix="satsrelay-bench-idle-alloc-"))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    port = int(sock.getsockname()[1])
    url = f"ws://127.0.0.1:{port}"
    settings = load_settings(
        None,
        server={"host": "127.0.0.1", "port": port, "metrics_listen": "", "compression": False},
        relay={"public_url": url},
        storage={"url": f"sqlite:///{tmp / 'relay.db'}"},
        # max_connections within the open-file limit: the relay would warn about it on stderr
        limits={**UNLIMITED, "max_connections": connections + 100, "max_connections_per_ip": connections + 100},
        log_level="WARNING",
    )
    relay = build_relay(settings)
    per = [connections // processes + (1 if i < connections % processes else 0) for i in range(processes)]
    group = WorkerGroup(idle_worker, [IdleJob(url, n, False) for n in per if n])
    started = False
    try:
        await relay.start(sock=sock)
        started = True
        # Warm-up: lazy imports, caches and first-use structures are not per connection.
        for _ in range(3):
            ws, _ = await _open(url, False)
            await ws.close()
        await asyncio.sleep(0.5)
        tracemalloc.start(frames)
        gc.collect()
        types0 = _type_counts()
        before = tracemalloc.take_snapshot()
        await group.start_and_wait_ready(timeout=300)
        await asyncio.sleep(1.0)  # let the relay finish each connection's REQ and settle
        gc.collect()
        after = tracemalloc.take_snapshot()
        types1 = _type_counts()
        tracemalloc.stop()
        open_now = len(relay.connections)
        group.go()
        results: list[IdleResult] = await group.results(120)
    finally:
        group.kill()
        tracemalloc.stop()
        if started:
            await relay.stop()
        sock.close()
        shutil.rmtree(tmp, ignore_errors=True)
    ignore = [tracemalloc.Filter(False, tracemalloc.__file__)]
    stats = after.filter_traces(ignore).compare_to(
        before.filter_traces(ignore), "lineno" if frames == 1 else "traceback")
    size = sum(s.size_diff for s in stats)
    blocks = sum(s.count_diff for s in stats)
    types = {name: round((types1[name] - types0.get(name, 0)) / connections, 2)
             for name in types1 if types1[name] - types0.get(name, 0) >= connections // 2}
    return {
        "connections": connections,
        "connections_open_in_relay": open_now,
        "eose_received": sum(r.eose for r in results),
        "bytes_per_connection": round(size / connections),
        "blocks_per_connection": round(blocks / connections, 1),
        "objects_per_connection_by_type": dict(sorted(types.items(), key=lambda kv: -kv[1])),
        "top_sites": [
            {"site": " <- ".join(_site(f) for f in reversed(s.traceback)),
             "bytes_per_connection": round(s.size_diff / connections),
             "blocks_per_connection": round(s.count_diff / connections, 2)}
            for s in stats[:top]
        ],
    }
