"""Reminders in Nostr: NIP-17 gift-wrapped DMs from the relay's key, opened by an
independent implementation (nostr-tools' nip44/nip17 in Node), sent only to members who
opted in, each once across a restart."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from lightning.reminders import Reminders
from lightning.store.base import FOREVER
from relay.nostr import crypto
from relay.session.server import Relay
from tests import node_tools
from tests.conftest import RelayFactory
from tests.lightning.payment_stack import ledger_of, nip98_header
from tests.nostr_client import NostrClient, signed
from tests.waiting import eventually

REMIND: dict[str, Any] = {"check_interval_seconds": 0.2}
PAID: dict[str, Any] = {
    "enabled": True,
    "backend": "fake",
    "account_cache_seconds": 0,
    "subscription": {"enabled": True, "fee_sats": 500},
    "credit": {"enabled": True},
    "reminders": REMIND,
}


@pytest.fixture(scope="module")
def nostr_tools() -> None:
    why = node_tools.ensure_installed()
    if why is not None:
        pytest.skip(why)


def pk(secret: bytes) -> str:
    return crypto.public_key(secret).hex()


async def open_wrap(wrap: dict[str, Any], secret: bytes) -> dict[str, Any]:
    """nostr-tools opens the gift wrap; every layer must check out."""
    command = {"wrap": wrap, "secret": secret.hex(), "recipient": pk(secret)}
    answer = await node_tools.run_script("giftwrap.mjs", command)
    assert answer["problems"] == [], answer["problems"]
    rumor: dict[str, Any] = answer["rumor"]
    return rumor


def reminders_of(relay: Relay) -> Reminders:
    reminders = relay.hooks.owner("payments").reminders  # type: ignore[attr-defined]
    assert isinstance(reminders, Reminders)
    return reminders


async def wraps_for(relay: Relay, secret: bytes, sub: str = "dm") -> list[dict[str, Any]]:
    """Gift wraps addressed to ``secret``'s key, read as its owner (NIP-42: only they may)."""
    async with NostrClient(relay.url) as client:
        ok, message = await client.auth(secret, relay.settings.relay.public_url)
        assert ok, message
        return await client.req(sub, {"kinds": [1059], "#p": [pk(secret)]})


async def opt_in(relay: Relay, secret: bytes, setting: str = "on", signer: bytes | None = None) -> httpx.Response:
    """The owner's signed POST (NIP-98 with the body's hash) turning reminders on or off."""
    url = f"http://127.0.0.1:{relay.port}/account/{pk(secret)}/reminders"
    body = orjson.dumps({"reminders": setting == "on"})
    header = nip98_header(signer or secret, url, "POST", body=body)
    async with httpx.AsyncClient() as http:
        return await http.post(url, content=body, headers={"Authorization": header, "Content-Type": "application/json"})


async def test_term_reminders_reach_only_opted_in_members_once_and_open_with_nostr_tools(
    relay_factory: RelayFactory, alice: bytes, bob: bytes, nostr_tools: None
) -> None:
    now = int(time.time())
    async with relay_factory(payments=PAID) as relay:
        for secret in (alice, bob):
            await ledger_of(relay).update_account(pk(secret), now, admitted_until=now + 3 * 86400)
        # only the owner may opt in, signing this very URL (NIP-98)
        async with httpx.AsyncClient() as http:
            url = f"http://127.0.0.1:{relay.port}/account/{pk(alice)}/reminders"
            unsigned = await http.post(url, json={"reminders": True})
            assert unsigned.status_code == 401
            # a GET only reads the setting, whatever its query asks (no state change by GET)
            read = await http.get(url + "?set=on", headers={"Authorization": nip98_header(alice, url + "?set=on")})
            assert read.status_code == 200 and read.json()["reminders"] is False
        assert (await opt_in(relay, alice, signer=bob)).status_code == 403
        answer = await opt_in(relay, alice)
        assert answer.status_code == 200 and answer.json() == {"pubkey": pk(alice), "reminders": True}

        async def one_wrap() -> bool:
            return len(await wraps_for(relay, alice)) == 1

        await eventually(one_wrap, 10.0, what="alice's reminder")
        (wrap,) = await wraps_for(relay, alice)
        rumor = await open_wrap(wrap, alice)
        assert rumor["kind"] == 14 and rumor["pubkey"] == relay.identity.pubkey
        assert ["p", pk(alice)] in rumor["tags"]
        text = rumor["content"]
        assert "ends on" in text and f"/join?pubkey={pk(alice)}" in text
        assert f"zap relay@127.0.0.1:{relay.port} 500 sats" in text, text
        # bob did not ask: nothing, ever (a whole round run here, whatever the loop did)
        await reminders_of(relay).check()
        assert await wraps_for(relay, bob) == []

    # a restart: the 7-day reminder of this term is not sent again; the 1-day one is
    async with relay_factory(payments=PAID) as relay:
        assert await reminders_of(relay).check() == 0  # a whole round after the restart
        assert len(await wraps_for(relay, alice)) == 1
        await ledger_of(relay).update_account(pk(alice), now, admitted_until=now + 3600)

        async def two_wraps() -> bool:
            return len(await wraps_for(relay, alice)) == 2

        await eventually(two_wraps, 10.0, what="the 1-day reminder")
        texts = [(await open_wrap(w, alice))["content"] for w in await wraps_for(relay, alice)]
        assert any("in about 1 hour." in t for t in texts), texts
        assert await wraps_for(relay, bob) == []


async def test_a_tier_members_reminder_names_the_tier_and_its_price_not_a_zap(
    relay_factory: RelayFactory, alice: bytes, nostr_tools: None
) -> None:
    """A zap buys the single plans' time, which would follow a tier rather than renew it
    (README "Tiers"): a Supporter member is reminded of the tier, its price and the join
    link, and not told to zap, although zaps and a subscription are on."""
    tiers = {"supporter": {"label": "Supporter", "order": 1, "price_sats": 2000, "period_days": 30}}
    async with relay_factory(payments={**PAID, "tiers": tiers}) as relay:
        now = int(time.time())
        until = now + 3 * 86400 - 3600  # "in about 2 days" whenever in the next hour it is sent
        await ledger_of(relay).update_account(pk(alice), now, admitted_until=until, role="supporter")
        assert (await opt_in(relay, alice)).json()["reminders"] is True

        async def one_wrap() -> bool:
            return len(await wraps_for(relay, alice)) == 1

        await eventually(one_wrap, 10.0, what="the supporter's reminder")
        text = (await open_wrap((await wraps_for(relay, alice))[0], alice))["content"]
        name, url = relay.settings.relay.name, relay.settings.relay.public_url
        join = relay.hooks.owner("payments").payments_url  # type: ignore[attr-defined]
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(until))
        assert text == (
            f"Your Supporter plan on {name} ({url}) ends on {when}, in about 2 days. "
            f"To renew it (2000 sats for 30 days), pay at {join}?pubkey={pk(alice)}. "
            "(You get this because you asked for reminders; this key does not read replies.)"
        ), text


async def test_low_credit_reminds_once_per_dip_and_leaving_stops_reminders(
    relay_factory: RelayFactory, alice: bytes, nostr_tools: None
) -> None:
    payments = {**PAID, "admission": {"enabled": False}, "subscription": {"enabled": False}}
    async with relay_factory(payments=payments) as relay:
        now = int(time.time())
        await ledger_of(relay).update_account(pk(alice), now, credit_delta_msat=50_000)  # under the 100-sat minimum
        assert (await opt_in(relay, alice)).json()["reminders"] is True

        async def count(n: int) -> Any:
            async def check() -> bool:
                return len(await wraps_for(relay, alice)) == n

            return check

        await eventually(await count(1), 10.0, what="the low-credit reminder")
        rumor = await open_wrap((await wraps_for(relay, alice))[0], alice)
        assert "credit" in rumor["content"] and "50 sats" in rumor["content"]
        await reminders_of(relay).check()  # a whole round more
        assert len(await wraps_for(relay, alice)) == 1  # once per dip
        await ledger_of(relay).update_account(pk(alice), now, credit_delta_msat=1_000_000)
        await reminders_of(relay).check()  # back above: this round re-arms it
        await ledger_of(relay).update_account(pk(alice), now, credit_delta_msat=-1_000_000)
        await eventually(await count(2), 10.0, what="the reminder of the second dip")

        async with NostrClient(relay.url) as client:
            await client.auth(alice, relay.settings.relay.public_url)
            ok, message = await client.publish(signed(alice, 28936, "", [["-"]]))
            assert ok, message
        assert await ledger_of(relay).reminders_on(pk(alice)) is False


async def test_cli_turns_reminders_on_and_off(relay_factory: RelayFactory, tmp_path: Path, alice: bytes) -> None:
    from tests.lightning.test_cli import satsrelay

    async with relay_factory(payments=PAID) as relay:
        config = tmp_path / "cli.toml"
        config.write_text(f'[storage]\nurl = "sqlite:///{tmp_path}/relay.db"\n[payments]\nenabled = true\n')
        code, out, err = await satsrelay(config, "reminders", "on", pk(alice))
        assert code == 0 and "reminders on" in out, err
        assert await ledger_of(relay).reminders_on(pk(alice))
        await ledger_of(relay).update_account(pk(alice), int(time.time()), admitted_until=FOREVER)
        code, out, _ = await satsrelay(config, "reminders", "off", pk(alice))
        assert code == 0 and not await ledger_of(relay).reminders_on(pk(alice))
