"""Renewal by Nostr Wallet Connect against a small NIP-47 wallet service that talks over a
real relay connection (a second satsrelay, as a member's wallet relay would be), with the
relay restarted between "the wallet paid" and "the renewal was recorded": the period is
paid once and credited once."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

from lightning.backends.fake import mark_paid
from lightning.ledger import decode_bolt11
from lightning.renewal import UriSeal
from lightning.store.base import InvoiceState
from relay.nostr import crypto
from relay.store.identity import RelayIdentity
from tests.conftest import RelayFactory
from tests.lightning.payment_stack import ledger_of
from tests.lightning.test_backend_nwc import FakeWalletService
from tests.lightning.test_cli import satsrelay
from tests.nostr_client import NostrClient, signed

DAY = 86400
PERIOD_DAYS = 30


def settings(poll: float = 3600.0) -> dict[str, Any]:
    return {
        "enabled": True,
        "backend": "fake",
        "account_cache_seconds": 0,
        "push": False,
        "poll_interval_seconds": poll,  # the watcher stays out of it: the renewal records its own result
        "subscription": {"enabled": True, "fee_sats": 500, "period_days": PERIOD_DAYS},
        "renewal": {
            "days_before": 3,
            "check_interval_seconds": 0.2,
            "retry_seconds": 0.5,
            "allow_private_relays": True,  # the wallet's relay is on 127.0.0.1 here
        },
    }


class PayingWallet(FakeWalletService):
    """Answers ``pay_invoice`` by paying the relay's (fake-wallet) invoice; ``hold`` keeps
    the answer back, as a slow wallet or a lost reply would."""

    def __init__(self, relay_url: str, state_file: Path) -> None:
        super().__init__(relay_url, "nip44_v2")
        self.state_file = state_file
        self.paid: list[str] = []
        self.refused: list[str] = []
        self.hold = asyncio.Event()
        self.hold.set()

    async def _serve(self, ws: Any) -> None:
        # pay_invoice may wait (hold): answer each request in its own task.
        tasks: set[asyncio.Task[None]] = set()
        async for raw in ws:
            task = asyncio.create_task(self._serve_one(raw))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    async def _serve_one(self, raw: Any) -> None:
        import orjson

        from relay.nostr.event import parse_event

        message = orjson.loads(raw)
        if message[0] != "EVENT":
            return
        request = parse_event(message[2])
        body = orjson.loads(self._decrypt(request.content, "nip44_v2"))
        self.seen.append((body["method"], "nip44_v2"))
        if body["method"] == "pay_invoice":
            payment_hash, _ = decode_bolt11(body["params"]["invoice"])
            if mark_paid(self.state_file, payment_hash):
                self.paid.append(payment_hash)
                await self.hold.wait()
                answer = {"result_type": "pay_invoice", "error": None, "result": {"preimage": "11" * 32}}
            else:  # Lightning pays an invoice once: the second try fails at the payee
                self.refused.append(payment_hash)
                answer = {"result_type": "pay_invoice", "error": {"code": "PAYMENT_FAILED", "message": "paid already"}}
        else:
            answer = self._answer(body)
        await self._send(23195, answer, "nip44_v2", [["e", request.id]])


def pk(secret: bytes) -> str:
    return crypto.public_key(secret).hex()


async def until(condition: Any, seconds: float = 15.0) -> None:
    for _ in range(int(seconds / 0.1)):
        if await condition():
            return
        await asyncio.sleep(0.1)
    raise AssertionError("condition never held")


async def connect_wallet(tmp_path: Path, pubkey: str, uri: str, budget: int) -> None:
    config = tmp_path / "cli.toml"
    config.write_text(f'[storage]\nurl = "sqlite:///{tmp_path}/relay.db"\n[payments]\nenabled = true\n')
    code, _, err = await satsrelay(config, "renewal", "connect", pubkey, "--uri", uri, "--budget-sats", str(budget))
    assert code == 0, err


async def test_renewal_paid_once_across_a_restart_between_paid_and_recorded(
    relay_factory: RelayFactory, tmp_path: Path, alice: bytes
) -> None:
    wallet_relay_dir = tmp_path / "wallet-relay"
    wallet_relay_dir.mkdir()
    now = int(time.time())
    end = now + 2 * DAY  # within days_before
    async with relay_factory(storage={"url": f"sqlite:///{wallet_relay_dir}/relay.db"}) as wallet_relay:
        wallet = PayingWallet(wallet_relay.url, tmp_path / "fake-wallet.db")
        await wallet.start()
        try:
            wallet.hold.clear()  # the wallet pays, but its answer waits
            async with relay_factory(payments=settings()) as relay:
                await ledger_of(relay).update_account(pk(alice), now, admitted_until=end)
                await connect_wallet(tmp_path, pk(alice), wallet.uri(), budget=1000)
                (link,) = await ledger_of(relay).nwc_links()
                assert wallet.uri().split("secret=")[1] not in link.sealed_uri  # sealed at rest
                assert UriSeal(relay.identity).open(link.sealed_uri, pk(alice)) == wallet.uri()

                async def paid_by_wallet() -> bool:
                    return len(wallet.paid) == 1

                await until(paid_by_wallet)
                attempt = await ledger_of(relay).get_renewal(pk(alice), end)
                assert attempt is not None and attempt.state == "paying"  # paid, not yet recorded
                account = await ledger_of(relay).get_account(pk(alice))
                assert account is not None and account.admitted_until == end
            # the relay stopped between the payment and its record; the late answer finds nobody
            wallet.hold.set()

            async with relay_factory(payments=settings()) as relay:

                async def recorded() -> bool:
                    attempt = await ledger_of(relay).get_renewal(pk(alice), end)
                    return attempt is not None and attempt.state == "paid"

                await until(recorded)
                account = await ledger_of(relay).get_account(pk(alice))
                assert account is not None and account.admitted_until == end + PERIOD_DAYS * DAY  # one period
                await asyncio.sleep(1.0)  # more rounds: nothing else is paid or asked
                assert len(wallet.paid) == 1 and wallet.refused == []
                assert [m for m, _ in wallet.seen].count("pay_invoice") == 1
                invoices = await ledger_of(relay).list_invoices(pubkey=pk(alice))
                assert [i.state for i in invoices] == [InvoiceState.PAID]
                (attempt,) = await ledger_of(relay).list_renewals(pk(alice))
                assert attempt.period_end == end and attempt.payment_hash == invoices[0].payment_hash
                # leaving forgets the wallet connection
                async with NostrClient(relay.url) as client:
                    await client.auth(alice, relay.settings.relay.public_url)
                    ok, message = await client.publish(signed(alice, 28936, "", [["-"]]))
                    assert ok, message
                assert await ledger_of(relay).nwc_links() == []
        finally:
            await wallet.stop()


async def test_over_budget_is_recorded_not_paid_and_the_secret_needs_the_relay_key(
    relay_factory: RelayFactory, tmp_path: Path, alice: bytes
) -> None:
    wallet_relay_dir = tmp_path / "wallet-relay"
    wallet_relay_dir.mkdir()
    now = int(time.time())
    async with relay_factory(storage={"url": f"sqlite:///{wallet_relay_dir}/relay.db"}) as wallet_relay:
        wallet = PayingWallet(wallet_relay.url, tmp_path / "fake-wallet.db")
        await wallet.start()
        try:
            async with relay_factory(payments=settings()) as relay:
                await ledger_of(relay).update_account(pk(alice), now, admitted_until=now + DAY)
                await connect_wallet(tmp_path, pk(alice), wallet.uri(), budget=100)  # the period costs 500

                async def failed() -> bool:
                    attempt = await ledger_of(relay).get_renewal(pk(alice), now + DAY)
                    return attempt is not None and attempt.state == "failed"

                await until(failed)
                assert wallet.paid == [] and "budget" in (await ledger_of(relay).list_renewals(pk(alice)))[0].detail
                (link,) = await ledger_of(relay).nwc_links()
                other = RelayIdentity.from_secret(crypto.generate_secret())
                try:
                    UriSeal(other).open(link.sealed_uri, pk(alice))
                except ValueError:
                    pass
                else:
                    raise AssertionError("another relay key opened the sealed URI")
                config = tmp_path / "cli.toml"
                code, _, _ = await satsrelay(config, "renewal", "forget", pk(alice))
                assert code == 0 and await ledger_of(relay).nwc_links() == []
        finally:
            await wallet.stop()


async def test_wallet_relay_on_a_private_address_is_never_dialled(
    relay_factory: RelayFactory, tmp_path: Path, alice: bytes, bob: bytes
) -> None:
    """The member names the relay the renewal dials: not one on the relay's own network
    (SSRF) unless the operator allows it. And only an account's owner, with an account, may
    hand over a connection (NIP-98)."""
    from lightning import nip44
    from tests.lightning.payment_stack import nip98_header

    wallet_relay_dir = tmp_path / "wallet-relay"
    wallet_relay_dir.mkdir()
    now = int(time.time())
    strict = settings()
    strict["renewal"] = {**strict["renewal"], "allow_private_relays": False}
    async with relay_factory(storage={"url": f"sqlite:///{wallet_relay_dir}/relay.db"}) as wallet_relay:
        wallet = PayingWallet(wallet_relay.url, tmp_path / "fake-wallet.db")
        await wallet.start()
        try:
            async with relay_factory(payments=strict) as relay, httpx.AsyncClient() as http:
                url = f"http://127.0.0.1:{relay.port}/account/{pk(alice)}/wallet"
                key = nip44.conversation_key(alice, bytes.fromhex(relay.identity.pubkey))
                body = {"connect": nip44.encrypt(wallet.uri(), key), "budget_sats": 1000}

                async def post(signer: bytes | None, signed_body: bytes | None = None) -> httpx.Response:
                    raw = orjson.dumps(body)
                    headers = {"Content-Type": "application/json"}
                    if signer is not None:
                        headers["Authorization"] = nip98_header(signer, url, "POST", body=signed_body or raw)
                    return await http.post(url, content=raw, headers=headers)

                assert (await post(None)).status_code == 401
                assert (await post(bob)).status_code == 403
                # the signature names its body (NIP-98 payload): it cannot carry another one
                assert (await post(alice, signed_body=b'{"forget":true}')).status_code == 401
                get_signed = await http.get(url, headers={"Authorization": nip98_header(alice, url, "POST")})
                assert get_signed.status_code == 401  # signed for POST, not for this GET
                no_account = await post(alice)
                assert no_account.status_code == 403 and "pay first" in no_account.json()["error"]
                await ledger_of(relay).update_account(pk(alice), now, admitted_until=now + DAY)
                answer = await post(alice)
                assert answer.status_code == 200 and answer.json()["connected"] is True

                async def refused() -> bool:
                    attempt = await ledger_of(relay).get_renewal(pk(alice), now + DAY)
                    return attempt is not None and "public address" in attempt.detail

                await until(refused)
                assert wallet.paid == [] and wallet.seen == []
        finally:
            await wallet.stop()
