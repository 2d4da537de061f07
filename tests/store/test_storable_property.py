"""Property (issue 8): whatever ``parse_event`` / ``parse_filter`` accept, SQLite and
PostgreSQL take the same way, and whatever they refuse, they refuse with ``Invalid``.

Events are drawn from the edges of everything the parser sees: integers past int64 and at
the 2**62 timestamp bound, kinds past 65535, U+0000 and lone surrogates in content and
tags, indexed values around the 1,024-byte bound (random hex, so PostgreSQL cannot compress
them under its btree limit), NIP-40 expiration strings ``int()`` would take ("+5", "٣",
"99999999999999999999"), NIP-09 ``a`` tags with odd kinds ("²", 30 digits), up to 2,000
tags. An accepted event is written between two bystander events in ONE ``write_batch`` on
each store: the batch must not raise (so it never fails a neighbour), the outcomes must
be equal, and the event must be found by id and by each of its tags the same way on both.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from relay.nostr import crypto
from relay.nostr.errors import Invalid, Rejection
from relay.nostr.event import Event, KindClass, compute_id, parse_event, sign_event
from relay.nostr.filters import Filter, parse_filter
from relay.store.base import Store, WriteOutcome, WriteRequest

pytestmark = pytest.mark.postgres

NOW = 1_700_000_000

INT_EDGES = [
    -1, 0, 1, 2**31 - 1, 2**31, 2**32, 2**53 + 1, 2**62 - 1, 2**62, 2**62 + 1,
    2**63 - 1, 2**63, 2**64 - 1, 2**64, 10**30,
]
KIND_EDGES = [0, 1, 3, 5, 7, 10002, 30023, 39999, 40000, 65535, 65536, 2**31, -1]
EXPIRATIONS = [
    "0", "1", str(NOW + 3600), str(2**62), str(2**62 + 1), str(2**63 - 1), str(2**63),
    "99999999999999999999", "-1", "+5", " 5", "5 ", "5_0", "٣", "1e3", "", "abc", "0x10", "00012",
]
ODD = ["", "\x00", "a\x00b", "\ud800", "x\udfffy", "é", "😀", "\u2028", "\\", '"']


def _strings() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(ODD),
        st.text(max_size=12),
        st.text(max_size=12),
        st.text(max_size=12),
        st.text(st.characters(exclude_categories=()), max_size=6),  # surrogates not excluded
        st.sampled_from([1023, 1024, 1025, 3000]).flatmap(
            lambda n: st.binary(min_size=n // 2 + 1, max_size=n // 2 + 1).map(lambda b: b.hex()[:n])
        ),
        st.sampled_from(["😀" * 256, "😀" * 257, "a" * 3000]),
    )


@st.composite
def tags(draw: st.DrawFn, pubkey: str) -> list[Any]:
    name = draw(st.sampled_from(["t", "d", "e", "p", "a", "r", "expiration", "x", "tt", "-", "", "\x00", "T"]))
    if name == "expiration":
        return [name, draw(st.sampled_from(EXPIRATIONS))]
    if name == "a":
        kind = draw(st.sampled_from(["²", "9" * 30, "30023", "0", "3", "65536", "39999", "1", "00003", "99999999999"]))
        return [name, f"{kind}:{pubkey}:{draw(st.sampled_from(['', 'x', 'a' * 1100]))}"]
    if name in ("e", "p") and draw(st.booleans()):
        return [name, draw(st.sampled_from(["0" * 64, pubkey, "A" * 64]))]
    if name == "-":
        return [name]
    extra = draw(st.lists(_strings(), max_size=2))
    return [name, draw(_strings()), *extra]


@st.composite
def event_objects(draw: st.DrawFn) -> tuple[dict[str, Any], bytes]:
    secret = crypto.generate_secret()
    pubkey = crypto.public_key(secret).hex()
    created_at = draw(st.one_of(st.sampled_from(INT_EDGES), st.integers(0, 2**62), st.just(NOW), st.just(NOW)))
    kind = draw(st.one_of(st.sampled_from(KIND_EDGES), st.sampled_from(KIND_EDGES[:8]), st.integers(0, 65535)))
    content = draw(_strings())
    tag_list = draw(st.lists(tags(pubkey), max_size=5))
    if draw(st.integers(0, 9)) == 0:  # occasionally a long list: up to 2,000 tags
        tag_list = (tag_list or [["t", "many"]]) * draw(st.integers(1, 2000 // max(1, len(tag_list))))
    obj: dict[str, Any] = {"pubkey": pubkey, "created_at": created_at, "kind": kind, "tags": tag_list,
                           "content": content}
    try:
        event_id = compute_id(pubkey, created_at, kind, tag_list, content)
        sig = crypto.sign_schnorr(bytes.fromhex(event_id), secret).hex()
    except (TypeError, OverflowError):  # orjson cannot serialize it: parse_event must refuse it
        event_id, sig = "0" * 64, "0" * 128
    obj |= {"id": event_id, "sig": sig}
    return obj, secret


async def _ids(store: Store, f: Filter) -> list[str]:
    return [orjson.loads(raw)["id"] for raw in await store.query([f], NOW)]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow, HealthCheck.data_too_large])
@given(drawn=event_objects())
async def test_parsed_events_are_stored_alike_and_never_fail_a_neighbour(
    both_stores: tuple[Store, Store], drawn: tuple[dict[str, Any], bytes]
) -> None:
    obj, secret = drawn
    try:
        parsed = parse_event(obj)
    except Invalid as exc:
        event(f"refused: {exc.reason.split(' ')[0]}")
        return  # refused before any store sees it: the same on every store by construction
    event(f"accepted, {'many' if len(parsed.tags) > 5 else 'few'} tags")
    if parsed.kind_class is KindClass.EPHEMERAL:
        return  # never stored
    before = sign_event(secret, 1, "neighbour before", [["t", "n"]], NOW)
    after = sign_event(secret, 1, "neighbour after", [["t", "n"]], NOW)
    batch = [WriteRequest(before), WriteRequest(parsed), WriteRequest(after)]
    lite, pg = both_stores
    # Neither call may raise: an exception here fails the neighbours' OKs in the relay.
    outcomes = [await store.write_batch(batch, NOW) for store in both_stores]
    assert outcomes[0] == outcomes[1], (outcomes, parsed.raw[:300])
    assert outcomes[0][0] is WriteOutcome.STORED and outcomes[0][2] is WriteOutcome.STORED
    by_id = Filter(ids=frozenset([parsed.id]))
    found = [await store.query([by_id], NOW) for store in both_stores]
    assert found[0] == found[1]
    expiration = parsed.expiration
    if outcomes[0][1] is WriteOutcome.STORED and (expiration is None or expiration > NOW):
        assert found[0] == [parsed.raw]  # stored whole: content with U+0000 byte for byte
    for name, value in set(parsed.index_tags()):
        f = Filter(tags=((name, frozenset([value])),))
        assert await _ids(lite, f) == await _ids(pg, f), (name, value)
        assert await lite.count([f], NOW) == await pg.count([f], NOW)
        if name not in "ep":
            # An event's own indexed value is always a value a filter may ask for.
            parse_filter({"#" + name: [value]}, max_limit=500)


def _filter_values() -> st.SearchStrategy[Any]:
    return st.one_of(st.sampled_from(INT_EDGES), st.booleans(), st.floats(allow_nan=False), st.just(None))


@st.composite
def filter_objects(draw: st.DrawFn) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key in draw(st.lists(st.sampled_from(["since", "until", "limit"]), max_size=3, unique=True)):
        obj[key] = draw(st.one_of(_filter_values(), st.integers(0, 2**40)))
    if draw(st.booleans()):
        obj["kinds"] = draw(st.lists(st.one_of(st.sampled_from(KIND_EDGES), st.integers(0, 70000)), max_size=4))
    if draw(st.booleans()):
        obj["#" + draw(st.sampled_from("tdaxT"))] = draw(st.lists(_strings(), max_size=4))
    if draw(st.integers(0, 9)) == 0:  # many values: SQLite binds each one, PostgreSQL one array
        n = draw(st.sampled_from([5_000, 19_999, 20_001, 33_000]))
        obj["#t"] = [f"v{i}" for i in range(n)]
    return obj


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow, HealthCheck.data_too_large])
@given(obj=filter_objects())
async def test_parsed_filters_query_alike_on_both_stores(both_stores: tuple[Store, Store], obj: dict[str, Any]) -> None:
    lite, pg = both_stores
    if not await lite.count([Filter()], NOW):
        secret = crypto.generate_secret()
        seed = [sign_event(secret, 1, str(i), [["t", f"v{i}"], ["d", "x"]], 100 + i) for i in range(20)]
        for store in both_stores:
            await store.write_batch([WriteRequest(e) for e in seed], NOW)
    try:
        f = parse_filter(obj, max_limit=500)
    except Rejection as exc:
        assert str(exc).startswith("invalid: "), exc
        event("refused")
        return
    event("accepted")
    assert await _ids(lite, f) == await _ids(pg, f)
    assert await lite.count([f], NOW) == await pg.count([f], NOW)


def test_event_helpers_cover_the_edges() -> None:
    """The strategies above reach the cases they are meant to (not a vacuous property)."""
    signed: Event = sign_event(crypto.generate_secret(), 1, "x", [["expiration", "99999999999999999999"]])
    assert signed.expiration is None  # unparsable: never an integer no store can hold
    obj = orjson.loads(signed.raw)
    with pytest.raises(Invalid, match="expiration"):
        parse_event(obj)
