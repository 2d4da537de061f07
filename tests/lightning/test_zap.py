"""Zap the relay to join (issue 10 items 1-3): the relay's own key and profile, LNURL-pay
with NIP-57, receipts, and the unpaid reply.

Zap requests are made, the endpoint found and the receipts checked by nostr-tools' nip57
(an independent implementation, ``tests/lightning/zap_client.py``); the end-to-end flow
pays a real LNbits invoice from a second LNbits wallet.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import stat
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import bolt11
import httpx
import orjson
import pytest

from lightning.plans import Plans
from lightning.settings import PaymentSettings
from lightning.zap import ZapRequestError, parse_zap_request, receipt_event, zap_grant
from lightning.zap_receipts import receipt_problem
from relay.app import build_relay
from relay.config import ConfigError
from relay.nostr import crypto
from relay.nostr.event import parse_event, sign_event
from relay.nostr.policy import WriteContext
from relay.session.server import Relay
from tests import node_tools
from tests.browser import CHROMIUM, CHROMIUM_ARGS
from tests.conftest import RelayFactory, free_port, relay_settings
from tests.lightning import zap_client
from tests.lightning.payment_stack import ledger_of
from tests.lnbits_server import LnbitsServer
from tests.nostr_client import NostrClient
from tests.waiting import eventually

ADMISSION = {"fee_sats": 21}


@pytest.fixture(scope="session")
def nostr_tools() -> None:
    reason = node_tools.ensure_installed()
    if reason is not None:
        pytest.skip(reason)


def http_base(relay: Relay) -> str:
    return f"http://127.0.0.1:{relay.port}"


def fake_payments(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    return {
        "enabled": True,
        "backend": "fake",
        "poll_interval_seconds": 0.2,
        "admission": ADMISSION,
        "zaps": {"publish_to_private_addresses": True},
        **extra,
    }


def note(secret: bytes) -> Any:
    return sign_event(secret, 1, f"zapped in {time.monotonic_ns()}", [], created_at=int(time.time()))


async def nip11(relay: Relay) -> dict[str, Any]:
    async with httpx.AsyncClient() as web:
        reply = await web.get(http_base(relay), headers={"Accept": "application/nostr+json"})
    doc: dict[str, Any] = reply.json()
    return doc


async def profile(relay: Relay, pubkey: str) -> dict[str, Any]:
    async with NostrClient(relay.url) as client:
        events = await client.req("profile", {"kinds": [0], "authors": [pubkey]})
    assert len(events) == 1, events
    return events[0]


async def receipts(relay: Relay, pubkey: str, zapper: str) -> list[dict[str, Any]]:
    async with NostrClient(relay.url) as client:
        return await client.req("receipts", {"kinds": [9735], "authors": [pubkey], "#P": [zapper]})


# --- the relay's own key ---------------------------------------------------------------


async def test_key_generated_on_first_start_with_mode_0600_and_kept(
    relay_factory: RelayFactory, tmp_path: Path
) -> None:
    port = free_port()  # the same address after the restart: the lud16 names it
    same = {"server": {"port": port}, "relay": {"public_url": f"ws://127.0.0.1:{port}"}}
    async with relay_factory(payments=fake_payments(tmp_path), **same) as relay:
        key_file = tmp_path / "relay.key"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        secret = bytes.fromhex(key_file.read_text().strip())
        pubkey = crypto.public_key(secret).hex()
        assert (await nip11(relay))["self"] == pubkey
        first_profile = await profile(relay, pubkey)
        assert json.loads(first_profile["content"])["name"] == relay.settings.relay.name
    async with relay_factory(payments=fake_payments(tmp_path), **same) as relay:  # restart: same key and profile
        assert (await nip11(relay))["self"] == pubkey
        assert (await profile(relay, pubkey))["id"] == first_profile["id"]


async def test_configured_key_wins_and_a_bad_one_is_a_one_line_config_error(
    relay_factory: RelayFactory, tmp_path: Path
) -> None:
    secret = crypto.generate_secret()
    async with relay_factory(relay={"secret_key": secret.hex()}) as relay:
        assert (await nip11(relay))["self"] == crypto.public_key(secret).hex()
    assert not (tmp_path / "relay.key").exists()
    (tmp_path / "bad.key").write_text("not a key\n")
    with pytest.raises(ConfigError, match=r"bad\.key: the relay's secret key must be 64 hex characters"):
        build_relay(relay_settings(tmp_path, relay={"key_file": str(tmp_path / "bad.key")}))  # composition root
    config = tmp_path / "bad.toml"
    config.write_text(f'[relay]\nkey_file = "{tmp_path}/bad.key"\n[storage]\nurl = "sqlite:///{tmp_path}/x.db"\n')
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay.cli", "serve", "--config", str(config), "--port", "0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    assert err.decode().strip().count("\n") == 0 and "Traceback" not in err.decode(), err.decode()


async def test_profile_and_nip11_advertise_the_lightning_address(relay_factory: RelayFactory, tmp_path: Path) -> None:
    async with relay_factory(payments=fake_payments(tmp_path), relay={"icon": "https://example.com/r.png"}) as relay:
        doc = await nip11(relay)
        address = f"relay@127.0.0.1:{relay.port}"
        assert doc["lud16"] == address and 57 in doc["supported_nips"]
        content = json.loads((await profile(relay, doc["self"]))["content"])
        assert content["lud16"] == address and content["picture"] == "https://example.com/r.png"
        async with httpx.AsyncClient(base_url=http_base(relay)) as web:
            pay = (await web.get("/.well-known/lnurlp/relay")).json()
        assert pay["allowsNostr"] is True and pay["nostrPubkey"] == doc["self"] and pay["tag"] == "payRequest"
        assert (pay["minSendable"], pay["maxSendable"]) == (21_000, 1_000_000_000)
        assert pay["callback"] == f"http://127.0.0.1:{relay.port}/lnurlp/relay/callback"


# --- pure rules -------------------------------------------------------------------------


def _request(secret: bytes, tags: list[list[str]]) -> str:
    return orjson.dumps(sign_event(secret, 9734, "", tags, created_at=int(time.time())).to_dict()).decode()


def _with_sig(raw: str, sig: str) -> str:
    return orjson.dumps({**orjson.loads(raw), "sig": sig}).decode()


def test_zap_request_checks_follow_nip57_appendix_d() -> None:
    relay_key, zapper = crypto.generate_secret(), crypto.generate_secret()
    me = crypto.public_key(relay_key).hex()
    good = _request(zapper, [["p", me], ["amount", "21000"], ["relays", "wss://a.example"]])
    assert parse_zap_request(good, relay_pubkey=me, amount_msat=21_000).relays == ("wss://a.example",)
    cases = {
        "exactly one p tag": _request(zapper, [["p", me], ["p", me]]),
        "not this relay's key": _request(zapper, [["p", "ab" * 32]]),
        "amount tag differs": _request(zapper, [["p", me], ["amount", "1"]]),
        "at most one e tag": _request(zapper, [["p", me], ["e", "11" * 32], ["e", "22" * 32]]),
        "P tag must be its author": _request(zapper, [["p", me], ["P", "cd" * 32]]),
        "no tags": _request(zapper, []),
        "kind 9734": orjson.dumps(sign_event(zapper, 1, "", [["p", me]], created_at=1).to_dict()).decode(),
        "signature is invalid": _with_sig(good, orjson.loads(_request(zapper, [["p", me]]))["sig"]),
        "larger than": _request(zapper, [["p", me], ["relays", *(["wss://x.example"] * 300)]]),
    }
    for reason, raw in cases.items():
        with pytest.raises(ZapRequestError, match=reason):
            parse_zap_request(raw, relay_pubkey=me, amount_msat=21_000)


def test_what_a_zap_buys() -> None:
    def plans(**settings: Any) -> Plans:
        return Plans.from_settings(PaymentSettings(enabled=True, **settings))

    admission = plans(admission={"fee_sats": 21})
    assert zap_grant(admission, 50_000).admit_forever and zap_grant(admission, 50_000).credit_msat == 29_000
    assert not zap_grant(admission, 20_000).admit_forever and zap_grant(admission, 20_000).credit_msat == 20_000
    monthly = plans(admission={"enabled": False}, subscription={"enabled": True, "fee_sats": 100, "period_days": 30})
    three = zap_grant(monthly, 350_000)
    assert (three.admit_seconds, three.credit_msat, three.admit_forever) == (90 * 86400, 50_000, False)


def test_receipt_passes_the_relays_own_free_receipt_rules() -> None:
    relay_key, zapper = crypto.generate_secret(), crypto.generate_secret()
    me = crypto.public_key(relay_key).hex()
    raw = _request(zapper, [["p", me], ["amount", "21000"], ["relays", "wss://a.example"]])
    zap = parse_zap_request(raw, relay_pubkey=me, amount_msat=21_000)
    from lightning.backends.fake import make_bolt11

    invoice = make_bolt11("ee" * 32, 21_000, "", int(time.time()), 600, hashed_description=raw)
    receipt = receipt_event(relay_key, zap, invoice, "ff" * 32, int(time.time()))
    assert receipt_problem(receipt, {me}) is None
    assert receipt.tag_values("P") == [crypto.public_key(zapper).hex()]


# --- over HTTP ------------------------------------------------------------------------


async def test_callback_refuses_bad_zaps_with_lnurl_errors(relay_factory: RelayFactory, tmp_path: Path) -> None:
    zapper = crypto.generate_secret()
    async with (
        relay_factory(payments=fake_payments(tmp_path)) as relay,
        httpx.AsyncClient(base_url=http_base(relay)) as web,
    ):
        me = (await nip11(relay))["self"]
        callback = "/lnurlp/relay/callback"

        async def ask(amount: str, request: str | None) -> tuple[int, dict[str, Any]]:
            params = {"amount": amount} | ({"nostr": request} if request is not None else {})
            reply = await web.get(callback, params=params)
            return reply.status_code, reply.json()

        good = _request(zapper, [["p", me], ["amount", "21000"], ["relays", relay.url]])
        assert await ask("21000", None) == (
            400,
            {"status": "ERROR", "reason": "zap from a Nostr client: this address needs a zap request"},
        )
        status, doc = await ask("20000", _request(zapper, [["p", me]]))
        assert status == 400 and "from 21 to 1000000" in doc["reason"]
        status, doc = await ask("22000", good)
        assert status == 400 and doc["reason"] == "zap request's amount tag differs from the amount asked"
        status, doc = await ask("21000", _request(zapper, [["p", crypto.public_key(zapper).hex()]]))
        assert status == 400 and doc["reason"] == "zap request's p tag is not this relay's key"
        assert await ledger_of(relay).list_invoices() == []  # nothing issued for a refused zap
        status, doc = await ask("21000", good)
        assert status == 200 and doc["routes"] == []
        [stored] = await ledger_of(relay).list_invoices()
        assert stored.bolt11 == doc["pr"] and stored.plan == "zap" and stored.description == good


async def test_demo_zap_flow_with_pay_fake(relay_factory: RelayFactory, tmp_path: Path, nostr_tools: None) -> None:
    """``make run``'s demo: zap from a client, settle with ``satsrelay pay-fake``, write."""
    zapper = crypto.generate_secret()
    zapper_pub = crypto.public_key(zapper).hex()
    async with relay_factory(payments=fake_payments(tmp_path)) as relay, NostrClient(relay.url) as client:
        me = (await nip11(relay))["self"]
        ok, message = await client.publish(note(zapper))
        assert not ok and message == (
            f"restricted: writing here needs a payment; zap relay@127.0.0.1:{relay.port} 21 sats"
            f" or pay at http://127.0.0.1:{relay.port}/join?pubkey={zapper_pub}"
        )
        callback = await zap_client.zap_endpoint(await profile(relay, me))
        assert callback == f"http://127.0.0.1:{relay.port}/lnurlp/relay/callback"
        request = await zap_client.zap_request(zapper, me, 21_000, [relay.url])
        async with httpx.AsyncClient() as web:
            answer = (await web.get(callback, params={"amount": "21000", "nostr": request})).json()
        decoded = bolt11.decode(answer["pr"])
        assert decoded.description_hash == hashlib.sha256(request.encode()).hexdigest()
        config = tmp_path / "demo.toml"
        config.write_text(f'[storage]\nurl = "sqlite:///{tmp_path}/relay.db"\n[payments]\nenabled = true\n')
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "relay.cli", "pay-fake", decoded.payment_hash, "--config", str(config),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()

        async def receipt_stored() -> bool:
            return bool(await receipts(relay, me, zapper_pub))

        await eventually(receipt_stored, 15.0, interval=0.02, what="the zap receipt stored")
        [receipt] = await receipts(relay, me, zapper_pub)
        assert await zap_client.receipt_problems(receipt, me, request, 21_000) == []
        ok, message = await client.publish(note(zapper))
        assert ok, message
        # The relay's own receipts pass the free-receipt rules (its key is a trusted zapper);
        # the same receipt signed by anyone else is an unpaid write.
        ext = relay.hooks.owner("payments")
        assert ext is not None
        ctx = WriteContext(now=int(time.time()), authed=frozenset(), ip="127.0.0.1")
        assert await ext.admit(parse_event(receipt), ctx) == ()
        forged = sign_event(crypto.generate_secret(), 9735, "", receipt["tags"], created_at=int(time.time()))
        ok, message = await client.publish(forged)
        assert not ok and message.startswith("restricted: writing here needs a payment"), message


async def test_zap_end_to_end_against_real_lnbits(
    relay_factory: RelayFactory, tmp_path: Path, lnbits: LnbitsServer, nostr_tools: None
) -> None:
    """Zap request (nostr-tools) -> LNURL callback -> description-hash invoice at LNbits ->
    paid from wallet B -> receipt on this relay and on the relay the request names ->
    the zapper's next EVENT accepted. Only the LNbits push can credit in time (polls are
    a minute apart). Five zappers; the p50 from payment to accepted EVENT is reported."""
    payments = {
        "enabled": True,
        "backend": "lnbits",
        "lnbits": {"url": lnbits.url, "invoice_key": lnbits.wallet_a.inkey},
        "poll_interval_seconds": 60.0,
        "invoice_requests_per_minute": 100,
        "max_pending_invoices_per_address": 100,
        "admission": ADMISSION,
        "zaps": {"publish_to_private_addresses": True},
    }
    other = {"storage": {"url": f"sqlite:///{tmp_path}/other.db"}, "relay": {"key_file": str(tmp_path / "other.key")}}
    timings = []
    async with (
        relay_factory(payments=payments) as relay,
        relay_factory(**other) as elsewhere,  # a free relay the zap request also names
        httpx.AsyncClient(timeout=15.0) as web,
    ):
        me = (await nip11(relay))["self"]
        callback = await zap_client.zap_endpoint(await profile(relay, me))
        assert callback is not None
        await _wait_for_push(relay, web, lnbits, me)
        for _ in range(5):
            zapper = crypto.generate_secret()
            zapper_pub = crypto.public_key(zapper).hex()
            request = await zap_client.zap_request(zapper, me, 21_000, [relay.url, elsewhere.url])
            answer = (await web.get(callback, params={"amount": "21000", "nostr": request})).json()
            assert bolt11.decode(answer["pr"]).description_hash == hashlib.sha256(request.encode()).hexdigest()
            async with NostrClient(relay.url) as client:
                start = time.monotonic()
                paid = await asyncio.to_thread(lnbits.pay, answer["pr"])
                assert paid.get("status") == "success", paid
                paid_at = time.monotonic()

                async def accepted(zapper: bytes = zapper) -> bool:
                    ok, _ = await client.publish(note(zapper))
                    return ok

                await eventually(accepted, 15.0, interval=0.02, what="the zapper's note accepted")
                timings.append(time.monotonic() - paid_at)
                assert time.monotonic() - start < 15
            for where in (relay, elsewhere):

                async def receipt_there(where: Relay = where, zapper_pub: str = zapper_pub) -> bool:
                    return bool(await receipts(where, me, zapper_pub))

                await eventually(receipt_there, 15.0, interval=0.02, what="the zap receipt on the relay")
                [receipt] = await receipts(where, me, zapper_pub)
                assert await zap_client.receipt_problems(receipt, me, request, 21_000) == []
                preimage = receipt["tags"][-1]
                assert preimage[0] == "preimage"
                assert (
                    hashlib.sha256(bytes.fromhex(preimage[1])).hexdigest() == bolt11.decode(answer["pr"]).payment_hash
                )
    p50 = statistics.median(timings)
    print(f"zap paid -> EVENT accepted: p50 {p50 * 1000:.0f} ms, max {max(timings) * 1000:.0f} ms over {len(timings)}")
    assert p50 < 1.0, timings


async def _wait_for_push(relay: Relay, web: httpx.AsyncClient, lnbits: LnbitsServer, me: str) -> None:
    """Return once the relay's LNbits push stream is connected: a probe invoice is paid and
    a hint written into wallet A's channel until the relay credits it (polls are 60 s
    apart, so only the listening stream can)."""
    probe = crypto.public_key(crypto.generate_secret()).hex()
    reply = await web.post(f"{http_base(relay)}/api/invoice", json={"pubkey": probe, "plan": "admission"})
    invoice = reply.json()
    await asyncio.to_thread(lnbits.pay, invoice["bolt11"])
    hint = quote(
        orjson.dumps({"payment": {"payment_hash": invoice["payment_hash"], "status": "success", "amount": 1}}).decode(),
        safe="",
    )

    async def credited() -> bool:
        await web.get(f"{lnbits.url}/api/v1/ws/{lnbits.wallet_a.inkey}/{hint}")
        account = await ledger_of(relay).get_account(probe)
        return account is not None and account.admitted(int(time.time()))

    await eventually(credited, 30.0, interval=0.02, what="the zap credited")


async def test_many_processes_starting_at_once_share_one_key(tmp_path: Path) -> None:
    """``--workers``: every process reads the same complete key, whoever created it."""
    from relay.store.identity import load_identity

    key_file = str(tmp_path / "keys" / "relay.key")
    settings = relay_settings(tmp_path, relay={"key_file": key_file})
    script = (
        "from relay.store.identity import load_identity; from relay.config import load_settings;"
        f"print(load_identity(load_settings(None, relay={{'key_file': {key_file!r}}})).pubkey)"
    )
    procs = [
        await asyncio.create_subprocess_exec(sys.executable, "-c", script, stdout=asyncio.subprocess.PIPE)
        for _ in range(6)
    ]
    outputs = {(await proc.communicate())[0].decode().strip() for proc in procs}
    assert outputs == {load_identity(settings).pubkey}
    assert sorted(p.name for p in (tmp_path / "keys").iterdir()) == ["relay.key"]  # no temporary left behind


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium not installed (run `make chromium`)")
async def test_the_unpaid_replys_link_opens_the_join_page_prefilled(
    relay_factory: RelayFactory, tmp_path: Path
) -> None:
    from playwright.async_api import async_playwright

    writer = crypto.generate_secret()
    async with relay_factory(payments=fake_payments(tmp_path)) as relay, NostrClient(relay.url) as client:
        ok, message = await client.publish(note(writer))
        assert not ok
        link = message.rsplit(" or pay at ", 1)[1]
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = await browser.new_page()
                await page.goto(link, wait_until="load")
                assert await page.input_value("#pubkey") == crypto.public_key(writer).hex()
            finally:
                await browser.close()


async def test_receipt_missing_after_a_stop_is_signed_at_the_next_start(
    relay_factory: RelayFactory, tmp_path: Path
) -> None:
    """The relay stopped between crediting a zap and signing its receipt: the next start
    signs it, once."""
    from lightning.store import open_ledger
    from relay.store.sqlite import SqliteStore

    zapper = crypto.generate_secret()
    zapper_pub = crypto.public_key(zapper).hex()
    port = free_port()
    same = {"server": {"port": port}, "relay": {"public_url": f"ws://127.0.0.1:{port}"}}
    async with relay_factory(payments=fake_payments(tmp_path), **same) as relay:
        me = (await nip11(relay))["self"]
        request = _request(zapper, [["p", me], ["amount", "21000"], ["relays", relay.url]])
        async with httpx.AsyncClient(base_url=http_base(relay)) as web:
            answer = (await web.get("/lnurlp/relay/callback", params={"amount": "21000", "nostr": request})).json()
    payment_hash = bolt11.decode(answer["pr"]).payment_hash
    store = SqliteStore(tmp_path / "relay.db")
    await store.open()
    try:  # what a credit just before a crash leaves behind: paid, no receipt
        assert await open_ledger(store).settle_invoice(payment_hash, 21_000, int(time.time()))
    finally:
        await store.close()
    for _ in range(2):
        async with relay_factory(payments=fake_payments(tmp_path), **same) as relay:

            async def receipt_stored() -> bool:
                return bool(await receipts(relay, me, zapper_pub))

            await eventually(receipt_stored, 15.0, interval=0.02, what="the zap receipt stored")
            found = await receipts(relay, me, zapper_pub)
            assert len(found) == 1 and ["bolt11", answer["pr"]] in found[0]["tags"]
            assert receipt_problem(parse_event(found[0]), {me}) is None


async def test_zap_paid_while_the_relay_was_down_is_receipted_at_the_payments_time(
    relay_factory: RelayFactory, tmp_path: Path, lnbits: LnbitsServer
) -> None:
    """NIP-57: the receipt's created_at SHOULD be the invoice's paid_at. A zap invoice is
    paid at LNbits while the relay is stopped; the relay, started seconds later, credits it
    in its start-up reconciliation and dates the receipt when LNbits settled the payment,
    not when it noticed."""
    zapper = crypto.generate_secret()
    zapper_pub = crypto.public_key(zapper).hex()
    port = free_port()
    same = {"server": {"port": port}, "relay": {"public_url": f"ws://127.0.0.1:{port}"}}
    payments = {
        "enabled": True,
        "backend": "lnbits",
        "lnbits": {"url": lnbits.url, "invoice_key": lnbits.wallet_a.inkey},
        "admission": ADMISSION,
    }
    async with relay_factory(payments=payments, **same) as relay, httpx.AsyncClient(base_url=http_base(relay)) as web:
        me = (await nip11(relay))["self"]
        request = _request(zapper, [["p", me], ["amount", "21000"], ["relays", relay.url]])
        answer = (await web.get("/lnurlp/relay/callback", params={"amount": "21000", "nostr": request})).json()
    before = int(time.time())
    paid = await asyncio.to_thread(lnbits.pay, answer["pr"])  # nobody is listening
    assert paid.get("status") == "success", paid
    after = int(time.time())

    async def seconds_later() -> bool:  # the restart must fall in a later second than the payment
        return int(time.time()) >= after + 2

    await eventually(seconds_later)
    restarted = int(time.time())
    async with relay_factory(payments=payments, **same) as relay:

        async def receipt_stored() -> bool:
            return bool(await receipts(relay, me, zapper_pub))

        await eventually(receipt_stored)
        [receipt] = await receipts(relay, me, zapper_pub)
    assert before <= receipt["created_at"] <= after < restarted, (before, receipt["created_at"], after, restarted)
    async with httpx.AsyncClient() as web:  # exactly the time LNbits recorded for the settlement
        details = (
            await web.get(
                f"{lnbits.url}/api/v1/payments/{bolt11.decode(answer['pr']).payment_hash}",
                headers={"X-Api-Key": lnbits.wallet_a.inkey},
            )
        ).json()["details"]
    settled = datetime.fromisoformat(details["updated_at"])
    if settled.tzinfo is None:  # LNbits stores UTC
        settled = settled.replace(tzinfo=UTC)
    assert receipt["created_at"] == int(settled.timestamp())
    assert receipt_problem(parse_event(receipt), {me}) is None


def test_receipts_go_only_to_public_addresses() -> None:
    from lightning.zap import public_address, publish_targets

    assert public_address("wss://8.8.8.8/") == "8.8.8.8"
    for url in ("ws://127.0.0.1:7777", "ws://10.1.2.3", "ws://[::1]:80", "ws://169.254.169.254", "ws://localhost"):
        assert public_address(url) is None, url
    relays = ("wss://a.example", "http://b.example", "ws://self.example/", "wss://c.example", "wss://d.example")
    assert publish_targets(relays, ("ws://self.example",), 2) == ["wss://a.example", "wss://c.example"]


async def test_receipt_is_not_sent_to_a_private_address_by_default(relay_factory: RelayFactory, tmp_path: Path) -> None:
    """A zap request naming a relay on this machine's loopback: stored here, not sent there."""
    zapper = crypto.generate_secret()
    zapper_pub = crypto.public_key(zapper).hex()
    payments = fake_payments(tmp_path, zaps={})  # publish_to_private_addresses stays false
    other = {"storage": {"url": f"sqlite:///{tmp_path}/other.db"}, "relay": {"key_file": str(tmp_path / "other.key")}}
    async with relay_factory(payments=payments) as relay, relay_factory(**other) as elsewhere:
        me = (await nip11(relay))["self"]
        request = _request(zapper, [["p", me], ["amount", "21000"], ["relays", elsewhere.url]])
        async with httpx.AsyncClient(base_url=http_base(relay)) as web:
            answer = (await web.get("/lnurlp/relay/callback", params={"amount": "21000", "nostr": request})).json()
            payment_hash = bolt11.decode(answer["pr"]).payment_hash
            paid = await web.post(f"/api/fake/pay/{payment_hash}")  # the demo page's "simulate payment"
            assert paid.status_code == 200, paid.text

        async def receipt_here() -> bool:
            return bool(await receipts(relay, me, zapper_pub))

        await eventually(receipt_here, 15.0, interval=0.02, what="the zap receipt here")
        await asyncio.sleep(0.5)  # time enough for a delivery that should not happen
        assert await receipts(elsewhere, me, zapper_pub) == []
