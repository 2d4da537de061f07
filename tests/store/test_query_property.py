"""Property: for random events and random filters, ``store.query`` and ``store.count``
equal a brute-force model built on ``Filter.matches`` (the one definition of a filter),
with NIP-01's replaceable/addressable rules, NIP-40 expiry, per-filter limits, union
de-duplication and newest-first / lowest-id order.

Few authors, kinds, tag values and timestamps, so ties, collisions and replacements are
common rather than rare.
"""

from __future__ import annotations

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.event import Event, KindClass, sign_event
from relay.filters import Filter
from relay.store.base import WriteRequest
from tests.store.conftest import StoreFactory

NOW = 1_000
SECRETS = [(i).to_bytes(32, "big") for i in (1, 2, 3)]
KINDS = [1, 1, 1, 7, 0, 10002, 30023]  # regular kinds weighted: replaceable ones collapse
TAG_VALUES = ["a", "b"]
TIMES = [10, 20, 20, 20, 30]

# Indexed tags dominate so tag filters find several events, often at the same second.
tag_st = st.sampled_from(
    [
        *(["t", "a"], ["t", "b"], ["x", "a"], ["x", "b"], ["t", "a"], ["x", "b"]),
        *(["d", ""], ["d", "k1"], ["expiration", "900"], ["expiration", "1000"], ["expiration", "1100"]),
    ]
).map(list)


@st.composite
def events(draw: st.DrawFn) -> Event:
    return sign_event(
        draw(st.sampled_from(SECRETS)),
        draw(st.sampled_from(KINDS)),
        str(draw(st.integers(0, 3))),
        draw(st.lists(tag_st, max_size=3)),
        draw(st.sampled_from(TIMES)),
    )


PUBKEYS = [sign_event(s, 1).pubkey for s in SECRETS]


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
    for name in draw(st.sampled_from([[], ["t"], ["x"], ["t", "x"]])):
        tags.append((name, frozenset(draw(st.sampled_from([["a"], ["b"], ["a", "b"]])))))
    since = draw(st.sampled_from(TIMES)) if draw(maybe) else None
    until = draw(st.sampled_from(TIMES)) if draw(maybe) else None
    limit = draw(st.integers(0, 6)) if draw(maybe) else None
    return Filter(ids, authors, kinds, tuple(sorted(tags)), since, until, limit)


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


def model_query(stored: list[Event], fs: list[Filter], now: int) -> list[str]:
    live = [e for e in stored if e.expiration is None or e.expiration > now]
    out: dict[str, Event] = {}
    for f in fs:
        hits = order([e for e in live if f.matches(e)])
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
    async with store_factory() as store:
        for i in range(batches):
            chunk = written[i::batches]
            await store.write_batch([WriteRequest(e) for e in chunk], NOW)
        stored = model_stored(written)
        got = [orjson.loads(r)["id"] for r in await store.query(fs, now)]
        assert got == model_query(stored, fs, now)
        unlimited = [Filter(f.ids, f.authors, f.kinds, f.tags, f.since, f.until, None) for f in fs]
        assert await store.count(fs, now) == len(model_query(stored, unlimited, now))
