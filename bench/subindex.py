"""Cost of matching one published event against N live subscriptions, as N grows.

In-process and pure (relay/session/subscriptions.py has no I/O): N subscriptions with realistic
filters (an author's feed, mentions of a pubkey, a hashtag, a kind) of which a handful
match each published event. ``indexed`` is ``SubscriptionIndex.matching``; ``full_scan``
runs ``Filter.matches`` over every subscription, what a relay without the index does.
The indexed cost should stay flat as N grows while the scan grows linearly.
"""

from __future__ import annotations

import random
import time
from typing import Any

from relay.nostr.event import Event, sign_event
from relay.nostr.filters import Filter
from relay.session.subscriptions import SubscriptionIndex

SIZES = (100, 1_000, 10_000, 100_000)
EVENTS = 200


class _Sink:
    def can_see(self, event: Event) -> bool:
        return True

    def send_live(self, sub_id: str, event: Event) -> None:
        return None


def _hex(rng: random.Random) -> str:
    return rng.randbytes(32).hex()


def _filters(n: int, rng: random.Random, authors: list[str]) -> list[Filter]:
    """Hashtags are drawn from n distinct tags, so however large n is, a published event's
    tag is followed by about the same number of subscriptions: what grows is the number of
    subscriptions an event does NOT match, which is the cost the index is there to avoid."""
    hashtags = [f"tag{i}" for i in range(n)]
    out: list[Filter] = []
    for i in range(n):
        shape = i % 4
        if shape == 0:  # someone's follow list (a few authors)
            out.append(Filter(authors=frozenset(rng.sample(authors, 3)), kinds=frozenset({1, 6})))
        elif shape == 1:  # mentions of one pubkey
            out.append(Filter(tags=(("p", frozenset({_hex(rng)})),), kinds=frozenset({1, 7})))
        elif shape == 2:  # a hashtag
            out.append(Filter(tags=(("t", frozenset({rng.choice(hashtags)})),)))
        else:  # a rarely published kind
            out.append(Filter(kinds=frozenset({30000 + rng.randrange(1000)})))
    return out


def run_subindex(sizes: tuple[int, ...] = SIZES, events: int = EVENTS, seed: int = 1) -> dict[str, Any]:
    rng = random.Random(seed)
    authors = [_hex(rng) for _ in range(50_000)]
    secret = (7).to_bytes(32, "big")
    published = [
        sign_event(secret, 1, "x", [["p", _hex(rng)], ["t", f"tag{rng.randrange(min(sizes))}"]], 1_700_000_000 + i)
        for i in range(events)
    ]
    results: dict[str, Any] = {}
    for n in sizes:
        filters = _filters(n, rng, authors)
        index = SubscriptionIndex()
        sink = _Sink()
        for i, f in enumerate(filters):
            index.add(sink, f"s{i}", [f])
        started = time.perf_counter()
        matched = sum(len(index.matching(e)) for e in published)
        indexed_us = (time.perf_counter() - started) / events * 1e6
        scan_events = published[: max(5, events // max(1, n // 1_000))]  # keep the slow path's run short
        started = time.perf_counter()
        scanned = sum(sum(1 for f in filters if f.matches(e)) for e in scan_events)
        scan_us = (time.perf_counter() - started) / len(scan_events) * 1e6
        results[str(n)] = {
            "indexed_us_per_event": round(indexed_us, 2),
            "full_scan_us_per_event": round(scan_us, 1),
            "matches_per_event": round(matched / events, 2),
            "scan_matches_per_event": round(scanned / len(scan_events), 2),
        }
    first, last = results[str(sizes[0])], results[str(sizes[-1])]
    results["indexed_growth"] = round(last["indexed_us_per_event"] / first["indexed_us_per_event"], 2)
    results["subscriptions_growth"] = sizes[-1] // sizes[0]
    return results
