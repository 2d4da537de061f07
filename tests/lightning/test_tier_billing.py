"""Tiers over time, on SQLite and PostgreSQL (``store``: one fresh store of each): a
subscription crossing its end date, its grace and its lapse; a renewal paid during grace;
an upgrade mid-period (proration) and a downgrade at the period end.

Invoices are issued and paid through the real ledger and the demo wallet, settled by the
store's own transaction, and each moment's verdict is the payments gate's, all on a clock
the test moves over weeks (the ledger and the gate take ``now``; nothing sleeps)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from lightning.backends.fake import FakeBackend
from lightning.billing import credit_seconds
from lightning.extension import PaymentsExtension, build_backend
from lightning.web import account_json
from lightning.zap import zap_grant
from relay.nostr import crypto
from relay.nostr.errors import Restricted
from relay.nostr.event import sign_event
from relay.nostr.policy import WriteContext
from relay.store.base import Store
from tests.lightning.payment_stack import payment_settings
from tests.store.conftest import store, store_factory  # noqa: F401  (SQLite and PostgreSQL, fresh per test)

DAY = 86400
T0 = (int(time.time()) // DAY + 400) * DAY  # a UTC midnight 400 days ahead
MONTH, YEAR = 30 * DAY, 365 * DAY
TIERS = {
    "supporter": {"label": "Supporter", "order": 1, "price_sats": 2000, "period_days": 30, "grace_days": 3,
                  "kinds": [1]},
    "pro": {"label": "Pro", "order": 2, "price_sats": 20000, "period_days": 365, "grace_days": 7},
}


@dataclass
class Billing:
    ext: PaymentsExtension
    wallet: FakeBackend
    clock: list[float]

    async def buy(self, secret: bytes, plan: str, at: int) -> None:
        """Issue ``plan`` for the key at ``at``, pay it, and settle it at ``at``."""
        self.clock[0] = at
        pubkey = crypto.public_key(secret).hex()
        invoice = await self.ext.ledger.issue(pubkey, plan, at)
        assert await self.wallet.pay(invoice.payment_hash)
        result = await self.ext.ledger.confirm(invoice.payment_hash, at)
        assert result.outcome.value == "credited", result

    async def verdict(self, secret: bytes, at: int, kind: int = 1) -> str:
        """"ok", or the refusal the gate gives an event of ``kind`` at ``at``."""
        self.clock[0] = at
        event = sign_event(secret, kind, f"at {at}", [], created_at=at)
        try:
            await self.ext.admit(event, WriteContext(now=at, authed=frozenset(), ip="127.0.0.1"))
        except Restricted as exc:
            return str(exc)  # the NIP-01 reply, prefix included
        return "ok"

    async def held(self, secret: bytes) -> tuple[str, int, str, int]:
        account = await self.ext.store.get_account(crypto.public_key(secret).hex())
        assert account is not None
        return account.role, account.admitted_until, account.next_role, account.switch_at


    async def zap(self, secret: bytes, sats: int, at: int) -> None:
        """A zap of ``sats`` from the key (what ``lightning.zap.zap_grant`` makes of it),
        paid and settled at ``at``."""
        self.clock[0] = at
        grant = zap_grant(self.ext.plans, sats * 1000)
        invoice = await self.ext.ledger.issue_grant(crypto.public_key(secret).hex(), grant, at)
        assert await self.wallet.pay(invoice.payment_hash)
        result = await self.ext.ledger.confirm(invoice.payment_hash, at)
        assert result.outcome.value == "credited", result


@contextlib.asynccontextmanager
async def billing_on(store: Store, tmp_path: Path, **payments: Any) -> AsyncIterator[Billing]:  # noqa: F811
    settings = payment_settings(tmp_path, account_cache_seconds=0, tiers=TIERS, **payments)
    wallet = build_backend(settings, None)  # type: ignore[arg-type]  # the demo wallet needs no HTTP
    assert isinstance(wallet, FakeBackend)
    clock = [float(T0)]
    ext = PaymentsExtension(settings, store, wallet, clock=lambda: clock[0])
    await ext.store.open()
    try:
        yield Billing(ext, wallet, clock)
    finally:
        await wallet.close()


@pytest.fixture
async def billing(store: Store, tmp_path: Path) -> AsyncIterator[Billing]:  # noqa: F811
    async with billing_on(store, tmp_path) as billing:
        yield billing


def day(moment: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(moment))


async def test_a_subscription_crosses_its_end_its_grace_and_its_lapse(billing: Billing) -> None:
    alice, bob, carol = (crypto.generate_secret() for _ in range(3))
    for secret in (alice, bob, carol):
        await billing.buy(secret, "supporter", T0)
    end, lapse = T0 + MONTH, T0 + MONTH + 3 * DAY
    assert await billing.held(alice) == ("supporter", end, "", 0)

    assert await billing.verdict(alice, end - 1) == "ok"  # the last second of the period
    assert await billing.verdict(alice, end) == "ok"  # the end: grace begins, writes go on
    assert await billing.verdict(alice, lapse - 1) == "ok"  # the last second of grace
    refused = await billing.verdict(alice, lapse)  # lapsed: the unpaid rules
    assert refused.startswith(f"restricted: your Supporter plan ended on {day(end)} (and its 3-day grace); renew at")
    assert await billing.verdict(alice, lapse + 10 * DAY) == refused

    # Renewed during grace: the new period counts from the old end date, not from payment.
    await billing.buy(bob, "supporter", end + 2 * DAY)
    assert await billing.held(bob) == ("supporter", end + MONTH, "", 0)
    assert await billing.verdict(bob, lapse + DAY) == "ok"
    # Renewed after the lapse: from the day of payment.
    await billing.buy(carol, "supporter", lapse + 5 * DAY)
    assert await billing.held(carol) == ("supporter", lapse + 5 * DAY + MONTH, "", 0)
    assert await billing.verdict(carol, lapse + 5 * DAY) == "ok"


async def test_an_upgrade_mid_period_credits_the_unused_part_and_applies_at_once(billing: Billing) -> None:
    alice = crypto.generate_secret()
    await billing.buy(alice, "supporter", T0)
    upgrade_at = T0 + 10 * DAY
    article = 30023  # not among the supporter tier's kinds
    assert (await billing.verdict(alice, upgrade_at - 1, article)).startswith(
        "restricted: kind 30023 is not part of the Supporter tier; the Pro tier (20000 sats for 365 days) allows more"
    )
    await billing.buy(alice, "pro", upgrade_at)
    plans = billing.ext.plans.terms().plans
    credit = credit_seconds(plans["supporter"], 20 * DAY, plans["pro"])
    assert credit == 20 * DAY * 2000 * 365 // (30 * 20000)  # 20 unused days of 2,000 sats a month, in pro time
    end = upgrade_at + YEAR + credit
    assert await billing.held(alice) == ("pro", end, "", 0)
    assert await billing.verdict(alice, upgrade_at, article) == "ok"  # the pro tier's limits, now
    assert await billing.verdict(alice, end + 7 * DAY - 1, article) == "ok"  # pro's own 7-day grace
    assert (await billing.verdict(alice, end + 7 * DAY)).startswith(f"restricted: your Pro plan ended on {day(end)}")


async def test_a_downgrade_waits_for_the_period_end(billing: Billing) -> None:
    alice = crypto.generate_secret()
    await billing.buy(alice, "pro", T0)
    await billing.buy(alice, "supporter", T0 + 100 * DAY)
    end = T0 + YEAR
    assert await billing.held(alice) == ("pro", end + MONTH, "supporter", end)
    doc = account_json(crypto.public_key(alice).hex(), await billing.ext.accounts.get(crypto.public_key(alice).hex()),
                       T0 + 100 * DAY)
    assert (doc["tier"], doc["next_tier"], doc["tier_changes_at"]) == ("pro", "supporter", end)
    assert await billing.verdict(alice, end - 1, 30023) == "ok"  # still pro until its last second
    assert (await billing.verdict(alice, end, 30023)).startswith("restricted: kind 30023 is not part of the Supporter")
    assert await billing.verdict(alice, end + MONTH + 3 * DAY - 1) == "ok"  # the supporter tier's grace follows
    assert (await billing.verdict(alice, end + MONTH + 3 * DAY)).startswith(
        f"restricted: your Supporter plan ended on {day(end + MONTH)}"
    )


async def test_a_zap_by_a_tier_member_follows_the_tier_and_does_not_renew_it(
    store: Store, tmp_path: Path  # noqa: F811
) -> None:
    """README "Tiers": a zap buys the single plans' time (here the subscription's month),
    which ranks below every tier. Before the tier's end it waits for that end, under the
    relay's own limits then and with no grace; in the tier's grace it starts at once and
    the tier is over. Either way the tier is not renewed."""
    async with billing_on(store, tmp_path, subscription={"enabled": True, "fee_sats": 500}) as billing:
        alice, bob = crypto.generate_secret(), crypto.generate_secret()
        for secret in (alice, bob):
            await billing.buy(secret, "supporter", T0)
        end = T0 + MONTH
        article = 30023  # not among the supporter tier's kinds; the relay itself allows it

        await billing.zap(alice, 500, T0 + 10 * DAY)
        assert await billing.held(alice) == ("supporter", end + MONTH, "", end)
        assert (await billing.verdict(alice, end - 1, article)).startswith(
            "restricted: kind 30023 is not part of the Supporter tier"
        )  # the tier's limits until its end
        assert await billing.verdict(alice, end, article) == "ok"  # then the single plan's time
        assert await billing.verdict(alice, end + MONTH - 1, article) == "ok"
        assert (await billing.verdict(alice, end + MONTH)).startswith(
            f"restricted: your paid period ended on {day(end + MONTH)}; renew at"
        )  # no tier, no grace

        await billing.zap(bob, 500, end + DAY)  # in the supporter tier's grace
        assert await billing.held(bob) == ("", end + DAY + MONTH, "", 0)
        assert await billing.verdict(bob, end + DAY, article) == "ok"
