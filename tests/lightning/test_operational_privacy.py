"""Operational data is not public (issue 8, item 8), over real HTTP.

- ``/metrics`` (revenue, invoices, rejections) is served on a separate loopback listener,
  or on the public port only to a bearer token;
- ``/account/<pubkey>`` shows anyone whether a pubkey may write and until when; balances
  and flags only to the owner, proven by a NIP-98 signed request.
"""

from __future__ import annotations

import time
from typing import Any

import httpx

from relay.config import ServerSettings
from relay.nostr import crypto, nip98
from relay.nostr.event import sign_event
from relay.session.server import Relay
from tests.conftest import RelayFactory, free_port
from tests.lightning.payment_stack import ledger_of, nip98_header

PAID: dict[str, Any] = {"enabled": True, "backend": "fake", "account_cache_seconds": 0}
PRIVATE_FIELDS = {"credit_msat", "banned", "allowed"}


def base(relay: Relay) -> str:
    return f"http://127.0.0.1:{relay.port}"


async def test_metrics_are_not_on_the_public_port_by_default(relay_factory: RelayFactory) -> None:
    port = free_port()
    server = {"metrics_listen": f"127.0.0.1:{port}"}
    async with relay_factory(payments=PAID, server=server) as relay, httpx.AsyncClient() as web:
        public = await web.get(f"{base(relay)}/metrics")
        assert public.status_code == 404
        assert b"satsrelay_" not in public.content
        private = await web.get(f"http://127.0.0.1:{port}/metrics")
        assert private.status_code == 200
        assert "satsrelay_invoices_created_total" in private.text
        assert (await web.get(f"http://127.0.0.1:{port}/account/{'a' * 64}")).status_code == 404


def test_default_metrics_listener_is_loopback() -> None:
    assert ServerSettings().metrics_address() == ("127.0.0.1", 9477)
    assert ServerSettings(metrics_listen="[::1]:9100").metrics_address() == ("::1", 9100)
    assert ServerSettings(metrics_listen="").metrics_address() is None
    assert ServerSettings().metrics_token is None


async def test_metrics_on_the_public_port_need_the_bearer_token(relay_factory: RelayFactory) -> None:
    server = {"metrics_listen": "", "metrics_token": "s3cret-token"}
    async with relay_factory(payments=PAID, server=server) as relay, httpx.AsyncClient() as web:
        url = f"{base(relay)}/metrics"
        assert (await web.get(url)).status_code == 401
        assert (await web.get(url, headers={"Authorization": "Bearer wrong"})).status_code == 401
        ok = await web.get(url, headers={"Authorization": "Bearer s3cret-token"})
        assert ok.status_code == 200 and "satsrelay_sats_received_total" in ok.text


async def test_public_account_view_shows_only_whether_a_pubkey_may_write(
    relay_factory: RelayFactory, alice: bytes
) -> None:
    pubkey = crypto.public_key(alice).hex()
    credit = {"enabled": True}
    async with relay_factory(payments={**PAID, "credit": credit}) as relay, httpx.AsyncClient() as web:
        await ledger_of(relay).update_account(pubkey, int(time.time()), credit_delta_msat=21_000)
        url = f"{base(relay)}/account/{pubkey}"
        public = (await web.get(url, headers={"Accept": "application/json"})).json()
        assert public["may_write"] is True and public["pubkey"] == pubkey
        assert not PRIVATE_FIELDS & public.keys(), public
        page = await web.get(url, headers={"Accept": "text/html"})
        assert page.status_code == 200 and "21 sats" not in page.text and "21,000" not in page.text
        stranger = (await web.get(f"{base(relay)}/account/{'b' * 64}", headers={"Accept": "application/json"})).json()
        assert stranger["may_write"] is False and not PRIVATE_FIELDS & stranger.keys()


async def test_owner_sees_the_balance_with_a_nip98_signed_request(
    relay_factory: RelayFactory, alice: bytes, bob: bytes
) -> None:
    pubkey = crypto.public_key(alice).hex()
    async with relay_factory(payments={**PAID, "credit": {"enabled": True}}) as relay, httpx.AsyncClient() as web:
        await ledger_of(relay).update_account(pubkey, int(time.time()), credit_delta_msat=21_000)
        url = f"{base(relay)}/account/{pubkey}"
        json_accept = {"Accept": "application/json"}
        own = await web.get(url, headers={**json_accept, "Authorization": nip98_header(alice, url)})
        assert own.status_code == 200 and own.json()["credit_msat"] == 21_000
        page = await web.get(url, headers={"Accept": "text/html", "Authorization": nip98_header(alice, url)})
        assert "21 sats" in page.text
        # someone else's valid signature, a stale one, one for another URL or method: refused
        refused = {
            "other key": (nip98_header(bob, url), 403),
            "stale": (nip98_header(alice, url, created_at=int(time.time()) - 600), 401),
            "other url": (nip98_header(alice, url + "?x=1"), 401),
            "other method": (nip98_header(alice, url, method="POST"), 401),
            "garbage": ("Nostr not-base64!", 401),
        }
        for why, (header, status) in refused.items():
            res = await web.get(url, headers={**json_accept, "Authorization": header})
            assert res.status_code == status, why
            assert "credit_msat" not in res.text, why


async def test_invoice_status_does_not_reveal_the_balance(relay_factory: RelayFactory, alice: bytes) -> None:
    pubkey = crypto.public_key(alice).hex()
    async with relay_factory(payments={**PAID, "credit": {"enabled": True}}) as relay, httpx.AsyncClient() as web:
        await ledger_of(relay).update_account(pubkey, int(time.time()), credit_delta_msat=77_000)
        # anyone may ask for an invoice in someone else's name and poll its status
        invoice = (await web.post(f"{base(relay)}/api/invoice", json={"pubkey": pubkey, "plan": "admission"})).json()
        status = (await web.get(f"{base(relay)}/api/invoice/{invoice['payment_hash']}")).json()
        assert status["account"]["may_write"] is True
        assert not PRIVATE_FIELDS & status["account"].keys()


def test_nip98_verify_follows_the_nip_checks(alice: bytes) -> None:
    url, now = "https://relay.example.com/account/x?y=1", 1_700_000_000

    def event(**change: Any) -> Any:
        fields: dict[str, Any] = {"kind": 27235, "created_at": now, "tags": [["u", url], ["method", "GET"]]}
        fields.update(change)
        return sign_event(alice, fields["kind"], "", fields["tags"], created_at=fields["created_at"])

    assert nip98.verify(event(), url=url, method="get", now=now + 60) is None
    assert nip98.verify(event(kind=1), url=url, method="GET", now=now) is not None
    assert nip98.verify(event(), url=url, method="GET", now=now + 61) is not None
    assert nip98.verify(event(), url=url, method="GET", now=now - 61) is not None
    assert nip98.verify(event(), url=url.split("?")[0], method="GET", now=now) is not None
    assert nip98.verify(event(), url=url, method="POST", now=now) is not None
    body = "ab" * 32
    with_payload = event(tags=[["u", url], ["method", "POST"], ["payload", body]])
    assert nip98.verify(with_payload, url=url, method="POST", now=now, body_sha256=body) is None
    assert nip98.verify(with_payload, url=url, method="POST", now=now, body_sha256="cd" * 32) is not None
    assert nip98.verify(event(tags=[["u", url], ["method", "POST"]]), url=url, method="POST", now=now,
                        body_sha256=body) is not None
    forged = event()
    tampered = type(forged)(forged.id, forged.pubkey, forged.created_at, forged.kind, forged.tags, forged.content,
                            "00" * 64, forged.raw)
    assert nip98.verify(tampered, url=url, method="GET", now=now) == "signature is invalid"
