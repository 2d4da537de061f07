"""The paid flow end to end against a real LNbits 1.6.2 (FakeWallet): a real relay, real
WebSockets, real HTTP, and a real internal Lightning payment from LNbits wallet B to the
relay's wallet A.

What each test proves, and how it rules out the other paths to a credit:
- push: poll interval 60 s and the status route never asked, so only the websocket push
  can credit within the test's seconds;
- polling: push off (the stream is never opened) and the status route never asked;
- status route: push off, poll 60 s: only the lookup the status request triggers credits;
- restart: the relay is SIGKILLed, the invoice paid while it is down (the push is lost),
  and the first thing asked after the restart is the account, not the invoice status;
- outage: LNbits is frozen with SIGSTOP (a restart would lose FakeWallet's in-memory
  invoices); the relay keeps serving and the watcher reports and retries.

Accounts are read through ``/account/<pubkey>``, which never calls the wallet.
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import pytest

from lightning.extension import PaymentsExtension
from relay.nostr import crypto
from relay.nostr.event import Event, sign_event
from relay.session.server import Relay
from tests.conftest import RelayFactory, RelayProcess
from tests.lightning.payment_stack import nip98_header
from tests.lnbits_server import LnbitsServer
from tests.nostr_client import NostrClient
from tests.waiting import eventually

POLL_NEVER = 60.0  # "one poll interval": far longer than any wait below


def payments(lnbits: LnbitsServer, **overrides: Any) -> dict[str, Any]:
    return {
        "enabled": True,
        "backend": "lnbits",
        "lnbits": {"url": lnbits.url, "invoice_key": lnbits.wallet_a.inkey},
        "invoice_requests_per_minute": 100,
        "max_pending_invoices_per_address": 100,
        **overrides,
    }


def note(secret: bytes) -> Event:
    return sign_event(secret, 1, f"paid note {time.monotonic_ns()}", [], created_at=int(time.time()))


def extension(relay: Relay) -> PaymentsExtension:
    ext = relay.hooks.owner("payments")
    assert isinstance(ext, PaymentsExtension)
    return ext


async def account(web: httpx.AsyncClient, pubkey: str) -> dict[str, Any]:
    reply = await web.get(f"/account/{pubkey}", headers={"Accept": "application/json"})
    assert reply.status_code == 200, reply.text
    doc: dict[str, Any] = reply.json()
    return doc


def admitted(web: httpx.AsyncClient, pubkey: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return bool((await account(web, pubkey))["admitted_until"] == "forever")

    return check


async def issue(web: httpx.AsyncClient, pubkey: str, plan: str = "admission", **params: str) -> dict[str, Any]:
    reply = await web.post("/api/invoice", json={"pubkey": pubkey, "plan": plan, **params})
    assert reply.status_code == 200, reply.text
    invoice: dict[str, Any] = reply.json()
    return invoice


async def lnbits_status(lnbits: LnbitsServer, payment_hash: str) -> dict[str, Any]:
    """What LNbits itself says about an invoice of wallet A."""
    async with httpx.AsyncClient(timeout=10.0) as http:
        reply = await http.get(
            f"{lnbits.url}/api/v1/payments/{payment_hash}", headers={"X-Api-Key": lnbits.wallet_a.inkey}
        )
    reply.raise_for_status()
    doc: dict[str, Any] = reply.json()
    return doc


async def wait_for_push_stream(web: httpx.AsyncClient, lnbits: LnbitsServer) -> None:
    """Return once the relay's push listener is connected to LNbits.

    The listener connects in the background after start-up; paying before it is up would
    make the push test measure a lost race instead of the push. A probe invoice is paid,
    then a hint for it is written into wallet A's channel (anyone can, see the LNbits
    note) until the relay credits the probe: with polls 60 s apart, only a listening
    push stream can have done that.
    """
    probe = crypto.public_key(crypto.generate_secret()).hex()
    invoice = await issue(web, probe)
    await asyncio.to_thread(lnbits.pay, invoice["bolt11"])
    hint = quote(
        orjson.dumps({"payment": {"payment_hash": invoice["payment_hash"], "status": "success", "amount": 1}}).decode(),
        safe="",
    )
    deadline = time.monotonic() + 30
    async with httpx.AsyncClient(timeout=10.0) as http:
        while not await admitted(web, probe)():
            assert time.monotonic() < deadline, "the relay's push stream never came up"
            (await http.get(f"{lnbits.url}/api/v1/ws/{lnbits.wallet_a.inkey}/{hint}")).raise_for_status()
            await asyncio.sleep(0.2)


async def test_unpaid_event_then_lnbits_payment_admits_via_push(
    lnbits: LnbitsServer, relay_factory: RelayFactory, alice: bytes
) -> None:
    pubkey = crypto.public_key(alice).hex()
    async with (
        relay_factory(payments=payments(lnbits, poll_interval_seconds=POLL_NEVER)) as relay,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{relay.port}", timeout=15.0) as web,
        NostrClient(relay.url) as client,
    ):
        await wait_for_push_stream(web, lnbits)
        event = note(alice)
        ok, message = await client.publish(event)
        assert not ok
        assert message.startswith("restricted: ")
        assert message.endswith(f" or pay at http://127.0.0.1:{relay.port}/join?pubkey={pubkey}")

        invoice = await issue(web, pubkey)
        assert invoice["amount_msat"] == 1_000_000 and invoice["bolt11"].startswith("lnbc10u")
        at_lnbits = await lnbits_status(lnbits, invoice["payment_hash"])
        assert at_lnbits["paid"] is False and at_lnbits["details"]["amount"] == 1_000_000
        assert (await account(web, pubkey))["admitted"] is False

        paid = await asyncio.to_thread(lnbits.pay, invoice["bolt11"])
        assert paid["payment_hash"] == invoice["payment_hash"]
        took = await eventually(admitted(web, pubkey), timeout=15.0)
        assert took < POLL_NEVER / 4, took
        print(f"\nLNbits push: pay returned -> admitted in {took * 1000:.0f} ms")

        ok, message = await client.publish(event)  # the very EVENT refused before
        assert ok, message
        assert (await client.req("mine", {"ids": [event.id]}))[0]["id"] == event.id
        status = (await web.get(f"/api/invoice/{invoice['payment_hash']}")).json()
        assert status["state"] == "paid" and status["account"]["admitted"] is True


async def test_push_disabled_lnbits_payment_is_credited_by_polling(
    lnbits: LnbitsServer, relay_factory: RelayFactory, alice: bytes
) -> None:
    pubkey = crypto.public_key(alice).hex()
    settings = payments(lnbits, push=False, poll_interval_seconds=0.5)
    async with (
        relay_factory(payments=settings) as relay,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{relay.port}", timeout=15.0) as web,
        NostrClient(relay.url) as client,
    ):
        event = note(alice)
        ok, message = await client.publish(event)
        assert not ok and message.startswith("restricted: ")
        invoice = await issue(web, pubkey)
        await asyncio.sleep(1.2)  # two poll rounds see it pending: polling runs, and credits nothing unpaid
        assert (await account(web, pubkey))["admitted"] is False

        await asyncio.to_thread(lnbits.pay, invoice["bolt11"])
        took = await eventually(admitted(web, pubkey), timeout=15.0)
        print(f"\nLNbits polling (0.5 s interval): pay returned -> admitted in {took * 1000:.0f} ms")
        assert extension(relay).watcher.stream_connects == 0  # the push stream was never opened

        ok, message = await client.publish(event)
        assert ok, message


async def test_status_route_credits_within_seconds_without_push_or_poll(
    lnbits: LnbitsServer, relay_factory: RelayFactory, alice: bytes
) -> None:
    pubkey = crypto.public_key(alice).hex()
    settings = payments(lnbits, push=False, poll_interval_seconds=POLL_NEVER)
    async with (
        relay_factory(payments=settings) as relay,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{relay.port}", timeout=15.0) as web,
        NostrClient(relay.url) as client,
    ):
        invoice = await issue(web, pubkey)
        path = f"/api/invoice/{invoice['payment_hash']}"
        assert (await web.get(path)).json()["state"] == "pending"  # the page's first poll: asked the wallet

        await asyncio.to_thread(lnbits.pay, invoice["bolt11"])

        async def page_sees_paid() -> bool:  # what join.js does every 1.5 s
            return bool((await web.get(path)).json()["paid"])

        took = await eventually(page_sees_paid, timeout=15.0, interval=0.5)
        print(f"\nLNbits status route (page polling every 0.5 s): pay returned -> paid in {took * 1000:.0f} ms")
        assert took < POLL_NEVER / 4, took
        assert (await account(web, pubkey))["admitted_until"] == "forever"
        ok, message = await client.publish(note(alice))  # the gate's cache was refreshed too
        assert ok, message


CREDIT_TOML = """
[payments]
enabled = true
backend = "lnbits"
poll_interval_seconds = {poll}
invoice_requests_per_minute = 100
max_pending_invoices_per_address = 100
[payments.lnbits]
url = "{url}"
invoice_key = "{key}"
[payments.admission]
enabled = false
[payments.credit]
enabled = true
"""


def satsrelay_json(config: Path, *args: str) -> Any:
    out = subprocess.run(
        [sys.executable, "-m", "relay.cli", *args, "--json", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_invoice_paid_while_relay_is_killed_is_credited_once_after_restart(
    lnbits: LnbitsServer, relay_process: Callable[..., RelayProcess]
) -> None:
    relay = relay_process(CREDIT_TOML.format(poll=POLL_NEVER, url=lnbits.url, key=lnbits.wallet_a.inkey))
    base = f"http://127.0.0.1:{relay.port}"
    secret = crypto.generate_secret()
    pubkey = crypto.public_key(secret).hex()
    reply = httpx.post(f"{base}/api/invoice", json={"pubkey": pubkey, "plan": "credit", "amount": "321"})
    assert reply.status_code == 200, reply.text
    invoice = reply.json()
    pending = satsrelay_json(relay.config, "invoices", "list", "--pending")
    assert [i["payment_hash"] for i in pending] == [invoice["payment_hash"]]

    relay.kill()  # SIGKILL, with the push stream open: the push for this payment goes nowhere
    assert lnbits.pay(invoice["bolt11"])["payment_hash"] == invoice["payment_hash"]

    paid_at = None
    for _ in range(2):  # the second restart must not credit it again
        relay.start()  # returns once the port is open; start-up reconciliation ran before that
        url = f"{base}/account/{pubkey}"  # the balance is shown to its owner only (NIP-98)
        doc = httpx.get(url, headers={"Accept": "application/json", "Authorization": nip98_header(secret, url)}).json()
        assert doc["credit_msat"] == 321_000
        listed = satsrelay_json(relay.config, "invoices", "list")
        assert len(listed) == 1 and listed[0]["state"] == "paid"
        paid_at = paid_at or listed[0]["paid_at"]
        assert listed[0]["paid_at"] == paid_at  # settled once, not re-stamped by the second start
        shown = satsrelay_json(relay.config, "accounts", "show", pubkey)
        assert shown["credit_msat"] == 321_000
        assert satsrelay_json(relay.config, "invoices", "list", "--pending") == []
        relay.kill()


@pytest.fixture
def frozen_lnbits(lnbits: LnbitsServer) -> Iterator[Callable[[], None]]:
    """``freeze()`` SIGSTOPs the session's LNbits; it is always SIGCONTed afterwards, even
    when the test fails, or every later LNbits test would hang."""
    frozen = False

    def freeze() -> None:
        nonlocal frozen
        frozen = True
        lnbits.suspend()

    try:
        yield freeze
    finally:
        if frozen:
            lnbits.resume()


async def test_lnbits_outage_relay_keeps_serving_watcher_retries_then_credits(
    lnbits: LnbitsServer,
    frozen_lnbits: Callable[[], None],
    relay_factory: RelayFactory,
    alice: bytes,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="lightning")
    pubkey = crypto.public_key(alice).hex()
    async with (
        relay_factory(payments=payments(lnbits, poll_interval_seconds=1.0)) as relay,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{relay.port}", timeout=15.0) as web,
        NostrClient(relay.url) as client,
    ):
        invoice = await issue(web, pubkey)
        frozen_lnbits()
        try:
            # The relay answers as usual while its wallet hangs (it does not even refuse).
            start = time.monotonic()
            ok, message = await client.publish(note(alice))
            assert not ok and message.startswith("restricted: ")
            assert await client.req("r", {"kinds": [1], "limit": 5}) == []
            info = await web.get("/", headers={"Accept": "application/nostr+json"})
            assert info.json()["limitation"]["payment_required"] is True
            assert (await web.get("/join")).status_code == 200
            assert time.monotonic() - start < 2.0  # none of it waited on the wallet
            start = time.monotonic()
            status = await web.get(f"/api/invoice/{invoice['payment_hash']}")
            assert status.json()["state"] == "pending"
            assert time.monotonic() - start < 5.0  # bounded wait for its wallet lookup, not the 10 s timeout

            def failed_poll_logged() -> bool:
                return any("polling pending invoices failed" in r.getMessage() for r in caplog.records)

            async def failed() -> bool:
                return failed_poll_logged()

            # The wallet HTTP timeout is 10 s; the first failed poll is reported once.
            await eventually(failed, timeout=30.0, interval=0.2)
            assert (await account(web, pubkey))["admitted"] is False
        finally:
            lnbits.resume()

        async def recovered() -> bool:
            return any("wallet reachable again" in r.getMessage() for r in caplog.records)

        await eventually(recovered, timeout=20.0, interval=0.2)  # the poll loop kept trying
        await asyncio.to_thread(lnbits.pay, invoice["bolt11"])
        took = await eventually(admitted(web, pubkey), timeout=15.0)
        print(f"\nafter the LNbits outage: pay returned -> admitted in {took * 1000:.0f} ms")
        ok, message = await client.publish(note(alice))
        assert ok, message
    assert not any(lnbits.wallet_a.inkey in r.getMessage() for r in caplog.records)  # the key is never logged
