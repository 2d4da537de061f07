"""NIP-62 request to vanish over real WebSockets, on SQLite and PostgreSQL, on a paid relay
(the request is honoured whatever the author's payment status), and across two nodes."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from relay.nostr import crypto
from relay.session.server import Relay
from tests.conftest import RelayFactory
from tests.lightning.payment_stack import ledger_of
from tests.nostr_client import NostrClient, signed
from tests.test_nodes import _drop_schema, pg_dsn  # noqa: F401  (fixture)
from tests.waiting import eventually

PAID = {"enabled": True, "backend": "fake"}


@pytest.fixture(params=["sqlite", "postgres"])
async def storage(request: pytest.FixtureRequest) -> AsyncIterator[dict[str, Any]]:
    """Override for [storage]: the default SQLite file, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield {}
        return
    dsn = request.getfixturevalue("pg_dsn")
    schema = f"vanish_{uuid.uuid4().hex[:12]}"
    yield {"url": dsn, "schema_name": schema}
    await _drop_schema(dsn, schema)


def vanish_request(secret: bytes, relay_url: str, created_at: int | None = None) -> Any:
    return signed(secret, 62, "please forget me", [["relay", relay_url]], created_at=created_at)


async def ids(client: NostrClient, **flt: Any) -> set[str]:
    return {e["id"] for e in await client.req(f"q{time.monotonic_ns()}", flt)}


async def test_vanish_deletes_history_and_gift_wraps_even_when_unpaid(
    relay_factory: RelayFactory, storage: dict[str, Any], alice: bytes, bob: bytes
) -> None:
    a, b = crypto.public_key(alice).hex(), crypto.public_key(bob).hex()
    now = int(time.time())
    async with relay_factory(payments=PAID, storage=storage) as relay, NostrClient(relay.url) as client:
        await ledger_of(relay).update_account(a, now, allowed=True)
        await ledger_of(relay).update_account(b, now, allowed=True)
        notes = [signed(alice, 1, f"mine {i}", created_at=now - 10 - i) for i in range(3)]
        profile = signed(alice, 0, '{"name":"alice"}', created_at=now - 5)
        deletion = signed(alice, 5, "", [["e", notes[2].id]], created_at=now - 4)
        wrap = signed(bob, 1059, "sealed", [["p", a]], created_at=now - 3)
        mention = signed(bob, 1, "hi alice", [["p", a]], created_at=now - 3)
        for event in [*notes, profile, deletion, wrap, mention]:
            ok, message = await client.publish(event)
            assert ok, message
        # alice is no longer a member: the request must still be honoured (NIP-62)
        await ledger_of(relay).update_account(a, now, allowed=False)

        async def unpaid_now() -> bool:  # the gate's cache picks the change up
            # dated before the request: one accepted while the cache was stale is vanished too
            probe = signed(alice, 1, f"unpaid now {time.monotonic_ns()}", created_at=now - 1)
            ok, message = await client.publish(probe)
            return not ok and message.startswith("restricted:")

        await eventually(unpaid_now, what="the gate to see alice's account change")

        async with NostrClient(relay.url) as recipient:  # gift wraps are served to their recipient only
            assert (await recipient.auth(alice, relay.url))[0]
            assert await ids(recipient, kinds=[1059], **{"#p": [a]}) == {wrap.id}
            ok, message = await client.publish(vanish_request(alice, relay.url, created_at=now))
            assert ok, message
            assert await ids(client, authors=[a]) == set()
            assert await ids(recipient, kinds=[1059], **{"#p": [a]}) == set()
        assert await ids(client, authors=[b]) == {mention.id}  # others' events stay

        ok, message = await client.publish(notes[0])  # re-publication of the past
        assert not ok and message.startswith("blocked:") and "vanish" in message
        await ledger_of(relay).update_account(a, now, allowed=True)

        later = signed(alice, 1, "a fresh start", created_at=now + 1)

        async def member_again() -> bool:  # a new event (after the request) is hers to write
            ok, _ = await client.publish(later)
            return ok

        await eventually(member_again, what="the gate to see alice allowed again")
        ok, message = await client.publish(notes[1])
        assert not ok and message.startswith("blocked:")
        ok, message = await client.publish(wrap)  # the deleted gift wrap, re-broadcast by anyone
        assert not ok and message.startswith("blocked:") and "vanish" in message, message
        fresh_wrap = signed(bob, 1059, "sealed later", [["p", a]], created_at=now + 1)
        ok, message = await client.publish(fresh_wrap)
        assert ok, message
        ok, message = await client.publish(later)  # stored already: a duplicate, still OK true
        assert ok, message
        assert await ids(client, authors=[a]) == {later.id}


async def test_vanish_for_all_relays_is_honoured_and_survives_a_restart(
    relay_factory: RelayFactory, alice: bytes
) -> None:
    a = crypto.public_key(alice).hex()
    now = int(time.time())
    old = signed(alice, 1, "old", created_at=now - 60)
    async with relay_factory() as relay, NostrClient(relay.url) as client:
        assert (await client.publish(old))[0]
        ok, message = await client.publish(vanish_request(alice, "ALL_RELAYS", created_at=now))
        assert ok, message
        assert await ids(client, authors=[a]) == set()
        assert relay.store is not None
    async with relay_factory() as relay, NostrClient(relay.url) as client:  # same SQLite file
        ok, message = await client.publish(old)
        assert not ok and message.startswith("blocked:")


async def test_vanish_naming_another_relay_is_refused_and_deletes_nothing(
    relay_factory: RelayFactory, alice: bytes
) -> None:
    a = crypto.public_key(alice).hex()
    async with relay_factory() as relay, NostrClient(relay.url) as client:
        note = signed(alice, 1, "keep me")
        assert (await client.publish(note))[0]
        ok, message = await client.publish(vanish_request(alice, "wss://some-other-relay.example.com"))
        assert not ok and message.startswith("invalid:")
        lowercase = signed(alice, 62, "", [["relay", "all_relays"]])  # NIP-62: uppercase only
        assert not (await client.publish(lowercase))[0]
        assert await ids(client, authors=[a]) == {note.id}
        assert 62 in (await _nip11(relay))["supported_nips"]


async def _nip11(relay: Relay) -> dict[str, Any]:
    import httpx

    async with httpx.AsyncClient() as http:
        response = await http.get(f"http://127.0.0.1:{relay.port}/", headers={"Accept": "application/nostr+json"})
        doc: dict[str, Any] = response.json()
        return doc


async def test_vanish_on_one_node_applies_on_the_other(
    relay_factory: RelayFactory, pg_dsn: str, alice: bytes  # noqa: F811
) -> None:
    schema = f"vanish_{uuid.uuid4().hex[:12]}"
    storage = {"url": pg_dsn, "schema_name": schema}
    a = crypto.public_key(alice).hex()
    now = int(time.time())
    old = signed(alice, 1, "old", created_at=now - 60)
    try:
        async with (
            relay_factory(storage=storage) as node_a,
            relay_factory(storage=storage) as node_b,
            NostrClient(node_a.url) as on_a,
            NostrClient(node_b.url) as on_b,
        ):
            assert (await on_b.publish(old))[0]
            ok, message = await on_a.publish(vanish_request(alice, node_a.url, created_at=now))
            assert ok, message
            assert await ids(on_b, authors=[a]) == set()
            async def refused_on_b() -> bool:  # node B learns of the request from the store's change counter
                ok, message = await on_b.publish(old)
                assert ok or message.startswith("blocked:"), message
                return not ok

            await eventually(refused_on_b, 3.0, interval=0.1, what="node B to refuse the vanished history")
    finally:
        await _drop_schema(pg_dsn, schema)
