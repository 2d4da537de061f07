"""``satsrelay pay-fake`` takes what a client holds, the BOLT11 invoice (as shown, or in the
uppercase ``LIGHTNING:`` form a QR code carries), as well as a payment hash."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from relay.nostr import crypto
from relay.nostr.event import sign_event
from tests.conftest import RelayFactory
from tests.lightning.test_cli import satsrelay, satsrelay_json, write_config
from tests.nostr_client import NostrClient
from tests.waiting import eventually


async def test_pay_fake_settles_an_invoice_given_as_bolt11(
    relay_factory: RelayFactory, alice: bytes, bob: bytes, tmp_path: Path
) -> None:
    config = write_config(tmp_path)
    payments = {"enabled": True, "backend": "fake"}
    async with (
        relay_factory(payments=payments) as relay,
        NostrClient(relay.url) as client,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{relay.port}") as web,
    ):
        for secret, form in ((alice, str.lower), (bob, lambda b: "LIGHTNING:" + b.upper())):
            pubkey = crypto.public_key(secret).hex()
            invoice = (await web.post("/api/invoice", json={"pubkey": pubkey, "plan": "admission"})).json()
            paid = await satsrelay_json(config, "pay-fake", form(invoice["bolt11"]))
            assert paid == {"payment_hash": invoice["payment_hash"], "paid": True}

            async def credited(payment_hash: str = invoice["payment_hash"]) -> bool:
                return bool((await web.get(f"/api/invoice/{payment_hash}")).json()["paid"])

            await eventually(credited, 10, what="the relay to credit the invoice")
            ok, message = await client.publish(sign_event(secret, 1, "paid", [], created_at=int(time.time())))
            assert ok, message


async def test_pay_fake_names_what_it_cannot_read(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    for text in ("lnbcrt1notaninvoice", "xyz", "ab" * 31):
        code, out, err = await satsrelay(config, "pay-fake", text)
        assert (code, out) == (1, "") and len(err.splitlines()) == 1, err
        assert err.startswith("satsrelay: not a payment hash (64 hex) or a BOLT11 invoice"), err
