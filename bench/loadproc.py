"""Running load-client coroutines in several processes, started together.

One Python process can drive a few thousand frames a second before its own event loop
becomes the bottleneck; the scenarios therefore spread connections over processes. Each
worker connects, reports ready, waits for the common start signal, runs, and returns a
picklable result with its own CPU time so the report can show the client was not the limit.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import queue
import time
from collections.abc import Awaitable, Callable, Coroutine
from multiprocessing.synchronize import Event as EventType
from typing import Any

Ready = Callable[[], Awaitable[None]]
WorkerMain = Callable[[Any, Ready], Coroutine[Any, Any, Any]]

_CTX = multiprocessing.get_context("spawn")


def _entry(main: WorkerMain, job: Any, ready_q: Any, go: EventType, result_q: Any) -> None:
    async def ready() -> None:
        ready_q.put(True)
        await asyncio.to_thread(go.wait)

    try:
        result: Any = asyncio.run(main(job, ready))
    except BaseException as exc:  # report, so the parent does not wait for a result that never comes
        ready_q.put(False)
        result_q.put(("error", f"{type(exc).__name__}: {exc}"))
        raise
    result_q.put(("ok", result))


class WorkerGroup:
    """Start ``main(job, ready)`` in one process per job; ``await ready()`` inside ``main``
    marks the point where set-up ends and all workers start timing together."""

    def __init__(self, main: WorkerMain, jobs: list[Any]) -> None:
        self._ready_q = _CTX.Queue()
        self._result_q = _CTX.Queue()
        self._go = _CTX.Event()
        self._procs = [
            _CTX.Process(target=_entry, args=(main, job, self._ready_q, self._go, self._result_q), daemon=True)
            for job in jobs
        ]

    async def start_and_wait_ready(self, timeout: float = 120.0) -> None:
        for p in self._procs:
            p.start()
        deadline = time.monotonic() + timeout
        for _ in self._procs:
            left = deadline - time.monotonic()
            try:
                ok = await asyncio.to_thread(self._ready_q.get, True, max(0.1, left))
            except queue.Empty:
                raise RuntimeError("load-client workers did not get ready in time") from None
            if not ok:
                _, err = await asyncio.to_thread(self._result_q.get, True, 5)
                raise RuntimeError(f"a load-client worker failed during set-up: {err}")

    def go(self) -> None:
        self._go.set()

    async def results(self, timeout: float = 600.0) -> list[Any]:
        out = []
        deadline = time.monotonic() + timeout
        for _ in self._procs:
            status, value = await asyncio.to_thread(self._result_q.get, True, max(0.1, deadline - time.monotonic()))
            if status != "ok":
                raise RuntimeError(f"a load-client worker failed: {value}")
            out.append(value)
        for p in self._procs:
            await asyncio.to_thread(p.join, 10)
        return out

    def kill(self) -> None:
        for p in self._procs:
            if p.is_alive():
                p.kill()
