"""The demo wallet's invoices decode like a real node's, description hashes included."""

from __future__ import annotations

import hashlib
from pathlib import Path

import bolt11

from lightning.backend import PaymentState, bolt11_description_hash
from lightning.backends.fake import FakeBackend, FakeConfig


async def test_description_hash_invoice_carries_the_h_tag_and_no_memo(tmp_path: Path) -> None:
    backend = FakeBackend(FakeConfig(tmp_path / "fake.db"))
    try:
        zap_request = '{"kind":9734,"content":"\u26a1 zap"}'
        invoice = await backend.create_invoice(21_000, "zap", 600, hashed_description=zap_request)
        decoded = bolt11.decode(invoice.bolt11)
        assert bolt11_description_hash(invoice.bolt11) == hashlib.sha256(zap_request.encode()).hexdigest()
        assert decoded.description is None and decoded.amount_msat == 21_000
        plain = await backend.create_invoice(1_000, "plain memo", 600)
        assert bolt11.decode(plain.bolt11).description == "plain memo"
        assert bolt11_description_hash(plain.bolt11) is None
        await backend.pay(invoice.payment_hash)
        paid = await backend.lookup_invoice(invoice.payment_hash)
        assert paid.state is PaymentState.PAID and paid.preimage is not None
        assert hashlib.sha256(bytes.fromhex(paid.preimage)).hexdigest() == invoice.payment_hash
    finally:
        await backend.close()
