"""The network shell: one ``asyncio.Protocol`` per TCP connection, HTTP/1.1 through h11,
and on ``Upgrade: websocket`` websockets' sans-I/O ``ServerProtocol`` driven by it.

Why our own shell rather than websockets' asyncio server: plain HTTP needs request bodies
and keep-alive (NIP-86, plug-ins' POST forms), which websockets' ``process_request``
cannot give; and a callback-driven connection holds no task, no keep-alive timer and no
receive queue of its own while idle (idle RSS per connection is a measured target).

HTTP: requests are read one at a time (pipelined ones wait in h11's buffer), bodies up to
``server.max_request_body_bytes`` (413 beyond), headers within
``server.http_header_timeout_seconds`` of the connection or the previous response, bodies
within ``server.http_body_timeout_seconds``. Each response carries Content-Length; the
connection stays open unless the client asked to close (then ``Connection: close`` is sent
and the socket closed after the response).

WebSocket: the upgrade request is handed, as bytes, to ``ServerProtocol`` which validates
the handshake (and negotiates permessage-deflate when configured); from then on every
received chunk goes to ``receive_data``, complete messages to the ``Connection``, and
``data_to_send`` to the transport. Outgoing frames produced in one loop turn leave in one
``transport.write``. ``pause_writing``/``resume_writing`` feed the per-connection byte
bound (``relay.net.outbox``). Only the documented sans-I/O API of websockets is used
(tests/test_websockets_api.py names it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Protocol, cast

import h11
from websockets.extensions.base import ServerExtensionFactory
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.frames import Frame, Opcode
from websockets.http11 import Request as WsRequest
from websockets.protocol import State
from websockets.server import ServerProtocol

from relay.net.http import HttpHeaders, HttpRequest, HttpResponse, HttpRouter, response
from relay.net.outbox import Outbox
from relay.net.slots import ConnectionSlots
from relay.net.throttled_log import ThrottledLog

log = logging.getLogger(__name__)
# A client decides when it is dropped for not reading (and can reconnect to be dropped
# again): one WARNING line each, throttled.
_slow_client_log = ThrottledLog(log)

MAX_HEADER_BYTES = 16 * 1024  # request line + headers (h11 answers 431 past it)
INBOX_PAUSE = 64  # client messages waiting behind a running REQ before we stop reading
CLOSE_TIMEOUT = 5.0  # seconds a closing handshake may take before the socket is cut
LINGER_SECONDS = 2.0  # after a 413, how long the rest of the refused body is read and dropped
TOO_MANY_CONNECTIONS = (
    b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: text/plain\r\nRetry-After: 10\r\n"
    b"Connection: close\r\nContent-Length: 21\r\n\r\ntoo many connections\n"
)
RELAY_FULL = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nRetry-After: 10\r\n"
    b"Connection: close\r\nContent-Length: 31\r\n\r\nrelay is full, try again later\n"
)
GOING_AWAY_FULL = 1013  # RFC 6455 "Try Again Later": closed to make room (ConnectionSlots)


class MessageSink(Protocol):
    """What the shell delivers WebSocket messages to (``relay.session.connection.Connection``)."""

    def receive(self, message: bytes) -> None: ...

    def connection_lost(self) -> None: ...


class WebSocketLink(Protocol):
    """What a ``Connection`` may do to its socket: the narrow side of the shell."""

    def send_text(self, payload: bytes) -> None: ...

    def close(self, code: int, reason: str) -> None: ...

    def abort(self) -> None: ...

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    @property
    def queued_bytes(self) -> int:
        """Bytes of frames waiting in our queue (the transport is pushing back)."""
        ...

    async def drained(self) -> None:
        """Return once the queue is empty and the transport takes writes (or the
        connection is gone)."""
        ...

    def drop_slow_reader(self) -> None:
        """Cut a client that lets too much pile up (counted, logged, throttled)."""
        ...


@dataclass(frozen=True, slots=True)
class ShellOptions:
    max_message_bytes: int  # a WebSocket message past this closes the connection (1009)
    max_body_bytes: int
    header_timeout: float
    body_timeout: float
    outgoing_queue_bytes: int
    compression: bool
    real_ip_header: str | None


class ShellHooks(Protocol):
    """The relay seen from the shell."""

    router: HttpRouter

    def admit_websocket(self, ip: str) -> HttpResponse | None:
        """Take a connection slot for ``ip``; or the HTTP refusal (429 per address, 503 when
        the relay is full) sent instead of the upgrade."""
        ...

    def open_websocket(self, link: WebSocketLink, ip: str) -> MessageSink: ...

    def release_websocket(self, ip: str) -> None: ...


def deflate_extensions(enabled: bool) -> list[ServerExtensionFactory] | None:
    """permessage-deflate (RFC 7692) through websockets' extension, with the settings its
    own server defaults to (12-bit windows, memLevel 5: ~40 KiB per connection, measured)."""
    if not enabled:
        return None
    return [
        ServerPerMessageDeflateFactory(
            server_max_window_bits=12, client_max_window_bits=12, compress_settings={"memLevel": 5}
        )
    ]


class RelayProtocol(asyncio.Protocol):
    """One TCP connection: HTTP/1.1 requests until (maybe) a WebSocket upgrade.

    Slotted, and what only some connections need (a request body, drain waiters) is made on
    first use: an idle connection's size is a measured target (``bench idle_alloc``)."""

    __slots__ = (
        "_body",
        "_body_size",
        "_drain_waiters",
        "_extensions",
        "_flush_scheduled",
        "_fragments",
        "_handling",
        "_hooks",
        "_http",
        "_lingering",
        "_loop",
        "_lost",
        "_on_refused",
        "_on_slow_drop",
        "_options",
        "_outbox",
        "_reading_paused",
        "_request",
        "_sessions",
        "_sink",
        "_slots",
        "_timer",
        "_transport",
        "_ws",
        "ip",
        "last_seen",
        "pinged",
    )

    def __init__(
        self,
        hooks: ShellHooks,
        options: ShellOptions,
        extensions: list[ServerExtensionFactory] | None,
        sessions: set[RelayProtocol],
        on_slow_drop: Callable[[], None],
        slots: ConnectionSlots,
        on_refused: Callable[[str, str], None],
    ) -> None:
        self._hooks = hooks
        self._slots = slots
        self._on_refused = on_refused
        self._on_slow_drop = on_slow_drop
        self._options = options
        self._extensions = extensions
        self._sessions = sessions
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        self.ip = "unknown"
        # HTTP phase
        self._http: h11.Connection | None = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
        self._request: h11.Request | None = None
        self._body: list[bytes] | None = None  # a request's body chunks, once one arrives
        self._body_size = 0
        self._timer: asyncio.TimerHandle | None = None
        self._handling = False
        self._lingering = False  # answered 413: what still arrives is dropped (_linger)
        # WebSocket phase
        self._ws: ServerProtocol | None = None
        self._sink: MessageSink | None = None
        self._fragments: list[bytes] | None = None
        self._outbox: Outbox | None = None
        self._flush_scheduled = False
        self._drain_waiters: list[asyncio.Future[None]] | None = None
        self._reading_paused = False
        self.last_seen = 0.0  # monotonic time of the last bytes received (keep-alive sweep)
        self.pinged = False
        self._lost = False

    # --- asyncio.Protocol ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCPTransport implements asyncio.Transport without subclassing it
        self._transport = cast(asyncio.Transport, transport)
        peer = self._transport.get_extra_info("peername")
        self.ip = str(peer[0]) if peer else "unknown"
        refusal = self._slots.admit(self, self.ip)
        if refusal is not None:
            # Refused before a byte is parsed: one short answer, then the socket closes.
            self._transport.write(TOO_MANY_CONNECTIONS if refusal == "per-ip-limit" else RELAY_FULL)
            self._transport.close()
            self._on_refused(self.ip, refusal)
            return
        self._arm(self._options.header_timeout)

    @property
    def idle_http(self) -> bool:
        """Still in HTTP with no request being served: closing it loses nothing in progress."""
        return self._ws is None and not self._handling

    def evict(self) -> None:
        """Closed to make room for a connection from a group holding fewer (ConnectionSlots):
        a WebSocket hears why (1013, try again later); the socket is cut at once either way,
        since the point is its descriptor."""
        ws = self._ws
        if ws is not None and ws.state is State.OPEN and not self._lost:
            ws.send_close(GOING_AWAY_FULL, "relay is full, try again later")
            self._write_pending()
        if self._outbox is not None:
            self._outbox.clear()
        self._abort()
        self._on_refused(self.ip, "evicted")

    def data_received(self, data: bytes) -> None:
        ws = self._ws
        if ws is not None:
            self.last_seen = time.monotonic()
            self.pinged = False
            ws.receive_data(data)
            self._ws_events()
            return
        if self._lingering:
            return
        if self._http is not None:
            try:
                self._http.receive_data(data)
            except h11.RemoteProtocolError:
                self._abort()
                return
            if not self._handling:
                self._http_events()

    def eof_received(self) -> bool | None:
        if self._ws is not None:
            self._ws.receive_eof()
            self._ws_events()
        return None  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._slots.release(self)
        self._cancel_timer()
        if self._sink is not None:
            sink, self._sink = self._sink, None
            self._sessions.discard(self)
            self._hooks.release_websocket(self.ip)
            sink.connection_lost()
        if self._outbox is not None:
            self._outbox.clear()
        self._wake_drained()

    def pause_writing(self) -> None:
        if self._outbox is not None:
            self._outbox.paused = True

    def resume_writing(self) -> None:
        outbox = self._outbox
        if outbox is None or self._ws is None:
            return
        outbox.paused = False
        for frame in outbox.take_all():
            self._ws.send_text(frame)
        self._flush()
        if not outbox.paused:
            self._wake_drained()

    def _wake_drained(self) -> None:
        waiters, self._drain_waiters = self._drain_waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    # --- HTTP ------------------------------------------------------------------------

    def _arm(self, seconds: float) -> None:
        self._cancel_timer()
        self._timer = self._loop.call_later(seconds, self._timed_out)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        if self._http is not None and self._http.their_state is h11.SEND_BODY:
            self._send_simple(HTTPStatus.REQUEST_TIMEOUT, b"request body too slow\n")
            self._close_after_write()
            return
        self._abort()

    def _abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def _http_events(self) -> None:
        conn = self._http
        assert conn is not None
        while not self._lost:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                status = exc.error_status_hint
                if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                    self._send_simple(HTTPStatus(status), f"{HTTPStatus(status).phrase}\n".encode())
                self._close_after_write()
                return
            if event is h11.NEED_DATA:
                return
            if event is h11.PAUSED:
                if self._request is not None and _wants_websocket(self._request):
                    self._upgrade(self._request, conn.trailing_data[0])
                return  # otherwise: the next pipelined request waits for our response
            if isinstance(event, h11.Request):
                self._request = event
                self._body = None
                self._body_size = 0
                length = _content_length(event)
                if length is not None and length > self._options.max_body_bytes:
                    self._send_simple(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, b"request body too large\n")
                    self._linger()
                    return
                if _wants_websocket(event):
                    continue  # h11 pauses after the (empty) end of message: see PAUSED
                self._arm(self._options.body_timeout)
                if conn.they_are_waiting_for_100_continue:
                    self._write_h11(h11.InformationalResponse(status_code=100, headers=[]))
            elif isinstance(event, h11.Data):
                self._body_size += len(event.data)
                if self._body_size > self._options.max_body_bytes:
                    self._send_simple(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, b"request body too large\n")
                    self._linger()
                    return
                if self._body is None:
                    self._body = []
                self._body.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                request = self._request
                assert request is not None
                if _wants_websocket(request):
                    continue
                self._cancel_timer()
                self._handling = True
                self._transport_pause()
                body, self._body = b"".join(self._body or ()), None
                self._loop.create_task(self._serve(request, body))
                return
            elif isinstance(event, h11.ConnectionClosed):
                self._close_after_write()
                return

    async def _serve(self, event: h11.Request, body: bytes) -> None:
        request = HttpRequest(
            event.method.decode("ascii", "replace"),
            event.target.decode("ascii", "replace"),
            HttpHeaders((k.decode("latin-1"), v.decode("latin-1")) for k, v in event.headers),
            body,
            self._client_ip(HttpHeaders((k.decode("latin-1"), v.decode("latin-1")) for k, v in event.headers)),
        )
        try:
            answer = await self._hooks.router.dispatch(request)
        except Exception:
            log.exception("HTTP %s %s failed", request.method, request.path)
            answer = response(HTTPStatus.INTERNAL_SERVER_ERROR, b"internal error\n", "text/plain")
        if self._lost or self._http is None:
            return
        self._send_response(answer, head=request.method == "HEAD")
        self._handling = False
        conn = self._http
        if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
            self._close_after_write()
            return
        try:
            conn.start_next_cycle()
        except h11.LocalProtocolError:
            self._close_after_write()
            return
        self._arm(self._options.header_timeout)
        self._transport_resume()
        self._http_events()  # a pipelined request may already be buffered

    def _client_ip(self, headers: HttpHeaders) -> str:
        header = self._options.real_ip_header
        if header:
            value = headers.get(header)
            if value:
                return value.split(",")[0].strip()
        return self.ip

    def _send_response(self, answer: HttpResponse, *, head: bool = False) -> None:
        conn = self._http
        assert conn is not None
        headers = [(k, v) for k, v in answer.headers if k.lower() not in ("content-length", "connection")]
        headers.append(("Content-Length", str(len(answer.body))))
        if conn.their_state is h11.MUST_CLOSE or _asks_to_close(self._request):
            headers.append(("Connection", "close"))
        self._write_h11(h11.Response(status_code=answer.status, headers=headers, reason=_reason(answer.status)))
        if answer.body and not head:
            self._write_h11(h11.Data(data=answer.body))
        self._write_h11(h11.EndOfMessage())

    def _send_simple(self, status: HTTPStatus, body: bytes) -> None:
        """An error answer after which the connection is closed."""
        conn = self._http
        if conn is None or conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        headers = [("Content-Type", "text/plain"), ("Content-Length", str(len(body))), ("Connection", "close")]
        try:
            self._write_h11(h11.Response(status_code=status.value, headers=headers, reason=status.phrase.encode()))
            self._write_h11(h11.Data(data=body))
            self._write_h11(h11.EndOfMessage())
        except h11.LocalProtocolError:
            pass

    def _write_h11(self, event: h11.Event) -> None:
        assert self._http is not None and self._transport is not None
        data = self._http.send(event)
        if data:
            self._transport.write(data)

    def _close_after_write(self) -> None:
        self._cancel_timer()
        if self._transport is not None:
            self._transport.close()  # asyncio flushes the write buffer first

    def _linger(self) -> None:
        """Close after the answer, but read and drop what the client still sends for up to
        LINGER_SECONDS first (a lingering close, as nginx and Apache do): closing a socket
        with unread data in it sends a TCP reset, which can destroy the answer before the
        peer read it. Through Caddy, a body far over the limit got its client a 502 instead
        of this 413 (tests/test_deploy_proxy.py)."""
        self._lingering = True
        self._cancel_timer()
        if self._transport is None:
            return
        if self._transport.can_write_eof():
            self._transport.write_eof()  # sent once the answer is flushed
        self._transport_resume()
        self._timer = self._loop.call_later(LINGER_SECONDS, self._close_after_write)

    def _transport_pause(self) -> None:
        if self._transport is not None and not self._reading_paused:
            self._reading_paused = True
            self._transport.pause_reading()

    def _transport_resume(self) -> None:
        if self._transport is not None and self._reading_paused:
            self._reading_paused = False
            self._transport.resume_reading()

    # --- upgrade ---------------------------------------------------------------------

    def _upgrade(self, event: h11.Request, trailing: bytes) -> None:
        self._cancel_timer()
        headers = HttpHeaders((k.decode("latin-1"), v.decode("latin-1")) for k, v in event.headers)
        ip = self._client_ip(headers)
        refusal = self._hooks.admit_websocket(ip)
        if refusal is not None:
            self._send_response(refusal)
            self._close_after_write()
            return
        # Frames up to twice the advertised limit are read so an oversize EVENT still gets
        # a NIP-01 OK; past that the connection is closed (1009) to bound memory.
        ws = ServerProtocol(extensions=self._extensions, max_size=2 * self._options.max_message_bytes)
        # websockets parses and validates the handshake itself, from the request's bytes.
        ws.receive_data(_request_bytes(event))
        handshake = [e for e in ws.events_received() if isinstance(e, WsRequest)]
        self._http = None  # h11's buffers are not needed any more
        self._request = None
        if not handshake:
            self._hooks.release_websocket(ip)
            self._abort()
            return
        reply = ws.accept(handshake[0])
        ws.send_response(reply)
        # websockets' parser keeps the handshake request for the connection's life (a local
        # of its generator): its headers, a browser's cookies included, are not needed past
        # accept() (~2 KiB per idle connection, bench idle_alloc).
        handshake[0].headers.clear()
        self._ws = ws
        self._write_pending()
        if reply.status_code != 101:
            self._hooks.release_websocket(ip)
            self._ws = None
            self._close_after_write()
            return
        self.ip = ip
        self.last_seen = time.monotonic()
        self._outbox = Outbox(self._options.outgoing_queue_bytes)
        self._slots.leave_http(self)  # also counted by the relay's WebSocket table from here on
        self._sessions.add(self)
        self._sink = self._hooks.open_websocket(self, ip)
        if self._reading_paused:
            self._transport_resume()
        if trailing:
            self.data_received(trailing)

    # --- WebSocket: input -----------------------------------------------------------

    def _ws_events(self) -> None:
        ws = self._ws
        assert ws is not None
        sink = self._sink
        for event in ws.events_received():
            if not isinstance(event, Frame):
                continue
            opcode = event.opcode
            if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
                if event.fin:
                    if sink is not None:
                        sink.receive(bytes(event.data))
                else:
                    self._fragments = [bytes(event.data)]
            elif opcode is Opcode.CONT and self._fragments is not None:
                self._fragments.append(bytes(event.data))
                if event.fin:
                    message = b"".join(self._fragments)
                    self._fragments = None
                    if sink is not None:
                        sink.receive(message)
        self._write_pending()
        if ws.close_expected() and self._transport is not None:
            self._loop.call_later(CLOSE_TIMEOUT, self._transport.abort)

    # --- WebSocket: output (WebSocketLink) -------------------------------------------

    def send_text(self, payload: bytes) -> None:
        ws = self._ws
        outbox = self._outbox
        if ws is None or outbox is None or self._lost or ws.state is not State.OPEN:
            return
        if outbox.paused or len(outbox):
            if not outbox.push(payload):
                self.drop_slow_reader()
            return
        ws.send_text(payload)
        if not self._flush_scheduled:
            # Frames produced in one turn of the loop (the OKs of one group commit, a REQ's
            # stored events) leave in one socket write instead of one syscall each.
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    @property
    def queued_bytes(self) -> int:
        return self._outbox.queued_bytes if self._outbox is not None else 0

    async def drained(self) -> None:
        while not self._lost and self._outbox is not None and (self._outbox.paused or len(self._outbox)):
            waiter = self._loop.create_future()
            if self._drain_waiters is None:
                self._drain_waiters = []
            self._drain_waiters.append(waiter)
            await waiter

    @property
    def write_backlog(self) -> int:
        """Bytes waiting for the client: our queue plus the transport's buffer."""
        queued = self._outbox.queued_bytes if self._outbox is not None else 0
        buffered = self._transport.get_write_buffer_size() if self._transport is not None else 0
        return queued + buffered

    def _flush(self) -> None:
        self._flush_scheduled = False
        self._write_pending()

    def _write_pending(self) -> None:
        ws = self._ws
        transport = self._transport
        if ws is None or transport is None or self._lost:
            return
        chunks = ws.data_to_send()
        if not chunks:
            return
        data = [c for c in chunks if c]
        if data:
            transport.write(b"".join(data))
        if len(data) != len(chunks):  # b"": websockets asks for the end of the stream
            if transport.can_write_eof():
                transport.write_eof()
            else:
                transport.close()

    def close(self, code: int, reason: str) -> None:
        ws = self._ws
        if ws is None or self._lost:
            return
        if ws.state is State.OPEN:
            ws.send_close(code, reason)
            self._write_pending()
            if self._transport is not None:
                self._loop.call_later(CLOSE_TIMEOUT, self._transport.abort)

    def abort(self) -> None:
        if self._outbox is not None:
            self._outbox.clear()
        self._abort()

    def pause_reading(self) -> None:
        self._transport_pause()

    def resume_reading(self) -> None:
        self._transport_resume()

    def ping(self) -> None:
        ws = self._ws
        if ws is not None and ws.state is State.OPEN:
            self.pinged = True
            ws.send_ping(b"")
            self._write_pending()

    def drop_slow_reader(self) -> None:
        if self._outbox is None or self._lost:
            return
        _slow_client_log.warning("dropping slow client %s: %d bytes waiting to be sent", self.ip, self.write_backlog)
        self._outbox.clear()
        # A client that does not read cannot complete a closing handshake either: a close
        # frame would wait behind the very bytes it is not reading. Abort the TCP connection.
        self._abort()
        self._on_slow_drop()


def _content_length(event: h11.Request) -> int | None:
    for name, value in event.headers:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _wants_websocket(event: h11.Request) -> bool:
    return any(name == b"upgrade" and b"websocket" in value.lower() for name, value in event.headers)


def _asks_to_close(event: h11.Request | None) -> bool:
    if event is None:
        return False
    return any(name == b"connection" and b"close" in value.lower() for name, value in event.headers)


def _request_bytes(event: h11.Request) -> bytes:
    """The upgrade request as bytes again, for websockets' own handshake parser."""
    lines = [event.method + b" " + event.target + b" HTTP/1.1"]
    lines.extend(name + b": " + value for name, value in event.headers.raw_items())
    return b"\r\n".join(lines) + b"\r\n\r\n"


def keepalive_sweep(sessions: set[RelayProtocol], interval: float, now: float) -> None:
    """Ping WebSocket connections silent for ``interval``; cut those that stayed silent
    after a ping (one relay-wide timer instead of one keep-alive task per connection)."""
    for session in list(sessions):
        idle = now - session.last_seen
        if idle < interval:
            continue
        if session.pinged:
            session.abort()
        else:
            session.ping()


def create_factory(
    hooks: ShellHooks,
    options: ShellOptions,
    sessions: set[RelayProtocol],
    on_slow_drop: Callable[[], None],
    slots: ConnectionSlots,
    on_refused: Callable[[str, str], None],
) -> Callable[[], RelayProtocol]:
    """``on_refused(ip, reason)`` hears of each connection ``slots`` refused or evicted
    ("per-ip-limit", "global-limit", "evicted")."""
    extensions = deflate_extensions(options.compression)

    def factory() -> RelayProtocol:
        return RelayProtocol(hooks, options, extensions, sessions, on_slow_drop, slots, on_refused)

    return factory


def _reason(status: int) -> bytes:
    """The status line's reason phrase ("200 OK"): optional in HTTP/1.1, yet some clients and
    proxies log or show it, and h11 leaves it empty unless given."""
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""
