"""Live subscriptions and fan-out, indexed so one event does not scan every subscription.

Each filter of each live subscription is filed under one key only, its most selective
condition (ids, else authors, else its first tag, else kinds, else the catch-all bucket),
as strfry's ActiveMonitors does. A new event looks up its own id, author, indexed tags and
kind — a handful of dict lookups — and runs the full ``Filter.matches`` on those
candidates only, so the cost of publishing follows the number of *matching*
subscriptions, not the number of open ones.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from relay.nostr.event import Event
from relay.nostr.filters import Filter


class Subscriber(Protocol):
    """A connection as fan-out sees it."""

    def can_see(self, event: Event) -> bool:
        """NIP-42 read rules (DMs only to the parties they name)."""
        ...

    def send_live(self, sub_id: str, event: Event) -> None:
        """Queue an EVENT frame without blocking (the connection bounds its own queue)."""
        ...


@dataclass(eq=False, slots=True)
class _Entry:
    subscriber: Subscriber
    sub_id: str
    filter: Filter
    keys: list[Hashable] = field(default_factory=list)


_ALL = ("*",)


def _keys_for(f: Filter) -> list[Hashable]:
    if f.ids is not None:
        return [("i", v) for v in f.ids]
    if f.authors is not None:
        return [("a", v) for v in f.authors]
    if f.tags:
        name, values = f.tags[0]
        return [("t", name, v) for v in values]
    if f.kinds is not None:
        return [("k", k) for k in f.kinds]
    return [_ALL]


def _keys_of(event: Event) -> Iterable[Hashable]:
    yield ("i", event.id)
    yield ("a", event.pubkey)
    yield ("k", event.kind)
    for tag in event.tags:
        if len(tag) > 1 and len(tag[0]) == 1:
            yield ("t", tag[0], tag[1])
    yield _ALL


class SubscriptionIndex:
    """All live subscriptions of this process, keyed for candidate lookup."""

    def __init__(self) -> None:
        self._buckets: dict[Hashable, set[_Entry]] = {}
        self._by_sub: dict[tuple[int, str], list[_Entry]] = {}

    def __len__(self) -> int:
        return len(self._by_sub)

    def add(self, subscriber: Subscriber, sub_id: str, filters: Iterable[Filter]) -> None:
        """Register (or replace: NIP-01 reuse of a subscription id) a live subscription."""
        self.remove(subscriber, sub_id)
        entries = []
        for f in filters:
            entry = _Entry(subscriber, sub_id, f, _keys_for(f))
            for key in entry.keys:
                self._buckets.setdefault(key, set()).add(entry)
            entries.append(entry)
        self._by_sub[(id(subscriber), sub_id)] = entries

    def remove(self, subscriber: Subscriber, sub_id: str) -> bool:
        entries = self._by_sub.pop((id(subscriber), sub_id), None)
        if entries is None:
            return False
        for entry in entries:
            for key in entry.keys:
                bucket = self._buckets.get(key)
                if bucket is not None:
                    bucket.discard(entry)
                    if not bucket:
                        del self._buckets[key]
        return True

    def remove_all(self, subscriber: Subscriber, sub_ids: Iterable[str]) -> None:
        for sub_id in list(sub_ids):
            self.remove(subscriber, sub_id)

    def matching(self, event: Event) -> list[tuple[Subscriber, str]]:
        """Each (subscriber, sub_id) whose filters match, once, however many filters match."""
        seen: set[tuple[int, str]] = set()
        out: list[tuple[Subscriber, str]] = []
        buckets = self._buckets
        for key in _keys_of(event):
            bucket = buckets.get(key)
            if not bucket:
                continue
            for entry in bucket:
                ident = (id(entry.subscriber), entry.sub_id)
                if ident in seen or not entry.filter.matches(event):
                    continue
                seen.add(ident)
                out.append((entry.subscriber, entry.sub_id))
        return out

    def publish(self, event: Event) -> int:
        """Deliver an accepted event to every matching live subscription; return how many."""
        delivered = 0
        for subscriber, sub_id in self.matching(event):
            if subscriber.can_see(event):
                subscriber.send_live(sub_id, event)
                delivered += 1
        return delivered
