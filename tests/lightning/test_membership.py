"""NIP-43 membership over real WebSockets: invite codes made by the operator's CLI and
claimed with the NIP's exact OK texts, invite requests answered for members, leave
requests, and the member list (only members who opted in with their own kind 10010)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

from lightning.membership import make_invites
from lightning.plans import Plans
from lightning.store.base import FOREVER
from relay.nostr import crypto
from relay.nostr.event import parse_event
from relay.session.server import Relay
from tests.conftest import RelayFactory
from tests.lightning.payment_stack import ledger_of
from tests.lightning.test_cli import satsrelay
from tests.nostr_client import NostrClient, signed
from tests.waiting import eventually

PAID: dict[str, Any] = {"enabled": True, "backend": "fake", "account_cache_seconds": 0}


def pk(secret: bytes) -> str:
    return crypto.public_key(secret).hex()


def claim(secret: bytes, code: str, created_at: int | None = None) -> Any:
    return signed(secret, 28934, "", [["-"], ["claim", code]], created_at)


async def authed_client(relay: Relay, secret: bytes) -> NostrClient:
    client = NostrClient(relay.url)
    await client.__aenter__()
    ok, message = await client.auth(secret, relay.settings.relay.public_url)
    assert ok, message
    return client


async def relay_events(client: NostrClient, relay: Relay, kind: int, sub: str) -> list[dict[str, Any]]:
    events = await client.req(sub, {"kinds": [kind], "authors": [relay.identity.pubkey]})
    await client.send(["CLOSE", sub])
    for event in events:
        parse_event(event)  # shape, id and signature check out
    return events


async def test_invite_codes_from_the_cli_are_claimed_with_the_nips_ok_texts(
    relay_factory: RelayFactory, tmp_path: Path, alice: bytes, bob: bytes
) -> None:
    async with relay_factory(payments=PAID) as relay:
        config = tmp_path / "cli.toml"
        config.write_text(f'[storage]\nurl = "sqlite:///{tmp_path}/relay.db"\n[payments]\nenabled = true\n')
        code, out, err = await satsrelay(
            config, "invites", "create", "--plan", "admission", "--count", "2", "--expires", "30d"
        )
        assert code == 0, err
        codes = out.split()[:2]
        assert all(len(c) == 16 for c in codes), out
        code, out, _ = await satsrelay(config, "invites", "list")
        assert out.count("open") == 2 and codes[0] not in out  # only hashes are kept

        client = NostrClient(relay.url)
        async with client:
            ok, message = await client.publish(signed(alice, 1, "hello"))
            assert not ok and message.startswith("restricted: ")
            # NIP-70: the claim carries "-", so the relay wants to know who sends it.
            ok, message = await client.publish(claim(alice, codes[0]))
            assert not ok and message.startswith("auth-required: ")
            ok, message = await client.auth(alice, relay.settings.relay.public_url)
            assert ok, message
            assert await client.publish(claim(alice, "not-a-code")) == (
                False,
                "restricted: that is an invalid invite code.",
            )
            late = claim(alice, codes[0], created_at=int(time.time()) - 3600)
            ok, message = await client.publish(late)
            assert not ok and message.startswith("invalid: ")
            welcome = f"info: welcome to {relay.settings.relay.public_url}!"
            assert await client.publish(claim(alice, codes[0])) == (True, welcome)
            assert (await client.publish(signed(alice, 1, "a member now")))[0]
            already = (True, "duplicate: you are already a member of this relay.")
            assert await client.publish(claim(alice, codes[1])) == already
            # a claim is answered, never stored: its code must not reach anyone else
            assert await client.req("claims", {"kinds": [28934]}) == []

        bob_client = await authed_client(relay, bob)
        try:
            used = await bob_client.publish(claim(bob, codes[0]))
            assert used == (False, "restricted: that is an invalid invite code.")
            [stale_code], stale = make_invites(
                Plans.from_settings(relay.settings.payments), "admission", 1, 1, expires_at=int(time.time()) - 1
            )
            await ledger_of(relay).add_invites(stale)
            assert await bob_client.publish(claim(bob, stale_code)) == (
                False,
                "restricted: that invite code is expired.",
            )
            assert await bob_client.publish(claim(bob, codes[1])) == (True, welcome)  # alice's duplicate left it unused
        finally:
            await bob_client.__aexit__(None, None, None)
        account = await ledger_of(relay).get_account(pk(alice))
        assert account is not None and account.admitted_until == FOREVER


async def test_a_leave_request_ends_membership_without_refund(relay_factory: RelayFactory, alice: bytes) -> None:
    payments = {**PAID, "credit": {"enabled": True}}
    async with relay_factory(payments=payments) as relay:
        now = int(time.time())
        await ledger_of(relay).update_account(pk(alice), now, admitted_until=now + 86400, credit_delta_msat=50_000)
        client = await authed_client(relay, alice)
        try:
            assert (await client.publish(signed(alice, 1, "member")))[0]
            ok, message = await client.publish(signed(alice, 28936, "", []))
            assert not ok and message.startswith("invalid: ") and '"-"' in message
            ok, message = await client.publish(signed(alice, 28936, "", [["-"]]))
            assert ok and message.startswith("info: you have left ")
            ok, message = await client.publish(signed(alice, 1, "still here?"))
            assert not ok and message.startswith("restricted: ")
            assert await client.publish(signed(alice, 28936, "", [["-"]])) == (
                True,
                "duplicate: you are not a member of this relay",
            )
        finally:
            await client.__aexit__(None, None, None)
        account = await ledger_of(relay).get_account(pk(alice))
        assert account is not None and (account.admitted_until, account.credit_msat) == (0, 0)


async def test_members_get_a_fresh_invite_code_on_request(
    relay_factory: RelayFactory, alice: bytes, bob: bytes
) -> None:
    payments = {**PAID, "membership": {"members_may_invite": True, "max_open_invites_per_member": 2}}
    async with relay_factory(payments=payments) as relay:
        await ledger_of(relay).update_account(pk(alice), int(time.time()), admitted_until=FOREVER)
        async with NostrClient(relay.url) as anonymous:
            await anonymous.send(["REQ", "inv", {"kinds": [28935]}])
            msg = await anonymous.recv_where(lambda m: m[0] == "CLOSED")
            assert msg[2].startswith("auth-required: ")
        stranger = await authed_client(relay, bob)
        member = await authed_client(relay, alice)
        try:
            await stranger.send(["REQ", "inv", {"kinds": [28935]}])
            msg = await stranger.recv_where(lambda m: m[0] == "CLOSED")
            assert msg[2] == "restricted: only members of this relay may ask for invite codes"

            first = await member.req("inv1", {"kinds": [28935]})
            second = await member.req("inv2", {"kinds": [28935]})
            codes = []
            for events in (first, second):
                (event,) = events
                parse_event(event)
                assert event["pubkey"] == relay.identity.pubkey and ["-"] in event["tags"]
                codes.append(next(t[1] for t in event["tags"] if t[0] == "claim"))
            assert codes[0] != codes[1]
            await member.send(["REQ", "inv3", {"kinds": [28935]}])
            msg = await member.recv_where(lambda m: m[0] == "CLOSED" and m[1] == "inv3")
            assert msg[2].startswith("rate-limited: ")
            # a member's code admits the newcomer it is given to
            welcome = f"info: welcome to {relay.settings.relay.public_url}!"
            assert await stranger.publish(claim(bob, codes[0])) == (True, welcome)
            assert (await stranger.publish(signed(bob, 1, "invited")))[0]
        finally:
            await stranger.__aexit__(None, None, None)
            await member.__aexit__(None, None, None)
        (made,) = [i for i in await ledger_of(relay).list_invites() if i.redeemed_by == pk(bob)]
        assert made.created_by == pk(alice) and made.expires_at is not None


async def test_member_list_names_only_members_who_opted_in(
    relay_factory: RelayFactory, alice: bytes, bob: bytes
) -> None:
    payments = {**PAID, "membership": {"list_members": True, "list_refresh_seconds": 0.2}}
    async with relay_factory(payments=payments) as relay:
        now = int(time.time())
        for secret in (alice, bob):
            await ledger_of(relay).update_account(pk(secret), now, admitted_until=FOREVER)
        url = relay.settings.relay.public_url
        async with NostrClient(relay.url) as client:
            assert (await client.publish(signed(alice, 10010, "", [["r", url]])))[0]
            assert (await client.publish(signed(bob, 10010, "", [["r", "wss://elsewhere.example"]])))[0]

            async def members() -> list[str]:
                lists = await relay_events(client, relay, 13534, "list")
                return [t[1] for t in lists[0]["tags"] if t[0] == "member"] if lists else []

            async def listed(want: list[str]) -> None:
                async def check() -> bool:
                    return await members() == want

                await eventually(check, 10.0, interval=0.1, what=f"the member list to be {want}")

            await listed([pk(alice)])
            (added,) = await relay_events(client, relay, 8000, "add")
            assert ["p", pk(alice)] in added["tags"] and ["-"] in added["tags"]

            async with NostrClient(relay.url) as leaver:
                await leaver.auth(alice, url)
                assert (await leaver.publish(signed(alice, 28936, "", [["-"]])))[0]
            await listed([])
            (removed,) = await relay_events(client, relay, 8001, "remove")
            assert ["p", pk(alice)] in removed["tags"]

        async with httpx.AsyncClient() as http:
            info = (
                await http.get(f"http://127.0.0.1:{relay.port}/", headers={"Accept": "application/nostr+json"})
            ).json()
        assert 43 in info["supported_nips"] and info["self"] == relay.identity.pubkey


async def test_member_list_is_off_by_default(relay_factory: RelayFactory, alice: bytes) -> None:
    async with relay_factory(payments=PAID) as relay:
        await ledger_of(relay).update_account(pk(alice), int(time.time()), admitted_until=FOREVER)
        url = relay.settings.relay.public_url
        async with NostrClient(relay.url) as client:
            assert (await client.publish(signed(alice, 10010, "", [["r", url]])))[0]
            membership = relay.hooks.owner("payments").membership  # type: ignore[union-attr]
            assert membership is not None and await membership.refresh() is False
            assert await relay_events(client, relay, 13534, "list") == []
            assert await relay_events(client, relay, 8000, "add") == []
