"""Contact lists stored on other relays (``[wot] sources``), brought into this relay's store
with the relay's own sync (``relay.ops.peer_sync``: NIP-77 negentropy where the source speaks
it, paged REQ otherwise), so the graph counts follows published elsewhere.

Bounded three ways, since a source is someone else's relay holding millions of events:
- only what the graph reads: kind 3 of the authors whose lists count at the hop being
  computed, and kind 30382 of the configured NIP-85 provider about pubkeys that asked to
  write or that it already ranks; never a source's whole store;
- per refresh, at most ``source_authors_per_refresh`` authors (and as many subjects) are
  asked of each source; the others wait for the next refresh, taken in turn (``Rotation``),
  so a graph of any size is covered at a bounded cost per refresh;
- a source that fails (unreachable, refusing, speaking nonsense) is logged once, one
  WARNING line with the reason and no traceback, and once more when it answers again;
  meanwhile the graph uses what the store holds, and the other sources are still asked.

What arrives is stored as ``satsrelay sync`` stores it (checked, signature verified,
banned pubkeys withheld), so a restart, and every node on the same database, has it too.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
from collections.abc import Callable, Collection, Sequence

from relay.nostr.filters import Filter
from relay.ops.peer_sync import sync_with_peer
from relay.store.base import Store
from wot.store import ASSERTION_KIND, CONTACTS_KIND

log = logging.getLogger(__name__)

AUTHORS_PER_SYNC = 500  # authors (or subjects) in one reconciliation's filter


class Rotation:
    """Where the last refresh stopped in a set of keys, so the next one goes on from there:
    every key is asked in turn whatever the set's size, and a set that changes between
    refreshes (members come and go) needs no bookkeeping beyond the last key asked."""

    def __init__(self) -> None:
        self.after = ""

    def order(self, keys: Collection[str]) -> list[str]:
        """``keys`` starting after the last one asked, wrapping around."""
        ordered = sorted(keys)
        cut = bisect.bisect_right(ordered, self.after)
        return ordered[cut:] + ordered[:cut]

    def asked(self, ordered: Sequence[str], count: int) -> None:
        if count:
            self.after = ordered[count - 1]


class SourceRelays:
    """The configured sources and this refresh's budget for each kind of question."""

    def __init__(self, urls: Sequence[str], per_refresh: int, store: Store) -> None:
        self.urls = tuple(urls)
        self.per_refresh = per_refresh
        self.store = store
        self.failing: dict[str, str] = {}  # url -> why its last sync failed
        self.methods: dict[str, str] = {}  # url -> how its last sync went: "NIP-77" or "paged REQ"
        self.received = 0  # events stored from the sources since start
        self.rounds = 0
        self._lists_left = per_refresh
        self._subjects_left = per_refresh

    def state(self, url: str) -> str:
        """For the console: how the last sync with ``url`` went."""
        if url in self.failing:
            return f"failing: {self.failing[url]}"
        method = self.methods.get(url)
        return f"answers ({method})" if method else "not asked yet"

    def new_round(self) -> None:
        """A refresh starts: each kind of question gets its budget again."""
        self.rounds += 1
        self._lists_left = self._subjects_left = self.per_refresh

    async def contact_lists(self, authors: Sequence[str]) -> tuple[set[str], int]:
        """Bring the kind-3 lists of the first of ``authors`` this refresh's budget allows
        into the store. Returns the authors whose sync stored something new (their lists
        are to be read again) and how many of ``authors`` were asked."""
        asked = list(authors[: self._lists_left])
        self._lists_left -= len(asked)
        kinds = frozenset({CONTACTS_KIND})
        arrived = await self._sync(asked, lambda chunk: Filter(authors=chunk, kinds=kinds))
        return arrived, len(asked)

    async def assertions(self, provider: str, subjects: Sequence[str]) -> tuple[set[str], int]:
        """The same for ``provider``'s NIP-85 assertions (kind 30382, ``d`` = the subject)."""
        asked = list(subjects[: self._subjects_left])
        self._subjects_left -= len(asked)
        authors, kinds = frozenset({provider}), frozenset({ASSERTION_KIND})
        arrived = await self._sync(
            asked, lambda chunk: Filter(authors=authors, kinds=kinds, tags=(("d", chunk),))
        )
        return arrived, len(asked)

    async def _sync(self, keys: Sequence[str], make: Callable[[frozenset[str]], Filter]) -> set[str]:
        arrived: set[str] = set()
        down: set[str] = set()  # failed in this call: not asked again until the next one
        for start in range(0, len(keys), AUTHORS_PER_SYNC):
            chunk = keys[start : start + AUTHORS_PER_SYNC]
            wanted = make(frozenset(chunk))
            for url in self.urls:
                if url in down:
                    continue
                try:
                    counts = await sync_with_peer(self.store, url, wanted, "down")
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    # Someone else's relay: whatever it does wrong is its fault, not ours,
                    # and the graph goes on with what the store holds.
                    down.add(url)
                    self._failed(url, exc)
                    continue
                self._answered(url)
                self.methods[url] = counts.method
                if counts.received:
                    self.received += counts.received
                    arrived.update(chunk)
        return arrived

    def _failed(self, url: str, exc: Exception) -> None:
        reason = str(exc) or type(exc).__name__
        if url not in self.failing:
            log.warning(
                "web of trust: source %s failed (%s); the graph uses the lists stored here until it answers",
                url,
                reason,
            )
        self.failing[url] = reason

    def _answered(self, url: str) -> None:
        if self.failing.pop(url, None) is not None:
            log.info("web of trust: source %s answers again", url)
