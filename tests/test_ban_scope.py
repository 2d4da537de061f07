"""NIP-86 bans hide stored events inside the store's query, before each filter's limit
(``relay.nostr.policy.ReadScope``), on SQLite and PostgreSQL, over real WebSockets.

The scene every test starts from: a spammer floods the relay with the 60 newest kind-1
events over 10 older ones by a regular author, then the operator bans the spammer. Hidden
rows used to be dropped after the query, so every limited read of the global feed (kinds,
a hashtag, authors + kinds) came back empty; NIP-77 sync listed banned ids a client could
never fetch. COUNT subtracted a second count and was exact already; it is checked here
because that subtraction is gone.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import pytest

from relay.nostr import crypto
from relay.nostr.event import Event
from relay.nostr.filters import Filter
from relay.nostr.policy import ReadScope, read_scope
from relay.nostr.search import DEFAULT_SEARCH_KINDS, parse_search
from relay.session.server import Relay
from relay.store import postgres_sql, sqlite_sql
from tests.conftest import RelayFactory
from tests.nostr_client import NostrClient, signed
from tests.test_management import nip86
from tests.test_negentropy_interop import needed_ids, publish_all

FLOOD = 60
VISIBLE = 10


@dataclass(frozen=True, slots=True)
class Flood:
    spammer: str  # hex pubkey
    author: str
    spam: list[Event]  # newest first
    visible: list[Event]  # newest first, all older than the spam


async def flood(relay: Relay, spammer: bytes, author: bytes) -> Flood:
    """``VISIBLE`` events by ``author``, then ``FLOOD`` newer ones by ``spammer``, all
    kind 1 with the hashtag ``#t nostr``."""
    base = int(time.time()) - 1000
    tag = [["t", "nostr"]]
    visible = [signed(author, 1, f"note {i}", tag, base + i) for i in range(VISIBLE)]
    spam = [signed(spammer, 1, f"spam {i}", tag, base + 100 + i) for i in range(FLOOD)]
    await publish_all(relay, visible + spam)
    return Flood(crypto.public_key(spammer).hex(), crypto.public_key(author).hex(), spam[::-1], visible[::-1])


async def ids_of(client: NostrClient, sub_id: str, *filters: dict[str, Any]) -> list[str]:
    events = await client.req(sub_id, *filters)
    await client.send(["CLOSE", sub_id])
    return [e["id"] for e in events]


async def test_a_banned_flood_does_not_use_up_the_limit_of_a_req(
    relay_factory: RelayFactory, storage: dict[str, str], alice: bytes, bob: bytes
) -> None:
    """Each shape is cut to its limit where the store cuts it: the kinds probe, the tag
    top-N (SQLite's single-tag join; PostgreSQL's lateral over ``tags`` with ties), the
    (author, kind) probes, and an ids filter whose newest id is banned."""
    async with relay_factory(storage=storage) as relay, NostrClient(relay.url) as client:
        scene = await flood(relay, alice, bob)
        visible = [e.id for e in scene.visible]
        assert await ids_of(client, "before", {"kinds": [1], "limit": VISIBLE}) == [e.id for e in scene.spam[:VISIBLE]]
        await nip86(relay, "banpubkey", scene.spammer, "spam")
        assert await ids_of(client, "kinds", {"kinds": [1], "limit": VISIBLE}) == visible
        assert await ids_of(client, "tag", {"#t": ["nostr"], "limit": VISIBLE}) == visible
        both = {"authors": [scene.spammer, scene.author], "kinds": [1], "limit": VISIBLE}
        assert await ids_of(client, "authors", both) == visible
        assert await ids_of(client, "spammer", {"authors": [scene.spammer], "limit": 5}) == []
        assert await ids_of(client, "two", {"kinds": [1], "limit": 3}, {"#t": ["nostr"], "limit": 2}) == visible[:3]

        await nip86(relay, "banevent", visible[0], "illegal")
        wanted = {"ids": [visible[0], visible[1], scene.spam[0].id], "limit": 1}
        assert await ids_of(client, "ids", wanted) == [visible[1]]
        assert await ids_of(client, "kinds after", {"kinds": [1], "limit": VISIBLE}) == visible[1:]

        await nip86(relay, "unbanpubkey", scene.spammer)
        await nip86(relay, "allowevent", visible[0])
        assert await ids_of(client, "restored", {"kinds": [1], "limit": VISIBLE}) == [
            e.id for e in scene.spam[:VISIBLE]
        ]
        assert await ids_of(client, "restored ids", {**wanted, "limit": 3}) == [scene.spam[0].id, *visible[:2]]


async def test_count_and_negentropy_sync_leave_banned_events_out(
    relay_factory: RelayFactory, storage: dict[str, str], alice: bytes, bob: bytes
) -> None:
    """NIP-45 COUNT and NIP-77 sync see exactly what REQ shows, until the bans are lifted."""
    async with relay_factory(storage=storage) as relay, NostrClient(relay.url) as client:
        scene = await flood(relay, alice, bob)
        every = {e.id for e in scene.spam + scene.visible}
        await nip86(relay, "banpubkey", scene.spammer, "spam")
        await nip86(relay, "banevent", scene.visible[0].id, "illegal")
        shown = {e.id for e in scene.visible[1:]}

        assert await client.count("kinds", {"kinds": [1]}) == len(shown)
        assert await client.count("tag", {"#t": ["nostr"]}) == len(shown)
        assert await client.count("spammer", {"authors": [scene.spammer]}) == 0
        assert await client.count("union", {"authors": [scene.spammer]}, {"ids": [scene.visible[0].id]}) == 0
        assert await needed_ids(client, {"kinds": [1]}) == shown
        assert await needed_ids(client, {"kinds": [1], "limit": 5}) == {e.id for e in scene.visible[1:6]}
        assert await needed_ids(client, {"ids": [scene.visible[0].id, scene.spam[0].id]}) == set()

        await nip86(relay, "unbanpubkey", scene.spammer)
        await nip86(relay, "allowevent", scene.visible[0].id)
        assert await client.count("restored", {"kinds": [1]}) == len(every)
        assert await needed_ids(client, {}) == every


# --- the SQL itself ---------------------------------------------------------------------------

A, B, C, D = "a" * 64, "b" * 64, "c" * 64, "d" * 64


def store_sql(f: Filter, scope: ReadScope | None) -> list[str]:
    """Every statement (with its parameters) the two stores build for ``f`` under ``scope``."""
    p_select, p_count = postgres_sql.Params(), postgres_sql.Params()
    return [
        repr(sqlite_sql.filter_select(f, 1000, "e.raw", scope)),
        repr(sqlite_sql.filter_where(f, 1000, scope=scope)),
        postgres_sql.filter_select(f, 1000, p_select, "e.raw", scope) + repr(p_select.values),
        postgres_sql.filter_count(f, 1000, p_count, scope) + repr(p_count.values),
    ]


@pytest.mark.parametrize(
    "f",
    [
        Filter(kinds=frozenset({1}), limit=500),
        Filter(kinds=frozenset({1, 4}), limit=50),
        Filter(tags=(("t", frozenset({"nostr"})),), limit=50),
        Filter(authors=frozenset({B}), ids=frozenset({C}), limit=5),
        Filter(kinds=frozenset({1}), search=parse_search("apple", DEFAULT_SEARCH_KINDS), limit=5),
    ],
)
def test_bans_cost_a_query_nothing_until_they_can_hide_what_it_matches(f: Filter) -> None:
    """A relay without bans (or whose bans cannot match a filter) runs the SQL it ran
    before bans were applied in the store: the scope's ban lists only decide whether
    the ``management`` probes are added. The probes read the bans from the table, so a
    statement is the same for one ban as for 40,000 (SQLite caps a statement's
    variables, 32,766 in its default build)."""
    many = frozenset({A, *(f"{i:064x}" for i in range(40_000))})
    for readers in (frozenset(), frozenset({A})):
        plain = store_sql(f, read_scope(readers))
        assert not any("management" in sql for sql in plain)
        if f.kinds is not None and 4 not in f.kinds:  # no private kind: no condition at all
            assert plain == store_sql(f, None)
        elsewhere = read_scope(readers, frozenset({A}), frozenset({D}))
        if f.authors is not None and f.ids is not None:  # bans it cannot match
            assert store_sql(f, elsewhere) == plain
        else:
            assert all("management" in sql for sql in store_sql(f, elsewhere))
            assert store_sql(f, read_scope(readers, many, frozenset({D}))) == store_sql(f, elsewhere)
