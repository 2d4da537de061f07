"""The seam through which an optional package (payments, today) plugs into the relay.

The relay core knows nothing about payments. An installed distribution declares a plug-in
under the ``satsrelay.extensions`` entry-point group (pyproject.toml); at start-up the
composition root (``relay.app``) finds it with ``importlib.metadata``, gives it its own
config section to validate (``[payments]`` is the payments plug-in's ``section``), lets
it add CLI commands, and asks it to build at most one running ``Extension``. The relay
then calls that extension at the points where a paid relay differs from a free one: the
write gate, extra HTTP routes, and extra NIP-11 fields.
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel

from relay.event import Event
from relay.filters import Filter
from relay.http import HttpRequest, HttpResponse

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from relay.config import Settings
    from relay.identity import RelayIdentity
    from relay.store.base import Store, WriteOutcome

ENTRY_POINT_GROUP = "satsrelay.extensions"


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


ManagementMethod = Callable[[list[Any]], Awaitable[Any]]
"""An extension's NIP-86 method: the request's ``params`` in, the JSON-able ``result`` out.
Raise ``ValueError`` for bad params: its message becomes the answer's ``error``. Return
``Changed(result)`` when the call changed something."""


@dataclass(frozen=True, slots=True)
class Changed:
    """A ``ManagementMethod``'s result when the call changed state (a grant, a revoke): the
    relay answers ``result`` and logs the request with the admin's pubkey, as it logs the
    NIP's own changes; reads are answered without a log line."""

    result: Any

PanelRender = Callable[[Mapping[str, str]], Awaitable[dict[str, Any]]]
"""A console panel: the page's query parameters in, its document out (relay/console_blocks.py)."""


@dataclass(frozen=True, slots=True)
class ConsolePanel:
    """One page of the operator console (``/admin``), shown to admins only: the console
    checks NIP-98 and ``[admin] pubkeys`` before ``render`` is called."""

    name: str  # URL segment: GET /admin/api/panel/<name>
    title: str  # its tab in the console
    render: PanelRender


class Extension(Protocol):
    async def start(self) -> None:
        """Start background tasks (e.g. the payment watcher)."""

    async def stop(self) -> None: ...

    async def admit(self, event: Event, ctx: WriteContext) -> tuple[object, ...]:
        """The write gate, called after every other check passed and the signature was
        verified. Return what the event's ``WriteRequest`` carries to the plug-in's write
        hook (e.g. its price, taken in the event's own transaction: ``relay.store.database``),
        ``()`` for nothing; raise a ``Rejection`` (``restricted: ...; pay at <url>``,
        ``blocked: ...``) to refuse. An ephemeral event never reaches the store: whatever it
        costs, the gate takes before returning."""
        ...

    async def req_events(self, filters: tuple[Filter, ...], authed: frozenset[str]) -> list[bytes]:
        """Events made for this REQ on the fly (NIP-43 invite codes, kind 28935), sent
        before the stored ones and never stored; raise a ``Rejection`` to close the REQ."""
        ...

    async def is_member(self, pubkey: str, now: int) -> bool:
        """A paying (or operator-allowed) account in good standing: the larger storage
        quota applies (``retention.member_max_bytes_per_pubkey``)."""
        ...

    async def handle_http(self, request: HttpRequest) -> HttpResponse | None:
        """Answer an HTTP request the relay does not handle itself (any method, with its
        body), or None to pass."""
        ...

    def nip11(self) -> dict[str, Any]:
        """Fields merged into the NIP-11 document (``limitation`` is merged key by key)."""
        ...

    def describe(self) -> str:
        """One word or two for the start-up log line (e.g. the wallet backend)."""
        ...

    def links(self) -> Mapping[str, str]:
        """Its own pages the start-up log names (label -> URL), e.g. the join page."""
        ...

    def problems(self) -> Sequence[str]:
        """What the operator must fix now, one sentence each (a wallet that does not
        answer); the console's overview shows them first. Empty when all is well."""
        ...

    def management_methods(self) -> Mapping[str, ManagementMethod]:
        """Extra NIP-86 methods, named ``<section>.<verb>`` (e.g. ``payments.grant``) so they
        never collide with the NIP's own; listed by ``supportedmethods``, called only for
        admins (NIP-98), like the NIP's methods."""
        ...

    def console_panels(self) -> Sequence[ConsolePanel]:
        """Extra pages of the operator console, after the relay's own."""
        ...


SettingsLoader = Callable[[argparse.Namespace], "Settings"]


@dataclass(frozen=True, slots=True)
class ExtensionHost:
    """What the relay offers an extension beyond its store: its own key, and a way to
    store and fan out events it signs itself (its profile, NIP-57 zap receipts), past the
    write policies and the gate, which are for clients."""

    identity: RelayIdentity
    publish: Callable[[Event], Awaitable[WriteOutcome]]


class ExtensionPlugin(Protocol):
    """What an entry point in ``satsrelay.extensions`` names (an object, not a class)."""

    section: str  # its top-level config section, e.g. "payments"
    settings_model: type[BaseModel]  # validates that section (extra keys refused)

    def build(
        self, settings: Settings, store: Store, registry: CollectorRegistry, host: ExtensionHost
    ) -> Extension | None:
        """The running extension, or None when its section leaves it disabled."""
        ...

    def add_commands(
        self,
        sub: argparse._SubParsersAction[argparse.ArgumentParser],
        common: argparse.ArgumentParser,
        load: SettingsLoader,
    ) -> None:
        """Add its ``satsrelay`` subcommands."""
        ...


class PluginError(Exception):
    """An installed plug-in is broken; the message names it."""


def discover_plugins() -> list[ExtensionPlugin]:
    """Every installed plug-in, in entry-point name order (deterministic)."""
    found: list[ExtensionPlugin] = []
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        try:
            plugin = ep.load()
        except Exception as exc:
            raise PluginError(f"extension {ep.name!r} ({ep.value}) cannot be loaded: {exc}") from exc
        for attr in ("section", "settings_model", "build", "add_commands"):
            if not hasattr(plugin, attr):
                raise PluginError(f"extension {ep.name!r} ({ep.value}) has no {attr!r}")
        found.append(plugin)
    return found
