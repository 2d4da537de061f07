"""The seam through which an optional package (``lightning``) plugs into the relay.

The relay core knows nothing about payments: at start-up the server builds at most one
``Extension`` and calls it at the three points where a paid relay differs from a free
one: the write gate, extra HTTP routes, and extra NIP-11 fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from websockets.http11 import Request, Response

from relay.errors import Rejection
from relay.event import Event
from relay.filters import Filter


@dataclass(frozen=True, slots=True)
class WriteContext:
    """What a write gate may know about the connection an event came in on."""

    now: int
    authed: frozenset[str]  # pubkeys authenticated on this connection (NIP-42)
    ip: str


class Answered(Exception):
    """Raised by ``Extension.admit`` for an event addressed to the relay itself (NIP-43
    join and leave requests): the OK is the whole answer, the event is neither stored nor
    relayed."""

    def __init__(self, accepted: bool, message: str) -> None:
        super().__init__(message)
        self.accepted = accepted
        self.message = message


class Extension(Protocol):
    async def start(self) -> None:
        """Start background tasks (e.g. the payment watcher)."""

    async def stop(self) -> None: ...

    async def admit(self, event: Event, ctx: WriteContext) -> int:
        """The write gate, called after every other check passed and the signature was
        verified. Return the charge in msat (0 for free); raise a ``Rejection``
        (``restricted: ...; pay at <url>``, ``blocked: ...``) to refuse."""
        ...

    async def req_events(self, filters: tuple[Filter, ...], authed: frozenset[str]) -> list[bytes]:
        """Events made for this REQ on the fly (NIP-43 invite codes, kind 28935), sent
        before the stored ones and never stored; raise a ``Rejection`` to close the REQ."""
        ...

    def insufficient_credit(self, event: Event) -> Rejection:
        """The refusal when the charge failed at commit (credit ran out meanwhile)."""
        ...

    async def handle_http(self, request: Request, client_ip: str) -> Response | None:
        """Answer an HTTP GET/OPTIONS the relay does not handle itself, or None.
        (websockets accepts no request bodies, so every route is a GET.)"""
        ...

    def nip11(self) -> dict[str, Any]:
        """Fields merged into the NIP-11 document (``limitation`` is merged key by key)."""
        ...
