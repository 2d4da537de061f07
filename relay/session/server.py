"""The relay: the stages wired together behind the network shell, on one port.

``Relay`` receives its store, broadcast and plug-ins' hooks (``relay.app`` builds them from
Settings: the composition root) and owns the rest: the verifier, the group-commit writer,
the live subscription index, the HTTP router and the listening socket. Each TCP
connection is a ``relay.net.transport.RelayProtocol``: HTTP requests go to the router (the
operator console at /admin, NIP-86, NIP-11 with CORS, /metrics, the plug-ins' routes, then
the HTML page), a WebSocket upgrade becomes one ``Connection``.
"""

from __future__ import annotations

import asyncio
import gc
import hmac
import logging
import signal
import socket
import time
from collections.abc import Coroutine, Mapping
from http import HTTPStatus
from typing import Any

import orjson

from relay.config import Settings
from relay.net.descriptors import (
    METRICS_BACKLOG,
    METRICS_CONNECTIONS,
    open_descriptors,
    plan_connections,
    raise_soft_limit,
)
from relay.net.http import HttpRequest, HttpResponse, HttpRouter, http_url, not_found, response
from relay.net.limits import BucketTable, IpTable, LogThrottle
from relay.net.listen import METRICS_IN_USE_HINT, bind_listening_socket, listen_error
from relay.net.slots import ConnectionSlots
from relay.net.transport import MessageSink, RelayProtocol, ShellOptions, WebSocketLink, create_factory, keepalive_sweep
from relay.nostr.event import Event
from relay.nostr.filters import Filter
from relay.nostr.messages import FilterLimits
from relay.nostr.negentropy import ItemBudget
from relay.nostr.policy import WriteRules, build_write_policies
from relay.nostr.redaction import redact_url
from relay.ops.console import Console
from relay.ops.management_view import ManagementView
from relay.ops.metrics import RelayMetrics
from relay.ops.retention import StorageQuota, purge_old_events
from relay.ops.vanish import VanishedAuthors
from relay.plugins.hooks import Hooks
from relay.session import nip11
from relay.session.connection import Connection, ConnectionDeps, SessionRules
from relay.session.heavy_reads import HeavyReads
from relay.session.read_path import ReadPath
from relay.session.subscriptions import SubscriptionIndex
from relay.session.verifier import SignatureVerifier
from relay.session.write_path import write_path
from relay.store.base import Store, WriteOutcome, WriteRequest
from relay.store.broadcast import Broadcast
from relay.store.identity import RelayIdentity, profile_content, profile_event, save_new_key
from relay.store.writer import EventWriter, GroupCommitWriter

log = logging.getLogger(__name__)

CORS_HEADERS = [
    ("Access-Control-Allow-Origin", "*"),
    ("Access-Control-Allow-Headers", "*"),
    ("Access-Control-Allow-Methods", "GET, POST, OPTIONS"),
]


class Relay:
    """One relay instance: settings, store, writer, verifier, live index, server."""

    def __init__(
        self,
        settings: Settings,
        *,
        store: Store,
        broadcast: Broadcast,
        identity: RelayIdentity,
        hooks: Hooks | None = None,
        metrics: RelayMetrics | None = None,
        writer: EventWriter | None = None,
    ) -> None:
        """``identity``: the relay's own key (NIP-11 ``self``, its profile, zap receipts).
        ``writer``: the stage that commits events, when the store's writer is not this
        process's (``--workers`` on SQLite: ``relay.store.writer_client.RemoteWriter``, whose
        commits reach the subscribers through ``broadcast``); by default a
        ``GroupCommitWriter`` over ``store``."""
        self.settings = settings
        self.identity = identity
        self.store = store
        self.bus = broadcast
        self.hooks = hooks if hooks is not None else Hooks()
        self.metrics = metrics or RelayMetrics()
        self.index = SubscriptionIndex()
        self.verifier = SignatureVerifier()
        self.writer: EventWriter = writer or GroupCommitWriter(
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
        self.authors = BucketTable(
            limits.pubkey_events_per_second, limits.pubkey_events_burst, limits.rate_table_size, name="author-events"
        )
        self._refusal_log = LogThrottle()
        # NIP-77 items, relay-wide and per address group; turns at expensive reads (issue 17)
        self.sync_budget = ItemBudget(settings.negentropy.max_total_items, settings.negentropy.items_per_ip())
        self.heavy_reads = HeavyReads(limits.max_heavy_reads, limits.max_heavy_reads_per_ip)
        self.page_reads = HeavyReads(limits.max_page_reads, limits.max_page_reads_per_ip)
        self.quota = StorageQuota(self.store, settings.retention)
        self.quota.plugin_quotas = bool(self.hooks.storage_allowances)  # a plug-in's plans set quotas of their own
        self.vanished = VanishedAuthors(self.store)  # NIP-62
        write_policies = build_write_policies(
            WriteRules(
                max_event_tags=limits.max_event_tags,
                max_content_length=limits.max_content_length,
                created_at_lower_limit=limits.created_at_lower_limit,
                created_at_upper_limit=limits.created_at_upper_limit,
                min_pow_difficulty=limits.min_pow_difficulty,
                auth_required_to_write=settings.auth.required_to_write,
            )
        )
        write_policies.append(self.vanished.policy)
        # NIP-86 bans, kinds, blocked IPs, and the plug-ins' namespaced methods
        self.management = ManagementView(self.store, self.hooks.management_methods)
        write_policies.append(self.management.policy)
        neg = settings.negentropy
        self.deps = ConnectionDeps(
            rules=SessionRules(
                ipv6_prefix=limits.ipv6_prefix,
                events_per_second=limits.events_per_second,
                events_burst=limits.events_burst,
                outgoing_queue_bytes=limits.outgoing_queue_bytes,
                max_message_length=limits.max_message_length,
                max_subscriptions=limits.max_subscriptions,
                auth_enabled=settings.auth.enabled,
                public_url=settings.relay.public_url,
                neg_enabled=neg.enabled,
                neg_max_sessions=neg.max_sessions,
                neg_max_items=neg.max_items,
                neg_frame_size_limit=neg.frame_size_limit,
                neg_opens_per_second=neg.opens_per_second,
            ),
            write=write_path(
                policies=write_policies,
                verifier=self.verifier,
                authors=self.authors,
                vanished=self.vanished,
                public_url=settings.relay.public_url,
                hooks=self.hooks,
                fan_out=self.fan_out,
                may_reach_anyone=self.may_reach_anyone,
                quota=self.quota,
                writer=self.writer,
            ),
            read=ReadPath(
                store=self.store,
                management=self.management,
                hooks=self.hooks,
                heavy_reads=self.heavy_reads,
                page_reads=self.page_reads,
                sync_budget=self.sync_budget,
                auth_required_to_read=settings.auth.required_to_read,
            ),
            verifier=self.verifier,
            metrics=self.metrics,
            index=self.index,
            ips=self.ips,
            filter_limits=FilterLimits(
                limits.max_filters,
                limits.max_limit,
                limits.default_limit,
                settings.search.indexed_kinds(),
                settings.negentropy.max_items,
            ),
            spawn=self.spawn,
            session_notice=self.hooks.session_notice if self.hooks.session_notices else None,
        )
        self.router = HttpRouter()
        self.connections: set[Connection] = set()
        self.sessions: set[RelayProtocol] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._background: list[asyncio.Task[None]] = []
        self._server: asyncio.Server | None = None
        self._metrics_server: asyncio.Server | None = None
        self._announced = False  # start() completed and said so
        # Every open connection of the public listener (sized at start from the open-file limit)
        self.slots = ConnectionSlots(settings.limits.max_connections, None, settings.limits.ipv6_prefix)
        self._info_json = b""
        self._info_html = b""
        self._info_base: dict[str, Any] = {}
        self._info_state: object = None

    @property
    def closing(self) -> bool:
        return self.deps.closing

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

    def may_reach_anyone(self, event: Event) -> bool:
        """Whether an accepted ephemeral event could reach a live subscriber: one here whose
        filters match and who may see it (NIP-42 private kinds, NIP-86 bans), or any on other
        processes or nodes, which this node cannot see (then always True)."""
        if self.bus.reaches_other_nodes:
            return True
        return any(subscriber.can_see(event) for subscriber, _ in self.index.matching(event))

    def fan_out(self, event: Event) -> None:
        """Hand an accepted ephemeral event to live subscriptions here and on other nodes."""
        self.index.publish(event)
        self.bus.publish([event])

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"ws://{self.settings.server.host}:{self.port}"

    async def start(
        self,
        *,
        reuse_port: bool = False,
        sock: socket.socket | None = None,
        metrics_sock: socket.socket | None = None,
    ) -> None:
        """Open the store, start the stages, listen (on ``sock`` when given: a socket the
        caller bound already, e.g. to port 0; metrics on ``metrics_sock`` when given: the
        one ``--workers``' supervisor bound for all its workers). ``ListenError`` (one
        line) when an address is taken."""
        soft_limit, _ = raise_soft_limit()  # before the store and the wallet open anything
        await self.store.open()
        self.identity = save_new_key(self.identity)  # a new key is kept only by a relay whose store opened
        await self.vanished.load()
        await self.management.load()
        self.verifier.start()
        self.writer.start()
        await self.bus.start(self.index.publish)
        await self.hooks.start()
        info = nip11.build_info(self.settings, {**self.hooks.nip11(), "self": self.identity.pubkey})
        profile = self.hooks.profile()
        if profile:
            # The profile exists to be found and zapped (NIP-57): published when a plug-in
            # gives it something to say (a lud16 that can be paid).
            await self._publish_profile(profile)
        info["supported_nips"] = sorted({*info["supported_nips"], 86})  # NIP-86 management API
        self._info_base = info
        self._refresh_info()
        self.console = Console(
            settings=self.settings,
            store=self.store,
            metrics=self.metrics,
            management=self.management,
            extension_panels=self.hooks.console_panels,
            problems=self.hooks.problems,
        )
        self.router.add(self.console.handle)  # /admin: the operator console, before any other route
        self.router.add(self._management_route)
        self.router.add(self._core_routes)
        self.router.add(self.hooks.route)
        self.router.add(self._home_page)
        self._background.append(asyncio.create_task(self._purge_loop(), name="purge-expired"))
        self._background.append(asyncio.create_task(self.vanished.watch(), name="nip62-refresh"))
        self._background.append(asyncio.create_task(self.management.watch(), name="nip86-refresh"))
        if self.settings.admin.pubkeys:  # without operators nobody can open the console
            self._background.append(asyncio.create_task(self.console.run(), name="console-samples"))
        srv = self.settings.server
        self._background.append(asyncio.create_task(self._keepalive_loop(srv.ping_interval_seconds), name="keepalive"))
        limits = self.settings.limits
        options = ShellOptions(
            max_message_bytes=limits.max_message_length,
            max_body_bytes=srv.max_request_body_bytes,
            header_timeout=srv.http_header_timeout_seconds,
            body_timeout=srv.http_body_timeout_seconds,
            outgoing_queue_bytes=limits.outgoing_queue_bytes,
            compression=srv.compression,
            real_ip_header=srv.real_ip_header,
        )
        budget = plan_connections(
            soft_limit, open_descriptors(), limits.max_connections, metrics=srv.metrics_address() is not None
        )
        if budget.limited_by_descriptors:
            log.warning(
                "open-file limit %d is too low for max_connections = %d: with %d descriptors kept for the "
                "database, wallet, logs and accept queue, at most %d connections are served; raise the "
                "service's limit (systemd LimitNOFILE=, ulimit -n) to %d",
                budget.soft_limit, budget.wanted, budget.reserved, budget.connections, budget.limit_needed,
            )
        # Every connection, HTTP phase included, takes a slot; the HTTP share per address
        # group is not kept behind a proxy (every connection comes from its address).
        http_share = limits.max_connections_per_ip if srv.real_ip_header is None else None
        self.slots = ConnectionSlots(budget.connections, http_share, limits.ipv6_prefix)
        factory = create_factory(
            self, options, self.sessions, self.metrics.slow_clients_dropped.inc, self.slots, self._refused
        )
        loop = asyncio.get_running_loop()
        if sock is not None:
            self._server = await loop.create_server(factory, sock=sock, backlog=budget.backlog)
        else:
            try:
                self._server = await loop.create_server(
                    factory, srv.host, srv.port, reuse_port=reuse_port or None, backlog=budget.backlog
                )
            except OSError as exc:
                hint = "is another relay running? set server.port or --port"
                raise listen_error(srv.host, srv.port, exc, setting="", hint=hint) or exc from None
        await self._start_metrics_listener(options, metrics_sock)
        self._announced = True
        log.info(
            "satsrelay listening on ws://%s:%d (store %s, plug-ins: %s)",
            srv.host,
            self.port,
            redact_url(self.settings.storage.url),
            self.hooks.describe(),
        )
        links = self.hooks.links()
        for line in where_next(self.settings, self.metrics_port, links):
            log.info("%s", line)

    async def publish_own(self, event: Event) -> WriteOutcome:
        """Store and fan out an event the relay signed itself (its profile, zap receipts):
        the write policies and the gate are for clients, not for the relay's own key."""
        return await self.writer.submit(WriteRequest(event))

    async def _publish_profile(self, fields: Mapping[str, Any]) -> None:
        """The relay's kind-0 profile, re-signed only when its content changed (NIP-01
        replaceable: a restart does not churn it)."""
        content = profile_content(self.settings, fields)
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
        self.deps.closing = True
        if self._server is not None:
            self._server.close()
        if self._metrics_server is not None:
            self._metrics_server.close()
        for task in self._background:
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=grace)
        await self.writer.close()
        await self.bus.stop()
        await asyncio.gather(*(c.close(grace=grace) for c in list(self.connections)), return_exceptions=True)
        await self.hooks.stop()
        await self.verifier.close()
        await self.store.close()
        if self._announced:  # a relay that never started has nothing to announce
            log.info("satsrelay stopped")

    async def _keepalive_loop(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval / 2)
            keepalive_sweep(self.sessions, interval, time.monotonic())

    async def _purge_loop(self) -> None:
        interval = self.settings.storage.purge_interval_seconds
        while True:
            try:
                purged = await self.store.purge_expired(int(time.time()))
                if purged:
                    log.info("purged %d expired events", purged)
                retention = self.settings.retention
                if retention.kinds:
                    aged = await purge_old_events(
                        self.store, retention.max_age(), int(time.time()), retention.purge_batch
                    )
                    if aged:
                        log.info("retention: purged %d events past their kind's maximum age", aged)
            except Exception:
                log.exception("purging expired events failed; will retry")
            await asyncio.sleep(interval)

    # --- the shell's hooks (relay.net.transport.ShellHooks) ------------------------------

    def admit_websocket(self, ip: str) -> HttpResponse | None:
        if self.management.ip_blocked(ip):  # NIP-86 blockip
            return response(HTTPStatus.FORBIDDEN, b"your address is blocked\n", "text/plain")
        if self.ips.admit(ip):
            return None
        # Retry-After (RFC 9110): a client that reconnects in a loop learns when to come back.
        retry = [("Retry-After", "10")]
        reason = self.ips.refusal(ip) or "per-ip-limit"
        self._refused(ip, reason)
        if reason == "global-limit":
            return response(HTTPStatus.SERVICE_UNAVAILABLE, b"relay is full, try again later\n", "text/plain", retry)
        return response(HTTPStatus.TOO_MANY_REQUESTS, b"too many connections\n", "text/plain", retry)

    def _refused(self, ip: str, reason: str) -> None:
        """Count and log (at most one line per reason per 10 s) a connection refused (or,
        "evicted", closed to make room for another address group: ``ConnectionSlots``)."""
        if reason == "evicted":
            self.metrics.connections_evicted.inc()
        else:
            self.metrics.connections_rejected.labels(reason).inc()
        suppressed = self._refusal_log.ready(reason, time.monotonic())
        if suppressed is None:
            return
        more = f" ({suppressed} more since the last line)" if suppressed else ""
        if reason == "evicted":
            log.warning("closed a connection from %s to make room: its address group held the most%s", ip, more)
            return
        if reason != "global-limit":
            what = "too many open connections"
        elif self.slots.capacity < self.settings.limits.max_connections:
            what = f"the relay is at the {self.slots.capacity} connections its open-file limit allows"
        else:
            what = "the relay is at max_connections"
        log.warning("rejected connection from %s: %s%s", ip, what, more)

    def open_websocket(self, link: WebSocketLink, ip: str) -> MessageSink:
        conn = Connection(self.deps, link, ip)
        self.connections.add(conn)
        self.metrics.connections.inc()
        conn.start()
        return _Tracked(self, conn)

    def release_websocket(self, ip: str) -> None:
        self.ips.release(ip)

    # --- HTTP routes -------------------------------------------------------------------

    def _refresh_info(self) -> None:
        """NIP-11 document and page: the configured ``[relay]`` info with the NIP-86
        name/description/icon overrides, rebuilt when the management state changes."""
        state = self.management.state
        info = {**self._info_base, **{k: v for k, v in state.relay.items() if k in ("name", "description", "icon")}}
        self._info_json = orjson.dumps(info)
        self._info_html = nip11.render_html(info, nip11.retention_lines(self.settings.retention.max_age())).encode()
        self._info_state = state

    async def _management_route(self, request: HttpRequest) -> HttpResponse | None:
        """NIP-86: a POST with Content-Type application/nostr+json+rpc to the relay's URL."""
        content_type = request.headers.get("Content-Type").split(";")[0].strip().lower()
        if request.method != "POST" or content_type != "application/nostr+json+rpc":
            return None
        public = self.settings.relay.public_url.rstrip("/")
        http = http_url(public)
        urls = (http, http + "/", public, public + "/")
        status, body = await self.management.handle_http(
            request.body,
            request.headers.get("Authorization") or None,
            urls=urls,
            admins=frozenset(self.settings.admin.pubkeys),
            now=int(time.time()),
        )
        return response(HTTPStatus(status), body, "application/json", CORS_HEADERS)

    async def _core_routes(self, request: HttpRequest) -> HttpResponse | None:
        if request.method == "OPTIONS":
            return response(HTTPStatus.NO_CONTENT, b"", "text/plain", CORS_HEADERS)
        if self.management.state is not self._info_state:
            self._refresh_info()
        if request.accepts("application/nostr+json") and request.method in ("GET", "HEAD"):
            return response(HTTPStatus.OK, self._info_json, "application/nostr+json", CORS_HEADERS)
        if request.path == "/metrics":
            return self._public_metrics(request.headers.get("Authorization") or None)
        return None

    async def _home_page(self, request: HttpRequest) -> HttpResponse | None:
        if request.path == "/" and request.method in ("GET", "HEAD"):
            return response(HTTPStatus.OK, self._info_html, "text/html; charset=utf-8")
        return None

    # --- /metrics: operational data (revenue, rejections), never public ------------------

    def _metrics_response(self) -> HttpResponse:
        return response(HTTPStatus.OK, self.metrics.render(), "text/plain; version=0.0.4; charset=utf-8")

    def _public_metrics(self, authorization: str | None) -> HttpResponse:
        """On the public port /metrics exists only with ``metrics_token``, to its bearer."""
        token = self.settings.server.metrics_token
        if token is None:
            return not_found()
        expected = f"Bearer {token.get_secret_value()}".encode()
        if authorization is None or not hmac.compare_digest(authorization.encode(), expected):
            return response(HTTPStatus.UNAUTHORIZED, b"unauthorized\n", "text/plain", [("WWW-Authenticate", "Bearer")])
        return self._metrics_response()

    async def _start_metrics_listener(self, options: ShellOptions, sock: socket.socket | None) -> None:
        """``[server] metrics_listen``: a second listener (loopback by default) that answers
        /metrics and nothing else, for a local Prometheus scraper.

        Never SO_REUSEPORT: with it a second relay on the same host bound the default
        address too and the kernel split scrapes between two unrelated relays. A relay
        alone binds it itself and exits naming it when it is taken; the workers of
        ``--workers`` accept on the one socket their supervisor bound (``sock``), each
        answering with its own process's counters."""
        address = self.settings.server.metrics_address()
        if address is None:
            return
        hooks = _MetricsOnly(self)
        slots = ConnectionSlots(METRICS_CONNECTIONS, None, self.settings.limits.ipv6_prefix)
        factory = create_factory(hooks, options, set(), lambda: None, slots, self._metrics_refused)
        host, port = address
        if sock is None:
            sock = bind_listening_socket(host, port, setting=" (server.metrics_listen)", hint=METRICS_IN_USE_HINT)
        self._metrics_server = await asyncio.get_running_loop().create_server(
            factory, sock=sock, backlog=METRICS_BACKLOG
        )

    def _metrics_refused(self, ip: str, reason: str) -> None:
        suppressed = self._refusal_log.ready("metrics", time.monotonic())
        if suppressed is not None:
            more = f" ({suppressed} more since the last line)" if suppressed else ""
            log.warning("rejected a metrics connection from %s: %d open already%s", ip, METRICS_CONNECTIONS, more)

    @property
    def metrics_port(self) -> int | None:
        if self._metrics_server is None:
            return None
        return int(self._metrics_server.sockets[0].getsockname()[1])


def where_next(settings: Settings, metrics_port: int | None, links: Mapping[str, str]) -> list[str]:
    """The start-up log's pointers for an operator: the address clients add, the
    plug-ins' pages (the join page), the console (or how to turn it on), the metrics."""
    public = settings.relay.public_url
    lines = [f"clients connect to {public}"]
    lines += [f"{label}: {url}" for label, url in links.items()]
    console = http_url(public) + "/admin"
    if settings.admin.pubkeys:
        lines.append(f"operator console: {console} (sign in with a NIP-07 extension holding an [admin] pubkeys key)")
    else:
        lines.append(f"operator console: {console} opens once [admin] pubkeys names your hex pubkey")
    address = settings.server.metrics_address()
    if address is None or metrics_port is None:
        lines.append("metrics: off ([server] metrics_listen is empty)")
    else:
        host = f"[{address[0]}]" if ":" in address[0] else address[0]
        lines.append(f"metrics (Prometheus): http://{host}:{metrics_port}/metrics")
    return lines


class _MetricsOnly:
    """The metrics listener's side of the shell: /metrics, nothing else, no WebSocket."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.router = HttpRouter()
        self.router.add(self._metrics)

    async def _metrics(self, request: HttpRequest) -> HttpResponse | None:
        return self.relay._metrics_response() if request.path == "/metrics" else None

    def admit_websocket(self, ip: str) -> HttpResponse | None:
        return not_found()

    def open_websocket(self, link: WebSocketLink, ip: str) -> MessageSink:
        raise AssertionError("the metrics listener admits no WebSocket")

    def release_websocket(self, ip: str) -> None:
        pass


class _Tracked:
    """A connection as the shell holds it: its end also updates the relay's bookkeeping."""

    __slots__ = ("conn", "relay")

    def __init__(self, relay: Relay, conn: Connection) -> None:
        self.relay = relay
        self.conn = conn

    def receive(self, message: bytes) -> None:
        self.conn.receive(message)

    def connection_lost(self) -> None:
        self.conn.connection_lost()
        self.relay.connections.discard(self.conn)
        self.relay.metrics.connections.dec()


GC_THRESHOLDS = (50_000, 20, 100)


def _tune_gc() -> None:
    """Keep the cyclic garbage collector from pausing fan-out.

    With 1,000 connections a full (generation 2) collection walks every per-connection object
    and stalled the loop for ~60 ms once every few seconds: one event in a hundred reached
    its subscribers that late (bench fanout p99 83 ms). Freezing what start-up allocated and
    collecting the young generation less often (CPython's default is 700, 10, 10) took p99 to
    26 ms. Reference counting still frees acyclic garbage at once; only cycles wait longer.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


async def run(relay: Relay, metrics_sock: socket.socket | None = None) -> None:
    """Serve until SIGTERM or SIGINT, then shut down gracefully."""
    # Handlers first: a SIGTERM that arrives while the relay starts (systemd stopping it,
    # a supervisor) is a graceful stop once it has started, not death by the default
    # action with the port already open (exit -15, events in flight unanswered).
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await relay.start(reuse_port=relay.settings.server.reuse_port, metrics_sock=metrics_sock)
    except BaseException:
        # A relay that cannot start (port taken, store unreachable) must exit, not linger
        # with its writer, verifier and store threads alive; the CLI reports the cause.
        await relay.stop()
        raise
    _tune_gc()
    await stop.wait()
    log.info("shutting down")
    await relay.stop()
