"""NIP-59/17 gift wraps over real WebSockets: a kind-1059 wrap deleted by its recipient
(NIP-09 from the ``p``-tagged key) is removed and refused when sent again, on both stores;
the ephemeral wrap (kind 21059) reaches only its authenticated recipient, live, and is
never stored."""

from __future__ import annotations

from relay.nostr import crypto
from relay.nostr.event import Event
from relay.nostr.filters import Filter
from tests.conftest import RelayFactory
from tests.nostr_client import NostrClient, signed


def wrap_for(recipient: bytes, kind: int = 1059, content: str = "sealed") -> Event:
    """A wrap as NIP-59 makes one: signed by a fresh one-time key, ``p``-tagging the recipient."""
    return signed(crypto.generate_secret(), kind, content, [["p", crypto.public_key(recipient).hex()]])


def deletion(secret: bytes, *event_ids: str, kind: str = "1059") -> Event:
    return signed(secret, 5, "", [*(["e", i] for i in event_ids), ["k", kind]])


async def test_recipient_deletes_a_gift_wrap_and_it_stays_deleted(
    relay_factory: RelayFactory, storage: dict[str, str], alice: bytes, bob: bytes
) -> None:
    carol = crypto.generate_secret()
    async with (
        relay_factory(storage=storage) as relay,
        NostrClient(relay.url) as sender,
        NostrClient(relay.url) as inbox,
    ):
        kept, dropped = wrap_for(alice, content="keep"), wrap_for(alice, content="drop")
        to_bob = wrap_for(bob)
        note = signed(bob, 1, "a note naming alice", [["p", crypto.public_key(alice).hex()]])
        for event in (kept, dropped, to_bob, note):
            assert await sender.publish(event) == (True, "")
        assert (await inbox.auth(alice, relay.url))[0]
        mine = {"kinds": [1059], "#p": [crypto.public_key(alice).hex()]}
        assert {e["id"] for e in await inbox.req("before", mine)} == {kept.id, dropped.id}

        # Alice deletes one wrap addressed to her, and tries bob's wrap and bob's note too.
        assert await inbox.publish(deletion(alice, dropped.id, to_bob.id, note.id)) == (True, "")
        assert {e["id"] for e in await inbox.req("after", mine)} == {kept.id}
        # Not hers to delete: bob's wrap and bob's own note are still there.
        async with NostrClient(relay.url) as bobs:
            assert (await bobs.auth(bob, relay.url))[0]
            assert [e["id"] for e in await bobs.req("b", {"ids": [to_bob.id]})] == [to_bob.id]
        assert [e["id"] for e in await sender.req("n", {"ids": [note.id]})] == [note.id]
        # The sender's client sends the deleted wrap again: refused, as a deleted event is.
        ok, message = await sender.publish(dropped)
        assert not ok and message.startswith("blocked:"), message
        assert {e["id"] for e in await inbox.req("again", mine)} == {kept.id}
        # A stranger's deletion of a wrap to alice does nothing.
        assert (await sender.publish(deletion(carol, kept.id)))[0]
        assert {e["id"] for e in await inbox.req("still", mine)} == {kept.id}
        assert await relay.store.count([Filter(ids=frozenset({kept.id, dropped.id}))], 0) == 1


async def test_ephemeral_gift_wrap_reaches_only_its_authenticated_recipient(
    relay_factory: RelayFactory, alice: bytes, bob: bytes
) -> None:
    alice_pk = crypto.public_key(alice).hex()
    async with (
        relay_factory() as relay,
        NostrClient(relay.url) as sender,
        NostrClient(relay.url) as recipient,
        NostrClient(relay.url) as other,
        NostrClient(relay.url) as stranger,
    ):
        assert (await recipient.auth(alice, relay.url))[0]
        assert (await other.auth(bob, relay.url))[0]
        assert await recipient.req("w", {"kinds": [21059], "#p": [alice_pk]}) == []
        assert await other.req("w", {"kinds": [21059]}) == []
        assert await stranger.req("p", {"#p": [alice_pk]}) == []  # no kinds: not refused, filtered
        # Asking for kind 21059 without AUTH is refused the NIP-42 way.
        await stranger.send(["REQ", "k", {"kinds": [21059]}])
        closed = await stranger.recv_where(lambda m: m[1] == "k")
        assert closed[0] == "CLOSED" and closed[2].startswith("auth-required:"), closed

        live = wrap_for(alice, kind=21059)
        assert await sender.publish(live) == (True, "")
        got = await recipient.recv_where(lambda m: m[0] == "EVENT")
        assert got == ["EVENT", "w", live.to_dict()]
        await other.expect_silence(0.3)
        await stranger.expect_silence(0.1)
        # Never stored: not even its recipient finds it afterwards.
        assert await recipient.req("later", {"ids": [live.id]}) == []

        # Only non-recipients listening: nobody could receive it (NIP-01 mute).
        await recipient.send(["CLOSE", "w"])
        ok, message = await sender.publish(wrap_for(alice, kind=21059, content="nobody home"))
        assert not ok and message.startswith("mute:"), message
        await other.expect_silence(0.2)


async def test_a_key_authenticated_second_on_a_connection_reads_its_own_gift_wraps(
    relay_factory: RelayFactory, storage: dict[str, str], alice: bytes, bob: bytes
) -> None:
    """NIP-42 lets a client authenticate several pubkeys on one connection (one signer app,
    several keys): every one counts. The key authenticated second gets its stored wraps
    (REQ, COUNT), its live wraps (stored and ephemeral) and writes its own protected events
    on the same connection, beside the first key's; a third key's wraps stay hidden."""
    carol = crypto.generate_secret()
    alice_pk, bob_pk = crypto.public_key(alice).hex(), crypto.public_key(bob).hex()
    async with (
        relay_factory(storage=storage) as relay,
        NostrClient(relay.url) as sender,
        NostrClient(relay.url) as both,
    ):
        to_alice, to_bob, to_carol = wrap_for(alice), wrap_for(bob), wrap_for(carol)
        for event in (to_alice, to_bob, to_carol):
            assert await sender.publish(event) == (True, "")
        assert (await both.auth(alice, relay.url))[0]
        assert [e["id"] for e in await both.req("first", {"kinds": [1059]})] == [to_alice.id]
        assert (await both.auth(bob, relay.url))[0]  # the second key on the same connection

        assert [e["id"] for e in await both.req("bob", {"kinds": [1059], "#p": [bob_pk]})] == [to_bob.id]
        assert {e["id"] for e in await both.req("all", {"kinds": [1059]})} == {to_alice.id, to_bob.id}
        assert await both.count("n", {"kinds": [1059]}) == 2
        assert await both.count("nb", {"kinds": [1059], "#p": [bob_pk]}) == 1
        assert [e["id"] for e in await both.req("byid", {"ids": [to_bob.id, to_carol.id]})] == [to_bob.id]

        # Live: a wrap to the second key arrives (stored and ephemeral); one to carol does not.
        for sub in ("first", "bob", "all", "byid"):
            await both.send(["CLOSE", sub])
        assert await both.req("live", {"kinds": [1059, 21059], "limit": 0}) == []
        for event in (wrap_for(carol), wrap_for(bob, content="later"), wrap_for(bob, kind=21059)):
            ok, message = await sender.publish(event)
            assert ok, message
            if event.tags[0][1] == bob_pk:
                assert await both.recv_where(lambda m: m[0] == "EVENT" and m[1] == "live") == [
                    "EVENT", "live", event.to_dict()]
        await both.expect_silence(0.2)

        # Writes for each: NIP-70 protected events of both keys, on the one connection.
        for secret, pubkey in ((alice, alice_pk), (bob, bob_pk)):
            protected = signed(secret, 1, f"mine, {pubkey[:8]}", [["-"]])
            assert await both.publish(protected) == (True, "")
