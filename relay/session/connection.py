"""One client's WebSocket session: reads messages, enforces limits, dispatches, writes replies.

The network shell (``relay.net.transport``) hands each complete message to ``receive``; EVENT
and CLOSE are handled at once, while REQ, COUNT and AUTH run in a task and the messages
that arrive meanwhile wait their turn (NIP-01 order), reading paused when too many wait.
Replies go to the shell's ``WebSocketLink``, whose per-connection byte bound drops a
client that stops reading (``relay.net.outbox``). What a connection may use of the relay is
one explicit ``ConnectionDeps`` object, built by the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from relay.net.limits import IpTable, TokenBucket, address_group
from relay.net.throttled_log import ThrottledLog
from relay.net.transport import INBOX_PAUSE, WebSocketLink
from relay.nostr import hyperloglog, messages
from relay.nostr.errors import Invalid, RateLimited, Rejection, ServerError
from relay.nostr.event import Event, parse_event
from relay.nostr.filters import Filter, answer_is_whole
from relay.nostr.messages import (
    AuthMessage,
    BadMessage,
    ClientMessage,
    CloseMessage,
    CountMessage,
    EventMessage,
    FilterLimits,
    NegCloseMessage,
    NegMsgMessage,
    NegOpenMessage,
    ReqMessage,
)
from relay.nostr.negentropy import ItemSet, Negentropy, NegentropyError
from relay.nostr.policy import (
    ReadScope,
    WriteContext,
    check_auth_event,
    may_see,
)
from relay.ops.metrics import RelayMetrics
from relay.plugins.hooks import Answered
from relay.session.read_path import ReadPath
from relay.session.subscriptions import SubscriptionIndex
from relay.session.verifier import SignatureVerifier
from relay.session.write_path import Admission, WritePath
from relay.store.base import PAGE_BYTES

log = logging.getLogger(__name__)
# Client input never reaches these (the parser refuses what a store cannot hold, and the
# writer answers a refused event with ``error:`` itself); a store that is down does, for
# every client at once, so its tracebacks are throttled (relay.net.throttled_log).
_store_fault_log = ThrottledLog(log, per_second=0.2, burst=3)

_ID_IN_FRAME = re.compile(rb'"id"\s*:\s*"([0-9a-f]{64})"')
MAX_IN_FLIGHT = 1000  # EVENTs of one connection awaiting verification or commit
# NOTIFY: pubkeys of one connection the plug-ins are asked about in a day (a client relaying
# many authors' events is asked about its first few only).
NOTICE_PUBKEYS = 16
DAY = 86400
SHUTTING_DOWN = "relay is shutting down, try again later"



# NIP-77: item sets at least this large are reconciled on a worker thread, so a
# reconciliation of 10^5 events does not stall every other client.
_NEG_THREAD_ITEMS = 20_000
# ... and built on one from this many rows: packing costs ~0.85 us a row (2 ms here), and a
# flood of NEG-OPENs of 19,999 events each (17 ms each on the event loop) must not stall it.
_NEG_BUILD_THREAD_ROWS = 2_000


@dataclass(slots=True)
class _SyncSession:
    """One open NIP-77 reconciliation: the relay's side and how many items it holds."""

    neg: Negentropy
    items: int


@dataclass(frozen=True, slots=True)
class SessionRules:
    """The settings a connection reads, as plain values (the relay builds them once)."""

    ipv6_prefix: int  # fair shares are kept per address group: IPv4 address, IPv6 prefix
    events_per_second: float
    events_burst: int
    outgoing_queue_bytes: int
    max_message_length: int
    max_subscriptions: int
    auth_enabled: bool  # NIP-42: send a challenge on connect
    public_url: str  # NIP-42 AUTH names this relay
    neg_enabled: bool  # NIP-77
    neg_max_sessions: int
    neg_max_items: int
    neg_frame_size_limit: int
    neg_opens_per_second: float


@dataclass(slots=True)
class ConnectionDeps:
    """What every connection shares, handed to it by the relay (no import of the server, no
    reaching into it): its two paths (``write``: an EVENT's stages; ``read``: scope, pages,
    counts), the rules it reads, and the live side (index, metrics, address limits)."""

    rules: SessionRules
    write: WritePath
    read: ReadPath
    verifier: SignatureVerifier  # NIP-42 AUTH events
    metrics: RelayMetrics
    index: SubscriptionIndex
    ips: IpTable
    filter_limits: FilterLimits
    spawn: Callable[[Coroutine[Any, Any, Any]], asyncio.Task[Any]]
    # NOTIFY: the plug-ins' message for the person behind a pubkey, None when none offers one
    session_notice: Callable[[str, int], Awaitable[str | None]] | None = None
    closing: bool = False  # set by the server's stop(): no new EVENT/REQ/COUNT


_NOBODY: frozenset[str] = frozenset()  # not authenticated: one empty set for every connection


class Connection:
    """State of one client: its subscriptions, NIP-42 identity, rate limits, output.

    Slotted, and what a connection may never use (its inbox of waiting messages, the
    subscriptions waiting for EOSE, NIP-77 sessions, the rate buckets, the AUTH challenge)
    is made on first use and dropped when empty: most connections sit idle, and an idle
    one's size is a measured target (``bench idle_alloc``; an empty deque alone is ~0.7 KiB).
    A token bucket starts full at its first ``take``, so creating it then changes nothing.
    """

    __slots__ = (
        "_bucket", "_challenge", "_gone", "_in_flight", "_inbox", "_neg_opens", "_negs", "_notice_asked",
        "_notified_day", "_pending_bytes", "_pending_live", "_reader", "authed", "closed", "deps", "group", "ip",
        "link", "subs",
    )

    def __init__(self, deps: ConnectionDeps, link: WebSocketLink, ip: str) -> None:
        self.deps = deps
        self.link = link
        self.ip = ip
        # What its fair shares are kept under (IPv4 address, IPv6 /64): heavy reads, NIP-77 items.
        self.group = address_group(ip, deps.rules.ipv6_prefix)
        self.subs: dict[str, tuple[Filter, ...]] = {}
        # subscriptions whose stored query is running: live events wait here (NIP-01 order)
        self._pending_live: dict[str, list[Event]] | None = None
        self.authed = _NOBODY
        self._challenge: str | None = None
        self._bucket: TokenBucket | None = None  # EVENTs of this connection
        self._pending_bytes = 0  # raw bytes of live events waiting in _pending_live
        self._in_flight = 0
        # messages waiting while a REQ/COUNT/AUTH runs, and the task running them
        self._inbox: deque[bytes] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._gone: asyncio.Future[None] | None = None
        self.closed = False
        self._negs: dict[str, _SyncSession] | None = None  # NIP-77, by NEG-OPEN id
        self._neg_opens: TokenBucket | None = None
        self._notified_day = -1  # the day (unix time // DAY) a NOTIFY was sent on this connection
        # pubkey -> the day the plug-ins were asked about it (made on the first ask)
        self._notice_asked: dict[str, int] | None = None

    @property
    def challenge(self) -> str:
        """NIP-42: this connection's AUTH challenge, made when first sent or checked."""
        if self._challenge is None:
            self._challenge = secrets.token_hex(16)
        return self._challenge

    @property
    def _page_bytes(self) -> int:
        """Stored answers are read in pages of at most a quarter of the outgoing bound."""
        return min(PAGE_BYTES, self.deps.rules.outgoing_queue_bytes // 4)

    def _held(self, sub_id: str) -> list[Event] | None:
        """The live events held for ``sub_id`` while its stored query runs, if it runs."""
        pending = self._pending_live
        return pending.get(sub_id) if pending else None

    def _release_held(self, sub_id: str) -> list[Event] | None:
        pending = self._pending_live
        held = pending.pop(sub_id, None) if pending else None
        if held is not None and not pending:
            self._pending_live = None
        return held

    # --- output ------------------------------------------------------------------

    def send(self, frame: bytes) -> None:
        if not self.closed:
            self.link.send_text(frame)

    # --- fan-out (Subscriber protocol) ------------------------------------------------

    def can_see(self, event: Event) -> bool:
        return may_see(event, self.authed) and not self.deps.read.hides(event)

    def send_live(self, sub_id: str, event: Event) -> None:
        held = self._pending_live  # inline _held: once per delivery, the fan-out's hot path
        pending = held.get(sub_id) if held else None
        if pending is not None:
            # Live events held back until EOSE count against the same bound as the queue.
            pending.append(event)
            self._pending_bytes += len(event.raw)
            if self.link.queued_bytes + self._pending_bytes > self.deps.rules.outgoing_queue_bytes:
                self.closed = True
                self.link.drop_slow_reader()
        else:
            self.send(messages.event(sub_id, event.raw))

    # --- input -------------------------------------------------------------------

    def start(self) -> None:
        if self.deps.rules.auth_enabled:
            self.send(messages.auth_challenge(self.challenge))

    def receive(self, frame: bytes) -> None:
        """One complete message from the shell. Text frames arrive as undecoded UTF-8:
        orjson parses bytes (and rejects invalid UTF-8) itself, and the length limit counts
        bytes, as NIP-11 defines it."""
        if self._reader is not None:
            inbox = self._inbox
            if inbox is None:
                inbox = self._inbox = deque()
            inbox.append(frame)
            if len(inbox) >= INBOX_PAUSE:
                self.link.pause_reading()
            return
        work = self._dispatch(frame)
        if work is not None:
            self._reader = asyncio.get_running_loop().create_task(self._read(work))

    def connection_lost(self) -> None:
        self.closed = True
        self._inbox = None
        if self._reader is not None:
            self._reader.cancel()
        self.deps.index.remove_all(self, self.subs)
        self.deps.metrics.subscriptions.set(len(self.deps.index))
        self._end_all_negs()
        if self._gone is not None and not self._gone.done():
            self._gone.set_result(None)

    async def _read(self, work: Coroutine[Any, Any, None]) -> None:
        """Run a REQ/COUNT/AUTH, then the messages that arrived meanwhile, in order."""
        try:
            await work
            while not self.closed:
                inbox = self._inbox
                if not inbox:
                    break
                if len(inbox) == INBOX_PAUSE - 1:
                    self.link.resume_reading()
                more = self._dispatch(inbox.popleft())
                if more is not None:
                    await more
        except Exception:
            log.exception("handling a message from %s failed", self.ip)
        finally:
            self._reader = None
            if not self._inbox:
                self._inbox = None  # drained: an idle connection holds no deque
            if not self.closed:
                self.link.resume_reading()

    def _dispatch(self, frame: bytes) -> Coroutine[Any, Any, None] | None:
        """Handle a message now (EVENT, CLOSE, bad input) or return the coroutine that
        handles it (REQ, COUNT, AUTH wait for the store or the verifier)."""
        max_len = self.deps.rules.max_message_length
        if len(frame) > max_len:
            self._too_long(frame, max_len)
            return None
        try:
            msg = messages.parse_client_message(frame, self.deps.filter_limits)
        except BadMessage as exc:
            self.send(exc.reply)
            return None
        return self._route(msg)

    def _route(self, msg: ClientMessage) -> Coroutine[Any, Any, None] | None:
        if isinstance(msg, EventMessage):
            self._on_event(msg.event)
        elif isinstance(msg, ReqMessage):
            return self._on_req(msg.sub_id, msg.filters)
        elif isinstance(msg, CloseMessage):
            self._close_sub(msg.sub_id)
        elif isinstance(msg, CountMessage):
            return self._on_count(msg.sub_id, msg.filters)
        elif isinstance(msg, AuthMessage):
            return self._on_auth(msg.event)
        elif isinstance(msg, NegOpenMessage):
            return self._on_neg_open(msg)
        elif isinstance(msg, NegMsgMessage):
            return self._on_neg_msg(msg.sub_id, msg.message)
        elif isinstance(msg, NegCloseMessage):
            self._end_neg(msg.sub_id)
        return None

    def _too_long(self, frame: bytes, max_len: int) -> None:
        text = f"invalid: message longer than {max_len} bytes"
        match = _ID_IN_FRAME.search(frame) if frame.lstrip().startswith(b'["EVENT"') else None
        self.send(messages.ok(match.group(1).decode(), False, text) if match else messages.notice(text))

    async def handle(self, frame: bytes) -> None:
        """Handle one message to the end (tests and tools; the shell uses ``receive``)."""
        work = self._dispatch(frame)
        if work is not None:
            await work

    # --- EVENT -------------------------------------------------------------------

    def _reject(self, event_id: str | None, rejection: Rejection) -> None:
        self.deps.metrics.events_rejected.labels(rejection.prefix).inc()
        if event_id:
            self.send(messages.ok(event_id, False, str(rejection)))
        else:
            self.send(messages.notice(str(rejection)))

    def _on_event(self, obj: object) -> None:
        """Cheap checks inline; verification, the gate and the commit in a task so a
        client can pipeline many EVENTs and they commit in the same batches."""
        event_id = messages.event_id_hint(obj)
        if self.deps.closing:
            self._reject(event_id, ServerError(SHUTTING_DOWN))
            return
        now_mono = time.monotonic()
        bucket = self._bucket
        if bucket is None:
            rules = self.deps.rules
            bucket = self._bucket = TokenBucket(rules.events_per_second, rules.events_burst)
        if self._in_flight >= MAX_IN_FLIGHT or not bucket.take(now_mono):
            self._reject(event_id, RateLimited("slow down: too many events from this connection"))
            return
        if not self.deps.ips.take_event(self.ip, now_mono):
            self._reject(event_id, RateLimited("slow down: too many events from this address"))
            return
        try:
            event = parse_event(obj)
        except Invalid as exc:
            self._reject(event_id, exc)
            return
        ctx = WriteContext(int(time.time()), self.authed, self.ip)
        rejection = self.deps.write.check(event, ctx)
        if rejection is not None:
            self._reject(event.id, rejection)
            return
        self._in_flight += 1
        self.deps.spawn(self._admit(Admission(event, ctx, on_verified=self._offer_notice)))

    async def _admit(self, admission: Admission) -> None:
        """The EVENT's stages after the cheap policies (``relay.session.write_path``): verify,
        per-author rate, NIP-62, the plug-ins' gates, ephemeral fan-out, the storage quota,
        the writer (OK after commit)."""
        event = admission.event
        try:
            reply = await self.deps.write.run(admission)
        except Answered as answer:
            self._reply_ok(event, (answer.accepted, answer.message))
        except Rejection as exc:
            self._reject(event.id, exc)
        except Exception as exc:
            _store_fault_log.error("storing event %s failed", event.id, exc_info=exc)
            self._reject(event.id, ServerError("could not store the event, try again"))
        else:
            self._reply_ok(event, reply)
        finally:
            self._in_flight -= 1

    def _reply_ok(self, event: Event, reply: tuple[bool, str]) -> None:
        """The event's OK, true or false, counted by outcome."""
        accepted, text = reply
        if accepted:
            self.deps.metrics.events_accepted.labels(event.kind_class.value).inc()
        else:
            self.deps.metrics.events_rejected.labels(text.partition(":")[0]).inc()
        self.send(messages.ok(event.id, accepted, text))

    # --- REQ / CLOSE / COUNT -----------------------------------------------------------

    def _read_rejection(self, filters: tuple[Filter, ...]) -> Rejection | None:
        return self.deps.read.rejection(filters, self.authed)

    def _read_scope(self) -> ReadScope:
        return self.deps.read.scope(self.authed)

    async def _on_req(self, sub_id: str, filters: tuple[Filter, ...]) -> None:
        if self.deps.closing:
            self.send(messages.closed(sub_id, str(ServerError(SHUTTING_DOWN))))
            return
        if sub_id not in self.subs and len(self.subs) >= self.deps.rules.max_subscriptions:
            limit = self.deps.rules.max_subscriptions
            self.send(messages.closed(sub_id, f"blocked: at most {limit} open subscriptions per connection"))
            return
        rejection = self._read_rejection(filters)
        made: list[bytes] = []
        if rejection is None:
            try:
                made = await self.deps.read.made(filters, self.authed)
            except Rejection as exc:
                rejection = exc
        if rejection is not None:
            self._close_sub(sub_id)
            self.send(messages.closed(sub_id, str(rejection)))
            return
        for raw in made:
            self.send(messages.event(sub_id, raw))
        started = time.perf_counter()
        self.deps.metrics.reqs.inc()
        # Live first, then the stored query, so nothing published meanwhile falls in the gap;
        # live events wait in _pending_live until EOSE and skip ids already sent.
        self.subs[sub_id] = filters
        pending: list[Event] = []
        if self._pending_live is None:
            self._pending_live = {}
        self._pending_live[sub_id] = pending
        self.deps.index.add(self, sub_id, filters)
        self.deps.metrics.subscriptions.set(len(self.deps.index))
        wanted = tuple(f for f in filters if f.limit != 0 and not f.is_empty())
        # The store applies the read scope before each filter's limit (the SQL rules COUNT
        # and NIP-77 use): hidden DMs and banned events neither fill the limit nor cost a
        # parse here.
        scope = self._read_scope()
        sent: set[bytes] = set()
        try:
            if wanted:
                pages = self.deps.read.pages(wanted, scope, self._page_bytes)
                async with contextlib.aclosing(pages):
                    search = any(f.search is not None for f in wanted)
                    while True:
                        async with self.deps.read.page_turn(self.group, search):
                            page = await anext(pages, None)
                            if page is None:
                                break
                            for raw in page:
                                sent.add(raw[7:71])
                                self.send(messages.event(sub_id, raw))
                        search = False
                        # Back-pressure: the next page is read only once the client has
                        # taken this one, so a client that does not read holds about one
                        # page, never its whole answer (issue 8, item 2). Outside the turn:
                        # a client that stops reading must not hold one.
                        await self._room()
                        if self.closed or self._held(sub_id) is not pending:
                            return  # dropped, gone, or the subscription closed meanwhile
        except Exception as exc:
            _store_fault_log.error("query failed", exc_info=exc)
            if self._held(sub_id) is pending:
                self._close_sub(sub_id)
                self.send(messages.closed(sub_id, "error: could not run the query"))
            return
        if self._held(sub_id) is not pending:
            return  # closed or replaced while the query ran
        # NIP-67: say when nothing stored was left out, so the client need not paginate.
        self.send(messages.eose(sub_id, ("finish",) if answer_is_whole(filters, len(sent)) else ()))
        self._release_held(sub_id)
        self._pending_bytes = 0
        for event in pending:
            if event.id.encode() not in sent:
                self.send(messages.event(sub_id, event.raw))
        self.deps.metrics.query_seconds.observe(time.perf_counter() - started)

    async def _room(self) -> None:
        """Wait until what is queued for this client has left (the transport accepts writes
        again and our queue is empty). No extra yield when nothing is waiting: reading the
        next page from the store is itself an await (a thread hop or a round trip), so other
        clients run between two pages anyway, and a small answer (one page) reaches its EOSE
        without an extra turn of the loop."""
        await self.link.drained()

    def _close_sub(self, sub_id: str) -> None:
        self.subs.pop(sub_id, None)
        if self._release_held(sub_id) is not None:
            self._pending_bytes = 0  # one stored query at a time: those were its events
        if self.deps.index.remove(self, sub_id):
            self.deps.metrics.subscriptions.set(len(self.deps.index))

    async def _on_count(self, sub_id: str, filters: tuple[Filter, ...]) -> None:
        if self.deps.closing:
            self.send(messages.closed(sub_id, str(ServerError(SHUTTING_DOWN))))
            return
        rejection = self._read_rejection(filters)
        if rejection is not None:
            self.send(messages.closed(sub_id, str(rejection)))
            return
        self.deps.metrics.counts.inc()
        try:
            wanted = tuple(f for f in filters if not f.is_empty())  # NIP-45: limit does not apply
            # The store counts with the connection's read scope: what REQ would hide is
            # not counted either (NIP-45 COUNT must not reveal private or banned events).
            # A count may read every row: in this address group's turn (HeavyReads).
            n = 0
            hll: bytes | None = None
            if wanted:
                # NIP-45 HyperLogLog for the NIP's common filters (reactions, followers, ...).
                offset = hyperloglog.offset_for(wanted) if len(wanted) == len(filters) else None
                n, hll = await self.deps.read.count(self.group, wanted, self._read_scope(), offset)
        except Exception as exc:
            _store_fault_log.error("count failed", exc_info=exc)
            self.send(messages.closed(sub_id, "error: could not run the count"))
            return
        self.send(messages.count(sub_id, n, hll))

    # --- AUTH (NIP-42) ---------------------------------------------------------------

    async def _on_auth(self, obj: object) -> None:
        event_id = messages.event_id_hint(obj)
        try:
            event = parse_event(obj)
        except Invalid as exc:
            self._reject(event_id, exc)
            return
        rejection = check_auth_event(event, self.challenge, self.deps.rules.public_url, int(time.time()))
        if rejection is None and not await self.deps.verifier.verify(event):
            rejection = Invalid("signature is invalid")
        if rejection is not None:
            self.send(messages.ok(event.id, False, str(rejection)))
            return
        self.authed = self.authed | {event.pubkey}
        self.send(messages.ok(event.id, True, ""))
        self._offer_notice(event.pubkey)

    # --- NOTIFY (nips PR #901) ----------------------------------------------------------

    def _offer_notice(self, pubkey: str) -> None:
        """Ask the plug-ins whether the user of ``pubkey`` (authenticated here, or the
        signer of an event sent here) should be told something, once a day per pubkey, in a
        task of its own (an EVENT's OK does not wait for it). At most one NOTIFY goes out
        per connection and day: the PR asks relays to interrupt users rarely."""
        if self.deps.session_notice is None or self.closed:
            return
        now = int(time.time())
        day = now // DAY
        asked = self._notice_asked
        if asked is None:
            asked = self._notice_asked = {}
        if self._notified_day == day or asked.get(pubkey) == day:
            return
        if len(asked) >= NOTICE_PUBKEYS:
            asked = self._notice_asked = {k: d for k, d in asked.items() if d == day}
            if len(asked) >= NOTICE_PUBKEYS:
                return
        asked[pubkey] = day
        self.deps.spawn(self._notice(pubkey, now, day))

    async def _notice(self, pubkey: str, now: int, day: int) -> None:
        ask = self.deps.session_notice
        if ask is None:
            return
        try:
            text = await ask(pubkey, now)
        except Exception as exc:
            _store_fault_log.error("a session notice for %s failed", pubkey, exc_info=exc)
            return
        if text is None or self.closed or self._notified_day == day:
            return
        self._notified_day = day
        self.send(messages.notify(text))

    # --- NEG-OPEN / NEG-MSG / NEG-CLOSE (NIP-77) ------------------------------------------

    async def _on_neg_open(self, msg: NegOpenMessage) -> None:
        """Load the filter's (created_at, id) set from the store's indexes, with REQ's
        read rules, and answer the client's first message. Refused with NEG-ERR when the
        relay is closing, the connection has too many reconciliations or opens them too
        fast, the set is larger than ``max_items``, or the items it may load do not fit in
        its address group's share or the relay-wide budget. The load runs in the group's
        turn (``HeavyReads``) and reserves those items *before* the store reads anything
        (issue 17: the store used to read the whole set and only then ask the budget)."""
        sub_id = msg.sub_id
        rules = self.deps.rules
        self._end_neg(sub_id)  # NIP-77: a NEG-OPEN on an open id replaces it
        reason: str | None = None
        if not rules.neg_enabled:
            reason = "blocked: negentropy sync is disabled on this relay"
        elif self.deps.closing:
            reason = str(ServerError(SHUTTING_DOWN))
        elif self._negs is not None and len(self._negs) >= rules.neg_max_sessions:
            reason = f"blocked: at most {rules.neg_max_sessions} open reconciliations per connection"
        elif not self._neg_open_bucket().take(time.monotonic()):
            reason = "rate-limited: too many NEG-OPEN, slow down"
        else:
            rejection = self._read_rejection((msg.filter,))
            reason = str(rejection) if rejection is not None else None
        if reason is not None:
            self.send(messages.neg_err(sub_id, reason))
            return
        budget = self.deps.read.sync_budget
        # The most this set can hold once accepted: a larger one is refused below.
        reserved = rules.neg_max_items if msg.filter.limit is None else min(msg.filter.limit, rules.neg_max_items)
        async with self.deps.read.heavy_reads.turn(self.group):
            if not budget.take(self.group, reserved):
                if budget.held(self.group) + reserved > budget.per_group:
                    reason = "blocked: reconciliations from your address hold too many events, close some first"
                else:
                    reason = "blocked: the relay is busy with other reconciliations, try later"
                self.send(messages.neg_err(sub_id, reason))
                return
            try:
                items = await self._load_items(sub_id, msg.filter, rules.neg_max_items)
            except BaseException:
                budget.give_back(self.group, reserved)
                raise
        if items is None or self.closed:  # refused (NEG-ERR sent), or the client left meanwhile
            budget.give_back(self.group, reserved)
            return
        budget.give_back(self.group, reserved - len(items))
        if self._negs is None:
            self._negs = {}
        self._negs[sub_id] = _SyncSession(Negentropy(items, rules.neg_frame_size_limit), len(items))
        await self._on_neg_msg(sub_id, msg.message)

    async def _load_items(self, sub_id: str, f: Filter, max_items: int) -> ItemSet | None:
        """The relay's item set for ``f``, or None once a NEG-ERR says why not."""
        try:
            rows = await self.deps.read.sync_items(f, self._read_scope(), max_items)
        except Exception:
            log.exception("negentropy item query failed")
            self.send(messages.neg_err(sub_id, "error: could not read the events to reconcile"))
            return None
        if len(rows) > max_items:
            self.send(messages.neg_err(sub_id, f"blocked: this query matches more than {max_items} events"))
            return None
        if len(rows) >= _NEG_BUILD_THREAD_ROWS:
            return await asyncio.to_thread(ItemSet, rows)
        return ItemSet(rows)

    async def _on_neg_msg(self, sub_id: str, message: bytes) -> None:
        session = self._negs.get(sub_id) if self._negs else None
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
        if self._negs and self._negs.get(sub_id) is session:
            self.send(messages.neg_msg(sub_id, reply))

    def _end_neg(self, sub_id: str) -> None:
        negs = self._negs
        session = negs.pop(sub_id, None) if negs else None
        if not negs:
            self._negs = None
        if session is not None:
            self.deps.read.sync_budget.give_back(self.group, session.items)

    def _neg_open_bucket(self) -> TokenBucket:
        bucket = self._neg_opens
        if bucket is None:
            rules = self.deps.rules
            bucket = self._neg_opens = TokenBucket(rules.neg_opens_per_second, 2 * rules.neg_max_sessions)
        return bucket

    def _end_all_negs(self) -> None:
        for sub_id in list(self._negs or ()):
            self._end_neg(sub_id)

    async def close(self, code: int = 1001, reason: str = "relay shutting down", grace: float = 5.0) -> None:
        """Send what is still queued (the last OKs of a shutdown), then the close frame;
        a client that does not complete the closing handshake within ``grace`` seconds is
        cut off."""
        if self.closed:
            return
        self._gone = asyncio.get_running_loop().create_future()
        self.link.close(code, reason)
        try:
            await asyncio.wait_for(asyncio.shield(self._gone), timeout=grace)
        except TimeoutError:
            self.link.abort()
