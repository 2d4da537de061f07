"""NIP-42 authentication, private kinds served only to the parties they name, the
auth-required-to-write/read settings, and NIP-70 protected events."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest

from relay.nostr import crypto
from relay.nostr.event import Event, sign_event
from relay.nostr.filters import parse_filter
from relay.session.server import Relay
from tests.conftest import RelayFactory
from tests.nostr_client import NostrClient, signed


def auth_event(secret: bytes, challenge: str, relay_url: str, *, kind: int = 22242, created_at: int | None = None,
               ) -> dict[str, object]:
    at = int(time.time()) if created_at is None else created_at
    return sign_event(secret, kind, "", [["relay", relay_url], ["challenge", challenge]], at).to_dict()


async def first_message(client: NostrClient) -> list[object]:
    assert client.ws is not None
    return list(orjson.loads(await client.ws.recv()))


async def test_challenge_is_sent_on_connect(relay: Relay) -> None:
    async with NostrClient(relay.url) as client:
        msg = await first_message(client)
        assert msg[0] == "AUTH" and isinstance(msg[1], str) and len(msg[1]) >= 16


async def test_each_connection_gets_its_own_challenge(relay: Relay) -> None:
    async with NostrClient(relay.url) as one, NostrClient(relay.url) as two:
        assert (await first_message(one))[1] != (await first_message(two))[1]


async def test_no_challenge_when_auth_is_disabled(relay_factory: RelayFactory) -> None:
    async with relay_factory(auth={"enabled": False}) as relay, NostrClient(relay.url) as client:
        await client.expect_silence(0.3)
        assert client.challenge is None


async def test_valid_auth_is_accepted(relay: Relay, alice: bytes) -> None:
    async with NostrClient(relay.url) as client:
        assert await client.auth(alice, relay.url) == (True, "")


async def test_auth_with_trailing_slash_url_is_accepted(relay: Relay, alice: bytes) -> None:
    async with NostrClient(relay.url) as client:
        assert await client.auth(alice, relay.url + "/") == (True, "")


async def test_auth_with_wrong_relay_url_is_refused(relay: Relay, alice: bytes) -> None:
    async with NostrClient(relay.url) as client:
        assert await client.auth(alice, "wss://other.example.com") == (
            False, "invalid: AUTH relay URL does not match this relay")


async def test_auth_with_wrong_challenge_is_refused(relay: Relay, alice: bytes) -> None:
    async with NostrClient(relay.url) as client:
        (await first_message(client))
        event = auth_event(alice, "not-the-challenge", relay.url)
        await client.send(["AUTH", event])
        assert await client.recv() == ["OK", event["id"], False, "invalid: AUTH challenge does not match"]


async def test_challenge_of_another_connection_is_refused(relay: Relay, alice: bytes) -> None:
    async with NostrClient(relay.url) as one, NostrClient(relay.url) as two:
        other_challenge = (await first_message(two))[1]
        await first_message(one)
        assert isinstance(other_challenge, str)
        event = auth_event(alice, other_challenge, relay.url)
        await one.send(["AUTH", event])
        assert await one.recv() == ["OK", event["id"], False, "invalid: AUTH challenge does not match"]


async def test_auth_with_wrong_kind_is_refused(relay: Relay, alice: bytes) -> None:
    async with NostrClient(relay.url) as client:
        challenge = (await first_message(client))[1]
        assert isinstance(challenge, str)
        event = auth_event(alice, challenge, relay.url, kind=1)
        await client.send(["AUTH", event])
        assert await client.recv() == ["OK", event["id"], False, "invalid: AUTH event must be kind 22242"]


async def test_stale_auth_event_is_refused(relay: Relay, alice: bytes) -> None:
    async with NostrClient(relay.url) as client:
        challenge = (await first_message(client))[1]
        assert isinstance(challenge, str)
        event = auth_event(alice, challenge, relay.url, created_at=int(time.time()) - 3600)
        await client.send(["AUTH", event])
        assert await client.recv() == ["OK", event["id"], False, "invalid: AUTH event created_at is too far from now"]


async def test_auth_with_bad_signature_is_refused(relay: Relay, alice: bytes, bob: bytes) -> None:
    async with NostrClient(relay.url) as client:
        challenge = (await first_message(client))[1]
        assert isinstance(challenge, str)
        event = auth_event(alice, challenge, relay.url)
        event["sig"] = auth_event(bob, challenge, relay.url)["sig"]
        await client.send(["AUTH", event])
        assert await client.recv() == ["OK", event["id"], False, "invalid: signature is invalid"]


async def test_auth_event_is_never_stored_or_broadcast(relay: Relay, alice: bytes) -> None:
    async with NostrClient(relay.url) as watcher, NostrClient(relay.url) as client:
        assert await watcher.req("w", {}) == []
        assert await client.auth(alice, relay.url) == (True, "")
        await watcher.expect_silence(0.3)
        assert await client.req("s", {"kinds": [22242]}) == []


async def test_several_pubkeys_can_authenticate_on_one_connection(relay: Relay, alice: bytes, bob: bytes) -> None:
    async with NostrClient(relay.url) as client:
        assert await client.auth(alice, relay.url) == (True, "")
        assert await client.auth(bob, relay.url) == (True, "")
        for secret in (alice, bob):
            protected = signed(secret, 1, "mine", [["-"]])
            assert await client.publish(protected) == (True, "")


# --- private kinds (DMs, gift wraps) ----------------------------------------------------

@pytest.fixture
def carol() -> bytes:
    return crypto.generate_secret()


@pytest.mark.parametrize("kind", [4, 1059, 1060])
async def test_private_kind_is_served_only_to_named_authenticated_parties(
    relay: Relay, alice: bytes, bob: bytes, carol: bytes, kind: int
) -> None:
    bob_pk = crypto.public_key(bob).hex()
    dm = signed(alice, kind, "secret", [["p", bob_pk]])
    async with NostrClient(relay.url) as sender:
        assert await sender.publish(dm) == (True, "")
    # unauthenticated: an explicit ask is refused, a broad ask simply omits it
    async with NostrClient(relay.url) as anon:
        await anon.send(["REQ", "dm", {"kinds": [kind]}])
        assert await anon.recv() == [
            "CLOSED", "dm", "auth-required: private messages are served only to authenticated recipients"]
        assert await anon.req("all", {}) == []
        assert await anon.req("id", {"ids": [dm.id]}) == []
    # authenticated as a third party: nothing
    async with NostrClient(relay.url) as third:
        assert await third.auth(carol, relay.url) == (True, "")
        assert await third.req("dm", {"kinds": [kind]}) == []
        assert await third.req("all", {"authors": [dm.pubkey]}) == []
    # the recipient and the author see it
    for secret in (bob, alice):
        async with NostrClient(relay.url) as party:
            assert await party.auth(secret, relay.url) == (True, "")
            assert await party.req("dm", {"kinds": [kind], "#p": [bob_pk]}) == [dm.to_dict()]
            assert await party.req("all", {}) == [dm.to_dict()]


async def test_private_kind_live_delivery_only_to_named_parties(
    relay: Relay, alice: bytes, bob: bytes, carol: bytes
) -> None:
    bob_pk = crypto.public_key(bob).hex()
    async with NostrClient(relay.url) as anon, NostrClient(relay.url) as third, NostrClient(relay.url) as recipient:
        assert await third.auth(carol, relay.url) == (True, "")
        assert await recipient.auth(bob, relay.url) == (True, "")
        for client in (anon, third, recipient):
            assert await client.req("live", {}) == []
        dm = signed(alice, 4, "psst", [["p", bob_pk]])
        note = signed(alice, 1, "public")
        assert await anon.publish(dm) == (True, "")
        assert await anon.publish(note) == (True, "")
        assert await recipient.recv_where(lambda m: m[0] == "EVENT") == ["EVENT", "live", dm.to_dict()]
        assert await recipient.recv_where(lambda m: m[0] == "EVENT") == ["EVENT", "live", note.to_dict()]
        for client in (anon, third):
            assert await client.recv_where(lambda m: m[0] == "EVENT") == ["EVENT", "live", note.to_dict()]
            await client.expect_silence(0.2)


async def test_count_of_private_kind_needs_auth(relay: Relay, client: NostrClient) -> None:
    await client.send(["COUNT", "c", {"kinds": [4]}])
    assert await client.recv() == [
        "CLOSED", "c", "auth-required: private messages are served only to authenticated recipients"]


async def _req_answer(client: NostrClient, sub_id: str, f: dict[str, Any]) -> int | str:
    """How many stored events a REQ returns, or the CLOSED reason."""
    await client.send(["REQ", sub_id, {**f, "limit": 100}])
    n = 0
    while True:
        msg = await client.recv_where(lambda m: m[0] in ("EVENT", "EOSE", "CLOSED") and m[1] == sub_id)
        if msg[0] == "EVENT":
            n += 1
        else:
            await client.send(["CLOSE", sub_id])
            return n if msg[0] == "EOSE" else str(msg[2])


async def _count_answer(client: NostrClient, sub_id: str, f: dict[str, Any]) -> int | str:
    await client.send(["COUNT", sub_id, f])
    msg = await client.recv_where(lambda m: m[0] in ("COUNT", "CLOSED") and m[1] == sub_id)
    return int(msg[2]["count"]) if msg[0] == "COUNT" else str(msg[2])


async def test_count_counts_exactly_what_req_returns_for_every_filter_and_auth_state(
    relay_factory: RelayFactory, storage: dict[str, str], alice: bytes, bob: bytes, carol: bytes
) -> None:
    """Issue 8, item 7: COUNT used to count DMs and gift wraps a REQ on the same
    connection hides (``{"#p": [B]}`` unauthenticated gave B's DM count). For every filter
    shape and every auth state, COUNT must equal the number of events REQ returns (or both
    refuse with the same reason)."""
    a_pk, b_pk = crypto.public_key(alice).hex(), crypto.public_key(bob).hex()
    dm = signed(alice, 4, "secret", [["p", b_pk]])
    wrap = signed(crypto.generate_secret(), 1059, "sealed", [["p", b_pk]])
    note = signed(alice, 1, "public mention", [["p", b_pk]])
    shapes: list[dict[str, Any]] = [
        {"ids": [dm.id]}, {"#p": [b_pk]}, {"authors": [a_pk]}, {"kinds": [4], "#p": [b_pk]}, {"kinds": [1059]}, {},
    ]
    # what each auth state may read of {dm, wrap, note}: the rule, spelled out
    visible = {"none": {note.id}, "sender": {dm.id, note.id}, "recipient": {dm.id, wrap.id, note.id},
               "unrelated": {note.id}}
    async with relay_factory(storage=storage) as relay:
        async with NostrClient(relay.url) as publisher:
            for event in (dm, wrap, note):
                assert await publisher.publish(event) == (True, "")
        for state, secret in (("none", None), ("sender", alice), ("recipient", bob), ("unrelated", carol)):
            async with NostrClient(relay.url) as client:
                if secret is not None:
                    assert await client.auth(secret, relay.url) == (True, "")
                for i, f in enumerate(shapes):
                    req = await _req_answer(client, f"r{i}", f)
                    count = await _count_answer(client, f"c{i}", f)
                    assert count == req, (state, f, req, count)
                    if isinstance(req, int):
                        got = await client.req(f"x{i}", {**f, "limit": 100})
                        await client.send(["CLOSE", f"x{i}"])
                        assert {e["id"] for e in got} <= visible[state], (state, f)
                        expected = {e.id for e in (dm, wrap, note) if e.id in visible[state]
                                    and _matches(f, e)}
                        assert req == len(expected), (state, f, req, expected)
                    else:
                        assert state == "none" and "kinds" in f
                        assert req.startswith("auth-required:")


def _matches(f: dict[str, Any], event: Event) -> bool:
    return parse_filter(f, 1000).matches(event)


async def test_hidden_private_events_do_not_use_up_a_req_limit(
    relay_factory: RelayFactory, storage: dict[str, str], alice: bytes, bob: bytes, carol: bytes
) -> None:
    """Issue 8: REQ used to drop private events the connection may not read AFTER the
    store had cut each filter to its ``limit``, so 20 newer DMs between A and B filled
    C's ``{"kinds":[4],"limit":10}`` and C got none of the 5 DMs addressed to C (and an
    unauthenticated ``{"limit":3}`` got nothing at all). The store now applies the read
    rule before the limit: each shape returns exactly the newest events it may read, on
    every path the stores take (kinds, authors probe, #p top-N, no index, paged answer)."""
    a_pk, b_pk, c_pk = (crypto.public_key(s).hex() for s in (alice, bob, carol))
    t0 = int(time.time()) - 1000
    to_c = [signed(alice, 4, f"to C {i}", [["p", c_pk]], t0 + i) for i in range(5)]
    notes = [signed(alice, 1, f"public {i}", [["p", b_pk]], t0 + 10 + i) for i in range(3)]
    a_b = [signed(alice if i % 2 else bob, 4, f"A-B {i}", [["p", b_pk if i % 2 else a_pk]], t0 + 20 + i)
           for i in range(20)]

    def newest(events: list[Event], n: int) -> list[str]:
        return [e.id for e in sorted(events, key=lambda e: (-e.created_at, e.id))[:n]]

    async with relay_factory(storage=storage) as relay:
        async with NostrClient(relay.url) as publisher:
            for event in (*to_c, *notes, *a_b):
                assert await publisher.publish(event) == (True, "")

        async def ids(secret: bytes | None, *filters: dict[str, Any]) -> list[str]:
            async with NostrClient(relay.url) as client:
                if secret is not None:
                    assert await client.auth(secret, relay.url) == (True, "")
                return [e["id"] for e in await client.req("q", *filters)]

        visible_to_c = [*to_c, *notes]
        assert await ids(carol, {"kinds": [4], "limit": 10}) == newest(to_c, 10)  # old code: []
        assert await ids(carol, {"kinds": [4], "limit": 3}) == newest(to_c, 3)
        assert await ids(carol, {"limit": 6}) == newest(visible_to_c, 6)  # old code: []
        assert await ids(carol, {"authors": [a_pk], "limit": 4}) == newest(visible_to_c, 4)
        assert await ids(carol, {"#p": [b_pk], "limit": 2}) == newest(notes, 2)  # a_b p-tag B too
        assert await ids(carol, {"kinds": [4], "limit": 65}) == newest(to_c, 65)  # paged path
        assert await ids(carol, {"limit": 2}, {"kinds": [4], "limit": 1}) == newest([*notes[1:], to_c[-1]], 3)
        assert await ids(None, {"limit": 3}) == newest(notes, 3)  # old code: []
        assert await ids(None, {"authors": [a_pk], "limit": 3}) == newest(notes, 3)
        assert await ids(None, {"#p": [b_pk], "limit": 3}) == newest(notes, 3)
        assert await ids(None, {"#p": [c_pk], "limit": 3}) == []
        assert await ids(None, {"limit": 2}, {"authors": [b_pk], "limit": 2}) == newest(notes, 2)
        # the parties still read their own DMs first, limit and all
        assert await ids(bob, {"kinds": [4], "limit": 10}) == newest(a_b, 10)
        assert await ids(alice, {"kinds": [4], "limit": 30}) == newest([*a_b, *to_c], 30)
        assert await ids(bob, {"#p": [b_pk], "limit": 5}) == newest([*notes, *a_b[1::2]], 5)


# --- auth required to write / read -------------------------------------------------------

async def test_auth_required_to_write(relay_factory: RelayFactory, alice: bytes) -> None:
    async with relay_factory(auth={"required_to_write": True}) as relay, NostrClient(relay.url) as client:
        note = signed(alice, 1, "hi")
        assert await client.publish(note) == (
            False, "auth-required: this relay accepts events only from authenticated clients")
        assert await client.req("s", {}) == []  # reading stays open
        assert await client.auth(alice, relay.url) == (True, "")
        assert await client.publish(note) == (True, "")


async def test_auth_required_to_read(relay_factory: RelayFactory, alice: bytes) -> None:
    async with relay_factory(auth={"required_to_read": True}) as relay, NostrClient(relay.url) as client:
        note = signed(alice, 1, "hi")
        assert await client.publish(note) == (True, "")  # writing stays open
        await client.send(["REQ", "s", {}])
        assert await client.recv() == ["CLOSED", "s", "auth-required: this relay serves only authenticated clients"]
        await client.send(["COUNT", "c", {}])
        assert await client.recv() == ["CLOSED", "c", "auth-required: this relay serves only authenticated clients"]
        assert await client.auth(alice, relay.url) == (True, "")
        assert await client.req("s", {}) == [note.to_dict()]


# --- NIP-70 protected events --------------------------------------------------------------

async def test_protected_event_needs_auth(client: NostrClient, alice: bytes) -> None:
    event = signed(alice, 1, "members only", [["-"]])
    assert await client.publish(event) == (False, "auth-required: this event may only be published by its author")
    assert await client.req("s", {"ids": [event.id]}) == []


async def test_protected_event_accepted_from_its_authenticated_author(relay: Relay, alice: bytes) -> None:
    async with NostrClient(relay.url) as client:
        assert await client.auth(alice, relay.url) == (True, "")
        event = signed(alice, 1, "members only", [["-"]])
        assert await client.publish(event) == (True, "")


async def test_protected_event_from_someone_else_is_restricted(relay: Relay, alice: bytes, bob: bytes) -> None:
    async with NostrClient(relay.url) as client:
        assert await client.auth(bob, relay.url) == (True, "")
        event = signed(alice, 1, "members only", [["-"]])
        assert await client.publish(event) == (False, "restricted: this event may only be published by its author")


@pytest.mark.parametrize("kind", [6, 16])
async def test_repost_embedding_a_protected_event_is_refused(relay: Relay, alice: bytes, bob: bytes, kind: int) -> None:
    """NIP-70 (2026-05): a repost of a protected event must not embed it; the relay rejects
    one that does, even from an authenticated reposter, and takes the empty-content form."""
    async with NostrClient(relay.url) as client:
        assert await client.auth(alice, relay.url) == (True, "")
        protected = signed(alice, 1, "members only", [["-"]])
        public = signed(alice, 1, "for everyone")
        assert await client.publish(protected) == (True, "")
        assert await client.publish(public) == (True, "")
        assert await client.auth(bob, relay.url) == (True, "")

        def repost(of: Event, content: str) -> Event:
            return signed(bob, kind, content, [["e", of.id], ["p", of.pubkey], ["k", "1"]])

        embedding = repost(protected, orjson.dumps(protected.to_dict()).decode())
        ok, message = await client.publish(embedding)
        assert not ok and message.startswith("blocked:") and "NIP-70" in message, message
        assert await client.req("gone", {"ids": [embedding.id]}) == []
        # The forms the NIP allows: an empty repost of the protected event, and any
        # repost of an unprotected one.
        assert await client.publish(repost(protected, "")) == (True, "")
        assert await client.publish(repost(public, orjson.dumps(public.to_dict()).decode())) == (True, "")
        assert await client.publish(repost(public, "not json {")) == (True, "")
