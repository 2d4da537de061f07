"""NIP-50 ranking bound, both stores: a filter's matches are ranked among the
``RANK_CANDIDATES`` most recently stored events that match the *whole* filter."""

from __future__ import annotations

import orjson

from relay.nostr.event import sign_event
from relay.nostr.filters import parse_filter
from relay.nostr.search import RANK_CANDIDATES
from relay.store.base import WriteRequest
from tests.store.conftest import StoreFactory


async def test_ranking_looks_at_the_newest_stored_candidates_of_the_whole_filter(store_factory: StoreFactory) -> None:
    crowd, loner = (1).to_bytes(32, "big"), (2).to_bytes(32, "big")
    best_but_old = sign_event(loner, 1, "alpha alpha alpha alpha", [], 10)
    crowd_events = [sign_event(crowd, 1, f"alpha n{i}", [], 1000 + i) for i in range(RANK_CANDIDATES + 50)]
    async with store_factory() as store:
        await store.write_batch([WriteRequest(best_but_old)], 2000)  # stored first: the oldest row
        for i in range(0, len(crowd_events), 500):
            await store.write_batch([WriteRequest(e) for e in crowd_events[i : i + 500]], 2000)
        answer = await store.query([parse_filter({"search": "alpha", "limit": 5}, 100)], 2000)
        top = [orjson.loads(r)["id"] for r in answer]
        # Beyond the candidate window: every event still matches, but the oldest row is not ranked.
        assert best_but_old.id not in top and len(top) == 5
        # With the author in the filter, the candidates are that author's matches: found, first.
        only = parse_filter({"search": "alpha", "authors": [best_but_old.pubkey], "limit": 5}, 100)
        assert [orjson.loads(r)["id"] for r in await store.query([only], 2000)] == [best_but_old.id]
        # COUNT is not bounded: it counts every match.
        assert await store.count([parse_filter({"search": "alpha"}, 100)], 2000) == len(crowd_events) + 1
