"""The paid flow as users meet it: a real relay, real WebSockets, real HTTP requests."""

from __future__ import annotations

import time
from typing import Any

import httpx

from lightning.pubkeys import npub_encode
from relay.nostr import crypto
from relay.nostr.event import sign_event
from relay.session.server import Relay
from tests.conftest import RelayFactory
from tests.lightning.payment_stack import ledger_of, nip98_header
from tests.nostr_client import NostrClient

PAID: dict[str, Any] = {"enabled": True, "backend": "fake", "poll_interval_seconds": 0.2}


def http_base(relay: Relay) -> str:
    return f"http://127.0.0.1:{relay.port}"


def note(secret: bytes) -> Any:
    return sign_event(secret, 1, f"paid note {time.monotonic_ns()}", [], created_at=int(time.time()))


async def test_unpaid_then_paid_event_flow(relay_factory: RelayFactory, alice: bytes) -> None:
    async with (
        relay_factory(payments=PAID) as relay,
        httpx.AsyncClient(base_url=http_base(relay)) as web,
        NostrClient(relay.url) as client,
    ):
        ok, message = await client.publish(note(alice))
        assert not ok
        assert message.startswith("restricted: ")
        hexkey = crypto.public_key(alice).hex()
        assert message == (
            f"restricted: writing here needs a payment; zap relay@127.0.0.1:{relay.port} 1000 sats"
            f" or pay at http://127.0.0.1:{relay.port}/join?pubkey={hexkey}"
        )

        npub = npub_encode(crypto.public_key(alice).hex())
        res = await web.post("/api/invoice", json={"pubkey": npub, "plan": "admission"})
        assert res.status_code == 200, res.text
        invoice = res.json()
        assert invoice["amount_msat"] == 1_000_000 and invoice["bolt11"].startswith("lnbcrt10u")
        assert invoice["pubkey"] == crypto.public_key(alice).hex()
        status = (await web.get(f"/api/invoice/{invoice['payment_hash']}")).json()
        assert status["state"] == "pending" and status["account"]["admitted"] is False

        qr = await web.get(invoice["qr"])
        assert qr.status_code == 200 and qr.headers["content-type"] == "image/svg+xml"
        assert qr.content.lstrip().startswith(b"<svg")

        assert (await web.post(f"/api/fake/pay/{invoice['payment_hash']}")).json()["simulated"] is True
        status = (await web.get(f"/api/invoice/{invoice['payment_hash']}")).json()
        assert status["paid"] is True and status["account"]["admitted_until"] == "forever"

        ok, message = await client.publish(note(alice))
        assert ok, message


async def test_nip11_advertises_payment_and_fees(relay_factory: RelayFactory) -> None:
    payments = {
        **PAID,
        "subscription": {"enabled": True, "fee_sats": 2000, "period_days": 30},
        "credit": {"enabled": True, "default_price_msat": 50, "kind_prices_msat": {"4": 100}},
    }
    async with relay_factory(payments=payments) as relay, httpx.AsyncClient(base_url=http_base(relay)) as web:
        doc = (await web.get("/", headers={"Accept": "application/nostr+json"})).json()
        port = relay.port
    assert doc["limitation"]["payment_required"] is True
    assert doc["limitation"]["restricted_writes"] is True
    assert doc["payments_url"] == f"http://127.0.0.1:{port}/join"
    assert doc["fees"]["admission"] == [{"amount": 1_000_000, "unit": "msats"}]
    assert doc["fees"]["subscription"] == [{"amount": 2_000_000, "unit": "msats", "period": 2_592_000}]
    assert {"kinds": [4], "amount": 100, "unit": "msats"} in doc["fees"]["publication"]
    assert {"amount": 50, "unit": "msats"} in doc["fees"]["publication"]
    assert doc["limitation"]["max_limit"] > 0  # the relay's own fields survive the merge


async def test_root_is_the_join_page_for_browsers_and_loads_nothing_from_elsewhere(relay_factory: RelayFactory) -> None:
    async with (
        relay_factory(payments=PAID, relay={"name": "Sats & Notes"}) as relay,
        httpx.AsyncClient(base_url=http_base(relay)) as web,
    ):
        page = await web.get("/", headers={"Accept": "text/html"})
        join = await web.get("/join")
        script = await web.get("/static/join.js")
        traversal = await web.get("/static/..%2Fweb.py")
    assert page.status_code == 200 and page.text == join.text
    assert "Sats &amp; Notes" in page.text and "Simulate payment" in page.text and "Demo mode" in page.text
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    assert "http://" not in page.text and "https://" not in page.text  # no external resources at all
    assert script.status_code == 200 and "getPublicKey" in script.text
    assert traversal.status_code == 404


async def test_account_page_in_html_and_json(relay_factory: RelayFactory, alice: bytes) -> None:
    pubkey = crypto.public_key(alice).hex()
    async with relay_factory(payments=PAID) as relay, httpx.AsyncClient(base_url=http_base(relay)) as web:
        await ledger_of(relay).update_account(pubkey, int(time.time()), credit_delta_msat=21_000)
        url = f"{http_base(relay)}/account/{npub_encode(pubkey)}"
        signed_in = {"Authorization": nip98_header(alice, url)}  # balances only to the owner (NIP-98)
        as_json = (await web.get(url, headers={"Accept": "application/json", **signed_in})).json()
        as_html = await web.get(url, headers={"Accept": "text/html", **signed_in})
        bad = await web.get("/account/nonsense", headers={"Accept": "application/json"})
    assert as_json["pubkey"] == pubkey and as_json["credit_msat"] == 21_000 and as_json["admitted"] is False
    assert "21 sats" in as_html.text and npub_encode(pubkey) in as_html.text
    assert bad.status_code == 400


async def test_invoice_requests_are_validated_and_rate_limited(relay_factory: RelayFactory, alice: bytes) -> None:
    pubkey = crypto.public_key(alice).hex()
    async with (
        relay_factory(payments={**PAID, "invoice_requests_per_minute": 2}) as relay,
        httpx.AsyncClient(base_url=http_base(relay)) as web,
    ):
        bad_key = await web.post("/api/invoice", json={"pubkey": "npub1xyz", "plan": "admission"})
        bad_plan = await web.post("/api/invoice", json={"pubkey": pubkey, "plan": "gold"})
        first = await web.post("/api/invoice", json={"pubkey": pubkey, "plan": "admission"})
        third = await web.post("/api/invoice", json={"pubkey": pubkey, "plan": "admission"})
        metrics = (await web.get(f"http://127.0.0.1:{relay.metrics_port}/metrics")).text
    assert bad_key.status_code == 400 and "pubkey" in bad_key.json()["error"]
    assert bad_plan.status_code == 400 and first.status_code == 200
    assert third.status_code == 429 and third.headers["Retry-After"] == "30"  # one token per 30 s
    assert 'satsrelay_invoices_created_total{plan="admission"} 1.0' in metrics


async def test_simulated_payment_exists_only_with_the_fake_wallet(relay_factory: RelayFactory) -> None:
    real_wallet = {"enabled": True, "backend": "lnbits", "lnbits": {"url": "http://127.0.0.1:9", "invoice_key": "k"}}
    async with relay_factory(payments=real_wallet) as relay, httpx.AsyncClient(base_url=http_base(relay)) as web:
        res = await web.post("/api/fake/pay/" + "0" * 64)
        page = await web.get("/join")
        wallet_down = await web.post("/api/invoice", json={"pubkey": "a" * 64, "plan": "admission"})
    assert res.status_code == 404
    assert "Simulate payment" not in page.text.replace('id="simulate" hidden>Simulate payment', "")
    assert "Demo mode" not in page.text
    assert wallet_down.status_code == 503


async def test_invoice_creation_is_a_post_with_a_json_body(relay_factory: RelayFactory, alice: bytes) -> None:
    """A GET must not create an invoice (link prefetchers and crawlers follow GETs), and a
    cross-site form post (not JSON) is refused; neither stores anything."""
    pubkey = crypto.public_key(alice).hex()
    async with relay_factory(payments=PAID) as relay, httpx.AsyncClient(base_url=http_base(relay)) as web:
        as_get = await web.get("/api/invoice", params={"pubkey": pubkey, "plan": "admission"})
        as_form = await web.post("/api/invoice", data={"pubkey": pubkey, "plan": "admission"})
        not_json = await web.post("/api/invoice", content=b"{", headers={"Content-Type": "application/json"})
        fake_pay_get = await web.get("/api/fake/pay/" + "0" * 64)
        assert await ledger_of(relay).list_invoices(pubkey=pubkey) == []
        created = await web.post("/api/invoice", json={"pubkey": pubkey, "plan": "admission"})
        assert created.status_code == 200
        assert [i.payment_hash for i in await ledger_of(relay).list_invoices(pubkey=pubkey)] == [
            created.json()["payment_hash"]]
    assert as_get.status_code == 405 and as_get.headers["allow"] == "POST"
    assert as_form.status_code == 415
    assert not_json.status_code == 400
    assert fake_pay_get.status_code == 405


async def test_join_page_script_creates_invoices_with_post() -> None:
    from importlib import resources

    script = (resources.files("lightning") / "static" / "join.js").read_text("utf-8")
    create = script[script.index("async function getInvoice"):script.index("async function copyInvoice")]
    assert 'fetch("/api/invoice", {' in create and 'method: "POST"' in create
    assert "/api/invoice?" not in script
