"""Unpaid invoices are bounded and cheap to watch (issue 8, item 6).

Before: 100 loopback IPs created 1,000 invoices in 7 s, none was ever deleted, and the
watcher asked the wallet about every pending one every 5 s. Now an unpaid invoice is
reused, pending invoices are capped per pubkey and overall, never-paid ones are pruned,
and poll rounds look up a bounded number of invoices, watched and young ones first.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx

from lightning.backend import CreatedInvoice, InvoiceStatus, WalletBackend
from lightning.ledger import Ledger, PendingCaps
from lightning.store.base import Invoice, InvoiceState
from lightning.watcher import PollSchedule, Watcher
from relay.nostr import crypto
from relay.session.server import Relay
from tests.conftest import RelayFactory
from tests.lightning.payment_stack import ledger_of, payment_stack
from tests.lnbits_server import LnbitsServer

PAID: dict[str, Any] = {"enabled": True, "backend": "fake", "credit": {"enabled": True}}


class CountingWallet:
    """A wallet that counts the lookups made through it (the cost an attacker could drive)."""

    def __init__(self, inner: WalletBackend) -> None:
        self.inner = inner
        self.name = inner.name
        self.lookups = 0
        self.creates = 0

    async def create_invoice(
        self, amount_msat: int, memo: str, expiry_seconds: int, *, hashed_description: str | None = None
    ) -> CreatedInvoice:
        self.creates += 1
        return await self.inner.create_invoice(amount_msat, memo, expiry_seconds)

    async def lookup_invoice(self, payment_hash: str) -> InvoiceStatus:
        self.lookups += 1
        return await self.inner.lookup_invoice(payment_hash)

    def settlements(self) -> AsyncIterator[str]:
        return self.inner.settlements()

    def notifications_live(self) -> bool:
        return self.inner.notifications_live()

    async def close(self) -> None:
        await self.inner.close()


def base(relay: Relay) -> str:
    return f"http://127.0.0.1:{relay.port}"


async def test_same_pubkey_plan_and_amount_gets_its_unpaid_invoice_back(relay_factory: RelayFactory) -> None:
    pubkey = "ab" * 32
    async with relay_factory(payments=PAID) as relay, httpx.AsyncClient(base_url=base(relay)) as web:
        first = (await web.post("/api/invoice", json={"pubkey": pubkey, "plan": "admission"})).json()
        again = (await web.post("/api/invoice", json={"pubkey": pubkey, "plan": "admission"})).json()
        assert again["payment_hash"] == first["payment_hash"] and again["bolt11"] == first["bolt11"]
        top_up = {"pubkey": pubkey, "plan": "credit", "amount": "200"}
        credit = (await web.post("/api/invoice", json=top_up)).json()
        assert credit["payment_hash"] != first["payment_hash"]
        assert (await web.post("/api/invoice", json=top_up)).json()["payment_hash"] == credit["payment_hash"]
        assert len(await ledger_of(relay).list_invoices()) == 2
        # once paid, the next request makes a new invoice
        await web.post(f"/api/fake/pay/{first['payment_hash']}")
        renewed = (await web.post("/api/invoice", json={"pubkey": pubkey, "plan": "admission"})).json()
        assert renewed["payment_hash"] != first["payment_hash"]


async def test_hundred_addresses_cannot_create_more_than_the_cap(relay_factory: RelayFactory) -> None:
    """The pool stays bounded; since issue 17 a full pool makes room (the biggest holder's
    oldest invoice) instead of refusing newcomers (tests/lightning/test_invoice_fairness.py)."""
    payments = {**PAID, "max_pending_invoices": 40, "invoice_requests_per_minute": 10}
    server = {"real_ip_header": "X-Forwarded-For"}  # lets one test client speak for 100 addresses
    async with relay_factory(payments=payments, server=server) as relay, httpx.AsyncClient(base_url=base(relay)) as web:

        async def attack(n: int) -> list[int]:
            headers = {"X-Forwarded-For": f"10.0.{n}.1"}
            codes = []
            for _ in range(3):
                params = {"pubkey": os.urandom(32).hex(), "plan": "admission"}
                codes.append((await web.post("/api/invoice", json=params, headers=headers)).status_code)
            return codes

        codes = [code for codes in await asyncio.gather(*(attack(n) for n in range(100))) for code in codes]
        assert set(codes) == {200}
        now = int(time.time())
        live = [i for i in await ledger_of(relay).list_invoices(pending_only=True) if i.expires_at > now]
        assert len(live) == 40
        bystander = await web.post("/api/invoice", json={"pubkey": "cd" * 32, "plan": "admission"})
        assert bystander.status_code == 200, bystander.text


async def test_a_pool_full_of_the_relays_own_invoices_refuses_with_503(relay_factory: RelayFactory) -> None:
    """Only invoices a stranger asked for can be evicted; the relay's own (renewals) cannot."""
    payments = {**PAID, "max_pending_invoices": 5}
    async with relay_factory(payments=payments) as relay, httpx.AsyncClient(base_url=base(relay)) as web:
        ext: Any = relay.hooks.owner("payments")
        for n in range(5):
            await ext.ledger.issue(f"{n:064x}", "admission", int(time.time()))
        refused = await web.post("/api/invoice", json={"pubkey": "cd" * 32, "plan": "admission"})
        assert refused.status_code == 503 and "try again later" in refused.json()["error"]
        assert refused.headers["Retry-After"] == "60"


async def test_one_pubkey_holds_at_most_its_cap_of_unpaid_invoices(relay_factory: RelayFactory) -> None:
    payments = {**PAID, "max_pending_invoices_per_pubkey": 2}
    async with relay_factory(payments=payments) as relay, httpx.AsyncClient(base_url=base(relay)) as web:
        codes = []
        for amount in ("100", "101", "102"):
            params = {"pubkey": "ef" * 32, "plan": "credit", "amount": amount}
            codes.append((await web.post("/api/invoice", json=params)).status_code)
        assert codes == [200, 200, 429]
        other = await web.post("/api/invoice", json={"pubkey": "12" * 32, "plan": "credit", "amount": "100"})
        assert other.status_code == 200


async def test_odd_top_ups_for_a_victim_do_not_keep_it_from_buying_admission(relay_factory: RelayFactory) -> None:
    """Anyone may ask for invoices for any pubkey: one who fills a victim's slots with
    top-ups of odd amounts must not lock the victim out of the fixed-price plans (which are
    reused, so they cannot be piled up either)."""
    payments = {**PAID, "max_pending_invoices_per_pubkey": 2, "admission": {"enabled": True, "fee_sats": 21}}
    victim = "ef" * 32
    async with relay_factory(payments=payments) as relay, httpx.AsyncClient(base_url=base(relay)) as web:
        for amount in ("100", "101"):
            made = await web.post("/api/invoice", json={"pubkey": victim, "plan": "credit", "amount": amount})
            assert made.status_code == 200, made.text
        refused = await web.post("/api/invoice", json={"pubkey": victim, "plan": "credit", "amount": "102"})
        assert refused.status_code == 429
        admission = await web.post("/api/invoice", json={"pubkey": victim, "plan": "admission"})
        assert admission.status_code == 200, admission.text
        again = await web.post("/api/invoice", json={"pubkey": victim, "plan": "admission"})
        assert again.json()["payment_hash"] == admission.json()["payment_hash"]  # reused, not piled up
        assert len(await ledger_of(relay).list_invoices(pubkey=victim, pending_only=True)) == 3


def stored_invoice(created_at: int, expiry: int = 900, pubkey: str = "ab" * 32) -> Invoice:
    payment_hash = os.urandom(32).hex()
    return Invoice(payment_hash, pubkey, "admission", 1000, "lnbcrt10n1" + payment_hash[:10], created_at,
                   created_at + expiry, admit_forever=True)


async def test_never_paid_invoices_are_pruned_paid_ones_kept(tmp_path: Path) -> None:
    async with payment_stack(tmp_path, prune_expired_invoices_after_seconds=3600) as s:
        now = int(time.time())
        old_unpaid = stored_invoice(now - 10_000)  # expired 9,100 s ago
        recent_unpaid = stored_invoice(now - 1_000)  # expired 100 s ago: kept a while for support
        old_paid = stored_invoice(now - 20_000)
        for invoice in (old_unpaid, recent_unpaid, old_paid):
            await s.ledger.add_invoice(invoice)
        await s.ledger.settle_invoice(old_paid.payment_hash, 1000, now - 19_900)
        await s.ext.watcher.poll_once()  # reconciliation: last look, mark expired, prune
        assert await s.ledger.get_invoice(old_unpaid.payment_hash) is None
        kept = await s.ledger.get_invoice(recent_unpaid.payment_hash)
        assert kept is not None and kept.state is InvoiceState.EXPIRED
        paid = await s.ledger.get_invoice(old_paid.payment_hash)
        assert paid is not None and paid.state is InvoiceState.PAID


async def test_wallet_lookups_per_minute_stay_bounded_with_1000_pending(tmp_path: Path) -> None:
    async with payment_stack(tmp_path) as s:
        wallet = CountingWallet(s.wallet)
        ledger = Ledger(s.ledger, wallet, s.ext.plans, 900, PendingCaps())
        clock = [float(time.time())]
        schedule = PollSchedule(poll_interval=5, young_seconds=600, old_interval=300, max_lookups=20)
        watcher = Watcher(ledger, poll_interval=5, push=False, schedule=schedule, clock=lambda: clock[0])
        now = int(clock[0])
        for n in range(1000):  # an attacker's rows: half old, half just created (and long-lived)
            await s.ledger.add_invoice(stored_invoice(now - 700) if n % 2 else stored_invoice(now - 10, expiry=3600))

        await watcher.poll_once()  # start-up reconciliation looks at every pending invoice once
        assert wallet.lookups == 1000

        def one_minute_of_rounds() -> list[float]:
            return [clock[0] + 5 * (i + 1) for i in range(12)]

        wallet.lookups = 0
        for tick in one_minute_of_rounds():
            clock[0] = tick
            await watcher.poll_due()
        # before: 12 rounds x 1,000 lookups; now at most max_lookups per round
        assert wallet.lookups <= 12 * 20
        assert wallet.lookups == 12 * 20  # 500 young ones keep every round's budget busy

        # a real payer watching the join page is looked up in the very next round, ahead of them
        payer = crypto.public_key(crypto.generate_secret()).hex()
        invoice = await ledger.issue(payer, "admission", int(clock[0]))
        await s.wallet.pay(invoice.payment_hash)
        watcher.watch(invoice.payment_hash)
        clock[0] += 5
        assert await watcher.poll_due() == 1
        account = await s.ledger.get_account(payer)
        assert account is not None and account.admitted(int(clock[0]))

        # once the young ones are old (and the half created 700 s ago has expired: those wait for
        # the hourly reconciliation), each live one is asked about once per old_interval
        clock[0] += 700
        for _ in range(5 * 12):  # five minutes to catch up with the backlog
            clock[0] += 5
            await watcher.poll_due()
        wallet.lookups = 0
        for _ in range(10 * 12):
            clock[0] += 5
            await watcher.poll_due()
        per_minute = wallet.lookups / 10
        # ~105 in theory (112 measured while the backlog evens out); the budget allows 240, and
        # polling everything every round would have cost 12 x 500 = 6,000
        assert per_minute <= 1.25 * 500 * 60 / (300 * 0.95), per_minute


async def test_status_route_lookups_share_one_budget(relay_factory: RelayFactory) -> None:
    payments = {**PAID, "status_lookups_per_second": 1.0, "push": False, "poll_interval_seconds": 3600,
                "invoice_requests_per_minute": 100, "max_pending_invoices_per_address": 100}
    async with relay_factory(payments=payments) as relay, httpx.AsyncClient(base_url=base(relay)) as web:
        assert relay.hooks.owner("payments") is not None
        ext: Any = relay.hooks.owner("payments")
        wallet = CountingWallet(ext.ledger.backend)
        ext.ledger.backend = wallet
        hashes = []
        for n in range(20):
            params = {"pubkey": f"{n:064x}", "plan": "admission"}
            hashes.append((await web.post("/api/invoice", json=params)).json()["payment_hash"])
        started = time.monotonic()
        for payment_hash in hashes:  # a stranger polling every invoice it can name
            assert (await web.get(f"/api/invoice/{payment_hash}")).status_code == 200
        elapsed = time.monotonic() - started
        assert wallet.lookups <= 2 + int(elapsed * 1.0) + 1  # burst of 2, then 1 per second


async def test_lnbits_reused_invoice_and_bounded_polling_still_credit_a_payer(
    lnbits: LnbitsServer, relay_factory: RelayFactory
) -> None:
    payments = {
        "enabled": True,
        "backend": "lnbits",
        "lnbits": {"url": lnbits.url, "invoice_key": lnbits.wallet_a.inkey},
        "invoice_requests_per_minute": 100,
        "max_pending_invoices_per_address": 100,
        "push": False,  # polling alone must find the payment
        "poll_interval_seconds": 0.2,
        "max_lookups_per_poll": 5,
    }
    async with relay_factory(payments=payments) as relay, httpx.AsyncClient(base_url=base(relay)) as web:
        ext: Any = relay.hooks.owner("payments")
        wallet = CountingWallet(ext.ledger.backend)
        ext.ledger.backend = wallet
        now = int(time.time())
        for _ in range(200):  # rows LNbits never issued (it answers 404 for each)
            await ledger_of(relay).add_invoice(stored_invoice(now - 700))
        await ext.watcher.poll_once()  # a reconciliation asks about every one of them once
        assert wallet.lookups >= 200
        wallet.lookups = 0
        await asyncio.sleep(2.0)  # ~10 poll rounds: the old rows are not due again for 5 minutes
        assert wallet.lookups <= 5

        secret = crypto.generate_secret()
        pubkey = crypto.public_key(secret).hex()
        params = {"pubkey": pubkey, "plan": "admission"}
        invoice = (await web.post("/api/invoice", json=params)).json()
        assert (await web.post("/api/invoice", json=params)).json()["payment_hash"] == invoice["payment_hash"]
        assert wallet.creates == 1  # the second request did not ask LNbits for another invoice
        await asyncio.to_thread(lnbits.pay, invoice["bolt11"])
        deadline = time.monotonic() + 10
        while not ((account := await ledger_of(relay).get_account(pubkey)) and account.admitted(int(time.time()))):
            assert time.monotonic() < deadline, "young invoice not polled"
            await asyncio.sleep(0.1)
        assert wallet.lookups <= 5 + 5 * (10 + 50)  # bounded by the per-round budget throughout
