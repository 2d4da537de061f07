"""The relay process: wires the stages together and serves WebSocket + HTTP on one port.

HTTP routes go through websockets' ``process_request`` (NIP-11 JSON, CORS preflight,
/metrics to a bearer token only, the extension's pages, a plain HTML page); everything else
is a WebSocket upgrade handled by one ``Connection`` per client. /metrics is otherwise served
by a second, loopback-only listener (``[server] metrics_listen``).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hmac
import logging
import signal
import time
from collections.abc import Coroutine
from http import HTTPStatus
from typing import Any

import orjson
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from relay import nip11
from relay.broadcast import Broadcast, LocalBroadcast, PostgresBroadcast
from relay.config import Settings
from relay.connection import Connection
from relay.event import Event
from relay.extension import Extension
from relay.filters import Filter
from relay.identity import RelayIdentity, load_identity, profile_content, profile_event
from relay.limits import BucketTable, IpTable, LogThrottle
from relay.messages import FilterLimits
from relay.metrics import RelayMetrics
from relay.negentropy import ItemBudget
from relay.policy import WriteRules, build_write_policies
from relay.store import open_store
from relay.store.base import Store, WriteOutcome, WriteRequest
from relay.store.writer import GroupCommitWriter
from relay.subscriptions import SubscriptionIndex
from relay.verifier import SignatureVerifier

log = logging.getLogger(__name__)

CORS_HEADERS = [
    ("Access-Control-Allow-Origin", "*"),
    ("Access-Control-Allow-Headers", "*"),
    ("Access-Control-Allow-Methods", "GET, OPTIONS"),
]


def http_response(
    status: HTTPStatus, body: bytes, content_type: str, extra: list[tuple[str, str]] | None = None
) -> Response:
    headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(body)))] + (extra or []))
    return Response(status.value, status.phrase, headers, body)


class Relay:
    """One relay instance: settings, store, writer, verifier, live index, server."""

    def __init__(self, settings: Settings, store: Store | None = None) -> None:
        self.settings = settings
        if store is None:
            store = open_store(settings.storage, search_kinds=settings.search.indexed_kinds())
        self.store: Store = store
        self.metrics = RelayMetrics()
        self.index = SubscriptionIndex()
        self.verifier = SignatureVerifier()
        self.writer = GroupCommitWriter(
            self.store, batch_max=settings.storage.batch_max, on_committed=self._on_committed
        )
        self.metrics.watch_writer(lambda: self.writer.stats)
        limits = settings.limits
        self.ips = IpTable(
            limits.max_connections_per_ip,
            limits.ip_events_per_second,
            limits.ip_events_burst,
            max_total=limits.max_connections,
            ipv6_prefix=limits.ipv6_prefix,
            capacity=limits.rate_table_size,
        )
        self.authors = BucketTable(limits.pubkey_events_per_second, limits.pubkey_events_burst, limits.rate_table_size)
        self._refusal_log = LogThrottle()
        self.filter_limits = FilterLimits(
            limits.max_filters,
            limits.max_limit,
            limits.default_limit,
            settings.search.indexed_kinds(),
            settings.negentropy.max_items,
        )
        self.sync_budget = ItemBudget(settings.negentropy.max_total_items)  # NIP-77
        self.write_policies = build_write_policies(
            WriteRules(
                max_event_tags=limits.max_event_tags,
                max_content_length=limits.max_content_length,
                created_at_lower_limit=limits.created_at_lower_limit,
                created_at_upper_limit=limits.created_at_upper_limit,
                min_pow_difficulty=limits.min_pow_difficulty,
                auth_required_to_write=settings.auth.required_to_write,
            )
        )
        self.bus: Broadcast = (
            PostgresBroadcast(settings.storage.url, settings.storage.schema_name)
            if settings.storage.url.startswith(("postgresql://", "postgres://"))
            else LocalBroadcast()
        )
        self.extension: Extension | None = None
        self.identity: RelayIdentity  # loaded in start(): a bad key file is an operator error
        self.connections: set[Connection] = set()
        self.closing = False  # set by stop(): connections take no new work
        self._tasks: set[asyncio.Task[Any]] = set()
        self._background: list[asyncio.Task[None]] = []
        self._server: Server | None = None
        self._metrics_server: Server | None = None
        self._info: dict[str, Any] = {}
        self._info_json = b""
        self._info_html = b""

    # --- wiring ----------------------------------------------------------------------

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run a coroutine in the background, keeping a reference and logging failures."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", exc_info=task.exception())

    def _on_committed(self, events: list[Event]) -> None:
        for event in events:
            self.index.publish(event)
        self.bus.publish(events)

    def broadcast(self, event: Event) -> None:
        """Hand an accepted ephemeral event to live subscriptions here and on other nodes."""
        self.index.publish(event)
        self.bus.publish([event])

    @property
    def port(self) -> int:
        assert self._server is not None
        sockets = list(self._server.sockets)
        return int(sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"ws://{self.settings.server.host}:{self.port}"

    async def start(self, *, reuse_port: bool = False) -> None:
        self.identity = load_identity(self.settings)
        await self.store.open()
        self.verifier.start()
        self.writer.start()
        await self.bus.start(self.index.publish)
        if self.settings.payments.enabled:
            self.extension = await self._build_extension()
            await self.extension.start()
        extra = self.extension.nip11() if self.extension else {}
        self._info = nip11.build_info(self.settings, {**extra, "self": self.identity.pubkey})
        lud16 = extra.get("lud16")
        if isinstance(lud16, str):
            # The profile exists to be zapped (NIP-57): published when something can pay it.
            await self._publish_profile(lud16)
        self._info_json = orjson.dumps(self._info)
        self._info_html = nip11.render_html(self._info).encode()
        self._background.append(asyncio.create_task(self._purge_loop(), name="purge-expired"))
        srv = self.settings.server
        limits = self.settings.limits
        self._server = await serve(
            self._handle,
            srv.host,
            srv.port,
            process_request=self._process_request,
            compression="deflate" if srv.compression else None,
            # Frames up to twice the advertised limit are read so an oversize EVENT still
            # gets a NIP-01 OK; past that the connection is closed (1009) to bound memory.
            max_size=2 * limits.max_message_length,
            max_queue=16,
            ping_interval=60,
            ping_timeout=60,
            reuse_port=reuse_port,
            server_header=None,
        )
        await self._start_metrics_listener()
        log.info(
            "satsrelay listening on ws://%s:%d (store %s, payments %s)",
            srv.host,
            self.port,
            _redact(self.settings.storage.url),
            self.settings.payments.backend if self.settings.payments.enabled else "off",
        )

    async def _build_extension(self) -> Extension:
        import httpx

        from lightning.extension import build_extension

        self._http = httpx.AsyncClient(timeout=httpx.Timeout(10.0, connect=5.0))
        ext: Extension = build_extension(
            self.settings,
            self.store,
            self._http,
            registry=self.metrics.registry,
            identity=self.identity,
            publish=self.publish_own,
        )
        return ext

    async def publish_own(self, event: Event) -> WriteOutcome:
        """Store and fan out an event the relay signed itself (its profile, zap receipts):
        the write policies and the gate are for clients, not for the relay's own key."""
        return await self.writer.submit(WriteRequest(event))

    async def _publish_profile(self, lud16: str) -> None:
        """The relay's kind-0 profile, re-signed only when its content changed (NIP-01
        replaceable: a restart does not churn it)."""
        content = profile_content(self.settings, lud16)
        stored = await self.store.query(
            [Filter(authors=frozenset({self.identity.pubkey}), kinds=frozenset({0}), limit=1)], int(time.time())
        )
        if stored and orjson.loads(stored[0]).get("content") == content:
            return
        await self.publish_own(profile_event(self.identity, content, int(time.time())))

    async def stop(self) -> None:
        """Graceful: stop accepting, answer what is queued, flush the writer, close."""
        grace = self.settings.server.shutdown_grace_seconds
        # From here connections refuse new EVENT/REQ/COUNT ("error: ... shutting down");
        # EVENTs already in flight go on to the still-running writer, so each gets its real
        # OK. Closing the writer first made them fail ("writer is closed") and log a
        # traceback each.
        self.closing = True
        if self._server is not None:
            self._server.close(close_connections=False)
        if self._metrics_server is not None:
            self._metrics_server.close()
        for task in self._background:
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=grace)
        await self.writer.close()
        await self.bus.stop()
        await asyncio.gather(*(c.close(grace=grace) for c in list(self.connections)), return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), timeout=grace)
        if self.extension is not None:
            await self.extension.stop()
            await self._http.aclose()
        await self.verifier.close()
        await self.store.close()
        log.info("satsrelay stopped")

    async def _purge_loop(self) -> None:
        interval = self.settings.storage.purge_interval_seconds
        while True:
            try:
                purged = await self.store.purge_expired(int(time.time()))
                if purged:
                    log.info("purged %d expired events", purged)
            except Exception:
                log.exception("purging expired events failed; will retry")
            await asyncio.sleep(interval)

    # --- connections -----------------------------------------------------------------------

    def client_ip(self, ws: ServerConnection, request: Request | None) -> str:
        header = self.settings.server.real_ip_header
        if header and request is not None:
            value = request.headers.get(header)
            if value:
                return value.split(",")[0].strip()
        addr = ws.remote_address
        return str(addr[0]) if addr else "unknown"

    async def _handle(self, ws: ServerConnection) -> None:
        ip = self.client_ip(ws, ws.request)
        if not self.ips.admit(ip):  # raced past _process_request's check
            if self._refused(ip) == "global-limit":
                await ws.close(1013, "relay is full, try again later")  # 1013: try again later
            else:
                await ws.close(1008, "too many connections from your address")
            return
        conn = Connection(self, ws, ip)
        self.connections.add(conn)
        self.metrics.connections.inc()
        try:
            await conn.run()
        finally:
            self.connections.discard(conn)
            self.metrics.connections.dec()
            self.ips.release(ip)

    def _refused(self, ip: str) -> str:
        """Count and log (at most one line per reason per 10 s) a refused connection."""
        reason = self.ips.refusal(ip) or "per-ip-limit"
        self.metrics.connections_rejected.labels(reason).inc()
        suppressed = self._refusal_log.ready(reason, time.monotonic())
        if suppressed is not None:
            what = "the relay is at max_connections" if reason == "global-limit" else "too many open connections"
            more = f" ({suppressed} more refused since the last line)" if suppressed else ""
            log.warning("rejected connection from %s: %s%s", ip, what, more)
        return reason

    async def _process_request(self, ws: ServerConnection, request: Request) -> Response | None:
        headers = request.headers
        if "websocket" in headers.get("Upgrade", "").lower():
            ip = self.client_ip(ws, request)
            if self.ips.refusal(ip) is None:
                return None
            # Retry-After (RFC 9110): a client that reconnects in a loop learns when to come back.
            retry = [("Retry-After", "10")]
            if self._refused(ip) == "global-limit":
                return http_response(
                    HTTPStatus.SERVICE_UNAVAILABLE, b"relay is full, try again later\n", "text/plain", retry
                )
            return http_response(HTTPStatus.TOO_MANY_REQUESTS, b"too many connections\n", "text/plain", retry)
        if request.method == "OPTIONS":
            return http_response(HTTPStatus.NO_CONTENT, b"", "text/plain", CORS_HEADERS)
        path = request.path.split("?", 1)[0]
        if "application/nostr+json" in headers.get("Accept", ""):
            return http_response(HTTPStatus.OK, self._info_json, "application/nostr+json", CORS_HEADERS)
        if path == "/metrics":
            return self._public_metrics(headers.get("Authorization"))
        if self.extension is not None:
            response = await self.extension.handle_http(request, self.client_ip(ws, request))
            if response is not None:
                return response
        if path == "/":
            return http_response(HTTPStatus.OK, self._info_html, "text/html; charset=utf-8")
        return http_response(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")

    # --- /metrics: operational data (revenue, rejections), never public ------------------

    def _metrics_response(self) -> Response:
        return http_response(HTTPStatus.OK, self.metrics.render(), "text/plain; version=0.0.4; charset=utf-8")

    def _public_metrics(self, authorization: str | None) -> Response:
        """On the public port /metrics exists only with ``metrics_token``, to its bearer."""
        token = self.settings.server.metrics_token
        if token is None:
            return http_response(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")
        expected = f"Bearer {token.get_secret_value()}".encode()
        if authorization is None or not hmac.compare_digest(authorization.encode(), expected):
            return http_response(
                HTTPStatus.UNAUTHORIZED, b"unauthorized\n", "text/plain", [("WWW-Authenticate", "Bearer")]
            )
        return self._metrics_response()

    async def _start_metrics_listener(self) -> None:
        """``[server] metrics_listen``: a second listener (loopback by default) that answers
        /metrics and nothing else, for a local Prometheus scraper. SO_REUSEPORT: the workers
        of ``--workers`` (and several relays on one host) share the address, as they share the
        public port; each answers with its own process's counters."""
        address = self.settings.server.metrics_address()
        if address is None:
            return

        async def metrics_only(ws: ServerConnection, request: Request) -> Response:
            if request.path.split("?", 1)[0] == "/metrics":
                return self._metrics_response()
            return http_response(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")

        async def never(ws: ServerConnection) -> None:  # every request is answered above
            await ws.close()

        host, port = address
        self._metrics_server = await serve(
            never, host, port, process_request=metrics_only, reuse_port=True, server_header=None
        )
        log.info("metrics on http://%s:%d/metrics", host, self.metrics_port)

    @property
    def metrics_port(self) -> int | None:
        if self._metrics_server is None:
            return None
        return int(next(iter(self._metrics_server.sockets)).getsockname()[1])


def _redact(url: str) -> str:
    """A store URL for logs: no password."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':')[0]}:***@{host}" if ":" in creds else url
    return url


GC_THRESHOLDS = (50_000, 20, 100)


def _tune_gc() -> None:
    """Keep the cyclic garbage collector from pausing fan-out.

    With 1,000 connections a full (generation 2) collection walks every websockets object
    and stalled the loop for ~60 ms once every few seconds: one event in a hundred reached
    its subscribers that late (bench fanout p99 83 ms). Freezing what start-up allocated and
    collecting the young generation less often (CPython's default is 700, 10, 10) took p99 to
    26 ms. Reference counting still frees acyclic garbage at once; only cycles wait longer.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


async def run(settings: Settings) -> None:
    """Serve until SIGTERM or SIGINT, then shut down gracefully."""
    relay = Relay(settings)
    await relay.start(reuse_port=settings.server.reuse_port)
    _tune_gc()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down")
    await relay.stop()
