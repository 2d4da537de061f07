"""``Store.query_pages``: a stored answer read page by page is exactly ``query``'s answer
(same events, order, per-filter limits, de-duplication), each page within its byte budget,
on both stores; an event deleted between pages is left out, never replaced (issue 8,
item 2: answers are paged so a REQ never holds its whole answer in memory)."""

from __future__ import annotations

import pytest

from relay.nostr.event import Event, sign_event
from relay.nostr.filters import Filter
from relay.store.base import FAST_ROWS, Store, WriteRequest

NOW = 10_000
SECRETS = [(i).to_bytes(32, "big") for i in (11, 12, 13)]


def _events() -> list[Event]:
    """300 events, sizes 100 B to 6 KB, many sharing a created_at (ties)."""
    out = []
    for i in range(300):
        tags = [["t", "even" if i % 2 == 0 else "odd"], ["p", "ab" * 32]] if i % 3 else [["t", "third"]]
        out.append(sign_event(SECRETS[i % 3], 1 if i % 5 else 7, "x" * ((i * 37) % 6000), tags, 5_000 + i // 4))
    return out


async def _pages(store: Store, filters: list[Filter], page_bytes: int) -> list[list[bytes]]:
    return [page async for page in store.query_pages(filters, NOW, page_bytes=page_bytes)]


@pytest.mark.parametrize(
    "filters",
    [
        [Filter(limit=5000)],
        [Filter(kinds=frozenset({1}), limit=250)],
        [Filter(tags=(("t", frozenset({"even"})),), limit=1000)],
        [Filter(tags=(("p", frozenset({"ab" * 32})),), kinds=frozenset({1, 7}), limit=150)],
        [Filter(kinds=frozenset({7}), limit=40), Filter(tags=(("t", frozenset({"odd", "third"})),), limit=90)],
        [Filter(limit=70), Filter(kinds=frozenset({1}), limit=70), Filter(until=5_040, limit=3000)],
        [Filter(limit=FAST_ROWS)],
    ],
)
async def test_pages_concatenate_to_the_query_answer(store: Store, filters: list[Filter]) -> None:
    events = _events()
    await store.write_batch([WriteRequest(e) for e in events], NOW)
    expected = await store.query(filters, NOW)
    assert len(expected) > 0
    for page_bytes in (1, 16_384, 10**9):
        pages = await _pages(store, filters, page_bytes)
        assert [raw for page in pages for raw in page] == expected
        if sum(f.limit or 0 for f in filters) > FAST_ROWS:
            for page in pages:
                assert len(page) == 1 or sum(len(raw) for raw in page) <= page_bytes
            if page_bytes == 1:
                assert len(pages) == len(expected)  # one event a page


async def test_event_deleted_between_pages_is_left_out(store: Store) -> None:
    events = _events()
    await store.write_batch([WriteRequest(e) for e in events], NOW)
    filters = [Filter(limit=5000)]
    expected = await store.query(filters, NOW)
    pages = store.query_pages(filters, NOW, page_bytes=1)
    got = [raw for raw in await anext(pages)]
    # the author of the last event of the answer deletes it while the REQ is paging
    last = next(e for e in events if e.raw == expected[-1])
    secret = SECRETS[events.index(last) % 3]
    deletion = sign_event(secret, 5, "", [["e", last.id]], NOW)
    await store.write_batch([WriteRequest(deletion)], NOW)
    async for page in pages:
        got.extend(page)
    assert got == [raw for raw in expected if raw != last.raw]
