"""Signature checks batched onto a worker thread.

A BIP-340 verify costs ~45 µs, more than every other per-event step together. libsecp256k1
runs with the GIL released (cffi), so verifying on a worker thread lets the event loop
parse and answer meanwhile and puts the second core to work. Handing events over one by
one would cost a thread hop each; instead whatever is waiting is verified as one batch
per hop, so the hop cost is spread over the batch under load.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from concurrent.futures import ThreadPoolExecutor

from relay.nostr.event import Event, verify_signature

log = logging.getLogger(__name__)


def _verify_all(events: list[Event]) -> list[bool]:
    return [verify_signature(e) for e in events]


class SignatureVerifier:
    def __init__(self, threads: int = 1, batch_max: int = 512) -> None:
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="verify")
        self._queue: asyncio.Queue[tuple[Event, asyncio.Future[bool]]] = asyncio.Queue()
        self._batch_max = batch_max
        self._tasks: list[asyncio.Task[None]] = []
        self._threads = threads

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._run(), name="verifier") for _ in range(self._threads)]

    def verify(self, event: Event) -> asyncio.Future[bool]:
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((event, future))
        return future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = [await self._queue.get()]
            while len(items) < self._batch_max and not self._queue.empty():
                items.append(self._queue.get_nowait())
            try:
                results = await loop.run_in_executor(self._pool, _verify_all, [e for e, _ in items])
            except Exception as exc:  # never leave a publisher waiting forever
                log.exception("signature verification failed")
                for _, future in items:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), ok in zip(items, results, strict=True):
                if not future.done():
                    future.set_result(ok)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._pool.shutdown(wait=False, cancel_futures=True)
