"""The running relay's copy of the NIP-86 management state (relay/nostr/management.py) and what it
enforces: refused writes (banned pubkeys and events, kinds not allowed, blocked IPs) and
hidden events (banned pubkeys and events), on every node. Live delivery asks
``hides_event``; stored events are hidden by the store, in SQL, before each filter's
limit (``relay.nostr.policy.ReadScope``, built with ``banned_pubkeys``/``banned_ids``).

Each node holds the state in memory (checks cost a dict lookup per event) and re-reads it
when the store's ``management`` change counter moves, every ``REFRESH_SECONDS``: a ban made
through NIP-86 on one node applies on the others within about half a second, and survives
restarts because the rows live in the store.

A plug-in's methods (``PluginHooks.management_methods``, named ``<section>.<verb>``) are
answered here too, behind the same NIP-98 admin check: the NIP's table never holds their
state, so they reach other nodes by the plug-in's own means (payments: the store's
account change counter).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Mapping
from typing import Any

import orjson

from relay.discovery import PluginError
from relay.nostr import nip98
from relay.nostr.errors import Blocked, Rejection
from relay.nostr.event import Event, is_hex64
from relay.nostr.filters import Filter
from relay.nostr.management import (
    PLUGIN_NIP_METHODS,
    QUEUE_METHOD,
    REPORT_KIND,
    Change,
    ManagementState,
    Outcome,
    dispatch,
    moderation_queue,
    parse_request,
)
from relay.nostr.policy import WriteContext
from relay.ops.periodic import run_every
from relay.ops.vanish import VANISH_KIND
from relay.plugins.hooks import Changed, ManagementMethod
from relay.store.base import Store, UseLimit

log = logging.getLogger(__name__)

REFRESH_SECONDS = 0.5
QUEUE_REPORTS = 5000  # newest NIP-56 reports read for the moderation queue
# Offset of the id in an event's compact raw JSON ({"id":"<64>",...}, the layout
# relay/nostr/event.py writes and the stores return byte for byte).
_ID = slice(7, 71)


class ManagementView:
    def __init__(self, store: Store, extra: Mapping[str, ManagementMethod] | None = None) -> None:
        """``extra``: the plug-ins' NIP-86 methods. A name without a ``.`` could collide
        with a method a later NIP-86 revision adds, so the plug-in is refused at start-up,
        unless it is one of the NIP's own names whose state is a plug-in's
        (``PLUGIN_NIP_METHODS``: the NIP-43 role methods)."""
        self._store = store
        self._extra = dict(extra or {})
        for name in self._extra:
            if "." not in name and name not in PLUGIN_NIP_METHODS:
                raise PluginError(f"plug-in NIP-86 method {name!r} must be named '<section>.<verb>'")
        self.state = ManagementState()
        self._changes: int | None = None
        # The ban lists as each REQ/COUNT/NEG-OPEN's ReadScope takes them: built once per
        # change here, not once per request.
        self.banned_pubkeys: frozenset[str] = frozenset()
        self.banned_ids: frozenset[str] = frozenset()

    def _set(self, state: ManagementState) -> None:
        self.state = state
        self.banned_pubkeys = frozenset(state.banned_pubkeys)
        self.banned_ids = frozenset(state.banned_events)

    async def load(self) -> None:
        self._changes = await self._store.management_changes()
        self._set(ManagementState.from_rows(await self._store.list_management()))

    async def refresh(self) -> None:
        changes = await self._store.management_changes()
        if changes != self._changes:
            self._changes = changes
            self._set(ManagementState.from_rows(await self._store.list_management()))

    async def watch(self) -> None:
        """Background task: pick up changes made on other nodes."""
        await run_every(
            REFRESH_SECONDS, self.refresh, log, "reading the NIP-86 management state failed", wait_first=True
        )

    async def handle(self, body: bytes) -> Outcome:
        """Answer an (already authorised) NIP-86 request and persist what it changed."""
        try:
            method, params = parse_request(body)
        except ValueError:
            method, params = "", []
        if method == QUEUE_METHOD:
            return Outcome({"result": await self.moderation_queue()})
        extra = self._extra.get(method)
        if extra is not None:
            return await self._call_extra(method, extra, params)
        outcome = dispatch(self.state, body, self._extra)
        if outcome.changes:
            await self.apply(outcome.changes)
        return outcome

    async def _call_extra(self, method: str, call: ManagementMethod, params: list[Any]) -> Outcome:
        """A plug-in's method: its ``ValueError`` is the client's mistake, answered as
        NIP-86 errors are; anything else is the relay's failure, logged once here and
        answered without its details (a traceback is no use to a remote client)."""
        try:
            result = await call(params)
        except ValueError as exc:
            return Outcome({"result": None, "error": f"{method}: {exc}"})
        except Exception:
            log.exception("NIP-86 %s failed", method)
            return Outcome({"result": None, "error": f"{method}: internal error (the relay's log has the details)"})
        if isinstance(result, Changed):
            return Outcome({"result": result.result}, changed_elsewhere=True)
        return Outcome({"result": result})

    async def apply(self, changes: list[Change]) -> None:
        await self._store.apply_management([(c.topic, c.key, c.value) for c in changes])
        self._set(self.state.apply(changes))

    async def handle_http(
        self, body: bytes, authorization: str | None, *, urls: tuple[str, ...], admins: frozenset[str], now: int
    ) -> tuple[int, bytes]:
        """The NIP-86 route: (HTTP status, JSON body). A NIP-98 header for ``POST <url>``
        with the body's ``payload`` hash, signed by one of ``admins``, or 401. NIP-86 says
        the ``u`` tag is "the relay URL": clients write its ws(s):// or its http(s):// form,
        so ``urls`` lists the forms accepted (with and without a trailing slash)."""
        try:
            event = nip98.decode_header(authorization)
            named = event.tag_values("u")
            url = named[0] if len(named) == 1 and named[0] in urls else urls[0]
            problem = nip98.verify(
                event, url=url, method="POST", now=now, body_sha256=hashlib.sha256(body).hexdigest()
            )
            if problem is not None:
                raise nip98.Nip98Error(problem)
            pubkey = event.pubkey
        except nip98.Nip98Error as exc:
            return 401, orjson.dumps({"result": None, "error": f"unauthorized: {exc}"})
        if pubkey not in admins:
            return 401, orjson.dumps({"result": None, "error": "unauthorized: not an admin pubkey"})
        if not await self.first_use(event, now):
            return 401, orjson.dumps({"result": None, "error": "unauthorized: this Authorization was used already"})
        outcome = await self.handle(body)
        if outcome.changed:
            log.info("NIP-86 %s by %s", body[:200].decode("utf-8", "replace"), pubkey)
        return 200, orjson.dumps(outcome.response)

    async def first_use(self, event: Event, now: int) -> bool:
        """Record that the (verified, admin-signed) NIP-98 ``event`` authorised a request:
        True the first time on any process or node, False for every replay. Recorded in
        the store before the request acts (``nip98.single_use``)."""
        key, keep_until = nip98.single_use(event)
        return await self._store.take_uses([UseLimit(key, 1, keep_until)], now) is None

    async def moderation_queue(self) -> list[dict[str, Any]]:
        """NIP-56 reports about events stored here (the newest ``QUEUE_REPORTS``), grouped."""
        now = int(time.time())
        raws = await self._store.query([Filter(kinds=frozenset({REPORT_KIND}), limit=QUEUE_REPORTS)], now)
        reports = [orjson.loads(raw) for raw in raws]
        targets = {
            tag[1]
            for report in reports
            for tag in report.get("tags", [])
            if len(tag) >= 2 and tag[0] == "e" and isinstance(tag[1], str) and is_hex64(tag[1])
        }
        stored: set[str] = set()
        ordered = sorted(targets)
        for i in range(0, len(ordered), 500):
            chunk = frozenset(ordered[i : i + 500])
            stored.update(raw[_ID].decode() for raw in await self._store.query([Filter(ids=chunk)], now))
        return moderation_queue(self.state, reports, stored)

    # --- enforcement ------------------------------------------------------------------

    def policy(self, event: Event, ctx: WriteContext) -> Rejection | None:
        """Write policy (cheap: dict lookups)."""
        state = self.state
        if ctx.ip in state.blocked_ips:
            return Blocked("your address is blocked")
        if event.kind == VANISH_KIND:  # NIP-62: honoured whatever the author's status, bans included
            return None
        if event.pubkey in state.banned_pubkeys:
            return Blocked("this pubkey is banned from this relay")
        if event.id in state.banned_events:
            return Blocked("this event is banned from this relay")
        if not state.kind_allowed(event.kind):
            return Blocked(f"kind {event.kind} is not accepted by this relay")
        return None

    def ip_blocked(self, ip: str) -> bool:
        return ip in self.state.blocked_ips

    def hides_event(self, event: Event) -> bool:
        """Live delivery's ban test (a REQ's stored answer is cut by the store instead)."""
        return event.pubkey in self.banned_pubkeys or event.id in self.banned_ids
