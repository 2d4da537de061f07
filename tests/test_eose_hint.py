"""NIP-67 EOSE completeness hint over real WebSockets, on both stores: ``["EOSE", id,
["finish"]]`` only when every stored match was sent; the two-element EOSE whenever a limit
(the client's, or the relay's ``max_limit`` clamp) may have cut the answer."""

from __future__ import annotations

from typing import Any

from relay.nostr import crypto
from tests.conftest import RelayFactory
from tests.nostr_client import NostrClient, signed


async def eose_of(client: NostrClient, sub_id: str, *filters: dict[str, Any]) -> tuple[int, list[Any]]:
    """(events received, the EOSE message) of one REQ."""
    await client.send(["REQ", sub_id, *filters])
    events = 0
    while True:
        msg = await client.recv_where(lambda m: m[0] in ("EVENT", "EOSE", "CLOSED") and m[1] == sub_id)
        if msg[0] == "EVENT":
            events += 1
            continue
        assert msg[0] == "EOSE", msg
        return events, msg


async def test_finish_only_when_every_stored_match_was_sent(
    relay_factory: RelayFactory, storage: dict[str, str], alice: bytes, bob: bytes
) -> None:
    author = crypto.public_key(alice).hex()
    async with relay_factory(storage=storage, limits={"max_limit": 8}) as relay, NostrClient(relay.url) as client:
        notes = [signed(alice, 1, f"note {i}", created_at=1_700_000_000 + i) for i in range(5)]
        for event in notes:
            assert (await client.publish(event))[0]
        assert (await client.publish(signed(bob, 7, "+")))[0]

        # The NIP's own example: an ids filter, every match sent.
        assert await eose_of(client, "ids", {"ids": [notes[0].id]}) == (1, ["EOSE", "ids", ["finish"]])
        assert await eose_of(client, "all", {"authors": [author], "limit": 6}) == (5, ["EOSE", "all", ["finish"]])
        # Exactly at the client's limit: there may be more, so no hint (the client paginates).
        assert await eose_of(client, "cut", {"authors": [author], "limit": 5}) == (5, ["EOSE", "cut"])
        assert await eose_of(client, "less", {"authors": [author], "limit": 2}) == (2, ["EOSE", "less"])
        # Two filters: one of them was cut at its limit, whatever the other gave.
        two = await eose_of(client, "two", {"authors": [author], "limit": 2}, {"kinds": [7]})
        assert two == (3, ["EOSE", "two"])
        two_whole = await eose_of(client, "two-whole", {"authors": [author], "limit": 7}, {"kinds": [7]})
        assert two_whole == (6, ["EOSE", "two-whole", ["finish"]])
        # limit 0 asks for no stored events: what matches was not sent.
        assert await eose_of(client, "live", {"authors": [author], "limit": 0}) == (0, ["EOSE", "live"])
        # Nothing matches: the (empty) answer is whole.
        none = await eose_of(client, "none", {"authors": [crypto.public_key(bob).hex()], "kinds": [1]})
        assert none == (0, ["EOSE", "none", ["finish"]])

        # The live part of a finished subscription goes on as before.
        live = signed(alice, 1, "after EOSE")
        assert (await client.publish(live))[0]
        got = await client.recv_where(lambda m: m[0] == "EVENT" and m[1] == "all")
        assert got[2]["id"] == live.id


async def test_the_relays_own_clamp_is_never_called_finished(
    relay_factory: RelayFactory, storage: dict[str, str], alice: bytes
) -> None:
    """The NIP's motivating case: the relay caps below the client's limit (``max_limit``
    3, the client asks for 500 and 5 match): three events and no ``finish``."""
    author = crypto.public_key(alice).hex()
    async with relay_factory(storage=storage, limits={"max_limit": 3}) as relay, NostrClient(relay.url) as client:
        for i in range(5):
            assert (await client.publish(signed(alice, 1, f"n{i}", created_at=1_700_000_000 + i)))[0]
        assert await eose_of(client, "capped", {"authors": [author], "limit": 500}) == (3, ["EOSE", "capped"])
        # The relay's default_limit caps a filter without one the same way.
        assert await eose_of(client, "default", {"authors": [author]}) == (3, ["EOSE", "default"])


async def test_hidden_events_do_not_count_and_do_not_block_finish(
    relay_factory: RelayFactory, alice: bytes, bob: bytes
) -> None:
    """DMs an unauthenticated reader may not see are left out inside the query (NIP-42), so
    an answer of the visible ones is whole even when the hidden ones fill the limit."""
    async with relay_factory(auth={"enabled": True}) as relay, NostrClient(relay.url) as client:
        await client.auth(alice, relay.url)
        for i in range(4):
            dm = signed(alice, 4, f"dm {i}", [["p", crypto.public_key(bob).hex()]])
            assert (await client.publish(dm))[0]
        note = signed(alice, 1, "public")
        assert (await client.publish(note))[0]
        async with NostrClient(relay.url) as stranger:
            got = await eose_of(stranger, "s", {"authors": [crypto.public_key(alice).hex()], "limit": 3})
            assert got == (1, ["EOSE", "s", ["finish"]])
