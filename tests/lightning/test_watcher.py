"""The watcher never loses a payment: push, polling, reconnects, restarts and outages."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from lightning.backends.fake import make_bolt11, mark_paid
from lightning.extension import fake_state_file
from lightning.store.base import FOREVER, Invoice, InvoiceState, LedgerStore
from tests.lightning.payment_stack import payment_stack
from tests.waiting import eventually

PK = "a" * 64


def admitted(store: LedgerStore, pubkey: str = PK) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        account = await store.get_account(pubkey)
        return account is not None and account.admitted_until == FOREVER

    return check


async def test_push_credits_without_waiting_for_a_poll(tmp_path: Path) -> None:
    async with payment_stack(tmp_path, start=True, poll_interval_seconds=3600) as s:
        invoice = await s.ext.ledger.issue(PK, "admission", int(time.time()))
        await asyncio.sleep(0.1)
        mark_paid(fake_state_file(s.settings), invoice.payment_hash)  # as `satsrelay pay-fake` does
        assert await eventually(admitted(s.ledger)) < 2.0


async def test_push_disabled_polling_credits(tmp_path: Path) -> None:
    async with payment_stack(tmp_path, start=True, push=False, poll_interval_seconds=0.2) as s:
        invoice = await s.ext.ledger.issue(PK, "admission", int(time.time()))
        assert s.ext.watcher.stream_connects == 0
        mark_paid(fake_state_file(s.settings), invoice.payment_hash)
        await eventually(admitted(s.ledger))


async def test_dropped_stream_is_reopened_and_still_credits(tmp_path: Path) -> None:
    async with payment_stack(tmp_path, start=True, poll_interval_seconds=3600) as s:
        await eventually(lambda: _true(s.ext.watcher.stream_connects == 1))
        s.wallet.drop_streams()
        await eventually(lambda: _true(s.ext.watcher.stream_connects == 2))
        invoice = await s.ext.ledger.issue(PK, "admission", int(time.time()))
        mark_paid(fake_state_file(s.settings), invoice.payment_hash)
        await eventually(admitted(s.ledger))


async def test_payment_made_while_relay_was_down_is_credited_once_at_start(tmp_path: Path) -> None:
    async with payment_stack(tmp_path) as s:
        invoice = await s.ext.ledger.issue(PK, "admission", int(time.time()))
    mark_paid(fake_state_file(s.settings), invoice.payment_hash)  # nobody is listening
    async with payment_stack(tmp_path, start=True, push=False, poll_interval_seconds=3600) as s2:
        # start() reconciles before returning: no waiting for the first poll.
        assert await admitted(s2.ledger)()
        assert s2.ext.metrics.invoices_settled.labels("admission")._value.get() == 1
    async with payment_stack(tmp_path, start=True, push=False, poll_interval_seconds=0.1) as s3:
        await asyncio.sleep(0.4)
        assert s3.ext.metrics.invoices_settled.labels("admission")._value.get() == 0
        stored = await s3.ledger.get_invoice(invoice.payment_hash)
        assert stored is not None and stored.state is InvoiceState.PAID


async def test_credit_payment_credits_the_balance_exactly_once_across_restarts(tmp_path: Path) -> None:
    credit = {"enabled": True}
    async with payment_stack(tmp_path, credit=credit) as s:
        invoice = await s.ext.ledger.issue(PK, "credit", int(time.time()), amount_sats=500)
    mark_paid(fake_state_file(s.settings), invoice.payment_hash)
    for _ in range(3):
        async with payment_stack(tmp_path, start=True, credit=credit, poll_interval_seconds=0.1):
            await asyncio.sleep(0.3)
    account = await _account(tmp_path)
    assert account == 500_000


async def test_forged_push_for_an_unpaid_invoice_credits_nothing(tmp_path: Path) -> None:
    async with payment_stack(tmp_path, poll_interval_seconds=0.1) as s:
        invoice = await s.ext.ledger.issue(PK, "admission", int(time.time()))
        forged_hints: asyncio.Queue[str] = asyncio.Queue()

        async def forged_stream() -> AsyncIterator[str]:
            while True:
                yield await forged_hints.get()

        s.wallet.settlements = forged_stream  # type: ignore[method-assign]
        await s.ext.start()
        try:
            for _ in range(3):
                forged_hints.put_nowait(invoice.payment_hash)
            await asyncio.sleep(0.5)
            assert await s.ledger.get_account(PK) is None
            stored = await s.ledger.get_invoice(invoice.payment_hash)
            assert stored is not None and stored.state is InvoiceState.PENDING
        finally:
            await s.ext.stop()


async def test_underpaid_invoice_is_never_credited_by_push_or_poll(tmp_path: Path) -> None:
    async with payment_stack(tmp_path, start=True, poll_interval_seconds=0.1) as s:
        invoice = await s.ext.ledger.issue(PK, "admission", int(time.time()))
        mark_paid(fake_state_file(s.settings), invoice.payment_hash, amount_msat=invoice.amount_msat - 1)
        await eventually(lambda: _true(s.ext.metrics.settlements_rejected._value.get() >= 2))
        assert await s.ledger.get_account(PK) is None


async def test_wallet_outage_only_delays_the_credit(tmp_path: Path) -> None:
    async with payment_stack(tmp_path, start=True, poll_interval_seconds=0.1) as s:
        invoice = await s.ext.ledger.issue(PK, "admission", int(time.time()))
        s.wallet.set_outage(True)
        mark_paid(fake_state_file(s.settings), invoice.payment_hash)  # paid, but the wallet API is down
        await asyncio.sleep(0.5)
        assert await s.ledger.get_account(PK) is None
        stored = await s.ledger.get_invoice(invoice.payment_hash)
        assert stored is not None and stored.state is InvoiceState.PENDING  # not expired while unchecked
        s.wallet.set_outage(False)
        await eventually(admitted(s.ledger))


async def test_poll_marks_unpaid_invoices_past_expiry_expired(tmp_path: Path) -> None:
    async with payment_stack(tmp_path) as s:
        now = int(time.time())
        old = Invoice(
            "9" * 64,
            PK,
            "admission",
            1000,
            make_bolt11("9" * 64, 1000, "x", now - 999, 60),
            now - 999,
            now - 939,
            admit_forever=True,
        )
        await s.ledger.add_invoice(old)
        fresh = await s.ext.ledger.issue(PK, "admission", now)
        assert await s.ext.watcher.poll_once() == 0
        assert (await s.ledger.get_invoice(old.payment_hash)).state is InvoiceState.EXPIRED  # type: ignore[union-attr]
        assert (await s.ledger.get_invoice(fresh.payment_hash)).state is InvoiceState.PENDING  # type: ignore[union-attr]


async def test_auto_settle_pays_demo_invoices_by_itself(tmp_path: Path) -> None:
    async with payment_stack(tmp_path, start=True, fake={"auto_settle_seconds": 0}) as s:
        await s.ext.ledger.issue(PK, "admission", int(time.time()))
        await eventually(admitted(s.ledger))


async def _true(value: bool) -> bool:
    return value


async def _account(tmp_path: Path) -> int:
    from lightning.store import open_ledger
    from relay.store.sqlite import SqliteStore

    store = SqliteStore(tmp_path / "relay.db")
    await store.open()
    try:
        account = await open_ledger(store).get_account(PK)
        return account.credit_msat if account else 0
    finally:
        await store.close()
