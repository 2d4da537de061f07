"""The event store's seam: the only thing the rest of the relay knows about storage.

Both implementations (``sqlite.SqliteStore``, ``postgres.PostgresStore``) pass one shared
test suite (``tests/store/``). The store keeps events, their deletions, NIP-62 and NIP-86
state and its own schema; a plug-in keeps its own tables in the same database through
``relay.store.database`` (a version line of its own, write hooks inside ``write_batch``'s
transaction), so a row an event pays for commits with that event or not at all.

Rules every implementation applies inside ``write_batch``'s single transaction (NIP-01/09/40):

- an id already stored -> ``DUPLICATE`` (the event *is* stored: OK true);
- an id removed by a NIP-09 deletion (``e`` tag by the same author), or an addressable /
  replaceable version at or before a NIP-09 ``a``-tag deletion's created_at -> ``DELETED``;
- replaceable (0, 3, 10000-19999) keeps the newest per (pubkey, kind), addressable
  (30000-39999) per (pubkey, kind, d tag); equal created_at keeps the lowest id. An event
  that loses to a stored version -> ``SUPERSEDED`` (not stored: OK false);
- a kind-5 event deletes the author's own events named by its ``e`` tags and, for ``a``
  tags ``kind:pubkey:d`` with the author's pubkey, every version with created_at <= its own;
  kind-5 events themselves are never deleted (NIP-09: deleting a deletion has no effect);
- a request that carries ``attachments`` goes through the plug-ins' write hooks
  (``relay.store.database``) once the store is about to keep its event: a hook may write
  its rows in the batch's transaction, or refuse the event (nothing stored, the outcome
  is the hook's ``Rejection``); a DUPLICATE/SUPERSEDED/DELETED event meets no hook;
- ephemeral events never reach the store.

Queries never return expired events (NIP-40, ``expiration`` tag <= now).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from array import array
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from relay.nostr.errors import Rejection
from relay.nostr.event import Event
from relay.nostr.filters import Filter

if TYPE_CHECKING:
    from relay.nostr.policy import ReadScope


# Stored answers (issue 8, item 2): a REQ's answer is read from the store in pages of about
# PAGE_BYTES so that what one connection holds stays near its outgoing_queue_bytes whatever
# its filters ask for (16 clients REQ-ing limit 5000 over 60 KB events took the relay to
# 2.5 GB when whole answers were read at once). An answer of at most FAST_ROWS rows (the
# sum of the filters' limits) is still one statement, as before: small REQs, the common
# case, pay no extra round trip; at most FAST_ROWS x max_message_length bytes.
PAGE_BYTES = 256 * 1024
PAGE_ROWS = 1000  # keys fetched per page statement, whatever their size
FAST_ROWS = 64


class ReadLanes:
    """Fair turns at a store's ``readers`` (issue 17): at most ``heavy`` of them at once
    for expensive reads (NIP-77 item sets, NIP-50 ranking, COUNT), so however many of
    those wait, ``readers - heavy`` readers are left to ordinary reads: REQ always has one.

    Turns go first come, first served, and a freed reader is handed to the waiter itself.
    ``asyncio.Queue`` (the old SQLite pool, and asyncpg's) lets a newcomer take a reader
    put back before the waiter it woke runs, and that waiter goes to the back of the line
    again: on old main a bystander's ``REQ {"limit":1}`` waited over 10 s for one of two
    readers while 40 connections sent COUNTs back to back. A heavy read held back by the
    heavy cap does not hold up the ordinary reads queued behind it."""

    def __init__(self, readers: int, heavy: int) -> None:
        if not 1 <= heavy < readers:
            raise ValueError("need 1 <= heavy < readers: ordinary reads keep at least one reader")
        self.readers = readers
        self.heavy = heavy
        self.busy = 0
        self.busy_heavy = 0
        self._waiting: deque[tuple[asyncio.Future[None], bool]] = deque()

    def _fits(self, heavy: bool) -> bool:
        return self.busy < self.readers and (not heavy or self.busy_heavy < self.heavy)

    @contextlib.asynccontextmanager
    async def turn(self, *, heavy: bool = False) -> AsyncIterator[None]:
        await self._acquire(heavy)
        try:
            yield
        finally:
            self._release(heavy)

    async def _acquire(self, heavy: bool) -> None:
        # Every release hands out what fits at once, so when this read fits nobody who
        # could use the reader is waiting for it: no line is jumped.
        if self._fits(heavy):
            self._take(heavy)
            return
        entry = (asyncio.get_running_loop().create_future(), heavy)
        self._waiting.append(entry)
        try:
            await entry[0]
        except BaseException:
            if entry[0].done() and not entry[0].cancelled():
                self._release(heavy)  # given a reader, but the caller is gone: pass it on
            else:
                with contextlib.suppress(ValueError):
                    self._waiting.remove(entry)
            raise

    def _take(self, heavy: bool) -> None:
        self.busy += 1
        if heavy:
            self.busy_heavy += 1

    def _release(self, heavy: bool) -> None:
        self.busy -= 1
        if heavy:
            self.busy_heavy -= 1
        held_back: deque[tuple[asyncio.Future[None], bool]] = deque()
        while self._waiting and self.busy < self.readers:
            waiter, wants_heavy = entry = self._waiting.popleft()
            if waiter.done():  # its caller was cancelled
                continue
            if not self._fits(wants_heavy):
                held_back.append(entry)
                continue
            self._take(wants_heavy)
            waiter.set_result(None)
        held_back.extend(self._waiting)
        self._waiting = held_back


@dataclass(frozen=True, slots=True)
class UseLimit:
    """One count ``Store.take_uses`` keeps: at most ``limit`` uses of ``key`` in a window
    that opens with the key's first use and ends at ``expires_at`` (fixed when it opens).

    Guards that must hold for the relay as a whole live here rather than in a process's
    memory, so neither a restart, another ``--workers`` process nor another node on the
    same PostgreSQL resets them (issue 17 items 3 and 9): a NIP-98 header is honoured once
    (``limit`` 1, its event id, until it can no longer pass the time check), free inbox
    messages are counted per sender and per address group for an hour."""

    key: str
    limit: int
    expires_at: int


USES_PRUNED_PER_CALL = 64  # ended windows deleted by each take_uses: the table holds ~the live ones


class StoreUnavailable(Exception):
    """The store cannot be opened (no such folder, permissions, wrong password, server
    down): an operator's problem, reported as one line naming the store, not a traceback."""


class WriteOutcome(enum.Enum):
    STORED = "stored"
    DUPLICATE = "duplicate"
    SUPERSEDED = "superseded"
    DELETED = "deleted"


@dataclass(frozen=True, slots=True)
class WriteRequest:
    """One event for ``write_batch``. ``attachments``: values a plug-in's write gate
    attached (a price, say) for its write hook to interpret inside the batch's transaction
    (``relay.store.database``); the store never looks inside them."""

    event: Event
    attachments: tuple[object, ...] = ()


def answerable(filters: Sequence[Filter]) -> list[Filter]:
    """The filters that can contribute to an answer: not empty, and not ``limit: 0`` (NIP-01:
    that REQ wants only live events)."""
    return [f for f in filters if f.limit != 0 and not f.is_empty()]


def answer_rows(filters: Sequence[Filter]) -> int | None:
    """The most rows an answer to ``filters`` can hold (None: unbounded)."""
    total = 0
    for f in filters:
        if f.limit is None:
            return None
        total += f.limit
    return total


@dataclass(slots=True)
class AnswerKeys:
    """A stored answer as keys, in answer order: the store's row key (SQLite rid,
    PostgreSQL seq), the event id and the raw JSON's size; ~48 bytes a row instead of the
    events themselves. The id is checked again when the page is read, so a row key reused
    meanwhile (SQLite hands out max(rid) + 1) can never substitute another event."""

    keys: array[int] = field(default_factory=lambda: array("q"))
    sizes: array[int] = field(default_factory=lambda: array("q"))
    ids: bytearray = field(default_factory=bytearray)

    def add(self, key: int, event_id: bytes, size: int) -> None:
        self.keys.append(key)
        self.ids += event_id
        self.sizes.append(size)

    def __len__(self) -> int:
        return len(self.keys)


RowFetch = Callable[[list[int]], Awaitable[Sequence[tuple[int, bytes, bytes]]]]


async def read_pages(answer: AnswerKeys, fetch: RowFetch, page_bytes: int) -> AsyncGenerator[list[bytes], None]:
    """The raw JSON of ``answer``'s events in answer order, in pages of at most
    ``page_bytes`` (or one event) and ``PAGE_ROWS`` rows. ``fetch(keys)`` returns ``(key,
    id, raw)`` rows in any order; an event deleted since the keys were read is skipped."""
    n = len(answer)
    i = 0
    while i < n:
        j, total = i, 0
        while j < n and j - i < PAGE_ROWS and (j == i or total + answer.sizes[j] <= page_bytes):
            total += answer.sizes[j]
            j += 1
        found = {key: (eid, raw) for key, eid, raw in await fetch(list(answer.keys[i:j]))}
        page: list[bytes] = []
        for k in range(i, j):
            row = found.get(answer.keys[k])
            if row is not None and row[0] == answer.ids[32 * k : 32 * k + 32]:
                page.append(row[1])
        if page:
            yield page
        i = j


AnswerOf = Callable[[str], Awaitable[Sequence[Sequence[Any]]]]


async def answer_pages(
    live: list[Filter], answer_of: AnswerOf, key_columns: str, fetch: RowFetch, page_bytes: int
) -> AsyncGenerator[list[bytes], None]:
    """``Store.query_pages`` over a store's two primitives: ``answer_of(columns)`` runs the
    answer query selecting ``columns`` of ``events e``, ``fetch`` reads rows by key. A small
    answer (at most ``FAST_ROWS``) is one query for the raw events, as ``query`` does; a
    larger one reads ``key_columns`` (row key, id, raw size) first, then the events in pages,
    so a REQ never holds more than a page of events (issue 8)."""
    if not live:
        return
    rows = answer_rows(live)
    if rows is not None and rows <= FAST_ROWS:
        raws = [row[0] for row in await answer_of("e.raw")]
        if raws:
            yield raws
        return
    answer = AnswerKeys()
    for key, eid, size in await answer_of(key_columns):
        answer.add(key, eid, size)
    async for page in read_pages(answer, fetch, page_bytes):
        yield page


class Store(Protocol):
    """Events, their deletions, NIP-62 and NIP-86 state, in one database (plug-ins' tables
    beside them: ``relay.store.database``)."""

    async def open(self) -> None:
        """Connect and apply pending schema migrations."""

    async def close(self) -> None: ...

    # --- events -------------------------------------------------------------------

    async def write_batch(self, batch: Sequence[WriteRequest], now: int) -> list[WriteOutcome | Rejection]:
        """Apply a batch in ONE transaction (see module docstring); one outcome per request,
        in order: a ``Rejection`` for an event a write hook refused
        (``relay.store.database``). Returns only after the commit is durable. Called by the
        writer alone (and by bulk imports, which attach nothing)."""
        ...

    async def query(self, filters: Sequence[Filter], now: int, scope: ReadScope | None = None) -> list[bytes]:
        """Raw JSON of matching events: each filter contributes at most its ``limit`` newest;
        the union is de-duplicated and ordered newest first, ties by lowest id. A filter
        with a NIP-50 ``search`` contributes its ``limit`` best matches, best first
        (``relay.nostr.search``); with other filters, each search filter's answer in its own
        order, then the other filters' union newest first. With a ``scope``, only events
        its rules let that connection read are candidates (NIP-42 private kinds, NIP-86
        bans: ``relay.nostr.policy.ReadScope``), so a ``limit`` counts visible events only
        (issue 8: hidden DMs used to fill it and an authenticated ``{"kinds":[4],
        "limit":10}`` could come back empty; issue 11: a banned spammer's newest events
        emptied the global feed). Same SQL conditions as ``count``; the bans are read from
        the store's own ``management`` table (``apply_management``)."""
        ...

    def query_pages(
        self,
        filters: Sequence[Filter],
        now: int,
        scope: ReadScope | None = None,
        *,
        page_bytes: int = PAGE_BYTES,
    ) -> AsyncGenerator[list[bytes], None]:
        """``query``'s answer (same order, limits and de-duplication) in pages of about
        ``page_bytes``, each read from the store only when the consumer asks for it, so a
        REQ can wait for its client to drain one page before the next is read. An answer of
        at most ``FAST_ROWS`` rows is one page from one statement (no extra round trip);
        a larger one reads its ``AnswerKeys`` first (one statement, one snapshot), then the
        events page by page (``read_pages``); an event deleted between the two is left out."""
        ...

    async def count(self, filters: Sequence[Filter], now: int, scope: ReadScope | None = None) -> int:
        """Distinct events matching any filter (NIP-45); ``limit`` is ignored. With a
        ``scope``, only events its rules let that connection read are counted (private
        kinds and bans, ``relay.nostr.policy.ReadScope``), so COUNT agrees with REQ."""
        ...

    async def count_registers(
        self, f: Filter, now: int, scope: ReadScope | None, offset: int
    ) -> list[tuple[int, bytes]]:
        """NIP-45 HyperLogLog's material for the events ``count([f])`` counts (same scope):
        per distinct pubkey byte at ``offset`` (the register), the smallest 7 bytes after it
        (``relay.nostr.hyperloglog``). At most 256 rows, aggregated by the database."""
        ...

    async def sync_items(
        self, f: Filter, now: int, scope: ReadScope | None, max_items: int
    ) -> list[tuple[int, bytes]]:
        """NIP-77 negentropy's item set: ``(created_at, 32-byte id)`` of the events ``f``
        matches (unexpired; within ``scope`` as REQ would show them; with ``f.limit``, the
        newest ``limit``), read from the indexes without loading the events' JSON, in no
        particular order. At most ``max_items + 1`` rows, so a caller can tell "too many"
        without reading them all."""
        ...

    async def purge_expired(self, now: int) -> int:
        """Delete events whose NIP-40 expiration has passed; return how many."""
        ...

    # --- retention, quotas, NIP-62, NIP-86 -------------------------------------------------

    async def purge_older(self, kind: int, before: int, limit: int) -> int:
        """Retention: delete at most ``limit`` events of ``kind`` created before ``before``
        (oldest first), in one short transaction; return how many."""
        ...

    async def stored_bytes(self, pubkey: str) -> int:
        """Raw JSON bytes stored for ``pubkey`` (the storage quota's measure)."""
        ...

    async def database_bytes(self) -> int:
        """What the database occupies on disk (the operator console's overview): tables,
        indexes and SQLite's WAL. Cheap enough to ask every few seconds: sizes the engine
        already keeps, never a scan."""
        ...

    async def vanish(self, pubkey: str, until: int, now: int) -> int:
        """NIP-62: delete every event of ``pubkey`` with created_at <= ``until`` (kind 5
        included) and the gift wraps (kind 1059) ``p``-tagging it up to then, in one
        transaction; when anything was deleted, record (pubkey, until) and bump the
        ``vanish`` change counter. Return how many events were deleted."""
        ...

    async def list_vanished(self) -> dict[str, int]:
        """Every recorded NIP-62 request: pubkey -> until."""
        ...

    async def vanish_changes(self) -> int:
        """A counter that grows with every recorded NIP-62 request, from any node."""
        ...

    async def list_management(self) -> list[tuple[str, str, str]]:
        """NIP-86 state rows (topic, key, value); relay/nostr/management.py reads them."""
        ...

    async def apply_management(self, changes: Sequence[tuple[str, str, str | None]]) -> None:
        """Upsert (value) or delete (None) NIP-86 rows in one transaction and bump the
        ``management`` change counter, so every node reloads the state."""
        ...

    async def management_changes(self) -> int:
        """A counter that grows with every ``apply_management``, from any node."""
        ...

    async def take_uses(self, uses: Sequence[UseLimit], now: int) -> str | None:
        """Count one use of every key of ``uses``, all or none, in one transaction that
        concurrent callers on any process or node cannot interleave: None when every key
        had fewer than its ``limit`` uses in its current window (a window that ended at or
        before ``now`` is replaced by a new one ending at the use's ``expires_at``), else
        the key found at its limit, and nothing is counted. Also deletes up to
        ``USES_PRUNED_PER_CALL`` windows that ended, so the table stays near the live ones."""
        ...
