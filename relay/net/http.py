"""HTTP requests and responses as the relay's router sees them, and the router itself.

The network shell (``relay.net.transport``) parses HTTP/1.1 with h11 and hands every complete
request (headers and body) to one ``HttpRouter``: an ordered list of small handlers, each
answering a request or passing (None). The core registers NIP-11 (with CORS and the
OPTIONS preflight), the HTML page and ``/metrics``; an extension (payments) adds its own
handlers at start-up, the same way NIP-86 will. Nothing here touches a socket.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit


class HttpHeaders:
    """Request headers, looked up case-insensitively (RFC 9110); repeated fields are joined
    with ", " as the RFC allows for list-valued fields."""

    __slots__ = ("_fields",)

    def __init__(self, items: Iterable[tuple[str, str]]) -> None:
        fields: dict[str, str] = {}
        for name, value in items:
            key = name.lower()
            fields[key] = f"{fields[key]}, {value}" if key in fields else value
        self._fields = fields

    def get(self, name: str, default: str = "") -> str:
        return self._fields.get(name.lower(), default)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._fields


@dataclass(frozen=True, slots=True)
class HttpRequest:
    method: str
    target: str  # path and query as sent, e.g. "/api/thing/ab12?x=1"
    headers: HttpHeaders
    body: bytes
    client_ip: str

    @property
    def path(self) -> str:
        """The path without the query string."""
        return urlsplit(self.target).path

    def query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.target).query)

    def accepts(self, media_type: str) -> bool:
        return media_type in self.headers.get("Accept")


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)  # Content-Length is added by the shell


def response(
    status: HTTPStatus, body: bytes, content_type: str, extra: Iterable[tuple[str, str]] = ()
) -> HttpResponse:
    return HttpResponse(status.value, body, [("Content-Type", content_type), *extra])


def http_url(relay_url: str) -> str:
    """The http(s) origin of a ws(s):// relay URL, without a trailing slash: NIP-98 ``u``
    tags name http URLs, and the relay's pages link to each other through it."""
    url = relay_url.rstrip("/")
    for ws, http in (("wss://", "https://"), ("ws://", "http://")):
        if url.startswith(ws):
            return http + url[len(ws) :]
    return url


def not_found() -> HttpResponse:
    return response(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")


Handler = Callable[[HttpRequest], Awaitable[HttpResponse | None]]


class HttpRouter:
    """Handlers tried in order; the first response wins; none: 404."""

    def __init__(self) -> None:
        self._handlers: list[Handler] = []

    def add(self, handler: Handler) -> None:
        self._handlers.append(handler)

    async def dispatch(self, request: HttpRequest) -> HttpResponse:
        for handler in self._handlers:
            answer = await handler(request)
            if answer is not None:
                return answer
        return not_found()
