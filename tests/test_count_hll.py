"""NIP-45 HyperLogLog over real WebSockets, on both stores: COUNT replies to the NIP's
common filters carry ``hll`` (256 registers, the NIP's offset rule), equal to what
nostr-tools' own nip45 computes from the same pubkeys; other COUNTs carry none."""

from __future__ import annotations

import hashlib
import os
import re
from typing import Any

import pytest

from relay.nostr import crypto, hyperloglog
from relay.nostr.event import Event
from tests.conftest import RelayFactory
from tests.node_tools import ensure_installed, run_script
from tests.nostr_client import NostrClient, signed

# NIP-45 "Followers count with HyperLogLog": the example's hll, in the NIP's own form.
NIP45_FOLLOWERS_EXAMPLE = (
    "0607070505060806050508060707070706090d080b0605090607070b07090606060b0705070709050807080805080407060906080707"
    "080507070805060509040a0b06060704060405070706080607050907070b08060808080b080607090a06060805060604070908050607"
    "060805050d05060906090809080807050e0705070507060907060606070708080b0807070708080706060609080705060604060409070a"
    "0808050a0506050b0810060a0908070709080b0a07050806060508060607080606080707050806080c0a0707070a080808050608080f07"
    "0506070706070a0908090c080708080806090508060606090906060d07050708080405070708"
)


async def count_reply(client: NostrClient, sub_id: str, *filters: dict[str, Any]) -> dict[str, Any]:
    await client.send(["COUNT", sub_id, *filters])
    msg = await client.recv_where(lambda m: m[0] in ("COUNT", "CLOSED") and m[1] == sub_id)
    assert msg[0] == "COUNT", msg
    body: dict[str, Any] = msg[2]
    return body


async def reference(f: dict[str, Any], pubkeys: list[str], relay_hll: str | None = None) -> dict[str, Any]:
    """nostr-tools' nip45: the filter's offset, the registers of ``pubkeys``, its estimate."""
    return await run_script("hll.mjs", {"filter": f, "pubkeys": pubkeys, "relayHll": relay_hll})


def test_offset_rule_and_registers_follow_the_nip_step_by_step() -> None:
    """The NIP's offset steps on each kind of tag value, and the store's per-register minima
    giving the same registers as feeding every pubkey one by one."""
    event_id = "ab" * 16 + "7c" + "00" * 15
    assert hyperloglog.offset_of(event_id) == 0x7 + 8  # hex as it is: character 32 is "7"
    address = f"30023:{event_id}:my:post"  # an address: its pubkey part
    assert hyperloglog.offset_of(address) == 0x7 + 8
    url = "https://example.com/article"  # anything else: sha256 of it
    assert hyperloglog.offset_of(url) == int(hashlib.sha256(url.encode()).hexdigest()[32], 16) + 8
    keys = [os.urandom(32) for _ in range(2000)] + [bytes(20) + b"\x80" + bytes(11)]
    for offset in (8, 15, 23):
        fed = bytearray(hyperloglog.REGISTERS)
        minima: dict[int, bytes] = {}
        for key in keys:
            hyperloglog.feed(fed, key, offset)
            suffix = key[offset + 1 : offset + 8]
            minima[key[offset]] = min(minima.get(key[offset], suffix), suffix)
        assert hyperloglog.registers(minima.items()) == bytes(fed)
    assert hyperloglog.rho(bytes(7)) == 57 and hyperloglog.rho(b"\x80" + bytes(6)) == 1
    assert hyperloglog.rho(b"\x00\x01" + bytes(5)) == 16


async def test_count_carries_the_hll_nostr_tools_computes(
    relay_factory: RelayFactory, storage: dict[str, str], alice: bytes
) -> None:
    why = ensure_installed()
    if why:
        pytest.skip(why)
    alice_pk = crypto.public_key(alice).hex()
    async with relay_factory(storage=storage) as relay, NostrClient(relay.url) as client:
        note = signed(alice, 1, "react to me")
        assert (await client.publish(note))[0]
        reactors = [crypto.generate_secret() for _ in range(300)]
        followers = reactors[:120]
        events: list[Event] = [signed(s, 7, "+", [["e", note.id], ["p", alice_pk]]) for s in reactors]
        events += [signed(s, 3, "", [["p", alice_pk]]) for s in followers]
        events += [signed(reactors[0], 1, "a reply, not a reaction", [["e", note.id]])]
        events += [signed(s, 1111, "a comment", [["E", note.id]]) for s in reactors[:7]]
        for event in events:
            assert (await client.publish(event))[0]

        cases: list[tuple[dict[str, Any], list[bytes]]] = [
            ({"kinds": [7], "#e": [note.id]}, reactors),
            ({"#p": [alice_pk], "kinds": [3]}, followers),
            ({"kinds": [1111], "#E": [note.id]}, reactors[:7]),
            ({"kinds": [1], "#e": [note.id]}, reactors[:1]),
        ]
        for i, (f, authors) in enumerate(cases):
            got = await count_reply(client, f"c{i}", f)
            pubkeys = [crypto.public_key(s).hex() for s in authors]
            want = await reference(f, pubkeys, got["hll"])
            assert got["count"] == len(authors)
            assert re.fullmatch("[0-9a-f]{512}", got["hll"]) and len(got["hll"]) == len(NIP45_FOLLOWERS_EXAMPLE)
            assert got["hll"] == want["hll"], f
            assert want["offset"] == hyperloglog.offset_of(next(iter(v[0] for k, v in f.items() if k[0] == "#")))
        # nostr-tools reads a usable estimate from the relay's registers (HLL error with 256
        # registers is about 6.5%; 300 and 120 are within linear counting's exact-ish range).
        for i, (f, authors) in enumerate(cases[:2]):
            got = await count_reply(client, f"e{i}", f)
            estimate = (await reference(f, [], got["hll"]))["estimate"]
            assert abs(estimate - len(authors)) <= 0.15 * len(authors), (estimate, len(authors))


async def test_only_the_nips_common_filters_get_an_hll(relay_factory: RelayFactory, alice: bytes, bob: bytes) -> None:
    alice_pk = crypto.public_key(alice).hex()
    async with relay_factory() as relay, NostrClient(relay.url) as client:
        note = signed(alice, 1, "hello")
        assert (await client.publish(note))[0]
        assert (await client.publish(signed(bob, 7, "+", [["e", note.id]])))[0]
        common = {"kinds": [7], "#e": [note.id]}
        assert "hll" in await count_reply(client, "common", common)
        for i, f in enumerate(
            [
                {"kinds": [1]},  # no tag attribute: undefined in the NIP
                {"kinds": [7], "#e": [note.id], "authors": [crypto.public_key(bob).hex()]},
                {"kinds": [7, 6], "#e": [note.id]},
                {"kinds": [7], "#e": [note.id, "00" * 32]},
                {"kinds": [7], "#e": [note.id], "since": 1},
                {"kinds": [5], "#e": [note.id]},
                {"#p": [alice_pk]},
            ]
        ):
            reply = await count_reply(client, f"other{i}", f)
            assert "hll" not in reply, f
        two = await count_reply(client, "two", common, {"kinds": [3], "#p": [alice_pk]})
        assert two == {"count": 1}  # a union of filters has no one offset
