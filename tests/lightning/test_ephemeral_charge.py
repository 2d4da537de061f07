"""Ephemeral events (NIP-01 kinds 20000-29999) pay their kind's price like stored ones.

They skip the store, which used to be the only place credit was taken: a key with credit
published them for nothing (issue 8, item 5)."""

from __future__ import annotations

import time
from typing import Any

from relay.nostr import crypto
from relay.session.server import Relay
from tests.conftest import RelayFactory
from tests.lightning.payment_stack import ledger_of
from tests.nostr_client import NostrClient, signed

CREDIT: dict[str, Any] = {
    "enabled": True,
    "backend": "fake",
    "account_cache_seconds": 0,
    "admission": {"enabled": False},
    "credit": {"enabled": True, "default_price_msat": 1000, "kind_prices_msat": {20001: 250}},
}


async def balance(relay: Relay, secret: bytes) -> int:
    account = await ledger_of(relay).get_account(crypto.public_key(secret).hex())
    return 0 if account is None else account.credit_msat


async def test_ephemeral_events_are_charged_at_their_kind_price(relay_factory: RelayFactory, alice: bytes) -> None:
    async with relay_factory(payments=CREDIT) as relay:
        alice_pk = crypto.public_key(alice).hex()
        await ledger_of(relay).update_account(alice_pk, int(time.time()), credit_delta_msat=10_000)
        async with NostrClient(relay.url) as listener, NostrClient(relay.url) as writer:
            await listener.req("live", {"kinds": [20001]})
            for i in range(8):
                ok, message = await writer.publish(signed(alice, kind=20001, content=f"ping {i}"))
                assert ok, message
            assert await balance(relay, alice) == 10_000 - 8 * 250
            delivered = [await listener.recv() for _ in range(8)]
            assert all(msg[0] == "EVENT" for msg in delivered)


async def test_ephemeral_event_refused_when_credit_runs_out(relay_factory: RelayFactory, alice: bytes) -> None:
    async with relay_factory(payments=CREDIT) as relay:
        await ledger_of(relay).update_account(crypto.public_key(alice).hex(), int(time.time()), credit_delta_msat=500)
        async with NostrClient(relay.url) as listener, NostrClient(relay.url) as writer:
            await listener.req("live", {"kinds": [20001]})
            results = [await writer.publish(signed(alice, kind=20001, content=f"ping {i}")) for i in range(4)]
            assert [ok for ok, _ in results] == [True, True, False, False]
            assert all(message.startswith("restricted: ") for ok, message in results if not ok)
            assert await balance(relay, alice) == 0
            assert (await listener.recv())[0] == "EVENT"
            assert (await listener.recv())[0] == "EVENT"
            await listener.expect_silence()


async def test_ephemeral_event_from_key_without_credit_is_refused(relay_factory: RelayFactory, bob: bytes) -> None:
    async with relay_factory(payments=CREDIT) as relay, NostrClient(relay.url) as writer:
        ok, message = await writer.publish(signed(bob, kind=20001, content="free ride?"))
        assert not ok and message.startswith("restricted: ")
