"""Live events across PostgreSQL nodes: LISTEN/NOTIFY (``relay.store.broadcast.Broadcast``).

It lives with the PostgreSQL store because it is that store's transport: it reads the
events table for announced ids and catch-up, and the store NOTIFYs what it inserts. With
one process (SQLite) fan-out is local only (``relay.store.broadcast.LocalBroadcast``). With PostgreSQL,
every node NOTIFYs the events it accepted and LISTENs for the others', so a subscriber on
any node sees events published on any node — an existing engine, no home-made broker.

Payload: ``<node id> <raw event JSON>``; NOTIFY payloads must stay under 8000 bytes, so a
larger event is announced by id (``<node id> @<event id>``) and the receivers read it
from the events table. (Such an oversized *ephemeral* event has no row to read and stays
on its node; that is logged at DEBUG.) Receivers read announced ids in batches over one
connection of their own: a connection per id let one address's burst of large events
open dozens of PostgreSQL connections on every node (48 for 200 events), and the server's
connection limit is what every node's writes need.

Stored events are announced by the store itself, by ``pg_notify`` inside the transaction
that inserts them (``PostgresStore.announce_stored``): PostgreSQL delivers a transaction's
notifications when, and only if, it commits, so an event is committed and announced
together or neither. (Sent afterwards from here, a node dying between its commit and its
NOTIFY left every other node's live subscribers without the event.) Only ephemeral events,
which have no transaction, go through this module's own NOTIFY connection.

Catch-up: a listener connection that drops is reopened at once, then every
``RECONNECT_MAX`` seconds at most; once it listens again, events committed meanwhile are
read from the table by ``seq`` (from a watermark a little behind the last one seen, since
identity values are not handed out in commit order) and delivered, de-duplicated by id, so
subscribers who stayed connected lose nothing stored. Ephemeral events have no row: those
other nodes send while this node is not listening are missed here (PostgreSQL keeps no
notification for a session that is not listening), which is why the listener comes back
within a second rather than backing off for long, and why the outage is logged, once
when it starts and once when it ends, with how long it lasted. Delivering them too would
take a log that outlives the outage (a short-lived table of ephemeral events, or a stream
engine such as NATS JetStream): not done.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import secrets
import time
from collections import OrderedDict
from typing import Any

import orjson

from relay.nostr.errors import Invalid
from relay.nostr.event import Event, KindClass, is_hex64, parse_event
from relay.store.broadcast import Deliver

log = logging.getLogger(__name__)

CHANNEL = "satsrelay_events"
MAX_PAYLOAD = 7900  # bytes; PostgreSQL's NOTIFY limit is 8000
CATCH_UP_MARGIN = 1000  # seqs re-read behind the watermark (identity order != commit order)
CATCH_UP_BATCH = 1000
RECENT_IDS = 20000
MAX_OUTBOX = 100_000  # notifications held while PostgreSQL is unreachable
FETCH_BATCH = 500  # announced ids read per statement
MAX_FETCH_QUEUE = 100_000  # announced ids waiting to be read; past it the oldest are dropped
MAX_IDENTIFIER = 63  # bytes; pg_notify refuses longer channel names, LISTEN truncates them
# Seconds between attempts to reopen a lost connection, at most: each second without a
# listener loses other nodes' ephemeral events, and an attempt costs one TCP connect.
RECONNECT_MAX = 1.0
PROBE_SECONDS = 1.0  # a silent listener is probed this often (a server-side kill shows on use)
PROBE_TIMEOUT = 3.0  # no answer within this: the connection is dead (a partition sends no FIN)


def notify_payload(node_id: str, event: Event) -> str:
    """What one NOTIFY carries for ``event``: its raw JSON, or only its id when that would
    pass PostgreSQL's payload limit (receivers then read the row)."""
    if len(node_id) + 1 + len(event.raw) > MAX_PAYLOAD:  # bytes: the id is ASCII, raw is UTF-8
        return f"{node_id} @{event.id}"
    return f"{node_id} {event.raw.decode()}"


def channel_name(schema: str | None) -> str:
    """The NOTIFY channel of one schema's nodes: readable when it fits in an identifier,
    else named by a hash of the schema (a 63-byte schema name is legal)."""
    if not schema:
        return CHANNEL
    name = f"{CHANNEL}_{schema}"
    if len(name.encode()) <= MAX_IDENTIFIER:
        return name
    return f"{CHANNEL}_{hashlib.sha256(schema.encode()).hexdigest()[:32]}"


class _RecentIds:
    """A bounded set of recently seen ids (insertion order eviction)."""

    def __init__(self, size: int) -> None:
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._size = size

    def add(self, event_id: str) -> bool:
        """True when the id was new."""
        if event_id in self._ids:
            return False
        self._ids[event_id] = None
        if len(self._ids) > self._size:
            self._ids.popitem(last=False)
        return True


class PostgresBroadcast:
    reaches_other_nodes = True

    def __init__(self, dsn: str, schema: str | None = None, *, reconnect_max: float = RECONNECT_MAX) -> None:
        self._dsn = dsn
        self._schema = schema
        self._channel = channel_name(schema)
        self.node_id = secrets.token_hex(4)
        self._deliver: Deliver | None = None
        self._outbox: list[str] = []
        self._sending = False  # a batch is being sent (no longer in _outbox)
        self._overflowing = False
        self._wakeup = asyncio.Event()
        self._seen = _RecentIds(RECENT_IDS)
        self._watermark: int | None = None
        self._floor = 0  # max seq when this node first listened; older rows are history
        self._reconnect_max = reconnect_max
        self._tasks: list[asyncio.Task[None]] = []
        self._to_fetch: list[str] = []  # ids announced by other nodes, to read from the table
        self._fetch_wakeup = asyncio.Event()
        self._listener: Any = None
        self.connected = asyncio.Event()
        # Set by the composition root once the store NOTIFYs stored events itself.
        self.store_announces = False

    async def _connect(self, role: str) -> Any:
        """A dedicated connection, named in ``pg_stat_activity.application_name`` as
        ``satsrelay <role> <os pid>`` so an operator (or a test) can tell which process's
        listener a backend is: its ``query`` column shows the last statement, which is the
        periodic liveness probe rather than ``LISTEN`` most of the time."""
        import asyncpg

        conn = await asyncpg.connect(
            self._dsn, server_settings={"application_name": f"satsrelay {role} {os.getpid()}"}
        )
        if self._schema:
            await conn.execute(f'SET search_path TO "{self._schema}"')
        return conn

    async def start(self, deliver: Deliver) -> None:
        self._deliver = deliver
        self._tasks = [
            asyncio.create_task(self._listen_forever(), name="broadcast-listen"),
            asyncio.create_task(self._send_forever(), name="broadcast-notify"),
            asyncio.create_task(self._fetch_forever(), name="broadcast-fetch"),
        ]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.connected.wait(), timeout=10)

    @property
    def channel(self) -> str:
        return self._channel

    def publish(self, events: list[Event]) -> None:
        for event in events:
            self._seen.add(event.id)
            if self.store_announces and event.kind_class is not KindClass.EPHEMERAL:
                continue  # NOTIFY'd in the transaction that stored it (see the module docstring)
            self._outbox.append(notify_payload(self.node_id, event))
        if len(self._outbox) > MAX_OUTBOX:
            # PostgreSQL unreachable for a while: stored events cannot commit then, but
            # ephemeral ones keep coming; drop the oldest rather than grow without bound.
            del self._outbox[: len(self._outbox) - MAX_OUTBOX]
            if not self._overflowing:  # once per outage, not once per event
                self._overflowing = True
                log.warning("NOTIFY backlog passed %d; dropping the oldest until PostgreSQL answers", MAX_OUTBOX)
        if events:
            self._wakeup.set()

    async def stop(self) -> None:
        # give queued (and in-flight) notifications a moment to go out before closing
        for _ in range(20):
            if not self._outbox and not self._sending:
                break
            await asyncio.sleep(0.05)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # --- sending ------------------------------------------------------------------

    async def _send_forever(self) -> None:
        conn: Any = None
        delay = 0.0
        down_since: float | None = None  # monotonic time of the first failure of this outage
        try:
            while True:
                await self._wakeup.wait()
                self._wakeup.clear()
                while self._outbox:
                    batch, self._outbox = self._outbox, []
                    self._sending = True
                    try:
                        if conn is None or conn.is_closed():
                            conn = await self._connect("notify")
                        # One round trip per batch however many events it holds.
                        await conn.execute(
                            "SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p", self._channel, batch
                        )
                        delay = 0.0
                        self._overflowing = False
                        if down_since is not None:
                            log.info("NOTIFY works again after %.1f s", time.monotonic() - down_since)
                            down_since = None
                    except asyncio.CancelledError:
                        raise
                    except Exception as exc:
                        if down_since is None:  # one line per outage, not one per attempt
                            down_since = time.monotonic()
                            log.warning("NOTIFY failed (%s); retrying until PostgreSQL answers", type(exc).__name__)
                        self._outbox = batch + self._outbox
                        if conn is not None:
                            # a fresh connection next time; this one may still be open
                            conn.terminate()
                            conn = None
                        await asyncio.sleep(delay)
                        delay = min(max(delay * 2, 0.1), self._reconnect_max)
                    finally:
                        self._sending = False
        finally:
            if conn is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conn.close(), timeout=1)

    # --- listening ------------------------------------------------------------------

    async def _listen_forever(self) -> None:
        delay = 0.0  # the first attempt after a loss is immediate
        down_since: float | None = None  # monotonic time the listener was lost
        attempts = 0
        while True:
            conn: Any = None
            lost = asyncio.Event()
            try:
                conn = await self._connect("listener")
                conn.add_termination_listener(lambda _c, ev=lost: ev.set())
                await conn.add_listener(self._channel, self._on_notify)
                await self._catch_up(conn)
                self.connected.set()
                back_at = time.monotonic()
                while not lost.is_set():
                    # asyncpg notices a server-side kill only on the next use of the connection
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(lost.wait(), timeout=PROBE_SECONDS)
                    if not lost.is_set():
                        await asyncio.wait_for(conn.execute("SELECT 1"), timeout=PROBE_TIMEOUT)
                        self._watermark = await self._max_seq(conn)
                        # Up for a whole probe: the outage is over (a connection dropped
                        # sooner is the same outage, with no new line and no reset back-off).
                        delay = 0.0
                        if down_since is not None:
                            log.info(
                                "broadcast listener back after %.1f s (%d attempts); ephemeral events "
                                "other nodes sent meanwhile were missed here", back_at - down_since, attempts,
                            )
                            down_since, attempts = None, 0
                raise ConnectionError("listener connection closed")
            except asyncio.CancelledError:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.close(timeout=1)
                raise
            except Exception as exc:
                self.connected.clear()
                attempts += 1
                if down_since is None:  # one line per outage, not one per attempt
                    down_since = time.monotonic()
                    log.warning(
                        "broadcast listener lost (%s); reconnecting. Until it is back, other nodes' stored "
                        "events wait for the catch-up and their ephemeral events are missed here",
                        type(exc).__name__,
                    )
                else:
                    log.debug("broadcast listener still down (%s)", type(exc).__name__)
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.terminate()
                await asyncio.sleep(delay)
                delay = min(max(delay * 2, 0.1), self._reconnect_max)

    @staticmethod
    async def _max_seq(conn: Any) -> int:
        return int(await conn.fetchval("SELECT coalesce(max(seq), 0) FROM events"))

    async def _catch_up(self, conn: Any) -> None:
        """Deliver stored events committed while this node was not listening."""
        if self._watermark is None:
            self._watermark = self._floor = await self._max_seq(conn)
            return
        # Never below the first watermark: rows committed before this node listened were
        # never live here, and replaying them would hand subscribers stored events (which
        # their REQ already returned) as if they were new.
        after = max(self._floor, self._watermark - CATCH_UP_MARGIN)
        delivered = 0
        while True:
            rows = await conn.fetch(
                "SELECT seq, raw FROM events WHERE seq > $1 ORDER BY seq LIMIT $2", after, CATCH_UP_BATCH
            )
            for row in rows:
                event = self._parse(bytes(row["raw"]))
                if event is not None and self._seen.add(event.id):
                    self._emit(event)
                    delivered += 1
            if len(rows) < CATCH_UP_BATCH:
                break
            after = int(rows[-1]["seq"])
        self._watermark = max(self._watermark, await self._max_seq(conn))
        if delivered:
            log.info("broadcast caught up %d events after reconnecting", delivered)

    def _on_notify(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        origin, _, body = payload.partition(" ")
        if origin == self.node_id:
            return
        if body.startswith("@"):
            if not is_hex64(body[1:]):
                log.warning("ignored a malformed broadcast payload")
                return
            self._to_fetch.append(body[1:])
            if len(self._to_fetch) > MAX_FETCH_QUEUE:
                del self._to_fetch[: len(self._to_fetch) - MAX_FETCH_QUEUE]
                log.warning("more than %d announced events waiting to be read; dropped the oldest", MAX_FETCH_QUEUE)
            self._fetch_wakeup.set()
            return
        event = self._parse(body.encode())
        if event is not None and self._seen.add(event.id):
            self._emit(event)

    async def _fetch_forever(self) -> None:
        """Read events announced by id, a batch per statement over one connection."""
        conn: Any = None
        delay = 0.0
        down_since: float | None = None
        try:
            while True:
                await self._fetch_wakeup.wait()
                self._fetch_wakeup.clear()
                while self._to_fetch:
                    batch = self._to_fetch[:FETCH_BATCH]
                    try:
                        if conn is None or conn.is_closed():
                            conn = await self._connect("fetch")
                        rows = await conn.fetch(
                            "SELECT raw FROM events WHERE id = ANY($1::bytea[])", [bytes.fromhex(i) for i in batch]
                        )
                    except asyncio.CancelledError:
                        raise
                    except Exception as exc:
                        if down_since is None:  # one line per outage
                            down_since = time.monotonic()
                            log.warning("reading announced events failed (%s); retrying", type(exc).__name__)
                        if conn is not None:
                            conn.terminate()
                            conn = None
                        await asyncio.sleep(delay)
                        delay = min(max(delay * 2, 0.1), self._reconnect_max)
                        continue
                    del self._to_fetch[: len(batch)]
                    delay, down_since = 0.0, None
                    by_id = {}
                    for row in rows:
                        event = self._parse(bytes(row["raw"]))
                        if event is not None:
                            by_id[event.id] = event
                    for event_id in batch:  # in the order they were announced
                        event = by_id.get(event_id)
                        if event is None:
                            log.debug("announced event %s has no row (oversized ephemeral event?)", event_id)
                        elif self._seen.add(event.id):
                            self._emit(event)
        finally:
            if conn is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conn.close(), timeout=1)

    @staticmethod
    def _parse(raw: bytes) -> Event | None:
        """Events from the database or another node were verified where they came in;
        the id is still re-derived so a corrupt payload cannot impersonate an event."""
        try:
            return parse_event(orjson.loads(raw))
        except (Invalid, orjson.JSONDecodeError):
            log.warning("ignored a malformed broadcast payload")
            return None

    def _emit(self, event: Event) -> None:
        assert self._deliver is not None
        try:
            self._deliver(event)
        except Exception:
            log.exception("local fan-out of a broadcast event failed")
