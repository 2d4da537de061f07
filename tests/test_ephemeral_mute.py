"""NIP-01 ``mute:`` over real WebSockets: an ephemeral event that is valid (and, on a paid
relay, paid for) but that no live subscription could receive is answered ``OK false
"mute: ..."``; one with a listener is accepted and delivered as before."""

from __future__ import annotations

import time
from typing import Any

from relay.nostr import crypto
from tests.conftest import RelayFactory
from tests.lightning.payment_stack import ledger_of
from tests.nostr_client import NostrClient, signed


async def test_ephemeral_event_nobody_listens_to_is_muted(relay_factory: RelayFactory, alice: bytes) -> None:
    async with relay_factory() as relay, NostrClient(relay.url) as writer, NostrClient(relay.url) as listener:
        ok, message = await writer.publish(signed(alice, 20001, "into the void"))
        assert not ok and message.startswith("mute: "), message
        # A subscription whose filter does not match is not a listener either.
        assert await listener.req("other", {"kinds": [20002]}) == []
        ok, message = await writer.publish(signed(alice, 20001, "still nobody"))
        assert not ok and message.startswith("mute: "), message
        # Someone listening: accepted and delivered.
        assert await listener.req("live", {"kinds": [20001]}) == []
        heard = signed(alice, 20001, "heard")
        assert await writer.publish(heard) == (True, "")
        assert await listener.recv_where(lambda m: m[0] == "EVENT") == ["EVENT", "live", heard.to_dict()]
        # Invalid input keeps its own prefix: the check comes after validation.
        bad = signed(alice, 20001, "tampered").to_dict() | {"content": "changed"}
        ok, message = await writer.publish(bad)
        assert not ok and message.startswith("invalid:"), message


async def test_paid_relay_refuses_unpaid_ephemeral_first_and_never_charges_a_muted_one(
    relay_factory: RelayFactory, alice: bytes, bob: bytes
) -> None:
    payments: dict[str, Any] = {
        "enabled": True,
        "backend": "fake",
        "account_cache_seconds": 0,
        "credit": {"enabled": True, "default_price_msat": 1000, "kind_prices_msat": {20001: 250}},
    }
    async with relay_factory(payments=payments) as relay, NostrClient(relay.url) as writer:
        ok, message = await writer.publish(signed(bob, 20001, "unpaid"))
        assert not ok and message.startswith("restricted:"), message  # not "mute": it was not admitted
        await ledger_of(relay).update_account(crypto.public_key(alice).hex(), int(time.time()), credit_delta_msat=1000)
        ok, message = await writer.publish(signed(alice, 20001, "paid, nobody listens"))
        assert not ok and message.startswith("mute: "), message
        account = await ledger_of(relay).get_account(crypto.public_key(alice).hex())
        assert account is not None and account.credit_msat == 1000  # nothing was delivered: nothing charged
