"""NWC auto-renewal of a tier on its schedule of tries, then its fallback invoice, on
SQLite and PostgreSQL (``store``), with a clock the test moves over days.

The ledger, the demo wallet and the renewal loop are the relay's own; only the member's
wallet is a stand-in (``MemberWallet``: it refuses to pay, or pays the relay's demo-wallet
invoice): a real NIP-47 wallet over a relay is test_renewal.py's. What is told to the
member is read back from the NIP-17 gift wraps the relay publishes, opened with the
member's key."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from lightning import nip44
from lightning.backend import BackendError
from lightning.backends.fake import FakeBackend
from lightning.extension import PaymentsExtension, build_backend
from lightning.extension import payment_settings as payments_section
from lightning.ledger import decode_bolt11
from lightning.renewal import Renewals
from lightning.store.base import InvoiceState
from relay.nostr import crypto
from relay.nostr.event import Event, parse_event
from relay.store.base import Store
from relay.store.identity import RelayIdentity
from tests.lightning.payment_stack import payment_settings
from tests.store.conftest import store, store_factory  # noqa: F401  (SQLite and PostgreSQL, fresh per test)

DAY, HOUR = 86400, 3600
T0 = (int(time.time()) // DAY + 400) * DAY
MONTH = 30 * DAY
END = T0 + MONTH
START = END - 3 * DAY  # days_before
TIERS = {
    "supporter": {"label": "Supporter", "order": 1, "price_sats": 2000, "period_days": 30, "grace_days": 3},
    "pro": {"label": "Pro", "order": 2, "price_sats": 20000, "period_days": 365, "grace_days": 7},
}
RENEWAL = {"days_before": 3, "retry_seconds": 300, "retry_schedule_hours": [0, 6, 24], "fallback_invoice_hours": 72}
URI = "nostr+walletconnect://{wallet}?relay=wss://wallet.example.com&secret={secret}"


@dataclass
class MemberWallet:
    """Refuses every payment until ``pays`` is set; then pays the relay's demo wallet."""

    relay_wallet: FakeBackend
    pays: bool = False
    asked: list[str] = field(default_factory=list)  # payment hash of each request

    async def __call__(self, uri: str, bolt11: str) -> str:
        payment_hash, _ = decode_bolt11(bolt11)
        self.asked.append(payment_hash)
        if not self.pays:
            raise BackendError("nwc pay_invoice: PAYMENT_FAILED: no route")
        assert await self.relay_wallet.pay(payment_hash)
        return "00" * 32


@dataclass
class Setup:
    ext: PaymentsExtension
    renewals: Renewals
    wallet: MemberWallet
    clock: list[float]
    published: list[Event]
    member: bytes

    @property
    def pubkey(self) -> str:
        return crypto.public_key(self.member).hex()

    async def at(self, moment: int) -> None:
        """One round of the renewal loop at ``moment``."""
        self.clock[0] = moment
        await self.renewals.check()

    async def attempt(self) -> Any:
        found = await self.ext.store.get_renewal(self.pubkey, END)
        assert found is not None
        return found

    def told(self) -> list[str]:
        """What the relay told the member (NIP-17 chat messages inside the gift wraps)."""
        out = []
        for wrap in self.published:
            outer = nip44.conversation_key(self.member, bytes.fromhex(wrap.pubkey))
            seal = parse_event(orjson.loads(nip44.decrypt(wrap.content, outer)))
            inner = nip44.conversation_key(self.member, bytes.fromhex(seal.pubkey))
            rumor = orjson.loads(nip44.decrypt(seal.content, inner))
            out.append(rumor["content"])
        return out


@pytest.fixture
async def setup(store: Store, tmp_path: Path) -> AsyncIterator[Setup]:  # noqa: F811
    settings = payment_settings(tmp_path, account_cache_seconds=0, push=False, tiers=TIERS, renewal=RENEWAL)
    relay_wallet = build_backend(settings, None)  # type: ignore[arg-type]  # the demo wallet needs no HTTP
    assert isinstance(relay_wallet, FakeBackend)
    clock = [float(T0)]
    ext = PaymentsExtension(settings, store, relay_wallet, clock=lambda: clock[0])
    await ext.store.open()
    published: list[Event] = []

    async def publish(event: Event) -> None:
        published.append(event)

    wallet = MemberWallet(relay_wallet)
    renewals = Renewals(
        payments_section(settings).renewal,
        store=ext.store,
        ledger=ext.ledger,
        plans=ext.plans,
        identity=RelayIdentity.from_secret(crypto.generate_secret()),
        publish=publish,
        confirm=ext.watcher.confirm,
        relay_name="Test relay",
        pay=wallet,
        clock=lambda: clock[0],
    )
    member = crypto.generate_secret()
    pubkey = crypto.public_key(member).hex()
    invoice = await ext.ledger.issue(pubkey, "supporter", T0)
    assert await relay_wallet.pay(invoice.payment_hash)
    await ext.ledger.confirm(invoice.payment_hash, T0)
    uri = URI.format(wallet=crypto.public_key(crypto.generate_secret()).hex(), secret=crypto.generate_secret().hex())
    await renewals.connect(pubkey, uri, 5000, T0)
    await ext.store.set_reminders(pubkey, True, T0)
    try:
        yield Setup(ext, renewals, wallet, clock, published, member)
    finally:
        await relay_wallet.close()


async def test_tries_on_the_schedule_then_leaves_an_invoice_paid_in_grace_from_the_old_end(setup: Setup) -> None:
    await setup.at(START - 1)
    assert setup.wallet.asked == []  # not yet days_before the end
    await setup.at(START)
    first = await setup.attempt()
    assert (first.state, first.tries) == ("paying", 1) and setup.wallet.asked == [first.payment_hash]
    invoice = await setup.ext.store.get_invoice(first.payment_hash)
    assert invoice is not None and invoice.plan == "supporter"  # the tier held is what renews
    await setup.at(START + 299)
    assert len(setup.wallet.asked) == 1  # retry_seconds not yet past
    await setup.at(START + 300)
    assert setup.wallet.asked == [first.payment_hash] * 2  # the same invoice, asked again
    await setup.at(START + 2 * HOUR)
    assert len(setup.wallet.asked) == 2  # its invoice expired; the next try is at 6 hours

    await setup.at(START + 6 * HOUR)
    second = await setup.attempt()
    assert second.payment_hash != first.payment_hash
    assert (second.state, second.tries, second.detail) == ("paying", 3, "nwc pay_invoice: PAYMENT_FAILED: no route")
    assert setup.wallet.asked[-1] == second.payment_hash and len(setup.wallet.asked) == 3
    await setup.at(START + 24 * HOUR)
    third = await setup.attempt()
    assert len({first.payment_hash, second.payment_hash, third.payment_hash}) == 3
    assert setup.wallet.asked[-1] == third.payment_hash
    assert setup.told() == []  # tries are quiet

    # After the last try's invoice expired: the fallback, an invoice left for the member.
    await setup.at(START + 25 * HOUR)
    left = await setup.attempt()
    assert left.state == "invoice" and "did not pay in 3 tries" in left.detail
    fallback = await setup.ext.store.get_invoice(left.payment_hash)
    assert fallback is not None and fallback.plan == "supporter"
    assert fallback.expires_at == START + 25 * HOUR + 72 * HOUR
    asked = len(setup.wallet.asked)
    (message,) = setup.told()
    assert "did not pay the renewal" in message and fallback.bolt11 in message and "2000 sats" in message
    await setup.at(END + DAY)  # into the grace: the wallet is not asked again, the invoice waits
    assert len(setup.wallet.asked) == asked and (await setup.attempt()).state == "invoice"

    # Paid by hand in the grace: the period counts from the old end, not from the payment.
    assert await setup.wallet.relay_wallet.pay(left.payment_hash)
    await setup.at(END + DAY + 60)
    assert (await setup.attempt()).state == "paid"
    account = await setup.ext.store.get_account(setup.pubkey)
    assert account is not None and (account.role, account.admitted_until) == ("supporter", END + MONTH)
    assert "was renewed" in setup.told()[-1]
    await setup.at(END + 2 * DAY)
    assert len(setup.wallet.asked) == asked  # nothing more is asked of the wallet


async def test_a_later_try_that_the_wallet_pays_renews_once(setup: Setup) -> None:
    await setup.at(START)
    await setup.at(START + 6 * HOUR - 1)
    setup.wallet.pays = True  # the member topped up their wallet
    await setup.at(START + 6 * HOUR)
    attempt = await setup.attempt()
    assert (attempt.state, attempt.tries) == ("paid", 2)
    account = await setup.ext.store.get_account(setup.pubkey)
    assert account is not None and account.admitted_until == END + MONTH
    paid = [i for i in await setup.ext.store.list_invoices(pubkey=setup.pubkey) if i.state is InvoiceState.PAID]
    assert len(paid) == 2  # the first purchase and this renewal
    await setup.at(START + 24 * HOUR)
    await setup.at(START + 25 * HOUR)
    assert len(setup.wallet.asked) == 2  # nothing more: the period is renewed


async def test_a_period_renewed_another_way_stops_the_tries(setup: Setup) -> None:
    await setup.at(START)
    invoice = await setup.ext.ledger.issue(setup.pubkey, "supporter", START + HOUR)  # the join page
    assert await setup.wallet.relay_wallet.pay(invoice.payment_hash)
    await setup.ext.ledger.confirm(invoice.payment_hash, START + HOUR)
    await setup.at(START + 6 * HOUR)
    assert (await setup.attempt()).state == "cancelled"
    assert len(setup.wallet.asked) == 1


async def test_a_scheduled_downgrade_renews_the_lower_tier(setup: Setup) -> None:
    pro = await setup.ext.ledger.issue(setup.pubkey, "pro", T0 + DAY)
    assert await setup.wallet.relay_wallet.pay(pro.payment_hash)
    await setup.ext.ledger.confirm(pro.payment_hash, T0 + DAY)  # an upgrade: pro from now
    supporter = await setup.ext.ledger.issue(setup.pubkey, "supporter", T0 + 2 * DAY)
    assert await setup.wallet.relay_wallet.pay(supporter.payment_hash)
    await setup.ext.ledger.confirm(supporter.payment_hash, T0 + 2 * DAY)  # a downgrade, at pro's end
    account = await setup.ext.store.get_account(setup.pubkey)
    assert account is not None and (account.role, account.next_role) == ("pro", "supporter")
    end = account.admitted_until
    setup.clock[0] = end - 3 * DAY
    await setup.renewals.check()
    (attempt,) = await setup.ext.store.list_renewals(setup.pubkey)
    assert attempt.period_end == end
    renewal = await setup.ext.store.get_invoice(attempt.payment_hash)
    assert renewal is not None and (renewal.plan, renewal.amount_msat) == ("supporter", 2_000_000)
