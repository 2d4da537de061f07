"""The write gate: who may write, what it costs, and the reply that says where to pay."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from lightning.store.base import FOREVER, Charge
from relay.nostr import crypto
from relay.nostr.errors import Blocked, Restricted
from relay.store.base import WriteOutcome, WriteRequest
from tests.lightning.payment_stack import note, payment_stack, pubkey_of


async def test_unpaid_pubkey_is_restricted_with_the_join_url(tmp_path: Path) -> None:
    async with payment_stack(tmp_path) as s:
        secret = crypto.generate_secret()
        with pytest.raises(Restricted) as err:
            await s.ext.admit(note(secret), s.ctx())
        # One line: what is wrong (unpaid, the cheapest price) and what to do (the join
        # link with the key filled in).
        assert str(err.value) == (
            "restricted: writing here needs a payment (from 1000 sats); "
            f"pay at https://relay.example.com/join?pubkey={pubkey_of(secret)}"
        )


async def test_configured_payments_url_is_used(tmp_path: Path) -> None:
    async with payment_stack(tmp_path, payments_url="https://pay.example.com/x") as s:
        with pytest.raises(Restricted, match=r"pay at https://pay\.example\.com/x\?pubkey=[0-9a-f]{64}$"):
            await s.ext.admit(note(crypto.generate_secret()), s.ctx())


async def test_admitted_pubkey_writes_free_until_its_term_ends(tmp_path: Path) -> None:
    async with payment_stack(tmp_path, account_cache_seconds=0) as s:
        secret = crypto.generate_secret()
        now = int(time.time())
        await s.ledger.update_account(pubkey_of(secret), now, admitted_until=now + 100)
        assert await s.ext.admit(note(secret), s.ctx(now)) == ()
        with pytest.raises(Restricted, match="ended"):
            await s.ext.admit(note(secret), s.ctx(now + 100))


async def test_banned_is_blocked_by_config_and_by_account_flag(tmp_path: Path) -> None:
    listed, flagged = crypto.generate_secret(), crypto.generate_secret()
    async with payment_stack(tmp_path, ban_pubkeys=[pubkey_of(listed)]) as s:
        now = int(time.time())
        await s.ledger.update_account(pubkey_of(flagged), now, admitted_until=FOREVER, banned=True)
        for secret in (listed, flagged):
            with pytest.raises(Blocked):
                await s.ext.admit(note(secret, kind=22242), s.ctx(now))  # not even free kinds


async def test_allow_list_and_allowed_flag_write_free(tmp_path: Path) -> None:
    listed, flagged = crypto.generate_secret(), crypto.generate_secret()
    async with payment_stack(tmp_path, allow_pubkeys=[pubkey_of(listed)]) as s:
        await s.ledger.update_account(pubkey_of(flagged), int(time.time()), allowed=True)
        assert await s.ext.admit(note(listed), s.ctx()) == ()
        assert await s.ext.admit(note(flagged), s.ctx()) == ()


async def test_free_kinds_are_free_for_anyone(tmp_path: Path) -> None:
    async with payment_stack(tmp_path, free_kinds=[7]) as s:
        assert await s.ext.admit(note(crypto.generate_secret(), kind=7), s.ctx()) == ()
        with pytest.raises(Restricted):
            await s.ext.admit(note(crypto.generate_secret(), kind=9735), s.ctx())


async def test_event_p_tagging_a_member_is_free_only_when_enabled(tmp_path: Path) -> None:
    member = crypto.generate_secret()
    for enabled in (True, False):
        async with payment_stack(tmp_path / str(enabled), free_if_p_tags_member=enabled) as s:
            await s.ledger.update_account(pubkey_of(member), int(time.time()), admitted_until=FOREVER)
            dm = note(crypto.generate_secret(), kind=4, tags=[["p", pubkey_of(member)]])
            stranger = note(crypto.generate_secret(), kind=4, tags=[["p", "b" * 64]])
            if enabled:
                assert await s.ext.admit(dm, s.ctx()) == ()
            else:
                with pytest.raises(Restricted):
                    await s.ext.admit(dm, s.ctx())
            with pytest.raises(Restricted):
                await s.ext.admit(stranger, s.ctx())


async def test_credit_plan_charges_the_kind_price_and_the_store_refuses_when_spent(tmp_path: Path) -> None:
    credit = {"enabled": True, "default_price_msat": 300, "kind_prices_msat": {7: 0, 30023: 2000}}
    async with payment_stack(tmp_path, admission={"enabled": False}, credit=credit) as s:
        secret = crypto.generate_secret()
        now = int(time.time())
        await s.ledger.update_account(pubkey_of(secret), now, credit_delta_msat=500)
        assert await s.ext.admit(note(secret, kind=7), s.ctx(now)) == ()
        with pytest.raises(Restricted, match="not enough credit"):
            await s.ext.admit(note(secret, kind=30023), s.ctx(now))
        first, second = note(secret), note(secret)
        charges = [await s.ext.admit(first, s.ctx(now)), await s.ext.admit(second, s.ctx(now))]
        # The cached credit says 500 for both: the ledger has the last word, in the events' transaction.
        assert charges == [(Charge(300),), (Charge(300),)]
        requests = [WriteRequest(e, attachments=c) for e, c in zip((first, second), charges, strict=True)]
        outcomes = await s.store.write_batch(requests, now)
        assert outcomes[0] is WriteOutcome.STORED
        assert isinstance(outcomes[1], Restricted)
        assert str(outcomes[1]).startswith("restricted: credit ran out; pay at ")
        # The refused charge dropped the stale cache entry: the gate now sees 200 msat left.
        with pytest.raises(Restricted, match="not enough credit"):
            await s.ext.admit(note(secret), s.ctx(now))


async def test_settlement_invalidates_the_cached_refusal_at_once(tmp_path: Path) -> None:
    async with payment_stack(tmp_path, account_cache_seconds=3600) as s:
        secret = crypto.generate_secret()
        with pytest.raises(Restricted):
            await s.ext.admit(note(secret), s.ctx())
        invoice = await s.ext.ledger.issue(pubkey_of(secret), "admission", int(time.time()))
        await s.wallet.pay(invoice.payment_hash)
        await s.ext.watcher.confirm(invoice.payment_hash)
        assert await s.ext.admit(note(secret), s.ctx()) == ()


async def test_cli_grant_is_seen_after_the_cache_ttl(tmp_path: Path) -> None:
    async with payment_stack(tmp_path, account_cache_seconds=0.3) as s:
        secret = crypto.generate_secret()
        with pytest.raises(Restricted):
            await s.ext.admit(note(secret), s.ctx())
        await s.ledger.update_account(pubkey_of(secret), int(time.time()), admitted_until=FOREVER)
        with pytest.raises(Restricted):  # still cached
            await s.ext.admit(note(secret), s.ctx())
        await asyncio.sleep(0.35)
        assert await s.ext.admit(note(secret), s.ctx()) == ()


async def test_extension_trusts_extra_zapper_keys_for_receipts(tmp_path: Path) -> None:
    """The seam for "zap the relay": the relay's own key, handed in by code, not config."""
    from lightning.extension import PaymentsExtension
    from tests.lightning.test_free_rules import zap_receipt

    relay_key = crypto.generate_secret()
    async with payment_stack(tmp_path) as s:
        receipt = zap_receipt(pubkey_of(crypto.generate_secret()), zapper=relay_key)
        with pytest.raises(Restricted):
            await s.ext.admit(receipt, s.ctx())
        ext = PaymentsExtension(s.settings, s.store, s.wallet, trusted_zappers={pubkey_of(relay_key)})
        assert await ext.admit(receipt, s.ctx()) == ()
