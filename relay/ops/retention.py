"""Retention (``[retention]``): a maximum age per kind, purged in bounded batches, and a
storage quota per author (issue 11 item 5).

Purging: each round deletes at most ``purge_batch`` events per transaction and yields to
the event loop between transactions, so the group-commit writer's batches run in between
(SQLite: they queue on the same writer thread one transaction apart; PostgreSQL: short
transactions, no long lock). A backlog (retention switched on for a big database) drains
over several rounds instead of one long stall.

Quota: the bytes an author has stored (raw JSON, what the relay keeps) against
``max_bytes_per_pubkey`` (``member_max_bytes_per_pubkey`` for paying members). The store is
asked once per author and ``USAGE_TTL`` (an indexed sum over the author's rows); accepted
events are added to the cached figure meanwhile, so a burst cannot slip past the quota
between two refreshes. Deletions (NIP-09, replaceable versions, retention) are only seen at
the next refresh, which errs on the side of refusing. With several nodes each counts its own
additions between refreshes: an author writing to N nodes at once may overshoot by up to
N-1 refresh windows' worth.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

from relay.config import RetentionSettings
from relay.nostr.errors import Blocked, Rejection
from relay.nostr.event import Event
from relay.store.base import Store

USAGE_TTL = 60.0
USAGE_ENTRIES = 50_000


async def purge_old_events(store: Store, max_age: dict[int, int], now: int, batch: int) -> int:
    """One retention round over every configured kind; return how many events went."""
    total = 0
    for kind, age in sorted(max_age.items()):
        while True:
            purged = await store.purge_older(kind, now - age, batch)
            total += purged
            await asyncio.sleep(0)  # let queued writes and reads run between transactions
            if purged < batch:
                break
    return total


class StorageQuota:
    """Per-author stored bytes, cached, checked before an event goes to the writer."""

    def __init__(
        self, store: Store, settings: RetentionSettings, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self._store = store
        self._limit = settings.max_bytes_per_pubkey
        self._member_limit = settings.member_max_bytes_per_pubkey  # a plug-in's members may get it
        self._monotonic = monotonic
        self._usage: OrderedDict[str, tuple[int, float]] = OrderedDict()
        # A plug-in whose allowances are quotas of their own (a tier's) though [retention]
        # sets none: set by the composition root when any plug-in gives allowances.
        self.plugin_quotas = False

    @property
    def enabled(self) -> bool:
        return bool(self._limit or self._member_limit or self.plugin_quotas)

    async def check(
        self,
        event: Event,
        allowance: int | None,
        refusal: Rejection | None = None,
        authors: Sequence[str] = (),
    ) -> Rejection | None:
        """``allowance``: the bytes a plug-in lets this author store instead of the default
        (0: no limit; None: the default, ``max_bytes_per_pubkey``); ``refusal``: the plug-in's
        reply past it (a plan names the plan that stores more); ``authors``: the keys whose
        bytes count against the allowance together with the event's author (one quota for
        several keys), each figure cached and refreshed on its own."""
        limit = self._limit if allowance is None else allowance
        if not limit:
            return None
        used = 0
        for author in {event.pubkey, *authors}:
            used += await self._used(author)
        if used + len(event.raw) > limit:
            return refusal if refusal is not None else Blocked("storage quota reached")
        return None

    def stored(self, event: Event) -> None:
        """Count an event the store accepted (until the next refresh corrects the figure)."""
        entry = self._usage.get(event.pubkey)
        if entry is not None:
            self._usage[event.pubkey] = (entry[0] + len(event.raw), entry[1])

    async def _used(self, pubkey: str) -> int:
        now = self._monotonic()
        entry = self._usage.get(pubkey)
        if entry is not None and now - entry[1] < USAGE_TTL:
            self._usage.move_to_end(pubkey)
            return entry[0]
        used = await self._store.stored_bytes(pubkey)
        self._usage[pubkey] = (used, now)
        self._usage.move_to_end(pubkey)
        while len(self._usage) > USAGE_ENTRIES:
            self._usage.popitem(last=False)
        return used
