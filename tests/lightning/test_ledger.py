"""Issuing invoices and applying settlements: stored before shown, verified, exactly once."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from lightning.backend import BackendError, CreatedInvoice, InvoiceStatus, PaymentState
from lightning.backends.fake import make_bolt11, mark_paid
from lightning.extension import fake_state_file
from lightning.ledger import Confirmation, decode_bolt11, settlement_problem
from lightning.plans import UnknownPlan
from lightning.store.base import FOREVER, InvoiceState
from tests.lightning.payment_stack import payment_stack

PK = "a" * 64


async def test_invoice_is_stored_before_it_is_returned_and_decodes_to_its_price(tmp_path: Path) -> None:
    async with payment_stack(tmp_path) as s:
        invoice = await s.ext.ledger.issue(PK, "admission", int(time.time()))
        stored = await s.ledger.get_invoice(invoice.payment_hash)
        assert stored == invoice
        assert stored.state is InvoiceState.PENDING
        assert decode_bolt11(invoice.bolt11) == (invoice.payment_hash, 1_000_000)
        assert invoice.admit_forever and invoice.credit_msat == 0


async def test_unknown_or_disabled_plan_and_bad_topup_are_refused(tmp_path: Path) -> None:
    async with payment_stack(
        tmp_path, credit={"enabled": True, "min_topup_sats": 10, "max_topup_sats": 100, "default_topup_sats": 50}
    ) as s:
        with pytest.raises(UnknownPlan):
            await s.ext.ledger.issue(PK, "subscription", 0)  # disabled by default
        with pytest.raises(UnknownPlan):
            await s.ext.ledger.issue(PK, "credit", 0, amount_sats=101)
        invoice = await s.ext.ledger.issue(PK, "credit", int(time.time()), amount_sats=42)
        assert invoice.amount_msat == invoice.credit_msat == 42_000
        assert await s.ledger.list_invoices() == [invoice]


async def test_wallet_returning_a_mismatched_invoice_is_not_stored(tmp_path: Path) -> None:
    class LyingWallet:
        name = "liar"

        async def create_invoice(
            self, amount_msat: int, memo: str, expiry_seconds: int, *, hashed_description: str | None = None
        ) -> CreatedInvoice:
            request = make_bolt11("b" * 64, amount_msat // 2, memo, int(time.time()), expiry_seconds)
            return CreatedInvoice("b" * 64, request, amount_msat, int(time.time()) + expiry_seconds)

    async with payment_stack(tmp_path) as s:
        s.ext.ledger.backend = LyingWallet()  # type: ignore[assignment]
        with pytest.raises(BackendError):
            await s.ext.ledger.issue(PK, "admission", int(time.time()))
        assert await s.ledger.list_invoices() == []


async def test_settlement_credits_exactly_once_and_admits(tmp_path: Path) -> None:
    async with payment_stack(tmp_path) as s:
        now = int(time.time())
        invoice = await s.ext.ledger.issue(PK, "admission", now)
        assert (await s.ext.ledger.confirm(invoice.payment_hash, now)).outcome is Confirmation.PENDING
        assert await s.wallet.pay(invoice.payment_hash)
        outcomes = [(await s.ext.ledger.confirm(invoice.payment_hash, now)).outcome for _ in range(3)]
        assert outcomes == [Confirmation.CREDITED, Confirmation.ALREADY_PAID, Confirmation.ALREADY_PAID]
        account = await s.ledger.get_account(PK)
        assert account is not None and account.admitted_until == FOREVER


async def test_underpaid_invoice_credits_nothing(tmp_path: Path) -> None:
    async with payment_stack(tmp_path) as s:
        now = int(time.time())
        invoice = await s.ext.ledger.issue(PK, "admission", now)
        assert mark_paid(fake_state_file(s.settings), invoice.payment_hash, amount_msat=999_999)
        assert (await s.ext.ledger.confirm(invoice.payment_hash, now)).outcome is Confirmation.REJECTED
        assert await s.ledger.get_account(PK) is None
        assert (await s.ledger.get_invoice(invoice.payment_hash)).state is InvoiceState.PENDING  # type: ignore[union-attr]


async def test_hash_we_never_issued_is_ignored(tmp_path: Path) -> None:
    async with payment_stack(tmp_path) as s:
        result = await s.ext.ledger.confirm("c" * 64, int(time.time()))
        assert result.outcome is Confirmation.UNKNOWN and result.invoice is None


async def test_subscription_paid_twice_extends_from_the_current_end(tmp_path: Path) -> None:
    async with payment_stack(
        tmp_path, admission={"enabled": False}, subscription={"enabled": True, "period_days": 30}
    ) as s:
        now = int(time.time())
        for _ in range(2):
            invoice = await s.ext.ledger.issue(PK, "subscription", now)
            await s.wallet.pay(invoice.payment_hash)
            assert (await s.ext.ledger.confirm(invoice.payment_hash, now)).outcome is Confirmation.CREDITED
        account = await s.ledger.get_account(PK)
        assert account is not None and account.admitted_until == now + 60 * 86400


def test_settlement_problem_names_each_mismatch() -> None:
    from lightning.store.base import Invoice

    now = int(time.time())
    good = make_bolt11("d" * 64, 5000, "x", now, 600)
    invoice = Invoice("d" * 64, PK, "credit", 5000, good, now, now + 600, credit_msat=5000)
    paid = InvoiceStatus("d" * 64, PaymentState.PAID, 5000)
    assert settlement_problem(invoice, paid) is None
    assert "another payment hash" in (
        settlement_problem(invoice, InvoiceStatus("e" * 64, PaymentState.PAID, 5000)) or ""
    )
    assert "underpaid" in (settlement_problem(invoice, InvoiceStatus("d" * 64, PaymentState.PAID, 4999)) or "")
    forged = Invoice("d" * 64, PK, "credit", 5000, make_bolt11("d" * 64, 50, "x", now, 600), now, now + 600)
    assert "amount" in (settlement_problem(forged, paid) or "")
    other = Invoice("d" * 64, PK, "credit", 5000, make_bolt11("f" * 64, 5000, "x", now, 600), now, now + 600)
    assert "another payment hash" in (settlement_problem(other, paid) or "")
    assert "pending" in (settlement_problem(invoice, InvoiceStatus("d" * 64, PaymentState.PENDING)) or "")
