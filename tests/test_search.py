"""NIP-50 search over real WebSockets, on SQLite and PostgreSQL: relevance then newest,
``limit`` after ranking, extensions ignored, REQ and COUNT, live events, non-indexed kinds
answered with nothing, deletions/replacements/expiry leaving the index, NIP-11."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from relay.session.server import Relay
from tests.conftest import RelayFactory
from tests.nostr_client import NostrClient, signed

NIP11 = {"Accept": "application/nostr+json"}


def ids(events: list[dict[str, Any]]) -> list[str]:
    return [e["id"] for e in events]


async def test_search_ranks_by_relevance_then_newest_and_limits_after_ranking(
    relay_factory: RelayFactory, storage: dict[str, str], alice: bytes
) -> None:
    now = int(time.time())
    often = signed(alice, 1, "Lightning lightning LIGHTNING everywhere", created_at=now - 300)
    older = signed(alice, 1, "lightning once here", created_at=now - 200)
    newer = signed(alice, 1, "lightning once there", created_at=now - 100)
    other = signed(alice, 1, "nothing to see", created_at=now)
    async with relay_factory(storage=storage) as relay, NostrClient(relay.url) as client:
        for ev in (often, older, newer, other):
            assert await client.publish(ev) == (True, "")
        # The oldest event comes first: it holds the word three times.
        assert ids(await client.req("a", {"search": "lightning"})) == [often.id, newer.id, older.id]
        # limit applies after ranking (NIP-50), not to the newest events.
        assert ids(await client.req("b", {"search": "lightning", "limit": 2})) == [often.id, newer.id]
        # Every word must occur; case does not matter.
        assert ids(await client.req("c", {"search": "ONCE There"})) == [newer.id]
        assert await client.count("n", {"search": "lightning"}) == 3
        assert await client.count("m", {"search": "lightning once"}) == 2


async def test_search_ignores_extensions_and_accepts_include_spam(
    relay_factory: RelayFactory, storage: dict[str, str], alice: bytes
) -> None:
    ev = signed(alice, 1, "Zap the relay")
    async with relay_factory(storage=storage) as relay, NostrClient(relay.url) as client:
        assert await client.publish(ev) == (True, "")
        for text in ("zap include:spam", "language:en zap", "zap domain:example.com nsfw:false"):
            assert ids(await client.req(text[:20], {"search": text})) == [ev.id], text
        # Only extensions: nothing to search for, nothing returned (and no error).
        assert await client.req("only-ext", {"search": "include:spam"}) == []


async def test_search_on_a_kind_not_indexed_returns_nothing(
    relay_factory: RelayFactory, storage: dict[str, str], alice: bytes
) -> None:
    reaction = signed(alice, 7, "banana")
    note = signed(alice, 1, "banana")
    async with relay_factory(storage=storage) as relay, NostrClient(relay.url) as client:
        for ev in (reaction, note):
            assert await client.publish(ev) == (True, "")
        assert await client.req("k7", {"search": "banana", "kinds": [7]}) == []
        assert ids(await client.req("any", {"search": "banana"})) == [note.id]
        assert await client.count("c7", {"search": "banana", "kinds": [7]}) == 0


async def test_search_with_other_filter_fields_and_several_filters(
    relay_factory: RelayFactory, storage: dict[str, str], alice: bytes, bob: bytes
) -> None:
    now = int(time.time())
    a_old = signed(alice, 1, "cheese", [["t", "food"]], created_at=now - 50)
    a_new = signed(alice, 1, "cheese cheese", created_at=now - 10)
    b = signed(bob, 1, "cheese", created_at=now - 5)
    r = signed(bob, 7, "+", created_at=now)
    async with relay_factory(storage=storage) as relay, NostrClient(relay.url) as client:
        for ev in (a_old, a_new, b, r):
            assert await client.publish(ev) == (True, "")
        assert ids(await client.req("au", {"search": "cheese", "authors": [a_old.pubkey]})) == [a_new.id, a_old.id]
        assert ids(await client.req("tg", {"search": "cheese", "#t": ["food"]})) == [a_old.id]
        assert ids(await client.req("ti", {"search": "cheese", "since": now - 20, "until": now - 6})) == [a_new.id]
        # A search filter's results (ranked) come before another filter's, each event once.
        got = ids(await client.req("two", {"search": "cheese", "limit": 1}, {"kinds": [7]}))
        assert got == [a_new.id, r.id]
        assert await client.count("c2", {"search": "cheese"}, {"kinds": [7]}) == 4


async def test_live_events_reach_search_subscriptions_only_when_they_match(
    relay_factory: RelayFactory, storage: dict[str, str], alice: bytes
) -> None:
    async with relay_factory(storage=storage) as relay, NostrClient(relay.url) as sub, NostrClient(
        relay.url
    ) as pub:
        assert await sub.req("s", {"search": "Sunrise"}) == []
        miss, hit = signed(alice, 1, "sunset"), signed(alice, 1, "sunrise, at last")
        wrong_kind = signed(alice, 7, "sunrise")
        for ev in (miss, hit, wrong_kind):
            assert await pub.publish(ev) == (True, "")
        msg = await sub.recv_where(lambda m: m[0] == "EVENT")
        assert msg[2]["id"] == hit.id
        await sub.expect_silence(0.3)


async def test_deleted_replaced_and_expired_events_leave_the_search_index(
    relay_factory: RelayFactory, storage: dict[str, str], alice: bytes
) -> None:
    now = int(time.time())
    note = signed(alice, 1, "walrus note", created_at=now - 10)
    profile_v1 = signed(alice, 0, '{"name": "Walrus Fan", "about": "tusks"}', created_at=now - 10)
    profile_v2 = signed(alice, 0, '{"name": "Seal Fan"}', created_at=now - 5)
    fading = signed(alice, 1, "walrus fading", [["expiration", str(now + 2)]], created_at=now - 10)
    async with relay_factory(storage=storage) as relay, NostrClient(relay.url) as client:
        for ev in (note, profile_v1, fading):
            assert await client.publish(ev) == (True, "")
        assert sorted(ids(await client.req("a", {"search": "walrus"}))) == sorted([note.id, profile_v1.id, fading.id])
        assert ids(await client.req("b", {"search": "tusks"})) == [profile_v1.id]  # kind 0: profile fields
        assert await client.publish(signed(alice, 5, "", [["e", note.id]])) == (True, "")
        assert await client.publish(profile_v2) == (True, "")
        assert ids(await client.req("c", {"search": "seal"})) == [profile_v2.id]
        assert ids(await client.req("d", {"search": "walrus"})) == [fading.id]
        await asyncio.sleep(max(0.0, now + 2.5 - time.time()))
        assert await client.req("e", {"search": "walrus"}) == []
        assert await client.count("f", {"search": "walrus"}) == 0
        assert await search_index_size(relay) == 1  # profile_v2 only: the others left the index


async def search_index_size(relay: Relay) -> int:
    """Rows in the store's full-text index (SQLite FTS5 table / PostgreSQL vectors)."""
    store: Any = relay.store
    if hasattr(store, "_read"):
        rows = await store._read("SELECT count(*) FROM events_search", ())
        return int(rows[0][0])
    return int(await store._fetchval("SELECT count(*) FROM events WHERE search IS NOT NULL"))


async def test_nip11_lists_50_and_search_can_be_turned_off(relay_factory: RelayFactory, alice: bytes) -> None:
    async with relay_factory() as relay:
        async with httpx.AsyncClient() as http:
            doc = (await http.get(relay.url.replace("ws://", "http://"), headers=NIP11)).json()
        assert 50 in doc["supported_nips"]
    async with relay_factory(search={"enabled": False}) as relay, NostrClient(relay.url) as client:
        async with httpx.AsyncClient() as http:
            doc = (await http.get(relay.url.replace("ws://", "http://"), headers=NIP11)).json()
        assert 50 not in doc["supported_nips"]
        assert await client.publish(signed(alice, 1, "otter")) == (True, "")
        assert await client.req("s", {"search": "otter"}) == []  # nothing, not an error


async def test_bad_search_values_are_refused_with_invalid(relay: Relay, client: NostrClient) -> None:
    for sub_id, value, reason in (
        ("n", 5, "invalid: search must be a string"),
        ("l", "word " * 200, "invalid: search longer than 512 characters"),
        ("w", " ".join(f"w{i}" for i in range(17)), "invalid: search has more than 16 words"),
    ):
        await client.send(["REQ", sub_id, {"search": value}])
        assert await client.recv_where(lambda m, s=sub_id: m[1] == s) == ["CLOSED", sub_id, reason]
    await client.assert_alive()


async def test_changing_indexed_kinds_rebuilds_the_index_at_start(
    relay_factory: RelayFactory, storage: dict[str, str], alice: bytes
) -> None:
    note = signed(alice, 1, "heron note")
    article = signed(alice, 30023, "body text", [["d", "a"], ["title", "Heron article"]])
    async with relay_factory(storage=storage, search={"kinds": [1]}) as relay, NostrClient(relay.url) as client:
        for ev in (note, article):
            assert await client.publish(ev) == (True, "")
        assert ids(await client.req("a", {"search": "heron"})) == [note.id]
    async with relay_factory(storage=storage, search={"kinds": [30023]}) as relay, NostrClient(relay.url) as client:
        assert ids(await client.req("b", {"search": "heron"})) == [article.id]
        assert await search_index_size(relay) == 1


# --- the pure part (relay/nostr/search.py) --------------------------------------------------


def test_words_are_case_folded_alphanumeric_runs() -> None:
    from relay.nostr.search import MAX_WORD_CHARS, words

    got = words("Crème-brûlée, STRAẞE foo_bar x1 日本語!")
    assert got == ["crème", "brûlée", "strasse", "foo", "bar", "x1", "日本語"]
    assert words("a" * (MAX_WORD_CHARS + 1) + " ok") == ["ok"]  # blobs are not indexed


def test_parse_search_terms_extensions_and_limits() -> None:
    import pytest

    from relay.nostr.errors import Invalid
    from relay.nostr.search import parse_search

    q = parse_search("Apple include:spam  pie apple language:en", frozenset({1}))
    assert q.terms == ("apple", "pie") and q.kinds == frozenset({1})
    assert q.fts5_match() == '"apple" "pie"' and q.tsquery_literal() == "'apple' & 'pie'"
    assert parse_search("x" * 65, frozenset({1})).terms == ()  # can never match
    with pytest.raises(Invalid):
        parse_search(["a"], frozenset({1}))


def test_searchable_text_of_profiles_and_articles() -> None:
    from relay.nostr.search import searchable_text, tsvector_literal

    assert searchable_text(0, '{"name": "Ann", "about": "hi", "picture": "https://x"}', []) == "Ann\nhi"
    assert searchable_text(0, "not json", []) == "not json"
    assert searchable_text(30023, "body", [["title", "T"], ["summary", "S"], ["t", "x"]]) == "T\nS\nbody"
    assert tsvector_literal(["a", "b", "a"]) == "'a':1,3 'b':2"
