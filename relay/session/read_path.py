"""The read side a connection uses: who may read what (its scope), the plug-ins' events made
on the fly, the store's pages and counts, each in its address group's fair turn.

The connection keeps what is its own (its subscriptions, the live events held until EOSE, the
pages' back-pressure); everything shared that a REQ, COUNT or NEG-OPEN reaches is here, built
once by the relay, so a connection holds no store.

The REQ path, in order: parse (``relay.nostr.messages``) -> ``rejection`` (AUTH, private
kinds) -> ``made`` (plug-ins' read sources) -> live subscription registered -> ``pages`` read
under ``scope`` in ``page_turn`` -> EOSE -> live.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence

from relay.nostr import hyperloglog
from relay.nostr.errors import AuthRequired, Rejection
from relay.nostr.event import Event
from relay.nostr.filters import Filter
from relay.nostr.negentropy import ItemBudget
from relay.nostr.policy import ReadScope, check_private_read, read_scope
from relay.ops.management_view import ManagementView
from relay.plugins.hooks import Hooks
from relay.session.heavy_reads import HeavyReads
from relay.store.base import Store


class ReadPath:
    def __init__(
        self,
        *,
        store: Store,
        management: ManagementView,
        hooks: Hooks,
        heavy_reads: HeavyReads,
        page_reads: HeavyReads,
        sync_budget: ItemBudget,
        auth_required_to_read: bool,
    ) -> None:
        self._store = store
        self._management = management
        self._hooks = hooks
        self.heavy_reads = heavy_reads  # turns at COUNT, NIP-77 item sets and NIP-50 searches
        self.page_reads = page_reads  # turns at reading and queueing one page of a REQ's answer
        self.sync_budget = sync_budget  # NIP-77 items held, relay-wide and per address group
        self._auth_required = auth_required_to_read

    def rejection(self, filters: Sequence[Filter], authed: frozenset[str]) -> Rejection | None:
        if self._auth_required and not authed:
            return AuthRequired("this relay serves only authenticated clients")
        for f in filters:
            rejection = check_private_read(f, authed)
            if rejection is not None:
                return rejection
        return None

    def scope(self, authed: frozenset[str]) -> ReadScope:
        """What a connection may read now: its NIP-42 identities and the node's NIP-86 bans,
        for the store to apply before each filter's limit."""
        return read_scope(authed, self._management.banned_pubkeys, self._management.banned_ids)

    def hides(self, event: Event) -> bool:
        """NIP-86 bans hide live events too."""
        return self._management.hides_event(event)

    async def made(self, filters: tuple[Filter, ...], authed: frozenset[str]) -> list[bytes]:
        """Events the plug-ins make for this REQ (never stored); a Rejection ends the REQ."""
        if not self._hooks.req_sources:
            return []
        return await self._hooks.req_events(filters, authed)

    def pages(
        self, filters: tuple[Filter, ...], scope: ReadScope, page_bytes: int
    ) -> AsyncGenerator[list[bytes], None]:
        return self._store.query_pages(filters, int(time.time()), scope, page_bytes=page_bytes)

    @contextlib.asynccontextmanager
    async def page_turn(self, group: str, search: bool) -> AsyncIterator[None]:
        """This address group's turn to read one page of a stored answer and queue its
        events (issue 17): the reading and framing of pages is the event loop's work, and
        twenty connections of one address each draining ``{"limit":5000}`` held a
        bystander's ``REQ {"limit":1}`` for 4 s on old main; a group reads at most
        ``max_page_reads_per_ip`` pages at once, turns round robin over the groups. A
        NIP-50 search ranks its matches while reading its first page, an expensive read, so
        that page first takes a heavy turn (always heavy before page, never the other way,
        so no two waits can hold each other up)."""
        if not search:
            async with self.page_reads.turn(group):
                yield
            return
        async with self.heavy_reads.turn(group), self.page_reads.turn(group):
            yield

    async def count(
        self, group: str, filters: tuple[Filter, ...], scope: ReadScope, hll_offset: int | None
    ) -> tuple[int, bytes | None]:
        """NIP-45: the count under the connection's scope (COUNT must not reveal what REQ
        hides) and, for the NIP's common filters, its HyperLogLog registers. A count may read
        every row: in the group's heavy turn."""
        now = int(time.time())
        async with self.heavy_reads.turn(group):
            n = await self._store.count(filters, now, scope)
            if hll_offset is None:
                return n, None
            minima = await self._store.count_registers(filters[0], now, scope, hll_offset)
            return n, hyperloglog.registers(minima)

    async def sync_items(self, f: Filter, scope: ReadScope, max_items: int) -> list[tuple[int, bytes]]:
        """NIP-77: the (created_at, id) set of ``f`` (the caller holds a heavy turn)."""
        return await self._store.sync_items(f, int(time.time()), scope, max_items)
