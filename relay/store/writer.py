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

**One event never fails its neighbours.** The parser refuses every value a store cannot
hold (``relay.nostr.event``), but should a batch fail anyway, it is split in halves and each
half committed on its own, recursively, in batch order, until the failing events stand
alone: only they get ``error:``, every other event gets its real outcome (issue 8: five
unstorable events had failed 100 of 1,000 bystanders' events). Committing the halves in
order keeps the batch's meaning (a replaceable event still meets the versions before it),
and a failed attempt is one rolled-back transaction, so nothing is applied twice. k bad
events among n cost about 2k·log2(n) extra commits; a budget of failed attempts per batch
(``_split_budget``) bounds the cost, tightly while the store may be down (every attempt
fails), loosely once it has taken part of the batch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from relay.net.throttled_log import ThrottledLog
from relay.nostr.errors import Rejection, ServerError
from relay.nostr.event import Event, KindClass
from relay.store.base import Store, WriteOutcome, WriteRequest

log = logging.getLogger(__name__)

STORE_FAILED = "could not store the event, try again"
EVENT_REFUSED = "the store could not hold this event"


def _split_budget(n: int, store_ok: bool) -> int:
    """Failed attempts allowed while isolating the bad events of an n-event batch. Each bad
    event costs at most one failed attempt per level of the split (log2 n). Until some part
    of the batch has been stored, the store may simply be down: about eight bad events'
    worth, then the rest fails with "try again". Once the store has taken a part, it works,
    and up to n/2 failed attempts more are allowed (measured, SQLite, 1,000 events: 1 bad
    -> 19 write_batch calls, 5 -> 83, 20 -> 255 (0.17 s), 100 -> 847 (0.54 s), all isolated),
    so a client needs hundreds of bad events in one batch before a neighbour is failed
    ("try again") rather than the writer stalled for everyone."""
    systemic = 8 * max(1, n.bit_length())
    return systemic + n // 2 if store_ok else systemic


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


class EventWriter(Protocol):
    """What the write path needs of the stage that commits events: ``GroupCommitWriter``
    in a relay that owns its store's writer, ``relay.store.writer_client.RemoteWriter`` in a
    ``--workers`` worker on SQLite, whose events the writer process commits."""

    @property
    def stats(self) -> WriterStats: ...

    def start(self) -> None: ...

    async def submit(self, req: WriteRequest) -> WriteOutcome:
        """The event's outcome once it is committed (``GroupCommitWriter.submit``)."""
        ...

    async def close(self) -> None:
        """Refuse new work and finish what was submitted."""
        ...


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
        # An event the store refused on its own while its neighbours were stored: a client
        # can make that happen (with a value the parser does not know to refuse yet), so one
        # WARNING line each, no traceback, throttled. A batch in which nothing could be
        # stored is the store's fault: its traceback is logged, throttled too (an outage
        # fails every batch).
        self._event_log = ThrottledLog(log)
        self._store_ok = True  # the last batch stored something
        self._fault_log = ThrottledLog(log, per_second=0.2, burst=3)

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

        Raises ``ServerError`` (its text the NIP-01 ``error:`` reply, the store's exception
        as its cause) when the store could not write this event: alone when the store
        refused just this one, or with the rest of its batch when the store is failing;
        raises the ``Rejection`` a plug-in's write hook refused the event with (it was
        neither stored nor charged: ``relay.store.database``). If the caller is cancelled
        (its client went away) the event is still written: it was already accepted.
        """
        return await self.enqueue(req)

    def enqueue(self, req: WriteRequest) -> asyncio.Future[WriteOutcome]:
        """``submit`` without a coroutine: the future of the event's outcome. The writer
        process queues every worker's events this way, a future each, no task each."""
        if self._closing:
            raise RuntimeError("writer is closed")
        if req.event.kind_class is KindClass.EPHEMERAL:
            raise ValueError("ephemeral events are never stored; fan them out directly")
        self.start()
        fut: asyncio.Future[WriteOutcome] = asyncio.get_running_loop().create_future()
        self._queue.append((req, fut))
        self._wakeup.set()
        return fut

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
        now = self._clock()
        started = time.perf_counter()
        try:
            first = await self._attempt(requests, now)
            if isinstance(first, Exception):
                self._failed += 1
                results = await self._isolate(requests, first, now)
            else:
                results = list(first)
                self._store_ok = True
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
        for (req, fut), result in zip(batch, results, strict=True):
            if isinstance(result, BaseException):
                if not fut.done():
                    fut.set_exception(result)
                continue
            if not fut.done():
                fut.set_result(result)
            if result is WriteOutcome.STORED:
                stored.append(req.event)
        if stored and self._on_committed is not None:
            try:
                self._on_committed(stored)
            except Exception:
                log.exception("on_committed callback failed for a batch of %d events", len(stored))

    async def _attempt(self, requests: list[WriteRequest], now: int) -> list[WriteOutcome | Rejection] | Exception:
        """One ``write_batch`` transaction: its outcomes (a ``Rejection`` for an event a
        write hook refused, raised by ``submit``), or the exception it raised."""
        try:
            outcomes = await self._store.write_batch(requests, now)
            if len(outcomes) != len(requests):
                raise RuntimeError(f"store returned {len(outcomes)} outcomes for {len(requests)} events")
        except Exception as exc:
            return exc
        return outcomes

    async def _isolate(
        self, requests: list[WriteRequest], failure: Exception, now: int
    ) -> list[WriteOutcome | Rejection]:
        """The batch failed as a whole: commit its halves on their own, in order, splitting
        each failing part again, so that only the events the store refuses alone fail."""
        results: list[WriteOutcome | Rejection | None] = [None] * len(requests)
        alone: list[tuple[int, Exception]] = []  # events that failed in a batch of one
        failed = 0
        stored_any = False

        async def split(lo: int, hi: int, exc: Exception) -> None:
            nonlocal failed, stored_any
            if hi - lo == 1:
                alone.append((lo, exc))
                return
            mid = (lo + hi) // 2
            for a, b in ((lo, mid), (mid, hi)):
                if failed >= _split_budget(len(requests), stored_any):
                    for i in range(a, b):
                        results[i] = _store_failed(exc)
                    continue
                outcome = await self._attempt(requests[a:b], now)
                if isinstance(outcome, Exception):
                    failed += 1
                    await split(a, b, outcome)
                else:
                    results[a:b] = outcome
                    stored_any = True

        await split(0, len(requests), failure)
        some_stored = any(r is not None and not isinstance(r, ServerError) for r in results)
        # The store took this event's neighbours (or, for a lone event, the batch before it)
        # and refused this one: the event, not the store, is at fault.
        blame_events = some_stored or (len(requests) == 1 and self._store_ok)
        self._store_ok = some_stored
        for i, exc in alone:
            if blame_events:
                results[i] = _refused(exc)
                self._event_log.warning(
                    "the store refused event %s (%s: %.200s)",
                    requests[i].event.id,
                    type(exc).__name__,
                    exc,
                )
            else:
                results[i] = _store_failed(exc)
        if not blame_events:
            self._fault_log.error("write batch of %d events failed", len(requests), exc_info=failure)
        return [r if r is not None else _store_failed(failure) for r in results]


def _store_failed(exc: Exception) -> ServerError:
    error = ServerError(STORE_FAILED)
    error.__cause__ = exc
    return error


def _refused(exc: Exception) -> ServerError:
    error = ServerError(EVENT_REFUSED)
    error.__cause__ = exc
    return error
