"""The SQLite writer process of ``serve --workers N``: one writer for the workers' events.

SQLite lets one connection write a file at a time. N workers each committing their own
batches would queue on the file's lock (and give up with SQLITE_BUSY after ``busy_timeout``
under load), and every worker's group commit would shrink to 1/N of the batches. So the
supervisor (``relay.workers``) starts this process first; it owns the store's one write
connection and the ``GroupCommitWriter``, and the workers send it what they accepted over a
local stream socket each (``relay.store.writer_frames``). The batch is the same as in one
process, only bigger: every worker's events that wait while a commit runs form the next
one, so an fsync still serves a whole batch, and each event is answered only after the
commit that holds it (OK after commit).

After each commit the events it stored go to every worker, in commit order, in one
``STORED`` frame (the live fan-out: no PostgreSQL needed), then each worker gets its
outcomes. An ephemeral event a worker accepted (``PASS``) is sent to the others.

The rarer writes (NIP-62 vanish, NIP-86 state, retention, NIP-98 replay counts, a plug-in's
own rows and migrations) come as ``CALL`` frames and run here too, queued on the same
writer thread as the batches: one holder of the file's write lock at all times, so no
worker ever meets SQLITE_BUSY, and the exactly-once rules that rest on ``BEGIN IMMEDIATE``
(a settlement, an invite) hold as in one process. Which calls exist is the composition
root's choice (``calls``), not the link's.

A link is accepted only from a process of this process's own user (``SO_PEERCRED``):
the listening socket is an abstract one, which file permissions do not guard.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import socket
import struct
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import Any, cast

import relay.store.writer_frames as frames
from relay.nostr.errors import ServerError
from relay.nostr.event import Event, event_from_own_raw
from relay.store.base import Store, WriteOutcome, WriteRequest
from relay.store.writer import STORE_FAILED, GroupCommitWriter

log = logging.getLogger(__name__)

Call = Callable[..., Awaitable[Any]]

# A worker that stops reading (stopped, wedged) must not make the writer hold every later
# commit for it in memory: past this much unsent, its link is dropped; it reconnects and
# catches up from the database (``relay.store.writer_client``).
MAX_UNSENT_BYTES = 256 * 1024 * 1024
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def peer_uid(sock: socket.socket) -> int:
    """The user id of the process at the other end of a Unix socket (Linux SO_PEERCRED)."""
    _pid, uid, _gid = _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
    return int(uid)


def decode_attachments(data: bytes) -> tuple[object, ...]:
    """A request's attachments as its worker pickled them (``WriteRequest.attachments``)."""
    if not data:
        return ()
    value = pickle.loads(data)
    return tuple(value) if isinstance(value, tuple) else (value,)


class _Link(asyncio.Protocol):
    """One worker's connection."""

    def __init__(self, service: WriterService) -> None:
        self.service = service
        self.number = 0
        self.transport: asyncio.Transport | None = None
        self.reader = frames.FrameReader()
        self.fanout: list[bytes] = []
        self.outcomes: list[tuple[int, WriteOutcome | BaseException]] = []
        self.replies: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it
        self.transport = transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        try:
            uid = peer_uid(sock)
        except OSError as exc:
            log.warning("refused a writer link: cannot tell who is at the other end (%s)", exc)
            transport.abort()
            return
        if uid != os.getuid():
            log.warning("refused a writer link from user id %d (this relay runs as %d)", uid, os.getuid())
            transport.abort()
            return
        self.service.join(self)

    def data_received(self, data: bytes) -> None:
        try:
            for kind, payload in self.reader.feed(data):
                self.service.handle(self, kind, payload)
        except Exception:
            log.exception("dropping a worker's link after a bad frame")
            if self.transport is not None:
                self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.service.leave(self)
        self.transport = None

    def send(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.write(data)
        if transport.get_write_buffer_size() > MAX_UNSENT_BYTES:
            log.error("worker link %d stopped reading (%d bytes unsent); dropping it", self.number, MAX_UNSENT_BYTES)
            transport.abort()


class WriterService:
    """Serves the workers' links on a listening Unix socket (see the module docstring)."""

    def __init__(self, store: Store, *, batch_max: int, calls: Mapping[str, Call]) -> None:
        self.writer = GroupCommitWriter(store, batch_max=batch_max, on_committed=self._committed)
        self._calls = dict(calls)
        self._links: dict[int, _Link] = {}
        self._next_number = 1
        # The link and request number of each queued event, by the event object's identity
        # (alive while queued): a STORED entry names its origin so that worker reuses its
        # own ``Event`` instead of parsing the JSON again.
        self._origins: dict[int, tuple[int, int]] = {}
        self._flush_due = False
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._no_links = asyncio.Event()
        self._no_links.set()
        self._stopping = False

    @property
    def links(self) -> int:
        return len(self._links)

    async def start(self, sock: socket.socket) -> None:
        """Begin accepting links on ``sock`` (listening already: the supervisor's)."""
        self.writer.start()
        self._server = await asyncio.get_running_loop().create_unix_server(lambda: _Link(self), sock=sock)

    async def stop(self, grace: float) -> None:
        """Accept no new link; serve the connected workers until they have all gone (each
        drains its in-flight events as it stops) or ``grace`` has passed; then commit what
        is queued, answer it, and finish the calls under way."""
        self._stopping = True
        if self._server is not None:
            self._server.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._no_links.wait(), timeout=grace)
        if self._links:
            log.warning("stopping with %d worker links still open", len(self._links))
        await self.writer.close()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=grace)
        self._flush()
        for link in list(self._links.values()):
            if link.transport is not None:
                link.transport.close()

    # --- links -------------------------------------------------------------------------

    def join(self, link: _Link) -> None:
        link.number = self._next_number
        self._next_number += 1
        self._links[link.number] = link
        self._no_links.clear()
        link.send(frames.hello_frame(link.number))

    def leave(self, link: _Link) -> None:
        if self._links.pop(link.number, None) is not None and not self._links:
            self._no_links.set()

    def handle(self, link: _Link, kind: int, payload: memoryview) -> None:
        if kind == frames.EVENT:
            self._event(link, payload)
        elif kind == frames.PASS:
            relayed = frames.frame(frames.PASS, bytes(payload))
            for other in self._links.values():
                if other is not link:
                    other.fanout.append(relayed)
            self._flush_soon()
        elif kind == frames.CALL:
            request, body = frames.read_call(payload)
            task = asyncio.get_running_loop().create_task(self._call(link, request, body))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            raise frames.FrameError(f"unknown frame type {kind}")

    def _event(self, link: _Link, payload: memoryview) -> None:
        request, attachments, raw = frames.read_event(payload)
        try:
            event = event_from_own_raw(raw)
            fut = self.writer.enqueue(WriteRequest(event, decode_attachments(attachments)))
        except Exception as exc:
            if not self._stopping:  # else: a worker still sending as the writer stops
                log.error("could not queue an event from worker link %d", link.number, exc_info=exc)
            link.outcomes.append((request, ServerError(STORE_FAILED)))
            self._flush_soon()
            return
        self._origins[id(event)] = (link.number, request)
        fut.add_done_callback(partial(self._answer, link, request, event))

    def _answer(self, link: _Link, request: int, event: Event, fut: asyncio.Future[WriteOutcome]) -> None:
        self._origins.pop(id(event), None)
        if link.number not in self._links:
            return  # that worker is gone: nobody waits for this answer
        if fut.cancelled():
            link.outcomes.append((request, ServerError(STORE_FAILED)))
        else:
            exc = fut.exception()
            link.outcomes.append((request, exc if exc is not None else fut.result()))
        self._flush_soon()

    def _committed(self, events: list[Event]) -> None:
        """Called by the writer right after a commit, before the outcomes' callbacks run:
        the stored events are queued to every link ahead of any OK they lead to."""
        origins = self._origins
        entries = [(*origins.get(id(e), (0, 0)), e.raw) for e in events]
        body = frames.frame(frames.STORED, frames.stored_entries(entries))
        for link in self._links.values():
            link.fanout.append(body)
        self._flush_soon()

    async def _call(self, link: _Link, request: int, body: bytes) -> None:
        try:
            method, args, kwargs = frames.load_call(body)
            call = self._calls.get(method)
            if call is None:
                raise ValueError(f"the writer process offers no call {method!r}")
            result: Any = await call(*args, **kwargs)
        except Exception as exc:
            reply = frames.result_frame(request, False, exc)
        else:
            reply = frames.result_frame(request, True, result)
        if link.number in self._links:
            link.replies.append(reply)
            self._flush_soon()

    # --- sending -----------------------------------------------------------------------

    def _flush_soon(self) -> None:
        if not self._flush_due:
            self._flush_due = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        """Everything due, one write per link: first every link's fan-out (so an event is on
        its way to every worker before any OK for it leaves), then outcomes and results."""
        self._flush_due = False
        links = list(self._links.values())
        for link in links:
            if link.fanout:
                data = b"".join(link.fanout)
                link.fanout.clear()
                link.send(data)
        counters: frames.WriterCounters | None = None
        for link in links:
            if link.outcomes:
                if counters is None:
                    counters = self.counters()
                link.replies.insert(0, frames.outcomes_frame(counters, link.outcomes))
                link.outcomes = []
            if link.replies:
                data = b"".join(link.replies)
                link.replies.clear()
                link.send(data)

    def counters(self) -> frames.WriterCounters:
        s = self.writer.stats
        return frames.WriterCounters(
            s.batches, s.events, s.failed_batches, s.last_batch_size, s.commit_seconds, s.last_commit_seconds, s.queued
        )
