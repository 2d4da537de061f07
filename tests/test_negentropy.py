"""relay/nostr/negentropy.py without I/O: wire encodings from the spec, reconciliation finding
exactly the symmetric difference (with and without a frame size limit), and malformed
messages failing with NegentropyError only."""

from __future__ import annotations

import contextlib
import hashlib
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.nostr.negentropy import (
    INFINITY,
    Bound,
    ItemBudget,
    ItemSet,
    Negentropy,
    NegentropyError,
    decode_varint,
    encode_varint,
    fingerprint,
)


def test_varints_are_base128_most_significant_first() -> None:
    cases = {0: "00", 1: "01", 127: "7f", 128: "8100", 255: "817f", 16384: "818000", 2**64 - 1: "81ffffffffffffffff7f"}
    for n, hex_ in cases.items():
        assert encode_varint(n).hex() == hex_
        assert decode_varint(bytes.fromhex(hex_), 0) == (n, len(hex_) // 2)
    with pytest.raises(NegentropyError):
        decode_varint(b"\x81", 0)  # truncated


def test_fingerprint_is_sha256_of_little_endian_sum_and_count() -> None:
    a, b = os.urandom(32), os.urandom(32)
    total = (int.from_bytes(a, "little") + int.from_bytes(b, "little")) % 2**256
    expected = hashlib.sha256(total.to_bytes(32, "little") + b"\x02").digest()[:16]
    assert fingerprint([a, b]) == expected
    assert fingerprint([]) == hashlib.sha256(bytes(32) + b"\x00").digest()[:16]
    items = ItemSet([(5, a), (3, b)])
    assert items.fingerprint(0, 2) == expected


def test_empty_sets_need_one_round_and_a_tiny_message() -> None:
    client = Negentropy(ItemSet([]))
    first = client.initiate()
    assert first == bytes.fromhex("61" + "00" + "00" + "02" + "00")  # infinity, empty prefix, IdList of 0
    answer = Negentropy(ItemSet([])).reconcile(first)
    result = client.reconcile_initiator(answer)
    assert (result.reply, result.have, result.need) == (None, [], [])


def test_server_answers_an_unknown_version_with_its_own() -> None:
    assert Negentropy(ItemSet([])).reconcile(b"\x62\x00") == b"\x61"


def reconcile(client_items: list[tuple[int, bytes]], server_items: list[tuple[int, bytes]], limit: int = 0) -> tuple[
    set[bytes], set[bytes], int
]:
    client = Negentropy(ItemSet(client_items), limit)
    server = Negentropy(ItemSet(server_items), limit)
    msg: bytes | None = client.initiate()
    have: set[bytes] = set()
    need: set[bytes] = set()
    rounds = 0
    while msg is not None:
        assert not limit or len(msg) <= limit
        answer = server.reconcile(msg)
        assert not limit or len(answer) <= limit
        result = client.reconcile_initiator(answer)
        have.update(result.have)
        need.update(result.need)
        msg = result.reply
        rounds += 1
        assert rounds < 500
    return have, need, rounds


ids_st = st.binary(min_size=32, max_size=32)
# Few timestamps, so many items share one and bounds need id prefixes.
item_st = st.tuples(st.sampled_from([0, 1, 2, 1_700_000_000, 2**63]), ids_st)


# In Nostr an id fixes its created_at (the id hashes it), and a set holds an id once: draw
# distinct ids, each with one timestamp, then deal each to both sides or to one of them.
items_st = st.lists(item_st, unique_by=lambda item: item[1], max_size=380)
side_st = st.sampled_from(["both", "both", "both", "client", "server"])


@settings(max_examples=60, deadline=None)
@given(items=items_st, data=st.data(), limit=st.sampled_from([0, 4096]))
def test_reconciliation_finds_exactly_the_difference(
    items: list[tuple[int, bytes]], data: st.DataObject, limit: int
) -> None:
    sides = data.draw(st.lists(side_st, min_size=len(items), max_size=len(items)))
    client = [item for item, side in zip(items, sides, strict=True) if side != "server"]
    server = [item for item, side in zip(items, sides, strict=True) if side != "client"]
    client_ids = {i for _, i in client}
    server_ids = {i for _, i in server}
    have, need, _ = reconcile(client, server, limit)
    assert have == client_ids - server_ids
    assert need == server_ids - client_ids


@pytest.mark.parametrize("limit", [0, 4096])
def test_large_sets_with_scattered_differences(limit: int) -> None:
    common = [(1_700_000_000 + i // 3, os.urandom(32)) for i in range(5000)]
    only_client = [(1_700_000_000 + i * 7, os.urandom(32)) for i in range(60)]
    only_server = [(1_700_000_000 + i * 11, os.urandom(32)) for i in range(60)]
    have, need, rounds = reconcile(common + only_client, common + only_server, limit)
    assert have == {i for _, i in only_client}
    assert need == {i for _, i in only_server}
    assert rounds >= 2  # split at least once: the sets are far above one IdList


def test_separating_bound_uses_the_shortest_id_prefix() -> None:
    a = bytes.fromhex("aa" * 3 + "01" + "00" * 28)
    b = bytes.fromhex("aa" * 3 + "02" + "00" * 28)
    items = ItemSet([(7, a), (7, b), (9, os.urandom(32))])
    assert items.separating_bound(1) == Bound(7, bytes.fromhex("aaaaaa02"))
    assert items.separating_bound(2) == Bound(9)
    assert items.index_of(Bound(7, bytes.fromhex("aaaaaa02"))) == 1
    assert items.index_of(Bound(INFINITY)) == 3


@pytest.mark.parametrize(
    "message",
    [
        "",  # empty
        "6100",  # bound cut short
        "610000",  # mode missing
        "61000003",  # unknown mode 3
        "6100000105",  # fingerprint cut short
        "61000002ff7f",  # id list longer than the message
        "6100" + "21" + "00" * 33 + "00",  # id prefix longer than 32 bytes
        "61" + "050102" + "00" + "010101" + "00",  # second bound below the first (same second, lower id)
        "61" + "0000" + "00" + "0200" + "00",  # a bound after infinity
    ],
)
def test_malformed_messages_raise_negentropy_error(message: str) -> None:
    server = Negentropy(ItemSet([(1, os.urandom(32))]))
    with pytest.raises(NegentropyError):
        server.reconcile(bytes.fromhex(message))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_never_raise_anything_but_negentropy_error(tail: bytes) -> None:
    server = Negentropy(ItemSet([(i, bytes([i]) * 32) for i in range(40)]), 4096)
    with contextlib.suppress(NegentropyError):
        server.reconcile(b"\x61" + tail)


def test_item_budget_is_shared_and_returned() -> None:
    budget = ItemBudget(10)
    assert budget.take("a", 6) and not budget.take("b", 5)
    budget.give_back("a", 6)
    assert budget.take("b", 10)


def test_item_budget_gives_each_address_group_a_share_of_the_whole() -> None:
    budget = ItemBudget(10, per_group=4)
    assert budget.take("a", 3) and not budget.take("a", 2)  # a's share is spent, not the relay's
    assert budget.room("a") == 1 and budget.room("b") == 4
    assert budget.take("b", 4) and budget.take("c", 3)
    assert not budget.take("d", 1) and budget.room("d") == 0  # the relay-wide bound still holds
    budget.give_back("a", 3)
    assert budget.held("a") == 0 and budget.take("d", 3)
