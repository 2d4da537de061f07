"""Priced events over WebSocket, on SQLite and PostgreSQL: the payments gate attaches each
event's price and the ledger's write hook takes it in the event's own transaction
(``lightning.store``, ``relay.store.database``). A price is taken once per stored event;
duplicates are not charged; and when the gate's cached balance is stale, the charge is
refused at commit ("credit ran out", nothing stored) and the next event meets the gate's
own refusal, the stale entry having been dropped."""

from __future__ import annotations

from typing import Any

from relay.nostr import crypto
from relay.nostr.filters import Filter
from tests.conftest import RelayFactory
from tests.lightning.payment_stack import ledger_of
from tests.nostr_client import NostrClient, signed

PRICE = 1_000
PAYMENTS: dict[str, Any] = {
    "enabled": True,
    "backend": "fake",
    "account_cache_seconds": 3600,  # the gate keeps its first look at the balance
    "admission": {"enabled": False},
    "credit": {"enabled": True, "default_price_msat": PRICE},
}


async def test_each_stored_event_pays_once_and_a_stale_balance_is_refused_at_commit(
    relay_factory: RelayFactory, storage: dict[str, str], alice: bytes
) -> None:
    pubkey = crypto.public_key(alice).hex()
    async with relay_factory(storage=storage, payments=PAYMENTS) as relay, NostrClient(relay.url) as client:
        ledger = ledger_of(relay)
        await ledger.update_account(pubkey, 0, credit_delta_msat=2 * PRICE + 500)
        first, second, third, fourth = (signed(alice, 1, f"priced {i}") for i in range(4))
        for event in (first, second):
            ok, message = await client.publish(event)
            assert ok and message == "", message
        ok, message = await client.publish(first)  # already stored: OK true, not charged again
        assert ok and message.startswith("duplicate:"), message
        # The gate's cached balance still says 2,500 msat: it admits, the ledger refuses at commit.
        ok, message = await client.publish(third)
        assert not ok and message.startswith("restricted: credit ran out; pay at "), message
        # That refusal dropped the stale entry: the gate itself now sees 500 msat.
        ok, message = await client.publish(fourth)
        assert not ok and message.startswith("restricted: not enough credit for this event"), message
        account = await ledger.get_account(pubkey)
        assert account is not None and account.credit_msat == 500
        stored = await relay.store.query([Filter(authors=frozenset({pubkey}))], 2**31)
        assert sorted(stored) == sorted([first.raw, second.raw])
