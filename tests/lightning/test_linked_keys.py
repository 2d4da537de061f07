"""One plan, several keys (issue 20 item 4), over real WebSockets and HTTP: a member pays
once on the join page, links a second key with both keys' NIP-98 signatures, and both keys
write; the plan's limits count the events (and stored bytes) of both; either key unlinks;
the links hold across a restart and on every node of one PostgreSQL. The owner's signed
requests are made by nostr-tools (``tests/node/nip98.mjs``) where a tool would make them."""

from __future__ import annotations

import os
import time
from typing import Any

import httpx
import orjson
import pytest

from lightning.pubkeys import npub_encode
from relay.nostr import crypto
from relay.nostr.event import sign_event
from relay.session.server import Relay
from tests import node_tools
from tests.conftest import RelayFactory
from tests.lightning.payment_stack import ledger_of, nip98_header
from tests.nostr_client import NostrClient, signed
from tests.waiting import eventually

TIERS: dict[str, Any] = {
    "supporter": {
        "label": "Supporter",
        "order": 1,
        "price_sats": 2000,
        "period_days": 30,
        "events_per_day": 4,
        "linked_keys": 1,
    },
    "pro": {"label": "Pro", "order": 2, "price_sats": 20000, "period_days": 365, "linked_keys": 5},
}
PAID: dict[str, Any] = {"enabled": True, "backend": "fake", "account_cache_seconds": 0, "tiers": TIERS}


def pk(secret: bytes) -> str:
    return crypto.public_key(secret).hex()


def base(relay: Relay) -> str:
    return relay.url.replace("ws://", "http://")


def link_url(relay: Relay, owner: bytes, key: bytes) -> str:
    return f"{base(relay)}/account/{pk(owner)}/links/{pk(key)}"


def consent(url: str, secret: bytes, method: str = "POST") -> dict[str, Any]:
    """The key to link signs the link's own URL and method (NIP-98, kind 27235)."""
    tags = [["u", url], ["method", method], ["nonce", os.urandom(8).hex()]]
    return sign_event(secret, 27235, "", tags, int(time.time())).to_dict()


async def link(
    relay: Relay, owner: bytes, key: bytes, *, consent_by: bytes | None = None, header_by: bytes | None = None
) -> httpx.Response:
    """``POST /account/<owner>/links/<key>``: the owner's NIP-98 header over a body holding
    the key's signed consent (each signer replaceable to test refusals)."""
    url = link_url(relay, owner, key)
    body = orjson.dumps({"consent": consent(url, consent_by or key)})
    headers = {"Authorization": nip98_header(header_by or owner, url, "POST", body=body)}
    async with httpx.AsyncClient() as web:
        return await web.post(url, content=body, headers={**headers, "Content-Type": "application/json"})


async def unlink(relay: Relay, owner: bytes, key: bytes, signer: bytes) -> httpx.Response:
    url = link_url(relay, owner, key)
    async with httpx.AsyncClient() as web:
        return await web.delete(url, headers={"Authorization": nip98_header(signer, url, "DELETE")})


async def pay(relay: Relay, secret: bytes, plan: str) -> None:
    """One payment on the join page (the demo wallet's simulate route), then the key writes."""
    async with httpx.AsyncClient(base_url=base(relay)) as web:
        invoice = (await web.post("/api/invoice", json={"pubkey": pk(secret), "plan": plan})).json()
        assert (await web.post(f"/api/fake/pay/{invoice['payment_hash']}")).json()["simulated"] is True

        async def may_write() -> bool:
            doc = (await web.get(f"/account/{pk(secret)}", headers={"Accept": "application/json"})).json()
            return bool(doc["may_write"])

        await eventually(may_write, 10, what="the payment credited")


async def writes(client: NostrClient, secret: bytes, text: str) -> tuple[bool, str]:
    return await client.publish(signed(secret, 1, text))


async def test_two_keys_on_one_plan_both_write_after_one_payment(
    relay_factory: RelayFactory, storage: dict[str, str], alice: bytes, bob: bytes
) -> None:
    why = node_tools.ensure_installed()
    if why is not None:
        pytest.skip(why)
    carol = crypto.generate_secret()
    async with relay_factory(storage=storage, payments=PAID) as relay, NostrClient(relay.url) as client:
        await pay(relay, alice, "supporter")
        ok, message = await writes(client, bob, "before the link")
        assert not ok and message.startswith("restricted: writing here needs a payment"), message

        # The owner's header is made by nostr-tools (getToken with the body's payload hash),
        # the linked key's consent in the body; both sign this link's URL and method.
        url = link_url(relay, alice, bob)
        answer = await node_tools.run_script(
            "nip98.mjs",
            {"secret": alice.hex(), "url": url, "method": "POST", "payload": {"consent": consent(url, bob)},
             "contentType": "application/json"},
        )
        assert answer["status"] == 200, answer
        assert answer["json"]["linked"] == pk(bob) and answer["json"]["linked_keys_max"] == 1
        assert answer["json"]["linked_keys"] == [pk(bob)]

        for secret, text in ((alice, "from the paying key"), (bob, "from the linked key")):
            ok, message = await writes(client, secret, text)
            assert ok, message
        # The plan's events a day (4) count both keys, not each.
        assert (await writes(client, bob, "third"))[0]
        assert (await writes(client, alice, "fourth"))[0]
        for secret in (alice, bob):
            ok, message = await writes(client, secret, "one too many")
            assert not ok and message.startswith("restricted: the Supporter tier allows 4 events a day"), message
            # The upgrade link names the plan's key: paying there upgrades the plan.
            assert f"pubkey={pk(alice)}" in message, message

        # The Supporter tier links one key: a second is refused, naming the tier that links more.
        full = await link(relay, alice, carol)
        assert full.status_code == 409, full.text
        assert full.json()["error"] == (
            "the Supporter plan links at most 1 other key: unlink one first, "
            "or upgrade to the Pro tier (20000 sats for 365 days)"
        )
        ok, message = await writes(client, carol, "not linked")
        assert not ok and message.startswith("restricted:"), message

        # The account page: the owner sees the linked key; the linked key sees whose plan it is.
        async with httpx.AsyncClient() as web:
            own_url = f"{base(relay)}/account/{pk(alice)}"
            mine = (await web.get(own_url, headers={
                "Accept": "application/json", "Authorization": nip98_header(alice, own_url)})).json()
            assert mine["linked_keys"] == [pk(bob)] and mine["linked_keys_max"] == 1 and mine["tier"] == "supporter"
            bob_url = f"{base(relay)}/account/{pk(bob)}"
            theirs = (await web.get(bob_url, headers={
                "Accept": "application/json", "Authorization": nip98_header(bob, bob_url)})).json()
            assert theirs["linked_to"] == pk(alice) and theirs["tier"] == "supporter" and theirs["admitted"]
            public = (await web.get(bob_url, headers={"Accept": "application/json"})).json()
            assert public["may_write"] and "linked_to" not in public  # whose plan: the key's own business


async def test_either_key_unlinks_and_signatures_are_checked(
    relay_factory: RelayFactory, storage: dict[str, str], alice: bytes, bob: bytes
) -> None:
    carol, dave = crypto.generate_secret(), crypto.generate_secret()
    payments = {**PAID, "tiers": {"pro": TIERS["pro"]}}
    async with relay_factory(storage=storage, payments=payments) as relay, NostrClient(relay.url) as client:
        now = int(time.time())
        await ledger_of(relay).update_account(pk(alice), now, admitted_until=now + 86400, role="pro")

        # Refusals, each a JSON error naming the rule; nothing is linked by any of them.
        stranger_consent = await link(relay, alice, bob, consent_by=carol)
        assert stranger_consent.status_code == 403, stranger_consent.text
        assert stranger_consent.json()["error"] == "the consent must be signed by the key being linked"
        stranger_header = await link(relay, alice, bob, header_by=bob)
        assert stranger_header.status_code == 403, stranger_header.text
        unpaid_owner = await link(relay, dave, bob)
        assert unpaid_owner.status_code == 403, unpaid_owner.text
        assert "pay first" in unpaid_owner.json()["error"]
        async with httpx.AsyncClient() as web:
            url = link_url(relay, alice, bob)
            for body in (b"{}", b"nope"):
                signed_only_by_owner = {"Authorization": nip98_header(alice, url, "POST", body=body)}
                bad = await web.post(url, content=body, headers=signed_only_by_owner)
                assert bad.status_code == 400 and "consent" in bad.json()["error"], bad.text
            unsigned = await web.post(url, content=orjson.dumps({"consent": consent(url, bob)}))
            assert unsigned.status_code == 401, unsigned.text
        assert not (await writes(client, bob, "still unlinked"))[0]

        # Two keys linked; a signed request is good once (a replay is refused).
        for key in (bob, carol):
            answer = await link(relay, alice, key)
            assert answer.status_code == 200, answer.text
        url = link_url(relay, alice, carol)
        body = orjson.dumps({"consent": consent(url, carol)})
        header = nip98_header(alice, url, "POST", body=body)
        async with httpx.AsyncClient() as web:
            for expected in (200, 409):  # linked already (ALREADY is fine), then the replay
                again = await web.post(url, content=body, headers={"Authorization": header})
                assert again.status_code == expected, again.text
        for key in (bob, carol):
            assert (await writes(client, key, "linked"))[0]
        # A key cannot join a second plan, nor a plan's key link itself elsewhere.
        await ledger_of(relay).update_account(pk(dave), now, admitted_until=now + 86400, role="pro")
        taken = await link(relay, dave, bob)
        assert taken.status_code == 409 and "another plan" in taken.json()["error"], taken.text
        chained = await link(relay, dave, alice)
        assert chained.status_code == 409 and "cannot join another plan" in chained.json()["error"], chained.text

        # Unlink by the linked key itself, and by the plan's key; a third key may do neither.
        outsider = await unlink(relay, alice, carol, dave)
        assert outsider.status_code == 403, outsider.text
        by_key = await unlink(relay, alice, bob, bob)
        assert by_key.status_code == 200 and by_key.json() == {"pubkey": pk(alice), "unlinked": pk(bob)}
        by_owner = await unlink(relay, alice, carol, alice)
        assert by_owner.status_code == 200, by_owner.text
        gone = await unlink(relay, alice, carol, alice)
        assert gone.status_code == 404, gone.text
        for key in (bob, carol):
            ok, message = await writes(client, key, "after the unlink")
            assert not ok and message.startswith("restricted: writing here needs a payment"), message
        assert (await writes(client, alice, "the plan goes on"))[0]


async def test_an_operator_unlinks_a_key_through_nip86(
    relay_factory: RelayFactory, storage: dict[str, str], alice: bytes, bob: bytes
) -> None:
    """``payments.unlinkkey`` (listed by ``supportedmethods``, admins only): the key is off
    the plan at once on this node, although its standing was cached for a minute; the
    plan's other keys write on; the plan's own key, or a key linked nowhere, is a clear error."""
    carol, operator = crypto.generate_secret(), crypto.generate_secret()
    payments = {**PAID, "tiers": {"pro": TIERS["pro"]}, "account_cache_seconds": 60}
    admin = {"pubkeys": [pk(operator)]}
    async with (
        relay_factory(storage=storage, payments=payments, admin=admin) as relay,
        NostrClient(relay.url) as client,
        httpx.AsyncClient() as web,
    ):

        async def rpc(method: str, params: list[Any], signer: bytes = operator) -> httpx.Response:
            body = orjson.dumps({"method": method, "params": params})
            headers = {
                "Authorization": nip98_header(signer, base(relay), "POST", body=body),
                "Content-Type": "application/nostr+json+rpc",
            }
            return await web.post(base(relay), content=body, headers=headers)

        async def answer(method: str, params: list[Any]) -> dict[str, Any]:
            res = await rpc(method, params)
            assert res.status_code == 200, res.text
            doc: dict[str, Any] = res.json()
            return doc

        now = int(time.time())
        await ledger_of(relay).update_account(pk(alice), now, admitted_until=now + 86400, role="pro")
        for key in (bob, carol):
            assert (await link(relay, alice, key)).status_code == 200
            assert (await writes(client, key, "linked"))[0]  # cached as the plan's, for a minute

        assert "payments.unlinkkey" in (await answer("supportedmethods", []))["result"]
        not_admin = await rpc("payments.unlinkkey", [pk(bob)], signer=alice)
        assert not_admin.status_code == 401, not_admin.text
        owner = await answer("payments.unlinkkey", [pk(alice)])
        assert owner["result"] is None, owner
        said, _, named = owner["error"].partition(" (")
        plan_key = "is the key of a plan, not a linked key: unlink its linked keys instead"
        assert said == f"payments.unlinkkey: {pk(alice)} {plan_key}", owner
        assert sorted(named.removesuffix(")").split(", ")) == sorted([pk(bob), pk(carol)]), owner
        for bad, why in (
            ([], "params must be [pubkey]"),
            ([pk(bob), pk(carol)], "params must be [pubkey]"),
            (["nope"], "first param must be a pubkey (64 hex characters or npub)"),
        ):
            assert (await answer("payments.unlinkkey", bad))["error"] == f"payments.unlinkkey: {why}"

        done = await answer("payments.unlinkkey", [npub_encode(pk(bob))])
        assert done["result"] == {
            "pubkey": pk(bob),
            "unlinked_from": pk(alice),
            "linked_keys": [pk(carol)],
            "summary": f"unlinked {pk(bob)} from the plan of {pk(alice)}; 1 other key still linked to it",
        }
        ok, message = await writes(client, bob, "after the operator's unlink")
        assert not ok and message.startswith("restricted: writing here needs a payment"), message
        for key in (alice, carol):
            assert (await writes(client, key, "the plan goes on"))[0]
        again = await answer("payments.unlinkkey", [pk(bob)])
        assert again["error"] == f"payments.unlinkkey: {pk(bob)} is not linked to any plan", again
        links_url = f"{base(relay)}/account/{pk(alice)}/links"
        links = (await web.get(links_url, headers={"Authorization": nip98_header(alice, links_url)})).json()
        assert links["linked_keys"] == [pk(carol)]


async def test_a_plan_shares_its_storage_quota_and_credit_between_its_keys(
    relay_factory: RelayFactory, storage: dict[str, str], alice: bytes, bob: bytes
) -> None:
    """A plan that is no tier links ``[payments] linked_keys`` keys (3 by default); its
    storage quota (``retention.member_max_bytes_per_pubkey``) and its prepaid credit hold
    for the keys together."""
    carol = crypto.generate_secret()
    payments = {
        "enabled": True, "backend": "fake", "account_cache_seconds": 0,
        "credit": {"enabled": True, "default_price_msat": 400_000},
    }
    retention = {"member_max_bytes_per_pubkey": 2500}  # two of these events (~900 bytes each), not three
    async with relay_factory(storage=storage, payments=payments, retention=retention) as relay:
        now = int(time.time())
        ledger = ledger_of(relay)
        await ledger.update_account(pk(alice), now, admitted_until=now + 86400)
        answer = await link(relay, alice, bob)
        assert answer.status_code == 200 and answer.json()["linked_keys_max"] == 3, answer.text
        async with NostrClient(relay.url) as client:
            assert (await writes(client, alice, "a" * 600))[0]
            assert (await writes(client, bob, "b" * 600))[0]
            ok, message = await writes(client, bob, "c" * 600)  # bob alone holds ~900 bytes: the plan's count
            assert not ok and message == "blocked: storage quota reached", message

        # Credit: the linked key's priced events are paid from the plan's balance.
        await ledger.update_account(pk(carol), now, credit_delta_msat=1_000_000)
        dave = crypto.generate_secret()
        assert (await link(relay, carol, dave)).status_code == 200
        async with NostrClient(relay.url) as client:
            for i in range(2):
                ok, message = await writes(client, dave, f"paid by the plan {i}")
                assert ok, message
            account = await ledger.get_account(pk(carol))
            assert account is not None and account.credit_msat == 200_000
            ok, message = await writes(client, dave, "no more")
            assert not ok and message.startswith("restricted: not enough credit for this event"), message
            assert f"pay at {base(relay)}/join?pubkey={pk(carol)}" in message, message


async def test_links_survive_a_restart(relay_factory: RelayFactory, alice: bytes, bob: bytes) -> None:
    payments = {**PAID, "tiers": {"pro": TIERS["pro"]}}
    async with relay_factory(payments=payments) as relay:
        now = int(time.time())
        await ledger_of(relay).update_account(pk(alice), now, admitted_until=now + 86400, role="pro")
        assert (await link(relay, alice, bob)).status_code == 200
    async with relay_factory(payments=payments) as relay, NostrClient(relay.url) as client:
        ok, message = await writes(client, bob, "after the restart")
        assert ok, message


async def test_links_work_on_every_node(
    relay_factory: RelayFactory, pg_storage: dict[str, str], alice: bytes, bob: bytes
) -> None:
    """Two relays on one PostgreSQL, each with the default cache (5 s): a link made on one
    reaches the other through the account change counter, and so does an unlink."""
    payments = {**PAID, "account_cache_seconds": 5.0, "tiers": {"pro": TIERS["pro"]}}
    async with (
        relay_factory(storage=pg_storage, payments=payments) as a,
        relay_factory(storage=pg_storage, payments=payments) as b,
        NostrClient(b.url) as on_b,
    ):
        now = int(time.time())
        await ledger_of(a).update_account(pk(alice), now, admitted_until=now + 86400, role="pro")
        ok, message = await writes(on_b, bob, "before")  # node b caches bob as unpaid
        assert not ok, message
        assert (await link(a, alice, bob)).status_code == 200

        async def bob_writes_on_b() -> bool:
            return (await writes(on_b, bob, f"linked {time.monotonic_ns()}"))[0]

        await eventually(bob_writes_on_b, 3, what="the link made on node a to reach node b")
        assert (await unlink(b, alice, bob, bob)).status_code == 200
        async with NostrClient(a.url) as on_a:

            async def bob_refused_on_a() -> bool:
                return not (await writes(on_a, bob, f"unlinked {time.monotonic_ns()}"))[0]

            await eventually(bob_refused_on_a, 3, what="the unlink made on node b to reach node a")


async def test_a_signer_with_two_keys_on_one_connection_writes_with_both_under_one_plan(
    relay_factory: RelayFactory, alice: bytes, bob: bytes
) -> None:
    """NIP-42 multi-user AUTH with a paid relay that wants authenticated writers: a client
    holding a member's key and a key linked to that plan authenticates both on one
    connection, and each writes (NIP-70 protected events need their own author's AUTH);
    an unlinked third key authenticated there too is still asked to pay."""
    carol = crypto.generate_secret()
    payments = {**PAID, "tiers": {"pro": TIERS["pro"]}}
    async with relay_factory(payments=payments, auth={"required_to_write": True}) as relay:
        now = int(time.time())
        await ledger_of(relay).update_account(pk(alice), now, admitted_until=now + 86400, role="pro")
        assert (await link(relay, alice, bob)).status_code == 200
        async with NostrClient(relay.url) as client:
            ok, message = await client.publish(signed(alice, 1, "not yet authenticated"))
            assert not ok and message.startswith("auth-required:"), message
            for secret in (alice, bob, carol):
                assert await client.auth(secret, relay.url) == (True, "")
            for secret in (alice, bob):
                ok, message = await client.publish(signed(secret, 1, "protected", [["-"]]))
                assert ok, message
            ok, message = await client.publish(signed(carol, 1, "protected", [["-"]]))
            assert not ok and message.startswith("restricted: writing here needs a payment"), message


async def test_a_refused_link_or_unlink_records_no_signature_use(
    relay_factory: RelayFactory, alice: bytes, bob: bytes
) -> None:
    """A stranger's well-signed link and unlink requests are refused before the relay writes
    anything: the single-use record of a signature is a row through the store's one writer,
    so it is taken only once the request acts. The same signed request is refused for the
    same reason when sent again (not as a replay), and goes through once it may act."""
    carol = crypto.generate_secret()
    async with relay_factory(payments=PAID) as relay, httpx.AsyncClient() as web:
        url = link_url(relay, alice, bob)  # alice has no plan yet
        body = orjson.dumps({"consent": consent(url, bob)})
        headers = {"Authorization": nip98_header(alice, url, "POST", body=body)}
        for _ in range(2):
            refused = await web.post(url, content=body, headers=headers)
            assert refused.status_code == 403 and "pay first" in refused.json()["error"], refused.text
        unlink_url = link_url(relay, alice, carol)  # carol is linked to nothing
        unlink_headers = {"Authorization": nip98_header(carol, unlink_url, "DELETE")}
        for _ in range(2):
            missing = await web.delete(unlink_url, headers=unlink_headers)
            assert missing.status_code == 404 and "not linked" in missing.json()["error"], missing.text
        now = int(time.time())
        await ledger_of(relay).update_account(pk(alice), now, admitted_until=now + 86400, role="pro")
        linked = await web.post(url, content=body, headers=headers)  # the very same signatures
        assert linked.status_code == 200 and linked.json()["linked"] == pk(bob), linked.text
        replay = await web.post(url, content=body, headers=headers)
        assert replay.status_code == 409 and "used already" in replay.json()["error"], replay.text
