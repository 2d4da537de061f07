"""Group commit: the one stage that writes events, in batches, over any ``Store``.

Every accepted event's ``submit`` enqueues it and waits; one task takes everything that
is waiting (up to ``batch_max``), hands it to ``store.write_batch`` as one transaction, and
only then resolves each waiter's future, so an ``OK true`` always follows a durable commit.
There is no timer: while a commit runs, new events pile up and form the next batch, so
batches grow with load and a lone event is written at once (strfry's Writer does the same).
One fsync then serves a whole batch instead of one per event.

After the futures, ``on_committed`` receives the events that were actually STORED (not
duplicates, superseded or deleted ones) for live fan-out. It runs on the event loop and
must not block; its exceptions are logged and never stop the writer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from relay.event import Event, KindClass
from relay.store.base import Store, WriteOutcome, WriteRequest

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WriterStats:
    """A snapshot for /metrics; counters only grow."""

    batches: int = 0
    events: int = 0
    failed_batches: int = 0
    last_batch_size: int = 0
    commit_seconds: float = 0.0  # total time inside write_batch
    last_commit_seconds: float = 0.0
    queued: int = 0


def _wall_clock() -> int:
    return int(time.time())


class GroupCommitWriter:
    def __init__(
        self,
        store: Store,
        *,
        batch_max: int = 1000,
        on_committed: Callable[[list[Event]], None] | None = None,
        clock: Callable[[], int] = _wall_clock,
    ) -> None:
        if batch_max < 1:
            raise ValueError("batch_max must be at least 1")
        self._store = store
        self._batch_max = batch_max
        self._on_committed = on_committed
        self._clock = clock
        self._queue: deque[tuple[WriteRequest, asyncio.Future[WriteOutcome]]] = deque()
        self._wakeup = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._batches = 0
        self._events = 0
        self._failed = 0
        self._last_size = 0
        self._commit_seconds = 0.0
        self._last_commit_seconds = 0.0

    @property
    def stats(self) -> WriterStats:
        return WriterStats(
            batches=self._batches,
            events=self._events,
            failed_batches=self._failed,
            last_batch_size=self._last_size,
            commit_seconds=self._commit_seconds,
            last_commit_seconds=self._last_commit_seconds,
            queued=len(self._queue),
        )

    def start(self) -> None:
        """Start the drain task (``submit`` also starts it on first use)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="group-commit-writer")
            self._task.add_done_callback(self._task_done)

    @staticmethod
    def _task_done(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("group-commit writer stopped", exc_info=task.exception())

    async def submit(self, req: WriteRequest) -> WriteOutcome:
        """Queue one event; return its outcome once the batch holding it has committed.

        Raises what ``write_batch`` raised for that batch. If the caller is cancelled
        (its client went away) the event is still written: it was already accepted.
        """
        if self._closing:
            raise RuntimeError("writer is closed")
        if req.event.kind_class is KindClass.EPHEMERAL:
            raise ValueError("ephemeral events are never stored; fan them out directly")
        self.start()
        fut: asyncio.Future[WriteOutcome] = asyncio.get_running_loop().create_future()
        self._queue.append((req, fut))
        self._wakeup.set()
        return await fut

    async def close(self) -> None:
        """Refuse new work, write everything already queued, then stop."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            take = min(len(self._queue), self._batch_max)
            batch = [self._queue.popleft() for _ in range(take)]
            await self._commit(batch)

    async def _commit(self, batch: list[tuple[WriteRequest, asyncio.Future[WriteOutcome]]]) -> None:
        requests = [req for req, _ in batch]
        started = time.perf_counter()
        try:
            outcomes = await self._store.write_batch(requests, self._clock())
            if len(outcomes) != len(requests):
                raise RuntimeError(f"store returned {len(outcomes)} outcomes for {len(requests)} events")
        except Exception as exc:
            # Only this batch fails; its senders get "error: ..." and the writer goes on.
            self._failed += 1
            log.exception("write batch of %d events failed", len(batch))
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
            return
        except BaseException:
            # Cancelled mid-commit: nobody may wait forever on a future of this batch.
            for _, fut in batch:
                fut.cancel()
            raise
        elapsed = time.perf_counter() - started
        self._batches += 1
        self._events += len(batch)
        self._last_size = len(batch)
        self._commit_seconds += elapsed
        self._last_commit_seconds = elapsed
        stored: list[Event] = []
        for (req, fut), outcome in zip(batch, outcomes, strict=True):
            if not fut.done():
                fut.set_result(outcome)
            if outcome is WriteOutcome.STORED:
                stored.append(req.event)
        if stored and self._on_committed is not None:
            try:
                self._on_committed(stored)
            except Exception:
                log.exception("on_committed callback failed for a batch of %d events", len(stored))
