"""One client's WebSocket session: reads frames, enforces limits, dispatches, and owns a
bounded outgoing queue.

Outgoing frames go through a per-connection deque drained by a sender task that exists
only while there is something to send (an idle connection holds no task). When a client
stops reading and the queue passes ``outgoing_queue_bytes``, the connection is dropped
with a log line: a slow reader can never make the relay's memory grow without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from relay import messages
from relay.errors import AuthRequired, Invalid, RateLimited, Rejection, ServerError
from relay.event import Event, KindClass, parse_event
from relay.extension import Answered, WriteContext
from relay.filters import Filter
from relay.limits import TokenBucket
from relay.messages import (
    AuthMessage,
    BadMessage,
    CloseMessage,
    CountMessage,
    EventMessage,
    NegCloseMessage,
    NegMsgMessage,
    NegOpenMessage,
    ReqMessage,
)
from relay.negentropy import ItemSet, Negentropy, NegentropyError
from relay.policy import (
    check_auth_event,
    check_private_read,
    check_write,
    may_see,
    read_scope,
)
from relay.store.base import PAGE_BYTES, WriteOutcome, WriteRequest
from relay.throttled_log import ThrottledLog

if TYPE_CHECKING:
    from relay.server import Relay

log = logging.getLogger(__name__)
# Client input never reaches these (the parser refuses what a store cannot hold, and the
# writer answers a refused event with ``error:`` itself); a store that is down does, for
# every client at once, so its tracebacks are throttled (relay.throttled_log).
_store_fault_log = ThrottledLog(log, per_second=0.2, burst=3)
# A client decides when it is dropped for not reading (and can reconnect to be dropped
# again): one WARNING line each, throttled.
_slow_client_log = ThrottledLog(log)

_ID_IN_FRAME = re.compile(rb'"id"\s*:\s*"([0-9a-f]{64})"')
MAX_IN_FLIGHT = 1000  # EVENTs of one connection awaiting verification or commit
SHUTTING_DOWN = "relay is shutting down, try again later"

_OUTCOME_REPLY = {
    WriteOutcome.STORED: (True, ""),
    WriteOutcome.DUPLICATE: (True, "duplicate: already have this event"),
    WriteOutcome.SUPERSEDED: (False, "duplicate: a newer version of this replaceable event is stored"),
    WriteOutcome.DELETED: (False, "blocked: this event was deleted by its author"),
}


# NIP-77: item sets at least this large are built and reconciled on a worker thread, so a
# reconciliation of 10^5 events (~0.5 s of Python) does not stall every other client.
_NEG_THREAD_ITEMS = 20_000


@dataclass(slots=True)
class _SyncSession:
    """One open NIP-77 reconciliation: the relay's side and how many items it holds."""

    neg: Negentropy
    items: int


class Connection:
    """State of one client: its subscriptions, NIP-42 identity, rate limits, output."""

    def __init__(self, relay: Relay, ws: ServerConnection, ip: str) -> None:
        self.relay = relay
        self.ws = ws
        self.ip = ip
        self.subs: dict[str, tuple[Filter, ...]] = {}
        # subscriptions whose stored query is running: live events wait here (NIP-01 order)
        self._pending_live: dict[str, list[Event]] = {}
        self.authed: frozenset[str] = frozenset()
        self.challenge = secrets.token_hex(16)
        limits = relay.settings.limits
        self._bucket = TokenBucket(limits.events_per_second, limits.events_burst)
        self._out: deque[bytes] = deque()
        self._out_bytes = 0
        self._out_limit = limits.outgoing_queue_bytes
        # stored answers are read in pages of at most a quarter of the bound
        self._page_bytes = min(PAGE_BYTES, limits.outgoing_queue_bytes // 4)
        self._pending_bytes = 0  # raw bytes of live events waiting in _pending_live
        self._sender: asyncio.Task[None] | None = None
        self._in_flight = 0
        self._flush_scheduled = False
        self.closed = False
        self._negs: dict[str, _SyncSession] = {}  # NIP-77, by NEG-OPEN id
        sync = relay.settings.negentropy
        self._neg_opens = TokenBucket(sync.opens_per_second, 2 * sync.max_sessions)

    # --- output ------------------------------------------------------------------

    def send(self, frame: bytes) -> None:
        if self.closed:
            return
        if self._sender is None and self._write_now(frame):
            return
        self._out.append(frame)
        self._out_bytes += len(frame)
        if self._out_bytes > self._out_limit:
            self._drop_slow_reader()
            return
        if self._sender is None:
            self._sender = asyncio.create_task(self._drain())

    def _write_now(self, frame: bytes) -> bool:
        """Write a text frame straight to the socket when nothing is queued and the
        transport is not pushing back, the common case for fan-out to 1,000 clients.

        ``await ws.send()`` costs a task and a context manager per frame (measured: ~30 µs
        per delivery, the bulk of a 1,000-subscriber fan-out); this is what it does without
        them. When the transport is paused (the client reads slower than we write) or the
        connection is not open, the frame goes through the queue and ``ws.send()``, which
        waits for the drain and handles closing.
        """
        ws = self.ws
        if ws.paused or ws.send_in_progress is not None or ws.protocol.state is not State.OPEN:
            return False
        ws.protocol.send_text(frame)
        if not self._flush_scheduled:
            # Frames produced in one turn of the loop (the OKs of one group commit, say)
            # leave in one socket write instead of one syscall each.
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)
        return True

    def _flush(self) -> None:
        self._flush_scheduled = False
        ws = self.ws
        if ws.protocol.state is not State.OPEN:
            ws.send_data()  # closing: let websockets write what is left, EOF included
            return
        chunks = ws.protocol.data_to_send()
        if chunks:
            ws.transport.write(b"".join(chunks))

    async def _drain(self) -> None:
        try:
            while self._out:
                frame = self._out.popleft()
                self._out_bytes -= len(frame)
                await self.ws.send(frame, text=True)
        except ConnectionClosed:
            self.closed = True
            self._out.clear()
        finally:
            self._sender = None

    def _drop_slow_reader(self) -> None:
        _slow_client_log.warning("dropping slow client %s: %d bytes waiting to be sent", self.ip, self._out_bytes)
        self.relay.metrics.slow_clients_dropped.inc()
        self.closed = True
        self._out.clear()
        self._out_bytes = 0
        # A client that does not read cannot complete a closing handshake either: a close
        # frame would wait behind the very bytes it is not reading, and websockets would keep
        # the socket (and its buffers) for close_timeout. Abort the TCP connection at once.
        self.ws.transport.abort()

    # --- fan-out (Subscriber protocol) ------------------------------------------------

    def can_see(self, event: Event) -> bool:
        return may_see(event, self.authed)

    def send_live(self, sub_id: str, event: Event) -> None:
        pending = self._pending_live.get(sub_id)
        if pending is not None:
            # Live events held back until EOSE count against the same bound as the queue.
            pending.append(event)
            self._pending_bytes += len(event.raw)
            if self._out_bytes + self._pending_bytes > self._out_limit:
                self._drop_slow_reader()
        else:
            self.send(messages.event(sub_id, event.raw))

    # --- input -------------------------------------------------------------------

    async def run(self) -> None:
        if self.relay.settings.auth.enabled:
            self.send(messages.auth_challenge(self.challenge))
        max_len = self.relay.settings.limits.max_message_length
        try:
            while True:
                # Text frames as undecoded UTF-8: orjson parses bytes (and rejects invalid
                # UTF-8) itself, and the length limit counts bytes, as NIP-11 defines it.
                frame = await self.ws.recv(decode=False)
                if len(frame) > max_len:
                    self._too_long(frame, max_len)
                    continue
                await self.handle(frame)
        except ConnectionClosed:
            pass
        finally:
            self.closed = True
            self.relay.index.remove_all(self, self.subs)
            self.relay.metrics.subscriptions.set(len(self.relay.index))
            self._end_all_negs()

    def _too_long(self, frame: bytes, max_len: int) -> None:
        text = f"invalid: message longer than {max_len} bytes"
        match = _ID_IN_FRAME.search(frame) if frame.lstrip().startswith(b'["EVENT"') else None
        self.send(messages.ok(match.group(1).decode(), False, text) if match else messages.notice(text))

    async def handle(self, frame: str | bytes) -> None:
        try:
            msg = messages.parse_client_message(frame, self.relay.filter_limits)
        except BadMessage as exc:
            self.send(exc.reply)
            return
        if isinstance(msg, EventMessage):
            self._on_event(msg.event)
        elif isinstance(msg, ReqMessage):
            await self._on_req(msg.sub_id, msg.filters)
        elif isinstance(msg, CloseMessage):
            self._close_sub(msg.sub_id)
        elif isinstance(msg, CountMessage):
            await self._on_count(msg.sub_id, msg.filters)
        elif isinstance(msg, AuthMessage):
            await self._on_auth(msg.event)
        elif isinstance(msg, NegOpenMessage):
            await self._on_neg_open(msg)
        elif isinstance(msg, NegMsgMessage):
            await self._on_neg_msg(msg.sub_id, msg.message)
        elif isinstance(msg, NegCloseMessage):
            self._end_neg(msg.sub_id)

    # --- EVENT -------------------------------------------------------------------

    def _reject(self, event_id: str | None, rejection: Rejection) -> None:
        self.relay.metrics.events_rejected.labels(rejection.prefix).inc()
        if event_id:
            self.send(messages.ok(event_id, False, str(rejection)))
        else:
            self.send(messages.notice(str(rejection)))

    def _on_event(self, obj: object) -> None:
        """Cheap checks inline; verification, the gate and the commit in a task so a
        client can pipeline many EVENTs and they commit in the same batches."""
        event_id = messages.event_id_hint(obj)
        if self.relay.closing:
            self._reject(event_id, ServerError(SHUTTING_DOWN))
            return
        now_mono = time.monotonic()
        if self._in_flight >= MAX_IN_FLIGHT or not self._bucket.take(now_mono):
            self._reject(event_id, RateLimited("slow down: too many events from this connection"))
            return
        if not self.relay.ips.take_event(self.ip, now_mono):
            self._reject(event_id, RateLimited("slow down: too many events from this address"))
            return
        try:
            event = parse_event(obj)
        except Invalid as exc:
            self._reject(event_id, exc)
            return
        ctx = WriteContext(int(time.time()), self.authed, self.ip)
        rejection = check_write(self.relay.write_policies, event, ctx)
        if rejection is not None:
            self._reject(event.id, rejection)
            return
        self._in_flight += 1
        self.relay.spawn(self._publish(event, ctx))

    async def _publish(self, event: Event, ctx: WriteContext) -> None:
        try:
            if not await self.relay.verifier.verify(event):
                self._reject(event.id, Invalid("signature is invalid"))
                return
            # Per author, whatever the connection or address, and only once the signature
            # proves the author sent it: a forger must not drain someone else's bucket.
            if not self.relay.authors.take(event.pubkey, time.monotonic()):
                self._reject(event.id, RateLimited("slow down: too many events from this author"))
                return
            charge = 0
            if self.relay.extension is not None:
                charge = await self.relay.extension.admit(event, ctx)
            if event.kind_class is KindClass.EPHEMERAL:
                # Never stored, so write_batch cannot charge them: the price is debited in
                # its own ledger transaction before the event is fanned out (issue 8).
                if charge > 0 and not await self.relay.store.charge_credit(event.pubkey, charge, ctx.now):
                    assert self.relay.extension is not None
                    self._reject(event.id, self.relay.extension.insufficient_credit(event))
                    return
                self.relay.broadcast(event)
                self._accepted(event, (True, ""))
                return
            outcome = await self.relay.writer.submit(WriteRequest(event, charge))
            if outcome is WriteOutcome.INSUFFICIENT_CREDIT:
                assert self.relay.extension is not None
                self._reject(event.id, self.relay.extension.insufficient_credit(event))
                return
            self._accepted(event, _OUTCOME_REPLY[outcome])
        except Answered as answer:
            self._accepted(event, (answer.accepted, answer.message))
        except Rejection as exc:
            self._reject(event.id, exc)
        except Exception as exc:
            _store_fault_log.error("storing event %s failed", event.id, exc_info=exc)
            self._reject(event.id, ServerError("could not store the event, try again"))
        finally:
            self._in_flight -= 1

    def _accepted(self, event: Event, reply: tuple[bool, str]) -> None:
        accepted, text = reply
        if accepted:
            self.relay.metrics.events_accepted.labels(event.kind_class.value).inc()
        else:
            self.relay.metrics.events_rejected.labels(text.partition(":")[0]).inc()
        self.send(messages.ok(event.id, accepted, text))

    # --- REQ / CLOSE / COUNT -----------------------------------------------------------

    def _read_rejection(self, filters: tuple[Filter, ...]) -> Rejection | None:
        if self.relay.settings.auth.required_to_read and not self.authed:
            return AuthRequired("this relay serves only authenticated clients")
        for f in filters:
            rejection = check_private_read(f, self.authed)
            if rejection is not None:
                return rejection
        return None

    async def _on_req(self, sub_id: str, filters: tuple[Filter, ...]) -> None:
        if self.relay.closing:
            self.send(messages.closed(sub_id, str(ServerError(SHUTTING_DOWN))))
            return
        if sub_id not in self.subs and len(self.subs) >= self.relay.settings.limits.max_subscriptions:
            limit = self.relay.settings.limits.max_subscriptions
            self.send(messages.closed(sub_id, f"blocked: at most {limit} open subscriptions per connection"))
            return
        rejection = self._read_rejection(filters)
        made: list[bytes] = []
        if rejection is None and self.relay.extension is not None:
            try:
                made = await self.relay.extension.req_events(filters, self.authed)
            except Rejection as exc:
                rejection = exc
        if rejection is not None:
            self._close_sub(sub_id)
            self.send(messages.closed(sub_id, str(rejection)))
            return
        for raw in made:
            self.send(messages.event(sub_id, raw))
        started = time.perf_counter()
        self.relay.metrics.reqs.inc()
        # Live first, then the stored query, so nothing published meanwhile falls in the gap;
        # live events wait in _pending_live until EOSE and skip ids already sent.
        self.subs[sub_id] = filters
        pending: list[Event] = []
        self._pending_live[sub_id] = pending
        self.relay.index.add(self, sub_id, filters)
        self.relay.metrics.subscriptions.set(len(self.relay.index))
        wanted = tuple(f for f in filters if f.limit != 0 and not f.is_empty())
        # The store applies the read scope before each filter's limit (one SQL rule, the
        # one COUNT uses): hidden DMs neither fill the limit nor cost a parse here.
        scope = read_scope(self.authed)
        sent: set[bytes] = set()
        try:
            if wanted:
                pages = self.relay.store.query_pages(wanted, int(time.time()), scope, page_bytes=self._page_bytes)
                async with contextlib.aclosing(pages):
                    async for page in pages:
                        for raw in page:
                            sent.add(raw[7:71])
                            self.send(messages.event(sub_id, raw))
                        # Back-pressure: the next page is read only once the client has
                        # taken this one, so a client that does not read holds about one
                        # page, never its whole answer (issue 8, item 2).
                        await self._room()
                        if self.closed or self._pending_live.get(sub_id) is not pending:
                            return  # dropped, gone, or the subscription closed meanwhile
        except Exception as exc:
            _store_fault_log.error("query failed", exc_info=exc)
            if self._pending_live.get(sub_id) is pending:
                self._close_sub(sub_id)
                self.send(messages.closed(sub_id, "error: could not run the query"))
            return
        if self._pending_live.get(sub_id) is not pending:
            return  # closed or replaced while the query ran
        self.send(messages.eose(sub_id))
        del self._pending_live[sub_id]
        self._pending_bytes = 0
        for event in pending:
            if event.id.encode() not in sent:
                self.send(messages.event(sub_id, event.raw))
        self.relay.metrics.query_seconds.observe(time.perf_counter() - started)

    async def _room(self) -> None:
        """Wait until what is queued for this client has left: the sender task has sent
        the queue and the transport accepts writes again. No extra yield when nothing is
        waiting: reading the next page from the store is itself an await (a thread hop or
        a round trip), so other clients run between two pages anyway, and a small answer
        (one page) reaches its EOSE without an extra turn of the loop."""
        ws = self.ws
        while not self.closed and ws.protocol.state is State.OPEN:
            sender = self._sender
            if sender is not None:
                await asyncio.wait([sender])
            elif ws.paused:
                try:
                    await ws.drain()
                except Exception:
                    return  # the connection was lost; run() sees it on its next read
            else:
                break

    def _close_sub(self, sub_id: str) -> None:
        self.subs.pop(sub_id, None)
        if self._pending_live.pop(sub_id, None) is not None:
            self._pending_bytes = 0  # one stored query at a time: those were its events
        if self.relay.index.remove(self, sub_id):
            self.relay.metrics.subscriptions.set(len(self.relay.index))

    async def _on_count(self, sub_id: str, filters: tuple[Filter, ...]) -> None:
        if self.relay.closing:
            self.send(messages.closed(sub_id, str(ServerError(SHUTTING_DOWN))))
            return
        rejection = self._read_rejection(filters)
        if rejection is not None:
            self.send(messages.closed(sub_id, str(rejection)))
            return
        self.relay.metrics.counts.inc()
        try:
            wanted = tuple(f for f in filters if not f.is_empty())  # NIP-45: limit does not apply
            # The store counts with the connection's read scope: what REQ would hide is
            # not counted either (NIP-45 COUNT must not reveal private events).
            scope = read_scope(self.authed)
            n = await self.relay.store.count(wanted, int(time.time()), scope) if wanted else 0
        except Exception as exc:
            _store_fault_log.error("count failed", exc_info=exc)
            self.send(messages.closed(sub_id, "error: could not run the count"))
            return
        self.send(messages.count(sub_id, n))

    # --- AUTH (NIP-42) ---------------------------------------------------------------

    async def _on_auth(self, obj: object) -> None:
        event_id = messages.event_id_hint(obj)
        try:
            event = parse_event(obj)
        except Invalid as exc:
            self._reject(event_id, exc)
            return
        rejection = check_auth_event(event, self.challenge, self.relay.settings.relay.public_url, int(time.time()))
        if rejection is None and not await self.relay.verifier.verify(event):
            rejection = Invalid("signature is invalid")
        if rejection is not None:
            self.send(messages.ok(event.id, False, str(rejection)))
            return
        self.authed = self.authed | {event.pubkey}
        self.send(messages.ok(event.id, True, ""))

    async def close(self, code: int = 1001, reason: str = "relay shutting down", grace: float = 5.0) -> None:
        """Send what is still queued (the last OKs of a shutdown), then the close frame;
        a client that does not read within ``grace`` seconds loses the rest."""
        sender = self._sender
        if sender is not None:
            await asyncio.wait([sender], timeout=grace)
        with contextlib.suppress(Exception):
            await self.ws.close(code, reason)

    # --- NEG-OPEN / NEG-MSG / NEG-CLOSE (NIP-77) ------------------------------------------

    async def _on_neg_open(self, msg: NegOpenMessage) -> None:
        """Load the filter's (created_at, id) set from the store's indexes, with REQ's
        read rules, and answer the client's first message. Refused with NEG-ERR when the
        relay is closing, the connection has too many reconciliations or opens them too
        fast, the set is larger than ``max_items`` or the relay-wide item budget is spent."""
        sub_id = msg.sub_id
        cfg = self.relay.settings.negentropy
        self._end_neg(sub_id)  # NIP-77: a NEG-OPEN on an open id replaces it
        reason: str | None = None
        if not cfg.enabled:
            reason = "blocked: negentropy sync is disabled on this relay"
        elif self.relay.closing:
            reason = str(ServerError(SHUTTING_DOWN))
        elif len(self._negs) >= cfg.max_sessions:
            reason = f"blocked: at most {cfg.max_sessions} open reconciliations per connection"
        elif not self._neg_opens.take(time.monotonic()):
            reason = "rate-limited: too many NEG-OPEN, slow down"
        else:
            rejection = self._read_rejection((msg.filter,))
            reason = str(rejection) if rejection is not None else None
        if reason is not None:
            self.send(messages.neg_err(sub_id, reason))
            return
        try:
            scope = read_scope(self.authed)
            rows = await self.relay.store.sync_items(msg.filter, int(time.time()), scope, cfg.max_items)
        except Exception:
            log.exception("negentropy item query failed")
            self.send(messages.neg_err(sub_id, "error: could not read the events to reconcile"))
            return
        if len(rows) > cfg.max_items:
            self.send(messages.neg_err(sub_id, f"blocked: this query matches more than {cfg.max_items} events"))
            return
        n = len(rows)
        if not self.relay.sync_budget.take(n):
            self.send(messages.neg_err(sub_id, "blocked: the relay is busy with other reconciliations, try later"))
            return
        try:
            items = await asyncio.to_thread(ItemSet, rows) if n >= _NEG_THREAD_ITEMS else ItemSet(rows)
        except BaseException:
            self.relay.sync_budget.give_back(n)
            raise
        del rows
        if self.closed:  # the client left while the set was built
            self.relay.sync_budget.give_back(n)
            return
        self._negs[sub_id] = _SyncSession(Negentropy(items, cfg.frame_size_limit), n)
        await self._on_neg_msg(sub_id, msg.message)

    async def _on_neg_msg(self, sub_id: str, message: bytes) -> None:
        session = self._negs.get(sub_id)
        if session is None:
            self.send(messages.neg_err(sub_id, "closed: no open reconciliation with this id"))
            return
        try:
            if session.items >= _NEG_THREAD_ITEMS:
                reply = await asyncio.to_thread(session.neg.reconcile, message)
            else:
                reply = session.neg.reconcile(message)
        except NegentropyError as exc:
            self._end_neg(sub_id)
            self.send(messages.neg_err(sub_id, str(exc)))
            return
        if self._negs.get(sub_id) is session:
            self.send(messages.neg_msg(sub_id, reply))

    def _end_neg(self, sub_id: str) -> None:
        session = self._negs.pop(sub_id, None)
        if session is not None:
            self.relay.sync_budget.give_back(session.items)

    def _end_all_negs(self) -> None:
        for sub_id in list(self._negs):
            self._end_neg(sub_id)
