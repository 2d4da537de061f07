"""The core's hook lists: how plug-ins change what the relay does (khatru's model).

A plug-in (payments, a web-of-trust free tier, ...) never edits a handler and the core
never names a plug-in: each enabled plug-in hands the composition root one
``PluginHooks``, and ``Hooks`` keeps them in order and runs each list:

- ``write_gates``: after the cheap policies, verification and the per-author rate, every
  gate judges the event: ``Admit`` (free, or with ``attachments`` the plug-in's store
  write hook takes in the event's own transaction: a price, say), ``Refuse`` with a
  NIP-01 prefixed ``Rejection``, or None (no opinion). The first ``Admit`` wins, so a
  free tier listed before a paid one lets its members write free; a ``final`` refusal
  (a ban) ends the walk at once; otherwise the event is refused when a gate refused and
  none admitted, and the reply gives every way in ("...; or ..."). No opinion at all:
  admitted free (a relay without plug-ins is a free relay). A gate may raise
  ``Answered`` for an event addressed to the relay itself (NIP-43 requests).
- ``unstored_takers``: an admitted event that is never stored (ephemeral kinds) meets no
  store write hook, so what its gate attached (a price) is taken here, after the relay
  knows someone can receive it (NIP-01 ``mute:`` takes nothing) and before it is fanned
  out; a taker may refuse it with a ``Rejection``.
- ``req_sources``: events made for a REQ on the fly (NIP-43 invite codes), never stored.
- ``session_notices``: a message for the person behind a pubkey seen on a connection (it
  authenticated, or sent an event it signed), which the connection sends as a ``NOTIFY``
  (nips PR #901): their plan ends soon, say. The connection asks once a day per pubkey
  and sends at most one a day; the first message any plug-in gives is the one sent.
- ``storage_allowances``: a larger storage quota for a pubkey (bytes; 0 = no limit), or
  an ``Allowance`` whose ``refusal`` is the reply past it (a plan naming its next plan)
  and whose ``authors`` share it (several keys, one quota).
- ``http_routes``, ``management_methods`` (NIP-86, ``<section>.<verb>``),
  ``console_panels``, ``nip11_fields``, ``profile_fields`` (the relay's kind-0 profile:
  a ``lud16`` makes it zappable), ``services`` (started after the store, stopped before
  it), ``links`` (pages the start-up log names) and ``problems`` (what the operator must
  fix now; the console shows them first).

Order: plug-ins are listed by their ``order`` (lower first), then name; the composition
root documents it (``relay.app``). Types here are the seam's own: they import nothing
above the session layer.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from relay.net.http import HttpRequest, HttpResponse
from relay.nostr.errors import Rejection
from relay.nostr.event import Event
from relay.nostr.filters import Filter
from relay.nostr.policy import WriteContext


@dataclass(frozen=True, slots=True)
class Admit:
    """A gate lets the event in; ``attachments`` ride on its ``WriteRequest`` to the store's
    write hooks (``relay.store.database``), e.g. a price taken in the event's transaction."""

    attachments: tuple[object, ...] = ()


@dataclass(frozen=True, slots=True)
class Refuse:
    """A gate refuses the event. ``final``: no later gate may admit it (a ban); otherwise a
    later gate's ``Admit`` overrides it (a free tier admits what a paywall refused)."""

    rejection: Rejection
    final: bool = False


Verdict = Admit | Refuse | None


class Answered(Exception):
    """Raised by a write gate for an event addressed to the relay itself (NIP-43 join and
    leave requests): the OK is the whole answer, the event is neither stored nor relayed."""

    def __init__(self, accepted: bool, message: str) -> None:
        super().__init__(message)
        self.accepted = accepted
        self.message = message


WriteGate = Callable[[Event, WriteContext], Awaitable[Verdict]]
UnstoredTaker = Callable[[Event, tuple[object, ...], int], Awaitable[Rejection | None]]
"""``(event, attachments, now)``: take what the gates attached to an event that is never
stored; None when taken (or nothing of it was this plug-in's), a ``Rejection`` to refuse."""
ReqSource = Callable[[tuple[Filter, ...], frozenset[str]], Awaitable[list[bytes]]]
"""Events made for this REQ on the fly, sent before the stored ones and never stored; raise
a ``Rejection`` to close the REQ."""
SessionNotice = Callable[[str, int], Awaitable[str | None]]
"""``(pubkey, now)``: what to tell the user of ``pubkey`` on this connection, sent as one
``NOTIFY`` (a line or two a client shows as is); None: nothing to say."""


@dataclass(frozen=True, slots=True)
class Allowance:
    """A plug-in's storage quota for one pubkey: ``bytes`` (0: no limit) and the reply once
    it is used up (None: the relay's own ``storage quota reached``). ``authors``: the keys
    whose stored bytes count against it together (one quota shared by several keys); empty:
    the event's author alone."""

    bytes: int
    refusal: Rejection | None = None
    authors: tuple[str, ...] = ()


StorageAllowance = Callable[[str, int], Awaitable["int | Allowance | None"]]
"""``(pubkey, now)``: the bytes that pubkey may store (0: no limit) as an int or an
``Allowance``, or None (no opinion)."""
HttpRoute = Callable[[HttpRequest], Awaitable[HttpResponse | None]]
Fields = Callable[[], Mapping[str, Any]]

ManagementMethod = Callable[[list[Any]], Awaitable[Any]]
"""A plug-in's NIP-86 method: the request's ``params`` in, the JSON-able ``result`` out.
Raise ``ValueError`` for bad params: its message becomes the answer's ``error``. Return
``Changed(result)`` when the call changed something."""


@dataclass(frozen=True, slots=True)
class Changed:
    """A ``ManagementMethod``'s result when the call changed state (a grant, a revoke): the
    relay answers ``result`` and logs the request with the admin's pubkey, as it logs the
    NIP's own changes; reads are answered without a log line."""

    result: Any


PanelRender = Callable[[Mapping[str, str]], Awaitable[dict[str, Any]]]
"""A console panel: the page's query parameters in, its document out (relay/ops/console_blocks.py)."""


@dataclass(frozen=True, slots=True)
class ConsolePanel:
    """One page of the operator console (``/admin``), shown to admins only: the console
    checks NIP-98 and ``[admin] pubkeys`` before ``render`` is called."""

    name: str  # URL segment: GET /admin/api/panel/<name>
    title: str  # its tab in the console
    render: PanelRender


class Service(Protocol):
    """Background work of a plug-in (a payment watcher, a graph refresher)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


@dataclass(frozen=True, slots=True)
class PluginHooks:
    """What one enabled plug-in adds to the relay. ``owner`` is the running object behind
    the hooks, for the plug-in's own tools and tests; the core never looks at it."""

    name: str  # its config section, e.g. "payments"
    description: str = ""  # for the start-up line, e.g. "payments (lnbits)"
    order: int = 100  # lower first: free tiers before paid ones
    write_gates: Sequence[WriteGate] = ()
    unstored_takers: Sequence[UnstoredTaker] = ()
    req_sources: Sequence[ReqSource] = ()
    session_notices: Sequence[SessionNotice] = ()
    storage_allowances: Sequence[StorageAllowance] = ()
    http_routes: Sequence[HttpRoute] = ()
    management_methods: Mapping[str, ManagementMethod] = field(default_factory=dict)
    console_panels: Sequence[ConsolePanel] = ()
    nip11_fields: Sequence[Fields] = ()
    profile_fields: Sequence[Fields] = ()
    services: Sequence[Service] = ()
    links: Sequence[Callable[[], Mapping[str, str]]] = ()
    problems: Sequence[Callable[[], Sequence[str]]] = ()
    owner: object = None


class HookError(Exception):
    """Two plug-ins claim the same NIP-86 method or console page; the message names both."""


def merge_nip11(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``extra`` over ``base``: ``limitation`` merged key by key, ``supported_nips`` united,
    ``fees`` merged per fee kind (each plug-in lists its own plans)."""
    out = dict(base)
    for key, value in extra.items():
        if key == "limitation" and isinstance(value, Mapping):
            out[key] = {**out.get(key, {}), **value}
        elif key == "supported_nips" and isinstance(value, Sequence):
            out[key] = sorted({*out.get(key, ()), *value})
        elif key == "fees" and isinstance(value, Mapping):
            fees = {k: list(v) for k, v in out.get(key, {}).items()}
            for kind, items in value.items():
                fees.setdefault(kind, []).extend(items)
            out[key] = fees
        else:
            out[key] = value
    return out


class Hooks:
    """Every enabled plug-in's hooks, in order, and the rules that compose them."""

    def __init__(self, plugins: Sequence[PluginHooks] = ()) -> None:
        self.plugins = tuple(sorted(plugins, key=lambda p: (p.order, p.name)))
        ps = self.plugins
        self.write_gates = tuple(g for p in ps for g in p.write_gates)
        self.unstored_takers = tuple(t for p in ps for t in p.unstored_takers)
        self.req_sources = tuple(s for p in ps for s in p.req_sources)
        self.session_notices = tuple(n for p in ps for n in p.session_notices)
        self.storage_allowances = tuple(a for p in ps for a in p.storage_allowances)
        self.http_routes = tuple(r for p in ps for r in p.http_routes)
        self.console_panels = tuple(c for p in ps for c in p.console_panels)
        methods: dict[str, ManagementMethod] = {}
        for p in ps:
            for name, method in p.management_methods.items():
                if name in methods:
                    raise HookError(f"two plug-ins define the NIP-86 method {name!r} ([{p.name}] and another)")
                methods[name] = method
        self.management_methods: Mapping[str, ManagementMethod] = methods
        names = [c.name for c in self.console_panels]
        if len(names) != len(set(names)):
            raise HookError(f"two plug-ins define a console page of the same name ({', '.join(sorted(names))})")

    def owner(self, name: str) -> object:
        """The running object of the plug-in named ``name`` (None: not enabled)."""
        for p in self.plugins:
            if p.name == name:
                return p.owner
        return None

    def describe(self) -> str:
        return ", ".join(p.description or p.name for p in self.plugins) or "none"

    async def judge(self, event: Event, ctx: WriteContext) -> Admit | Refuse:
        """The write gates' verdict (see the module docstring); ``Answered`` passes through."""
        refused: list[Rejection] = []
        for gate in self.write_gates:
            verdict = await gate(event, ctx)
            if isinstance(verdict, Admit):
                return verdict
            if isinstance(verdict, Refuse):
                if verdict.final:
                    return verdict
                refused.append(verdict.rejection)
        if not refused:
            return Admit()
        if len(refused) == 1:
            return Refuse(refused[0])
        first = refused[0]
        others = "; or ".join(r.reason for r in refused[1:])
        return Refuse(type(first)(f"{first.reason}; or {others}"))

    async def take_unstored(self, event: Event, attachments: tuple[object, ...], now: int) -> Rejection | None:
        """Every taker's share of an unstored event's attachments; the first refusal."""
        if not attachments:
            return None
        for taker in self.unstored_takers:
            refused = await taker(event, attachments, now)
            if refused is not None:
                return refused
        return None

    async def req_events(self, filters: tuple[Filter, ...], authed: frozenset[str]) -> list[bytes]:
        made: list[bytes] = []
        for source in self.req_sources:
            made.extend(await source(filters, authed))
        return made

    async def session_notice(self, pubkey: str, now: int) -> str | None:
        """The first plug-in's message for ``pubkey`` on a connection (None: none has one)."""
        for notice in self.session_notices:
            text = await notice(pubkey, now)
            if text is not None:
                return text
        return None

    async def storage_allowance(self, pubkey: str, now: int) -> Allowance | None:
        """The largest allowance any plug-in gives (0, no limit, is the largest)."""
        best: Allowance | None = None
        for allowance in self.storage_allowances:
            given = await allowance(pubkey, now)
            if given is None:
                continue
            if isinstance(given, int):
                given = Allowance(given)
            if best is None or (best.bytes != 0 and (given.bytes == 0 or given.bytes > best.bytes)):
                best = given
        return best

    async def route(self, request: HttpRequest) -> HttpResponse | None:
        for route in self.http_routes:
            answer = await route(request)
            if answer is not None:
                return answer
        return None

    def nip11(self) -> dict[str, Any]:
        doc: dict[str, Any] = {}
        for p in self.plugins:
            for fields in p.nip11_fields:
                doc = merge_nip11(doc, fields())
        return doc

    def profile(self) -> dict[str, Any]:
        return {k: v for p in self.plugins for fields in p.profile_fields for k, v in fields().items()}

    def links(self) -> dict[str, str]:
        return {k: v for p in self.plugins for links in p.links for k, v in links().items()}

    def problems(self) -> list[str]:
        return [text for p in self.plugins for problems in p.problems for text in problems()]

    async def start(self) -> None:
        for p in self.plugins:
            for service in p.services:
                await service.start()

    async def stop(self) -> None:
        for p in reversed(self.plugins):
            for service in reversed(p.services):
                await service.stop()
