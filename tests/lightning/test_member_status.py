"""Status where clients look (issue 20 item 5): a member who opted in to reminders gets a
``["NOTIFY", <message>]`` (nips PR #901) on their connection near and at the end of their
plan, at most one per connection session and day, naming the date and how to renew; others
get none. Over real WebSockets; the opt-in is the member's NIP-98 signed request."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import orjson

from relay.nostr import crypto
from relay.session.server import Relay
from tests.conftest import RelayFactory
from tests.lightning.payment_stack import ledger_of, nip98_header
from tests.lightning.test_linked_keys import link
from tests.nostr_client import NostrClient, signed

DAY = 86400
TIERS: dict[str, Any] = {
    "supporter": {"label": "Supporter", "order": 1, "price_sats": 2000, "period_days": 30, "grace_days": 3},
}
PAID: dict[str, Any] = {
    "enabled": True,
    "backend": "fake",
    "account_cache_seconds": 0,
    "tiers": TIERS,
    "subscription": {"enabled": True, "fee_sats": 500},
    "reminders": {"days_before": [7.0, 1.0], "check_interval_seconds": 3600},
}


def pk(secret: bytes) -> str:
    return crypto.public_key(secret).hex()


def day(when: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(when))


async def opt_in(relay: Relay, secret: bytes) -> None:
    url = f"http://127.0.0.1:{relay.port}/account/{pk(secret)}/reminders"
    body = orjson.dumps({"reminders": True})
    signature = {"Authorization": nip98_header(secret, url, "POST", body=body)}
    async with httpx.AsyncClient() as web:
        answer = await web.post(url, content=body, headers=signature)
    assert answer.status_code == 200 and answer.json()["reminders"] is True, answer.text


async def notifies(client: NostrClient, seconds: float = 0.5) -> list[str]:
    """Every NOTIFY that arrived, or arrives within ``seconds``, and any other arriving within
    0.5 s of the last one (a second would be a bug); other messages are kept for later."""
    loop = asyncio.get_running_loop()
    found: list[str] = []
    deadline = loop.time() + seconds
    while (left := deadline - loop.time()) > 0:
        try:
            msg = await client.recv_where(lambda m: m[0] == "NOTIFY", timeout=left)
        except TimeoutError:
            break
        assert len(msg) == 2 and isinstance(msg[1], str), msg
        found.append(msg[1])
        deadline = loop.time() + 0.5
    return found


async def test_an_opted_in_member_near_expiry_gets_one_notify_per_session(
    relay_factory: RelayFactory, storage: dict[str, str], alice: bytes, bob: bytes
) -> None:
    async with relay_factory(storage=storage, payments=PAID) as relay:
        now = int(time.time())
        ends = now + 2 * DAY
        await ledger_of(relay).update_account(pk(alice), now, admitted_until=ends, role="supporter")
        assert (await link(relay, alice, bob)).status_code == 200
        join = f"http://127.0.0.1:{relay.port}/join?pubkey={pk(alice)}"
        expected = (
            f"Your Supporter plan on {relay.settings.relay.name} ends on {day(ends)}. "
            f"Renew (2000 sats for 30 days) at {join}"
        )

        async with NostrClient(relay.url) as client:  # not opted in yet: nothing
            assert await client.auth(alice, relay.url) == (True, "")
            assert (await client.publish(signed(alice, 1, "hello")))[0]
            assert await notifies(client) == []
        await opt_in(relay, alice)

        async with NostrClient(relay.url) as client:
            assert await client.auth(alice, relay.url) == (True, "")
            assert await notifies(client, 5) == [expected]
            # The rest of the session: more events, the linked key's AUTH and events, no more.
            for secret in (alice, bob):
                assert (await client.publish(signed(secret, 1, "more")))[0]
            assert await client.auth(bob, relay.url) == (True, "")
            assert await notifies(client) == []

        # A new session of the linked key (the plan's opt-in covers it), by its first event
        # alone, without AUTH: one prompt, about the plan, naming the plan's key to pay for.
        async with NostrClient(relay.url) as client:
            assert (await client.publish(signed(bob, 1, "from the other app")))[0]
            assert await notifies(client, 5) == [expected]
            assert (await client.publish(signed(bob, 1, "again")))[0]
            assert await notifies(client) == []


async def test_notify_says_grace_and_lapse_and_stays_quiet_far_from_the_end(
    relay_factory: RelayFactory, alice: bytes, bob: bytes
) -> None:
    carol, dave = crypto.generate_secret(), crypto.generate_secret()
    async with relay_factory(payments=PAID) as relay:
        now = int(time.time())
        ledger = ledger_of(relay)
        in_grace, lapsed, far = now - DAY, now - 5 * DAY, now + 20 * DAY
        await ledger.update_account(pk(alice), now, admitted_until=in_grace, role="supporter")
        await ledger.update_account(pk(bob), now, admitted_until=lapsed, role="supporter")
        await ledger.update_account(pk(carol), now, admitted_until=far, role="supporter")
        await ledger.update_account(pk(dave), now, admitted_until=now + DAY)  # the subscription, no tier
        for secret in (alice, bob, carol, dave):
            await opt_in(relay, secret)
        name, base = relay.settings.relay.name, f"http://127.0.0.1:{relay.port}/join?pubkey="
        zap = f"relay@127.0.0.1:{relay.port}"
        wanted = {
            alice: f"Your Supporter plan on {name} ended on {day(in_grace)}; your events are accepted until "
                   f"{day(in_grace + 3 * DAY)} (grace). Renew (2000 sats for 30 days) at {base}{pk(alice)}",
            bob: f"Your Supporter plan on {name} ended on {day(lapsed)}; this relay no longer accepts your events. "
                 f"Renew (2000 sats for 30 days) at {base}{pk(bob)}",
            dave: f"Your access to {name} ends on {day(now + DAY)}. Renew: zap {zap} 500 sats from your client, "
                  f"or pay at {base}{pk(dave)}",
        }
        for secret in (alice, bob, carol, dave):
            async with NostrClient(relay.url) as client:
                assert await client.auth(secret, relay.url) == (True, "")
                got = await notifies(client, 5 if secret in wanted else 0.5)
                assert got == ([wanted[secret]] if secret in wanted else []), got
