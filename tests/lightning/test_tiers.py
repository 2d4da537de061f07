"""Tiers (issue 20): plans with their own limits, published as NIP-43 roles, over real
WebSockets. nostr-tools reads and verifies the relay's kind 33534 and 13534 events
(``tests/node/relay_read.mjs``) and signs the NIP-86 role calls (``tests/node/nip98.mjs``);
a member on a smaller tier is refused past its limits with a reply naming the tier and the
next one, on SQLite and PostgreSQL, while a member on the larger tier writes on."""

from __future__ import annotations

import time
from collections.abc import Awaitable
from typing import Any

import httpx
import pytest

from relay.nostr import crypto
from tests import node_tools
from tests.conftest import RelayFactory
from tests.lightning.payment_stack import ledger_of
from tests.nostr_client import NostrClient, signed
from tests.waiting import eventually

TIERS: dict[str, Any] = {
    "supporter": {
        "label": "Supporter",
        "description": "for people who post",
        "color": 120,
        "order": 1,
        "price_sats": 2000,
        "period_days": 30,
        "events_per_day": 3,
        "max_bytes_stored": 1500,
        "max_event_bytes": 1000,
        "kinds": [1, 10010],
    },
    "pro": {"label": "Pro", "color": 280, "order": 2, "price_sats": 20000, "period_days": 365},
}
PAID: dict[str, Any] = {"enabled": True, "backend": "fake", "account_cache_seconds": 0, "tiers": TIERS}


def pk(secret: bytes) -> str:
    return crypto.public_key(secret).hex()


async def read_verified(url: str, filter_: dict[str, Any]) -> list[dict[str, Any]]:
    """The stored events matching ``filter_``, read by nostr-tools, each verified there."""
    answer = await node_tools.run_script("relay_read.mjs", {"url": url, "filter": filter_})
    assert all(item["verified"] for item in answer["events"]), answer
    return [item["event"] for item in answer["events"]]


async def nip86(secret: bytes, http: str, method: str, params: list[Any]) -> dict[str, Any]:
    command = {"secret": secret.hex(), "url": http, "method": "POST", "payload": {"method": method, "params": params}}
    answer = await node_tools.run_script("nip98.mjs", command)
    assert answer["status"] == 200, answer
    result: dict[str, Any] = answer["json"]
    return result


async def test_tiers_are_nip43_roles_and_nip86_assigns_them(
    relay_factory: RelayFactory, alice: bytes, bob: bytes
) -> None:
    why = node_tools.ensure_installed()
    if why is not None:
        pytest.skip(why)
    payments = {**PAID, "membership": {"list_members": True, "list_refresh_seconds": 0.2}}
    async with relay_factory(admin={"pubkeys": [pk(alice)]}, payments=payments) as relay:
        me = relay.identity.pubkey
        http = relay.url.replace("ws://", "http://")

        async def roles() -> dict[str, list[list[str]]]:
            events = await read_verified(relay.url, {"kinds": [33534], "authors": [me]})
            assert all(e["pubkey"] == me for e in events)
            return {next(t[1] for t in e["tags"] if t[0] == "d"): e["tags"] for e in events}

        async def two_tiers() -> bool:
            return len(await roles()) == 2

        await eventually(two_tiers, 10, what="the tiers' kind 33534 events")
        published = await roles()
        assert published["supporter"] == [
            ["-"],
            ["d", "supporter"],
            ["label", "Supporter"],
            ["description", "for people who post"],
            ["color", "120"],
            ["order", "1"],
        ]
        assert published["pro"] == [["-"], ["d", "pro"], ["label", "Pro"], ["color", "280"], ["order", "2"]]

        supported = (await nip86(alice, http, "supportedmethods", []))["result"]
        assert {"createrole", "editrole", "deleterole", "assignrole", "unassignrole"} <= set(supported)
        assert {"unallowpubkey", "unbanpubkey"} <= set(supported)
        made = await nip86(alice, http, "createrole", ["moderator", "Moderator", "keeps order", 200, 5])
        assert made == {"result": True}
        refused = await nip86(alice, http, "deleterole", ["pro"])
        assert "tier of the config file" in refused["error"]

        async def three_roles() -> bool:
            return "moderator" in await roles()

        await eventually(three_roles, 10, what="the created role's kind 33534")
        assert (await roles())["moderator"][1:] == [
            ["d", "moderator"],
            ["label", "Moderator"],
            ["description", "keeps order"],
            ["color", "200"],
            ["order", "5"],
        ]

        async with NostrClient(relay.url) as client:
            ok, message = await client.publish(signed(bob, 1, "before"))
            assert not ok and message.startswith("restricted:"), message

            async def member_tag(want: list[str]) -> bool:
                lists = await read_verified(relay.url, {"kinds": [13534], "authors": [me]})
                return bool(lists) and [t for t in lists[0]["tags"] if t[0] == "member"] == [want]

            # A comped member: the role without payment, who now writes and is listed with it.
            assert await nip86(alice, http, "assignrole", [pk(bob), "moderator"]) == {"result": True}
            opt_in = signed(bob, 10010, "", [["r", relay.settings.relay.public_url]])  # listed only if it says so
            assert (await client.publish(opt_in))[0]
            await eventually(lambda: member_tag(["member", pk(bob), "moderator"]), 10, what="the role in 13534")
            ok, message = await client.publish(signed(bob, 1, "comped"))
            assert ok, message

            assert await nip86(alice, http, "assignrole", [pk(bob), "pro"]) == {"result": True}
            await eventually(lambda: member_tag(["member", pk(bob), "pro"]), 10, what="the tier in 13534")
            assert await nip86(alice, http, "unassignrole", [pk(bob), "pro"]) == {"result": True}

            async def unlisted() -> bool:
                lists = await read_verified(relay.url, {"kinds": [13534], "authors": [me]})
                return bool(lists) and not [t for t in lists[0]["tags"] if t[0] == "member"]

            await eventually(unlisted, 10, what="bob off the member list once unassigned")
            ok, message = await client.publish(signed(bob, 1, "after"))
            assert not ok and message.startswith("restricted:"), message

        async with httpx.AsyncClient() as web:
            info = (await web.get(http + "/", headers={"Accept": "application/nostr+json"})).json()
        subscriptions = {e.get("tier"): e for e in info["fees"]["subscription"]}
        assert subscriptions["supporter"]["amount"] == 2_000_000 and subscriptions["supporter"]["period"] == 30 * 86400
        assert subscriptions["pro"]["amount"] == 20_000_000 and subscriptions["pro"]["period"] == 365 * 86400
        assert info["fees"]["admission"][0]["amount"] == 1_000_000  # the single plan is still sold beside them


async def test_editrole_and_deleterole_change_the_published_roles_and_the_member_list(
    relay_factory: RelayFactory, alice: bytes, bob: bytes
) -> None:
    """A role made by NIP-86 (nostr-tools signs each call) is edited, deleted and made
    again: nostr-tools reads each state of its kind 33534, verified; deleting it takes it
    from its comped member (off the 13534 list, refused again), and making it again
    publishes it anew (newer than the NIP-09 deletion of its address)."""
    why = node_tools.ensure_installed()
    if why is not None:
        pytest.skip(why)
    payments = {**PAID, "membership": {"list_members": True, "list_refresh_seconds": 0.2}}
    async with relay_factory(admin={"pubkeys": [pk(alice)]}, payments=payments) as relay:
        me = relay.identity.pubkey
        http = relay.url.replace("ws://", "http://")
        address = {"kinds": [33534], "authors": [me], "#d": ["moderator"]}

        async def moderator_tags() -> list[list[str]] | None:
            events = await read_verified(relay.url, address)
            assert len(events) <= 1, events
            return events[0]["tags"] if events else None

        async def member_tags() -> list[list[str]]:
            lists = await read_verified(relay.url, {"kinds": [13534], "authors": [me]})
            return [t for t in lists[0]["tags"] if t[0] == "member"] if lists else []

        assert await nip86(alice, http, "createrole", ["moderator", "Moderator", "keeps order", 200, 5]) == {
            "result": True
        }
        await eventually(lambda: _is_not_none(moderator_tags()), 10, what="the created role's kind 33534")
        async with NostrClient(relay.url) as client:
            assert await nip86(alice, http, "assignrole", [pk(bob), "moderator"]) == {"result": True}
            assert (await client.publish(signed(bob, 10010, "", [["r", relay.settings.relay.public_url]])))[0]
            await eventually(
                lambda: _equals(member_tags(), [["member", pk(bob), "moderator"]]), 10, what="bob listed as moderator"
            )

            assert await nip86(alice, http, "editrole", ["moderator", "Steward", "", 30, 6]) == {"result": True}
            edited = [["-"], ["d", "moderator"], ["label", "Steward"], ["color", "30"], ["order", "6"]]
            await eventually(lambda: _equals(moderator_tags(), edited), 10, what="the edited role's kind 33534")
            missing = await nip86(alice, http, "editrole", ["nobody", "Nobody"])
            assert missing["error"].endswith("no role 'nobody' (createrole makes one)"), missing

            assert await nip86(alice, http, "deleterole", ["moderator"]) == {"result": True}
            await eventually(lambda: _equals(moderator_tags(), None), 10, what="the deleted role withdrawn")
            await eventually(lambda: _equals(member_tags(), []), 10, what="bob off the list with the role")
            ok, message = await client.publish(signed(bob, 1, "after the role went"))
            assert not ok and message.startswith("restricted: writing here needs a payment"), message
            roles = (await nip86(alice, http, "payments.roles", []))["result"]
            assert {r["id"] for r in roles} == {"supporter", "pro"}

            again = ["moderator", "Moderator", "back again", 200, 5]
            assert await nip86(alice, http, "createrole", again) == {"result": True}
            made_again = [["-"], ["d", "moderator"], ["label", "Moderator"], ["description", "back again"],
                          ["color", "200"], ["order", "5"]]
            await eventually(lambda: _equals(moderator_tags(), made_again), 10, what="the role made again")


async def _is_not_none(value: Awaitable[object]) -> bool:
    return await value is not None


async def _equals(value: Awaitable[object], want: object) -> bool:
    return await value == want


async def test_a_smaller_tier_is_refused_past_its_limits_naming_the_next_tier(
    relay_factory: RelayFactory, storage: dict[str, str], alice: bytes, bob: bytes
) -> None:
    carol, dave = crypto.generate_secret(), crypto.generate_secret()
    retention = {"member_max_bytes_per_pubkey": 0}
    async with relay_factory(storage=storage, payments=PAID, retention=retention) as relay:
        now = int(time.time())
        ledger = ledger_of(relay)
        for secret, tier in ((alice, "supporter"), (bob, "pro"), (carol, "supporter"), (dave, "supporter")):
            await ledger.update_account(pk(secret), now, admitted_until=now + 86400, role=tier)
        upgrade = "the Pro tier (20000 sats for 365 days) allows more: upgrade at "
        async with NostrClient(relay.url) as client:
            # Events a day: three for a supporter, then a restricted: naming both tiers.
            for i in range(3):
                ok, message = await client.publish(signed(alice, 1, f"note {i}"))
                assert ok, message
            ok, message = await client.publish(signed(alice, 1, "one too many"))
            assert not ok, message
            assert message.startswith("restricted: the Supporter tier allows 3 events a day"), message
            assert upgrade in message and f"pubkey={pk(alice)}" in message
            for i in range(6):  # the higher tier has no such limit
                ok, message = await client.publish(signed(bob, 1, f"pro note {i}"))
                assert ok, message

            # Storage: the supporter's 1,500 bytes, through the relay's one quota rule.
            ok, message = await client.publish(signed(carol, 1, "x" * 600))
            assert ok, message
            ok, message = await client.publish(signed(carol, 1, "y" * 600))
            assert not ok, message
            assert message.startswith("restricted: storage quota of the Supporter tier (1500 bytes) reached"), message
            assert upgrade in message
            for i in range(3):
                ok, message = await client.publish(signed(bob, 1, "z" * 600 + str(i)))
                assert ok, message

            # The largest event and the kinds a tier allows.
            ok, message = await client.publish(signed(dave, 1, "w" * 1200))
            assert not ok and message.startswith("restricted: this event is "), message
            assert "over the Supporter tier's 1000" in message and upgrade in message
            ok, message = await client.publish(signed(bob, 1, "w" * 1200))
            assert ok, message
            ok, message = await client.publish(signed(dave, 30023, "an article", [["d", "a"]]))
            assert not ok and message.startswith("restricted: kind 30023 is not part of the Supporter tier"), message
            ok, message = await client.publish(signed(bob, 30023, "an article", [["d", "a"]]))
            assert ok, message


async def test_a_tier_event_rate_is_rate_limited_naming_the_tier(
    relay_factory: RelayFactory, alice: bytes, bob: bytes
) -> None:
    tiers = {
        "basic": {"price_sats": 100, "period_days": 30, "events_per_second": 0.1, "order": 1},
        "plus": {"price_sats": 900, "period_days": 30, "events_per_second": 50, "order": 2},
    }
    payments = {**PAID, "tiers": tiers}
    async with relay_factory(payments=payments) as relay:
        now = int(time.time())
        await ledger_of(relay).update_account(pk(alice), now, admitted_until=now + 86400, role="basic")
        await ledger_of(relay).update_account(pk(bob), now, admitted_until=now + 86400, role="plus")
        async with NostrClient(relay.url) as client:
            assert (await client.publish(signed(alice, 1, "first")))[0]
            ok, message = await client.publish(signed(alice, 1, "second"))
            assert not ok and message.startswith("rate-limited: the Basic tier allows 0.1 events per second"), message
            assert "the Plus tier (900 sats for 30 days) allows more" in message
            for i in range(5):
                ok, message = await client.publish(signed(bob, 1, f"plus {i}"))
                assert ok, message


async def test_an_expired_tier_names_its_end_date_and_grace_keeps_writes(
    relay_factory: RelayFactory, storage: dict[str, str], alice: bytes, bob: bytes
) -> None:
    tiers = {"supporter": {**TIERS["supporter"], "grace_days": 3}, "pro": TIERS["pro"]}
    async with relay_factory(storage=storage, payments={**PAID, "tiers": tiers}) as relay:
        now = int(time.time())
        in_grace, lapsed = now - 86400, now - 4 * 86400
        await ledger_of(relay).update_account(pk(alice), now, admitted_until=in_grace, role="supporter")
        await ledger_of(relay).update_account(pk(bob), now, admitted_until=lapsed, role="supporter")
        async with NostrClient(relay.url) as client:
            ok, message = await client.publish(signed(alice, 1, "in grace"))
            assert ok, message
            ok, message = await client.publish(signed(bob, 1, "lapsed"))
            ended = time.strftime("%Y-%m-%d", time.gmtime(lapsed))
            assert not ok, message
            assert message.startswith(f"restricted: your Supporter plan ended on {ended} (and its 3-day grace)")
            join = relay.hooks.owner("payments").payments_url  # type: ignore[union-attr]
            assert message.endswith(f"renew at {join}?pubkey={pk(bob)}"), message
        async with httpx.AsyncClient() as web:
            page = (await web.get(f"{join.removesuffix('/join')}/account/{pk(alice)}")).text
        renew, grace_end = (time.strftime("%Y-%m-%d", time.gmtime(t)) for t in (in_grace, in_grace + 3 * 86400))
        assert f"Supporter (2000 sats for 30 days), renew by {renew} (writes go on until {grace_end})" in page
        # Comped for good outlives any date.
        await ledger_of(relay).update_account(pk(bob), now, role="pro", comped=True)
        async with NostrClient(relay.url) as client:
            ok, message = await client.publish(signed(bob, 1, "comped"))
            assert ok, message


async def test_a_downgrade_paid_on_the_join_page_waits_for_the_period_end(
    relay_factory: RelayFactory, alice: bytes
) -> None:
    """Pro, then supporter bought through /api/invoice and paid: the account page names
    both and when the change comes, and the member keeps pro's limits until then."""
    async with relay_factory(payments=PAID) as relay, httpx.AsyncClient() as web:
        base = relay.url.replace("ws://", "http://")
        for plan in ("pro", "supporter"):
            issued = (await web.post(base + "/api/invoice", json={"pubkey": pk(alice), "plan": plan})).json()
            assert (await web.post(f"{base}/api/fake/pay/{issued['payment_hash']}")).json()["simulated"]
        doc = (await web.get(f"{base}/account/{pk(alice)}", headers={"Accept": "application/json"})).json()
        assert (doc["tier"], doc["next_tier"]) == ("pro", "supporter")
        changes_at, until = doc["tier_changes_at"], doc["admitted_until"]
        assert until - changes_at == 30 * 86400 and changes_at - int(time.time()) > 364 * 86400
        page = (await web.get(f"{base}/account/{pk(alice)}")).text
        day = time.strftime("%Y-%m-%d", time.gmtime(changes_at))
        renew = time.strftime("%Y-%m-%d", time.gmtime(until))
        shown = f"Pro (20000 sats for 365 days) until {day}, then Supporter (2000 sats for 30 days), renew by {renew}"
        assert shown in page
        async with NostrClient(relay.url) as client:  # still pro: a kind outside the supporter tier's
            ok, message = await client.publish(signed(alice, 30023, "an article", [["d", "a"]]))
            assert ok, message


async def test_a_single_plan_bought_under_a_tier_follows_it_and_the_pages_say_so(
    relay_factory: RelayFactory, alice: bytes
) -> None:
    """README "Tiers": the subscription bought by a Supporter member does not renew the
    tier. The join page says so where the plan is chosen; once paid, the account its
    invoice status shows (the join page's account box) and ``/account`` name the tier
    until its end, then the single plan, with no tier's grace after the single plan's month."""
    tiers = {"supporter": {**TIERS["supporter"], "grace_days": 3}, "pro": TIERS["pro"]}
    payments = {**PAID, "tiers": tiers, "subscription": {"enabled": True, "fee_sats": 500}}
    async with relay_factory(payments=payments) as relay, httpx.AsyncClient() as web:
        base = relay.url.replace("ws://", "http://")
        join_page = (await web.get(base + "/join")).text
        assert (
            "Renewing a tier? Choose that tier. Admission and Subscription are not tiers and do not renew a tier: "
            "bought while you hold one, their time begins when the tier ends." in join_page
        )
        for plan in ("supporter", "subscription"):
            issued = (await web.post(base + "/api/invoice", json={"pubkey": pk(alice), "plan": plan})).json()
            assert (await web.post(f"{base}/api/fake/pay/{issued['payment_hash']}")).json()["simulated"]
        account = (await web.get(f"{base}/api/invoice/{issued['payment_hash']}")).json()["account"]
        changes_at, until = account["tier_changes_at"], account["admitted_until"]
        assert until - changes_at == 30 * 86400 and changes_at - int(time.time()) > 29 * 86400
        assert (account["tier"], account["tier_label"]) == ("supporter", "Supporter")
        assert (account["next_tier"], account["next_tier_label"]) == ("", None)
        assert account["grace_until"] is None  # not the Supporter's 3 days after the subscription's month
        page = (await web.get(f"{base}/account/{pk(alice)}")).text
        day, end = (time.strftime("%Y-%m-%d", time.gmtime(t)) for t in (changes_at, until))
        assert f"Supporter (2000 sats for 30 days) until {day}, then the single plan until {end}" in page
