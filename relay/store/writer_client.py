"""A ``--workers`` worker's end of the SQLite writer process (``relay.store.writer_process``).

``WriterLink`` is the worker's one connection to the writer: it sends verified events,
ephemeral events and the store's rarer writes (``CALL``), and receives outcomes, results
and the commit stream. Three faces of it plug into the relay's seams:

- ``RemoteWriter`` replaces ``GroupCommitWriter`` on the write path: ``submit`` sends the
  event and returns its outcome once the writer process has committed it (OK after commit);
- ``CommitStream`` replaces the local broadcast: every event the writer stores reaches this
  worker's subscribers in commit order, once, whichever worker accepted it, and an
  ephemeral event accepted here goes to the other workers through the writer;
- ``SqliteStore`` (given the link) sends its writes through ``call`` and keeps only its
  readers in this process (WAL: several processes read one file).

**The writer process going away** (killed, restarted by the supervisor): every request in
flight fails with ``error: ... try again`` (the writer may have committed it, never is an
OK sent for a commit the worker did not see), new events wait up to ``wait_seconds`` for
the link to come back, and the link reconnects with back-off. The events committed but not
yet streamed when it died are then read from the database (``CommitLog``: after the newest
event this worker saw on the stream) and delivered before the new writer's stream, so a
live subscriber misses nothing stored and sees nothing twice. An OK is only ever sent
after the writer queued that commit's fan-out to every link, so what was acknowledged
went out on the stream anyway; the catch-up covers the batch that was being committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pickle
import socket
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Protocol, cast

import relay.store.writer_frames as frames
from relay.nostr.errors import ServerError
from relay.nostr.event import Event, KindClass, event_from_own_raw
from relay.store.base import WriteOutcome, WriteRequest
from relay.store.writer import STORE_FAILED, WriterStats

log = logging.getLogger(__name__)

Deliver = Callable[[Event], object]

WRITER_GONE = "the relay's writer restarted; try again"
RECENT_POSITIONS = 16  # stream ids kept to find where a catch-up starts
CATCH_UP_LIMIT = 20_000  # events read after a writer restart (one batch is at most batch_max)


class CommitLog(Protocol):
    """The worker's reads of what the writer committed, for the catch-up after a restart."""

    async def position_of(self, event_ids: Sequence[str]) -> int | None:
        """The commit position of the first of ``event_ids`` still stored (None: none is)."""
        ...

    async def newest_position(self) -> int:
        """The position of the newest stored event (0 when there is none)."""
        ...

    async def committed_after(self, position: int, limit: int) -> list[bytes]:
        """Raw JSON of the events stored after ``position``, in commit order."""
        ...


class WriterLink(asyncio.Protocol):
    """The worker's connection to the writer process (see the module docstring)."""

    def __init__(self, address: str, *, wait_seconds: float = 5.0, reconnect_max: float = 1.0) -> None:
        """``address``: a Unix socket path, or ``@name`` for Linux's abstract namespace."""
        self.address = address
        self._sockaddr = "\0" + address[1:] if address.startswith("@") else address
        self.wait_seconds = wait_seconds
        self.reconnect_max = reconnect_max
        self.counters = frames.WriterCounters()
        self._transport: asyncio.Transport | None = None
        self._reader = frames.FrameReader()
        self._number = 0
        self._ready = asyncio.Event()
        self._lost: asyncio.Future[None] | None = None
        self._pending: dict[int, tuple[asyncio.Future[WriteOutcome], Event]] = {}
        self._calls: dict[int, asyncio.Future[Any]] = {}
        self._next_request = 0
        self._out: list[bytes] = []
        self._flush_due = False
        self._deliver: Deliver | None = None
        self._log: CommitLog | None = None
        self._seen_ids: deque[str] = deque(maxlen=RECENT_POSITIONS)
        self._base_position: int | None = None  # the newest position when first connected
        self._held: list[memoryview] | None = None  # STORED frames held during a catch-up
        self._ready_before = False  # a HELLO came before: the next one is a reconnection
        self._task: asyncio.Task[None] | None = None
        self._catch_up_task: asyncio.Task[None] | None = None
        self._closing = False

    # --- life cycle --------------------------------------------------------------------

    async def start(self) -> None:
        """Connect and wait for the writer's HELLO: it is sent once the writer's store is
        open and migrated, so the worker's readers find the schema in place."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="writer-link")
        waited = 0.0
        while not self._ready.is_set():
            if self._task.done():
                self._task.result()  # raises what stopped it
                raise RuntimeError("writer link stopped")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._ready.wait()), timeout=10)
            if not self._ready.is_set():
                waited += 10
                log.info("waiting for the writer process (%.0f s so far)", waited)

    async def follow(self, commit_log: CommitLog) -> None:
        """Catch up from ``commit_log`` whenever the link comes back (the worker's readers,
        open once ``start`` has returned); from here on, nothing committed is missed."""
        self._base_position = await commit_log.newest_position()
        self._log = commit_log

    async def close(self) -> None:
        self._closing = True
        for task in (self._task, self._catch_up_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._transport is not None:
            self._flush()
            self._transport.close()
        self._fail_all(ServerError(STORE_FAILED))

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    async def wait_ready(self) -> None:
        """Back within ``wait_seconds``, or ``ServerError`` (an ``error:`` reply)."""
        if self._ready.is_set():
            return
        if self._closing:
            raise ServerError(STORE_FAILED)
        try:
            await asyncio.wait_for(self._ready.wait(), timeout=self.wait_seconds)
        except TimeoutError:
            raise ServerError(WRITER_GONE) from None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        delay = 0.05
        complained = False
        while not self._closing:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                await loop.sock_connect(sock, self._sockaddr)
                self._lost = loop.create_future()
                await loop.create_unix_connection(lambda: self, sock=sock)
                delay = 0.05
                complained = False
                await self._lost
            except OSError as exc:
                sock.close()
                if not complained:
                    log.warning("cannot reach the writer process (%s); retrying", exc)
                    complained = True
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.reconnect_max)

    # --- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it
        self._transport = cast(asyncio.Transport, transport)
        self._reader = frames.FrameReader()

    def data_received(self, data: bytes) -> None:
        try:
            for kind, payload in self._reader.feed(data):
                self._handle(kind, payload)
        except Exception:
            log.exception("bad frame from the writer process; reconnecting")
            if self._transport is not None:
                self._transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        was_ready = self._ready.is_set()
        self._ready.clear()
        self._out.clear()
        if was_ready and not self._closing:
            log.warning("lost the writer process; failing %d events in flight and reconnecting", len(self._pending))
        self._fail_all(ServerError(WRITER_GONE))
        if self._catch_up_task is not None:
            self._catch_up_task.cancel()
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)

    def _fail_all(self, error: ServerError) -> None:
        pending, self._pending = self._pending, {}
        for fut, _ in pending.values():
            if not fut.done():
                fut.set_exception(error)
        calls, self._calls = self._calls, {}
        for fut in calls.values():
            if not fut.done():
                fut.set_exception(ServerError(error.reason))

    # --- receiving -----------------------------------------------------------------------

    def _handle(self, kind: int, payload: memoryview) -> None:
        if kind == frames.STORED:
            if self._held is not None:
                self._held.append(payload)
            else:
                self._stored(payload)
        elif kind == frames.OUTCOMES:
            self._outcomes(payload)
        elif kind == frames.PASS:
            if self._deliver is not None:
                self._emit(event_from_own_raw(bytes(payload)))
        elif kind == frames.RESULT:
            request, ok, value = frames.read_result(payload)
            fut = self._calls.pop(request, None)
            if fut is not None and not fut.done():
                if ok:
                    fut.set_result(value)
                else:
                    fut.set_exception(value if isinstance(value, BaseException) else RuntimeError(repr(value)))
        elif kind == frames.HELLO:
            self._hello(frames.read_hello(payload))
        else:
            raise frames.FrameError(f"unknown frame type {kind}")

    def _hello(self, number: int) -> None:
        self._number = number
        if self._log is not None and self._ready_before:
            # Hold the new writer's stream until what the old one committed unannounced is read.
            self._held = []
            self._catch_up_task = asyncio.get_running_loop().create_task(self._catch_up(self._log))
        self._ready_before = True
        self._ready.set()

    async def _catch_up(self, commit_log: CommitLog) -> None:
        try:
            ids = list(reversed(self._seen_ids))
            position = await commit_log.position_of(ids) if ids else self._base_position
            if position is None:
                log.warning("after the writer restarted, the last events streamed are gone: no catch-up")
                raws: list[bytes] = []
            else:
                raws = await commit_log.committed_after(position, CATCH_UP_LIMIT)
            caught: set[str] = set()
            for raw in raws:
                event = event_from_own_raw(raw)
                caught.add(event.id)
                self._seen_ids.append(event.id)
                if self._deliver is not None:
                    self._emit(event)
            if len(raws) == CATCH_UP_LIMIT:
                log.warning("caught up only the first %d events committed before the writer restarted", len(raws))
            elif raws:
                log.info("caught up %d events the writer committed before it restarted", len(raws))
            held, self._held = self._held or [], None
            for payload in held:
                self._stored(payload, skip=caught)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("catching up after the writer restarted failed")
            held, self._held = self._held or [], None
            for payload in held:
                self._stored(payload)

    def _stored(self, payload: memoryview, skip: set[str] | None = None) -> None:
        """Deliver one commit's events; this worker's own are the ``Event`` objects it sent
        (found by request number while their outcome is pending), the others' are parsed."""
        entries = list(frames.read_stored(payload))
        if not entries:
            return
        if self._deliver is None:  # not serving yet: only the stream's position matters
            self._seen_ids.append(event_from_own_raw(entries[-1][2]).id)
            return
        pending = self._pending
        number = self._number
        event: Event | None = None
        for origin, request, raw in entries:
            entry = pending.get(request) if origin == number else None
            event = entry[1] if entry is not None else event_from_own_raw(raw)
            if skip is None or event.id not in skip:
                self._emit(event)
        if event is not None:
            self._seen_ids.append(event.id)

    def _emit(self, event: Event) -> None:
        assert self._deliver is not None
        try:
            self._deliver(event)
        except Exception:
            log.exception("local fan-out of a committed event failed")

    def _outcomes(self, payload: memoryview) -> None:
        self.counters, outcomes = frames.read_outcomes(payload)
        pending = self._pending
        for request, outcome in outcomes:
            entry = pending.pop(request, None)
            if entry is None or entry[0].done():
                continue
            if isinstance(outcome, WriteOutcome):
                entry[0].set_result(outcome)
            else:
                entry[0].set_exception(outcome)

    # --- sending -------------------------------------------------------------------------

    def _request_number(self) -> int:
        n = self._next_request = (self._next_request + 1) & 0xFFFFFFFF
        while n in self._pending or n in self._calls:
            n = self._next_request = (self._next_request + 1) & 0xFFFFFFFF
        return n

    def _send(self, data: bytes) -> None:
        self._out.append(data)
        if not self._flush_due:
            self._flush_due = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        """One write per loop turn for everything sent in it: under load one syscall carries
        many events instead of one each."""
        self._flush_due = False
        if self._out and self._transport is not None:
            data = b"".join(self._out)
            self._out.clear()
            self._transport.write(data)

    def submit_event(self, req: WriteRequest) -> asyncio.Future[WriteOutcome]:
        """Send one event (the link must be ready); its outcome's future."""
        if not self._ready.is_set():
            raise ServerError(WRITER_GONE)
        request = self._request_number()
        attachments = pickle.dumps(req.attachments, protocol=pickle.HIGHEST_PROTOCOL) if req.attachments else b""
        fut: asyncio.Future[WriteOutcome] = asyncio.get_running_loop().create_future()
        self._pending[request] = (fut, req.event)
        self._send(frames.event_frame(request, attachments, req.event.raw))
        return fut

    def pass_event(self, event: Event) -> None:
        """An accepted ephemeral event, for the other workers' subscribers. Dropped while
        the writer is away: it is not stored anywhere to be caught up later (NIP-01: best
        effort), and holding it would deliver it late."""
        if self._ready.is_set():
            self._send(frames.frame(frames.PASS, event.raw))

    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Run one of the writer process's calls; its result, or its exception raised here."""
        await self.wait_ready()
        request = self._request_number()
        data = frames.call_frame(request, method, args, kwargs)  # may not pickle: raised here
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._calls[request] = fut
        self._send(data)
        return await fut

    def set_deliver(self, deliver: Deliver | None) -> None:
        self._deliver = deliver

    @property
    def in_flight(self) -> int:
        return len(self._pending)


class RemoteWriter:
    """``relay.store.writer.EventWriter`` for a worker: the writer process commits."""

    def __init__(self, link: WriterLink) -> None:
        self._link = link
        self._closing = False
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def stats(self) -> WriterStats:
        c = self._link.counters
        return WriterStats(
            batches=c.batches,
            events=c.events,
            failed_batches=c.failed_batches,
            last_batch_size=c.last_batch_size,
            commit_seconds=c.commit_seconds,
            last_commit_seconds=c.last_commit_seconds,
            queued=c.queued,
        )

    def start(self) -> None:
        return None

    async def submit(self, req: WriteRequest) -> WriteOutcome:
        if self._closing:
            raise RuntimeError("writer is closed")
        if req.event.kind_class is KindClass.EPHEMERAL:
            raise ValueError("ephemeral events are never stored; fan them out directly")
        self._in_flight += 1
        self._idle.clear()
        try:
            await self._link.wait_ready()
            return await self._link.submit_event(req)
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()

    async def close(self) -> None:
        """Refuse new events; wait for the outcomes of those sent (the link fails them if
        the writer process goes away meanwhile)."""
        self._closing = True
        await self._idle.wait()


class CommitStream:
    """``relay.store.broadcast.Broadcast`` for a worker: the writer's commit stream in, this
    worker's ephemeral events out."""

    reaches_other_nodes = True  # the other workers' subscribers

    def __init__(self, link: WriterLink) -> None:
        self._link = link

    async def start(self, deliver: Deliver) -> None:
        self._link.set_deliver(deliver)

    def publish(self, events: list[Event]) -> None:
        # Stored events reach every worker (this one too) on the commit stream; only an
        # ephemeral one, which the writer never sees otherwise, is sent on.
        for event in events:
            if event.kind_class is KindClass.EPHEMERAL:
                self._link.pass_event(event)

    async def stop(self) -> None:
        self._link.set_deliver(None)
