"""Property: for random events and random filters, ``store.query``, ``store.query_pages``
and ``store.count`` equal a brute-force model built on ``Filter.matches`` (the one
definition of a filter), with NIP-01's replaceable/addressable rules, NIP-40 expiry,
per-filter limits, union de-duplication and newest-first / lowest-id order, and a random
read scope (``ReadScope.allows`` and ``ReadScope.banned``, the rules live delivery applies
in Python) applied before each filter's limit: DMs a connection may not read and events of
NIP-86 banned pubkeys or ids (rows of the store's ``management`` table) never use it up.

NIP-50 ``search`` filters are checked against ``model_search_match``, a brute-force
matcher written here from relay/nostr/search.py's stated semantics (words = runs of
``str.isalnum`` characters, case-folded; every query word must occur; ``key:value``
words ignored; indexed kinds only), not from its code. Relevance order is the store's
own (bm25 / ts_rank), so for search filters the test checks the result *set*: exactly
the matches when the limit does not cut, otherwise ``limit`` of them.

Few authors, kinds, tag values and timestamps, so ties, collisions and replacements are
common rather than rare.
"""

from __future__ import annotations

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.nostr.event import Event, KindClass, sign_event
from relay.nostr.filters import Filter
from relay.nostr.policy import ReadScope, read_scope
from relay.nostr.search import DEFAULT_SEARCH_KINDS, parse_search
from relay.store.base import WriteRequest
from tests.store.conftest import StoreFactory

NOW = 1_000
SECRETS = [(i).to_bytes(32, "big") for i in (1, 2, 3)]
KINDS = [1, 1, 1, 7, 0, 10002, 30023, 4, 4]  # regular kinds weighted: replaceable ones collapse
TAG_VALUES = ["a", "b"]
TIMES = [10, 20, 20, 20, 30]
PUBKEYS = [sign_event(s, 1).pubkey for s in SECRETS]

# Indexed tags dominate so tag filters find several events, often at the same second.
tag_st = st.sampled_from(
    [
        *(["t", "a"], ["t", "b"], ["x", "a"], ["x", "b"], ["t", "a"], ["x", "b"]),
        *(["d", ""], ["d", "k1"], ["expiration", "900"], ["expiration", "1000"], ["expiration", "1100"]),
        ["title", "Apple PIE"],
        *(["p", PUBKEYS[0]], ["p", PUBKEYS[1]], ["p", PUBKEYS[2]]),
    ]
).map(list)

# Words in several cases, with diacritics, non-Latin scripts, digits and separators
# (underscore, hyphen, punctuation) so tokenization and case folding are exercised.
VOCAB = ["apple", "Apple", "APPLE", "pie", "crème", "Creme", "straße", "日本", "x1", "foo_bar", "a-b", "über!", "42"]
QUERY_WORDS = ["apple", "PIE", "creme", "Crème", "STRASSE", "straße", "日本", "foo", "bar", "x1", "b", "42", "zzz"]
QUERY_EXTENSIONS = ["include:spam", "language:en", "nsfw:false"]


@st.composite
def events(draw: st.DrawFn) -> Event:
    return sign_event(
        draw(st.sampled_from(SECRETS)),
        draw(st.sampled_from(KINDS)),
        draw(
            st.one_of(
                st.integers(0, 3).map(str),
                st.lists(st.sampled_from(VOCAB), max_size=5).map(" ".join),
            )
        ),
        draw(st.lists(tag_st, max_size=3)),
        draw(st.sampled_from(TIMES)),
    )


@st.composite
def filters(draw: st.DrawFn, pool: list[Event]) -> Filter:
    ids = None
    if pool and draw(st.booleans()) and draw(st.booleans()):
        ids = frozenset(draw(st.lists(st.sampled_from([e.id for e in pool]), min_size=1, max_size=3)))
    maybe = st.sampled_from([True, False, False])  # mostly loose filters: more hits, more ties
    authors = frozenset(draw(st.lists(st.sampled_from(PUBKEYS), min_size=1, max_size=2))) if draw(maybe) else None
    kinds = (
        frozenset(draw(st.lists(st.sampled_from(sorted(set(KINDS))), min_size=1, max_size=2))) if draw(maybe) else None
    )
    tags: list[tuple[str, frozenset[str]]] = []
    for name in draw(st.sampled_from([[], ["t"], ["x"], ["t", "x"], ["p"]])):
        values = [PUBKEYS[:1], PUBKEYS[1:2], PUBKEYS[1:]] if name == "p" else [["a"], ["b"], ["a", "b"]]
        tags.append((name, frozenset(draw(st.sampled_from(values)))))
    since = draw(st.sampled_from(TIMES)) if draw(maybe) else None
    until = draw(st.sampled_from(TIMES)) if draw(maybe) else None
    limit = draw(st.integers(0, 6)) if draw(maybe) else None
    search = None
    if draw(st.booleans()):
        text = " ".join(draw(st.lists(st.sampled_from(QUERY_WORDS + QUERY_EXTENSIONS), min_size=1, max_size=3)))
        search = parse_search(text, DEFAULT_SEARCH_KINDS)
    return Filter(ids, authors, kinds, tuple(sorted(tags)), since, until, limit, search)


def _model_words(text: str) -> set[str]:
    """Runs of alphanumeric characters, case-folded: a plain loop, not the relay's regex."""
    out: set[str] = set()
    word: list[str] = []
    for ch in text + " ":
        if ch.isalnum():
            word.append(ch)
        elif word:
            out.add("".join(word).casefold())
            word = []
    return out


def model_search_match(text: str, ev: Event) -> bool:
    if ev.kind not in DEFAULT_SEARCH_KINDS:
        return False
    wanted: set[str] = set()
    for token in text.split():
        key, colon, value = token.partition(":")
        if colon and key.isalpha() and value:
            continue  # a NIP-50 key:value extension
        wanted |= _model_words(token)
    doc = ev.content
    if ev.kind in (30023, 30024):
        doc += " " + " ".join(t[1] for t in ev.tags if t[0] in ("title", "summary"))
    return bool(wanted) and wanted <= _model_words(doc)


def model_matches(f: Filter, ev: Event) -> bool:
    plain = Filter(f.ids, f.authors, f.kinds, f.tags, f.since, f.until, f.limit)
    return plain.matches(ev) and (f.search is None or model_search_match(f.search.text, ev))


def model_stored(written: list[Event]) -> list[Event]:
    """What a store holds after all writes: one version per replaceable/addressable slot
    (newest, ties lowest id), everything else once."""
    slots: dict[tuple[str, int, str], Event] = {}
    regular: dict[str, Event] = {}
    for ev in written:
        cls = ev.kind_class
        if cls is KindClass.REPLACEABLE or cls is KindClass.ADDRESSABLE:
            key = (ev.pubkey, ev.kind, ev.d_tag if cls is KindClass.ADDRESSABLE else "")
            cur = slots.get(key)
            if cur is None or (ev.created_at, cur.id) > (cur.created_at, ev.id):
                slots[key] = ev
        else:
            regular[ev.id] = ev
    return [*regular.values(), *slots.values()]


def order(evs: list[Event]) -> list[Event]:
    return sorted(evs, key=lambda e: (-e.created_at, e.id))


def model_query(stored: list[Event], fs: list[Filter], now: int, scope: ReadScope | None = None) -> list[str]:
    live = [e for e in stored if e.expiration is None or e.expiration > now]
    if scope is not None:
        live = [e for e in live if scope.allows(e.kind, e.pubkey, e.tags) and not scope.banned(e.id, e.pubkey)]
    out: dict[str, Event] = {}
    for f in fs:
        hits = order([e for e in live if model_matches(f, e)])
        if f.limit is not None:
            hits = hits[: f.limit]
        out.update((e.id, e) for e in hits)
    return [e.id for e in order(list(out.values()))]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
async def test_query_matches_brute_force_model(store_factory: StoreFactory, data: st.DataObject) -> None:
    written = data.draw(st.lists(events(), min_size=8, max_size=30), label="events")
    batches = data.draw(st.integers(1, 3), label="batches")
    fs = data.draw(
        st.sampled_from([1, 1, 2, 3]).flatmap(lambda n: st.lists(filters(written), min_size=n, max_size=n)),
        label="filters",
    )
    now = data.draw(st.sampled_from([900, 1000, 1050, 1200]), label="now")
    readers = data.draw(st.sampled_from([None, [], PUBKEYS[:1], PUBKEYS[1:2], PUBKEYS[1:]]), label="readers")
    banned_pubkeys = frozenset(data.draw(st.sampled_from([[], [], PUBKEYS[:1], PUBKEYS[1:]]), label="banned pubkeys"))
    ids = st.sampled_from([e.id for e in written])
    banned_ids = frozenset(data.draw(st.lists(ids, max_size=3), label="banned ids"))
    scope = None
    if readers is not None or banned_pubkeys or banned_ids:
        scope = read_scope(frozenset(readers or ()), banned_pubkeys, banned_ids)
    async with store_factory() as store:
        for i in range(batches):
            chunk = written[i::batches]
            await store.write_batch([WriteRequest(e) for e in chunk], NOW)
        bans = [("ban_pubkey", k, "spam") for k in banned_pubkeys] + [("ban_event", i, "") for i in banned_ids]
        await store.apply_management(bans)
        stored = model_stored(written)
        answer = await store.query(fs, now, scope)
        got = [orjson.loads(r)["id"] for r in answer]
        unlimited = [Filter(f.ids, f.authors, f.kinds, f.tags, f.since, f.until, None, f.search) for f in fs]
        if all(f.search is None for f in fs):
            assert got == model_query(stored, fs, now, scope)
        else:
            assert len(got) == len(set(got))
            assert set(got) <= set(model_query(stored, unlimited, now, scope))
            for f, whole in zip(fs, unlimited, strict=True):
                if f.search is None:  # its newest `limit` matches are all there
                    assert set(model_query(stored, [f], now, scope)) <= set(got)
                    continue
                hits = set(model_query(stored, [whole], now, scope))
                if f.limit is None or f.limit >= len(hits):
                    assert hits <= set(got)
                else:  # `limit` of its matches, whichever the ranking put first
                    assert len(hits & set(got)) >= f.limit
            if len(fs) == 1 and fs[0].limit is not None:
                assert len(got) == min(fs[0].limit, len(model_query(stored, unlimited, now, scope)))
        assert [raw async for page in store.query_pages(fs, now, scope, page_bytes=600) for raw in page] == answer
        assert await store.count(fs, now, scope) == len(model_query(stored, unlimited, now, scope))
