"""Live events across processes and nodes: PostgreSQL LISTEN/NOTIFY.

With one process (SQLite) fan-out is local only (``LocalBroadcast``). With PostgreSQL,
every node NOTIFYs the events it accepted and LISTENs for the others', so a subscriber on
any node sees events published on any node — an existing engine, no home-made broker.

Payload: ``<node id> <raw event JSON>``; NOTIFY payloads must stay under 8000 bytes, so a
larger event is announced by id (``<node id> @<event id>``) and the receivers read it
from the events table. (Such an oversized *ephemeral* event has no row to read and stays
on its node; that is logged at DEBUG.)

Catch-up: a listener connection that drops is reopened with backoff; once it listens
again, events committed meanwhile are read from the table by ``seq`` (from a watermark a
little behind the last one seen, since identity values are not handed out in commit
order) and delivered, de-duplicated by id, so subscribers who stayed connected lose
nothing stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import secrets
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

import orjson

from relay.errors import Invalid
from relay.event import Event, parse_event

log = logging.getLogger(__name__)

CHANNEL = "satsrelay_events"
MAX_PAYLOAD = 7900  # bytes; PostgreSQL's NOTIFY limit is 8000
CATCH_UP_MARGIN = 1000  # seqs re-read behind the watermark (identity order != commit order)
CATCH_UP_BATCH = 1000
RECENT_IDS = 20000
MAX_OUTBOX = 100_000  # notifications held while PostgreSQL is unreachable
MAX_IDENTIFIER = 63  # bytes; pg_notify refuses longer channel names, LISTEN truncates them


def channel_name(schema: str | None) -> str:
    """The NOTIFY channel of one schema's nodes: readable when it fits in an identifier,
    else named by a hash of the schema (a 63-byte schema name is legal)."""
    if not schema:
        return CHANNEL
    name = f"{CHANNEL}_{schema}"
    if len(name.encode()) <= MAX_IDENTIFIER:
        return name
    return f"{CHANNEL}_{hashlib.sha256(schema.encode()).hexdigest()[:32]}"

Deliver = Callable[[Event], object]


class Broadcast(Protocol):
    # True when other processes or nodes may have subscribers: this node cannot then tell
    # that nobody listened to an ephemeral event (NIP-01 ``mute:``), so it never says so.
    reaches_other_nodes: bool

    async def start(self, deliver: Deliver) -> None:
        """Begin delivering other nodes' events to ``deliver`` (local fan-out)."""

    def publish(self, events: list[Event]) -> None:
        """Announce events this node accepted; never blocks the caller."""

    async def stop(self) -> None: ...


class LocalBroadcast:
    """One process: nothing to announce."""

    reaches_other_nodes = False

    async def start(self, deliver: Deliver) -> None:
        return None

    def publish(self, events: list[Event]) -> None:
        return None

    async def stop(self) -> None:
        return None


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

    def __init__(self, dsn: str, schema: str | None = None, *, reconnect_max: float = 5.0) -> None:
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
        self._fetches: set[asyncio.Task[None]] = set()  # reads of events announced by id
        self._listener: Any = None
        self.connected = asyncio.Event()

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
        ]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.connected.wait(), timeout=10)

    def publish(self, events: list[Event]) -> None:
        for event in events:
            self._seen.add(event.id)
            raw = event.raw.decode()
            payload = f"{self.node_id} {raw}"
            if len(payload.encode()) > MAX_PAYLOAD:
                payload = f"{self.node_id} @{event.id}"
            self._outbox.append(payload)
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
        tasks = [*self._tasks, *self._fetches]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # --- sending ------------------------------------------------------------------

    async def _send_forever(self) -> None:
        conn: Any = None
        delay = 0.1
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
                        delay = 0.1
                        self._overflowing = False
                    except asyncio.CancelledError:
                        raise
                    except Exception as exc:
                        log.warning("NOTIFY failed (%s); retrying in %.1fs", type(exc).__name__, delay)
                        self._outbox = batch + self._outbox
                        if conn is not None:
                            # a fresh connection next time; this one may still be open
                            conn.terminate()
                            conn = None
                        await asyncio.sleep(delay)
                        delay = min(delay * 2, self._reconnect_max)
                    finally:
                        self._sending = False
        finally:
            if conn is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conn.close(), timeout=1)

    # --- listening ------------------------------------------------------------------

    async def _listen_forever(self) -> None:
        delay = 0.1
        while True:
            conn: Any = None
            lost = asyncio.Event()
            try:
                conn = await self._connect("listener")
                conn.add_termination_listener(lambda _c, ev=lost: ev.set())
                await conn.add_listener(self._channel, self._on_notify)
                await self._catch_up(conn)
                self.connected.set()
                delay = 0.1
                while not lost.is_set():
                    # asyncpg notices a server-side kill only on the next use of the connection
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(lost.wait(), timeout=1.0)
                    if not lost.is_set():
                        await asyncio.wait_for(conn.execute("SELECT 1"), timeout=5)
                        self._watermark = await self._max_seq(conn)
                raise ConnectionError("listener connection closed")
            except asyncio.CancelledError:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.close(timeout=1)
                raise
            except Exception as exc:
                self.connected.clear()
                log.warning("broadcast listener lost (%s); reconnecting in %.1fs", type(exc).__name__, delay)
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.terminate()
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._reconnect_max)

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
            # the loop holds tasks weakly: keep a reference until the read is done
            task = asyncio.get_running_loop().create_task(self._fetch_and_emit(body[1:]))
            self._fetches.add(task)
            task.add_done_callback(self._fetches.discard)
            return
        event = self._parse(body.encode())
        if event is not None and self._seen.add(event.id):
            self._emit(event)

    async def _fetch_and_emit(self, event_id: str) -> None:
        try:
            conn = await self._connect("fetch")
            try:
                raw = await conn.fetchval("SELECT raw FROM events WHERE id = $1", bytes.fromhex(event_id))
            finally:
                await conn.close()
        except Exception:
            log.exception("could not read announced event %s", event_id)
            return
        if raw is None:
            log.debug("announced event %s has no row (oversized ephemeral event?)", event_id)
            return
        event = self._parse(bytes(raw))
        if event is not None and self._seen.add(event.id):
            self._emit(event)

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
