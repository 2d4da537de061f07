"""NIP-86 management: the pure method dispatch (relay/nostr/management.py) and its state in both
stores, surviving a restart and seen by a second node through the change counter."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from websockets.exceptions import InvalidStatus

from relay.nostr import crypto
from relay.nostr.event import sign_event
from relay.nostr.management import ManagementState, Outcome, dispatch, supported_methods
from relay.session.server import Relay
from relay.store.base import Store
from relay.store.postgres import PostgresStore
from relay.store.sqlite import SqliteStore
from tests.conftest import RelayFactory
from tests.lightning.payment_stack import ledger_of
from tests.nostr_client import NostrClient, signed
from tests.test_nodes import _drop_schema, pg_dsn  # noqa: F401  (fixture)

A = "a" * 64
B = "b" * 64
EV = "e" * 64


def call(state: ManagementState, method: str, *params: Any) -> Outcome:
    return dispatch(state, orjson.dumps({"method": method, "params": list(params)}))


def run(state: ManagementState, method: str, *params: Any) -> ManagementState:
    outcome = call(state, method, *params)
    assert outcome.response == {"result": True}, outcome.response
    return state.apply(outcome.changes)


def test_supportedmethods_lists_every_method_nip86_names_here() -> None:
    methods = call(ManagementState(), "supportedmethods").response["result"]
    assert methods == supported_methods()
    for name in ("banpubkey", "unbanpubkey", "listbannedpubkeys", "allowpubkey", "unallowpubkey",
                 "listallowedpubkeys", "banevent", "allowevent", "listbannedevents", "changerelayname",
                 "changerelaydescription", "changerelayicon", "allowkind", "disallowkind", "listallowedkinds",
                 "blockip", "unblockip", "listblockedips"):
        assert name in methods


def test_ban_removes_from_allow_list_and_allow_removes_from_ban_list() -> None:
    state = run(ManagementState(), "allowpubkey", A, "friend")
    assert call(state, "listallowedpubkeys").response == {"result": [{"pubkey": A, "reason": "friend"}]}
    state = run(state, "banpubkey", A.upper(), "spam")
    assert call(state, "listbannedpubkeys").response == {"result": [{"pubkey": A, "reason": "spam"}]}
    assert call(state, "listallowedpubkeys").response == {"result": []}
    state = run(state, "unbanpubkey", A)
    assert call(state, "listbannedpubkeys").response == {"result": []}
    assert call(state, "listallowedpubkeys").response == {"result": []}  # NIP-86: not re-allowed


def test_events_kinds_ips_and_relay_info() -> None:
    state = run(ManagementState(), "banevent", EV, "illegal")
    assert call(state, "listbannedevents").response == {"result": [{"id": EV, "reason": "illegal"}]}
    state = run(state, "allowevent", EV)
    assert call(state, "listbannedevents").response == {"result": []}
    state = run(run(state, "allowkind", 1), "allowkind", 7)
    assert call(state, "listallowedkinds").response == {"result": [1, 7]}
    assert state.kind_allowed(1) and not state.kind_allowed(4)
    state = run(state, "disallowkind", 7)
    assert call(state, "listallowedkinds").response == {"result": [1]} and not state.kind_allowed(7)
    state = run(state, "blockip", " 2001:db8::0001 ", "abuse")
    assert call(state, "listblockedips").response == {"result": [{"ip": "2001:db8::1", "reason": "abuse"}]}
    state = run(state, "unblockip", "2001:db8::1")
    assert call(state, "listblockedips").response == {"result": []}
    state = run(run(state, "changerelayname", "Sats"), "changerelayicon", "https://x.example/i.png")
    assert dict(state.relay) == {"name": "Sats", "icon": "https://x.example/i.png"}


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"not json", "the body is not JSON"),
        (b'{"params": []}', "must be"),
        (b'{"method": "banpubkey", "params": {}}', "params must be an array"),
        (b'{"method": "banpubkey", "params": ["xyz"]}', "banpubkey: first param must be a 32-byte hex pubkey"),
        (b'{"method": "allowkind", "params": ["1"]}', "allowkind: first param must be a kind number"),
        (b'{"method": "allowkind", "params": [true]}', "allowkind: first param must be a kind number"),
        (b'{"method": "blockip", "params": ["example.com"]}', "is not an IP address"),
        (b'{"method": "dropdatabase", "params": []}', "unsupported method 'dropdatabase'"),
    ],
)
def test_bad_requests_are_answered_with_an_error_not_an_exception(body: bytes, error: str) -> None:
    outcome = dispatch(ManagementState(), body)
    assert outcome.changes == []
    assert outcome.response["result"] is None and error in outcome.response["error"]


@pytest.fixture(params=["sqlite", "postgres"])
async def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """Two stores on the same database (two nodes), opened; closed and dropped afterwards."""
    if request.param == "sqlite":
        made: list[Store] = [SqliteStore(tmp_path / "m.db"), SqliteStore(tmp_path / "m.db")]
        schema = None
    else:
        dsn = request.getfixturevalue("pg_dsn")
        schema = f"mgmt_{uuid.uuid4().hex[:12]}"
        made = [PostgresStore(dsn, schema=schema), PostgresStore(dsn, schema=schema)]
    for store in made:
        await store.open()
    yield made
    for store in made:
        await store.close()
    if schema is not None:
        await _drop_schema(request.getfixturevalue("pg_dsn"), schema)


async def test_state_is_stored_shared_between_nodes_and_survives_reopening(stores: list[Store], tmp_path: Path) -> None:
    node_a, node_b = stores
    before = await node_b.management_changes()
    state = ManagementState.from_rows(await node_a.list_management())
    for method, params in (("banpubkey", [A, "spam"]), ("allowpubkey", [B]), ("allowkind", [1]),
                           ("changerelayname", ["Renamed"]), ("banevent", [EV])):
        outcome = call(state, method, *params)
        await node_a.apply_management([(c.topic, c.key, c.value) for c in outcome.changes])
        state = state.apply(outcome.changes)
    assert await node_b.management_changes() > before  # node B knows to reload
    seen = ManagementState.from_rows(await node_b.list_management())
    assert seen == state
    assert dict(seen.banned_pubkeys) == {A: "spam"} and dict(seen.relay) == {"name": "Renamed"}
    outcome = call(seen, "unbanpubkey", A)
    await node_b.apply_management([(c.topic, c.key, c.value) for c in outcome.changes])
    await node_a.close()
    await node_a.open()  # a restart
    assert dict(ManagementState.from_rows(await node_a.list_management()).banned_pubkeys) == {}


# --- enforced by a running relay, over WebSocket ---------------------------------------------


async def nip86(relay: Relay, method: str, *params: Any) -> Any:
    """What the NIP-86 route does once a request is authorised (the route waits for the
    HTTP router with request bodies, issue 9)."""
    outcome = await relay.management.handle(orjson.dumps({"method": method, "params": list(params)}))
    assert "error" not in outcome.response, outcome.response
    return outcome.response["result"]


async def test_ban_hides_stored_events_and_refuses_writes_until_unbanned(
    relay_factory: RelayFactory, alice: bytes, bob: bytes
) -> None:
    a = crypto.public_key(alice).hex()
    async with relay_factory() as relay, NostrClient(relay.url) as client:
        mine = signed(alice, 1, "before the ban")
        theirs = signed(bob, 1, "bob's")
        other = signed(bob, 1, "bob's other")
        for event in (mine, theirs, other):
            assert (await client.publish(event))[0]
        await client.send(["REQ", "live", {"kinds": [1]}])
        await client.recv_where(lambda m: m[0] == "EOSE")
        await nip86(relay, "banpubkey", a, "spam")
        await nip86(relay, "banevent", other.id, "illegal")
        ok, message = await client.publish(signed(alice, 1, "after the ban"))
        assert not ok and message == "blocked: this pubkey is banned from this relay"
        assert {e["id"] for e in await client.req("all", {"kinds": [1]})} == {theirs.id}
        ok, message = await client.publish(other)
        assert not ok and message.startswith("blocked:")
        await nip86(relay, "unbanpubkey", a)
        assert {e["id"] for e in await client.req("again", {"kinds": [1]})} == {mine.id, theirs.id}
        await nip86(relay, "banpubkey", a)
        # NIP-62: a banned author may still ask to vanish
        ok, message = await client.publish(signed(alice, 62, "", [["relay", "ALL_RELAYS"]]))
        assert ok, message
        await nip86(relay, "unbanpubkey", a)
        assert {e["id"] for e in await client.req("vanished", {"kinds": [1]})} == {theirs.id}


async def test_allowed_kinds_and_blocked_ip(relay_factory: RelayFactory, alice: bytes) -> None:
    async with relay_factory() as relay, NostrClient(relay.url) as client:
        await nip86(relay, "allowkind", 1)
        assert (await client.publish(signed(alice, 1, "a note")))[0]
        ok, message = await client.publish(signed(alice, 7, "+"))
        assert not ok and message == "blocked: kind 7 is not accepted by this relay"
        await nip86(relay, "blockip", "127.0.0.1", "abuse")
        ok, message = await client.publish(signed(alice, 1, "from a blocked address"))
        assert not ok and message == "blocked: your address is blocked"
        with pytest.raises(InvalidStatus) as refused:  # the upgrade itself is refused
            async with NostrClient(relay.url):
                pass
        assert refused.value.response.status_code == 403


async def test_ban_on_one_node_applies_on_the_other_and_after_restart(
    relay_factory: RelayFactory, pg_dsn: str, alice: bytes  # noqa: F811
) -> None:
    schema = f"mgmt_{uuid.uuid4().hex[:12]}"
    storage = {"url": pg_dsn, "schema_name": schema}
    a = crypto.public_key(alice).hex()
    try:
        async with (
            relay_factory(storage=storage) as node_a,
            relay_factory(storage=storage) as node_b,
            NostrClient(node_b.url) as on_b,
        ):
            await nip86(node_a, "banpubkey", a)
            deadline = time.monotonic() + 3
            while (await on_b.publish(signed(alice, 1, f"{time.monotonic()}")))[0]:
                assert time.monotonic() < deadline, "node B did not learn of the ban"
                await asyncio.sleep(0.1)
        async with relay_factory(storage=storage) as again, NostrClient(again.url) as client:
            ok, message = await client.publish(signed(alice, 1, "after a restart"))
            assert not ok and message.startswith("blocked:")
    finally:
        await _drop_schema(pg_dsn, schema)


# --- NIP-98 authorisation of the route ---------------------------------------------------


def signed_header(secret: bytes, url: str, body: bytes, *, method: str = "POST", age: int = 0) -> str:
    tags = [["u", url], ["method", method], ["payload", hashlib.sha256(body).hexdigest()]]
    event = sign_event(secret, 27235, "", tags, created_at=int(time.time()) - age)
    return "Nostr " + base64.b64encode(orjson.dumps(event.to_dict())).decode()


async def test_only_an_admin_with_a_fresh_nip98_header_for_this_body_may_manage(
    relay_factory: RelayFactory, alice: bytes, bob: bytes
) -> None:
    admin = crypto.public_key(alice).hex()
    async with relay_factory(admin={"pubkeys": [admin]}) as relay:
        url = relay.url.replace("ws://", "http://")
        admins = frozenset(relay.settings.admin.pubkeys)
        body = orjson.dumps({"method": "banpubkey", "params": [B, "spam"]})

        async def attempt(header: str | None, sent: bytes = body) -> tuple[int, dict[str, Any]]:
            status, answer = await relay.management.handle_http(
                sent, header, urls=(url, relay.url), admins=admins, now=int(time.time())
            )
            return status, orjson.loads(answer)

        refusals = [
            await attempt(None),
            await attempt(signed_header(bob, url, body)),  # not an admin
            await attempt(signed_header(alice, url, body, age=600)),  # stale
            await attempt(signed_header(alice, url + "x", body)),  # another URL
            await attempt(signed_header(alice, url, body, method="GET")),
            await attempt(signed_header(alice, url, b"{}"), body),  # signed another body
        ]
        for status, answer in refusals:
            assert status == 401 and answer["error"].startswith("unauthorized:"), answer
        assert dict(relay.management.state.banned_pubkeys) == {}
        header = signed_header(alice, url, body)
        status, answer = await attempt(header)
        assert (status, answer) == (200, {"result": True})
        status, answer = await attempt(header)  # the same header again (captured and replayed)
        assert status == 401 and answer["error"] == "unauthorized: this Authorization was used already", answer
        status, answer = await attempt(signed_header(alice, relay.url, body))  # the ws:// form
        assert (status, answer) == (200, {"result": True})
        assert dict(relay.management.state.banned_pubkeys) == {B: "spam"}


async def test_reports_feed_the_moderation_queue_grouped_by_target(
    relay_factory: RelayFactory, alice: bytes, bob: bytes
) -> None:
    carol = crypto.generate_secret()
    async with relay_factory() as relay, NostrClient(relay.url) as client:
        bad = signed(alice, 1, "buy my coins")
        meh = signed(alice, 1, "rude words")
        for event in (bad, meh):
            assert (await client.publish(event))[0]
        a = crypto.public_key(alice).hex()
        reports = [
            signed(bob, 1984, "scam link", [["e", bad.id, "spam"], ["p", a]]),
            signed(carol, 1984, "", [["e", bad.id, "spam"], ["p", a]]),
            signed(carol, 1984, "", [["e", bad.id, "illegal"], ["p", a]], created_at=int(time.time()) - 1),
            signed(bob, 1984, "", [["e", meh.id, "profanity"], ["p", a]]),
            signed(bob, 1984, "", [["e", "f" * 64, "spam"]]),  # not stored here: not queued
        ]
        for report in reports:
            assert (await client.publish(report))[0]
        queue = await nip86(relay, "listeventsneedingmoderation")
        assert [(q["id"], q["count"]) for q in queue] == [(bad.id, 2), (meh.id, 1)]
        assert set(queue[0]["reasons"]) == {"spam scam link", "spam", "illegal"}
        assert queue[1]["reason"] == "profanity"
        await nip86(relay, "banevent", bad.id, "scam")
        queue = await nip86(relay, "listeventsneedingmoderation")
        assert [q["id"] for q in queue] == [meh.id]


async def test_nip86_over_http_with_nip98_applies_and_renames_the_relay(
    relay_factory: RelayFactory, alice: bytes, bob: bytes
) -> None:
    admin = crypto.public_key(alice).hex()
    async with relay_factory(admin={"pubkeys": [admin]}) as relay, httpx.AsyncClient() as http:
        url = relay.url.replace("ws://", "http://")
        rpc = {"Content-Type": "application/nostr+json+rpc"}

        async def post(method: str, params: list[Any], signer: bytes | None) -> httpx.Response:
            body = orjson.dumps({"method": method, "params": params})
            headers = dict(rpc)
            if signer is not None:
                headers["Authorization"] = signed_header(signer, url, body)
            return await http.post(url, content=body, headers=headers)

        unsigned = await post("banpubkey", [B], None)
        assert unsigned.status_code == 401 and unsigned.json()["error"].startswith("unauthorized:")
        assert (await post("banpubkey", [B], bob)).status_code == 401
        methods = await post("supportedmethods", [], alice)
        assert methods.status_code == 200 and "banpubkey" in methods.json()["result"]
        renamed = await post("changerelayname", ["Renamed relay"], alice)
        assert renamed.json() == {"result": True}
        doc = (await http.get(url, headers={"Accept": "application/nostr+json"})).json()
        assert doc["name"] == "Renamed relay" and 86 in doc["supported_nips"]
        assert (await post("banpubkey", [B, "spam"], alice)).json() == {"result": True}
        listed = await post("listbannedpubkeys", [], alice)
        assert listed.json() == {"result": [{"pubkey": B, "reason": "spam"}]}
        broken = await post("allowkind", ["one"], alice)
        assert broken.status_code == 200 and "kind number" in broken.json()["error"]


async def test_non_members_may_file_reports_within_an_hourly_allowance(
    relay_factory: RelayFactory, alice: bytes, bob: bytes
) -> None:
    payments = {"enabled": True, "backend": "fake", "inbox_events_per_hour": 2}
    async with relay_factory(payments=payments) as relay, NostrClient(relay.url) as client:
        await ledger_of(relay).update_account(crypto.public_key(alice).hex(), int(time.time()), allowed=True)
        target = signed(alice, 1, "reported note")
        assert (await client.publish(target))[0]
        ok, message = await client.publish(signed(bob, 1, "bob is not a member"))
        assert not ok and message.startswith("restricted:")
        for i in range(2):
            ok, message = await client.publish(signed(bob, 1984, f"spam {i}", [["e", target.id, "spam"]]))
            assert ok, message
        ok, message = await client.publish(signed(bob, 1984, "one too many", [["e", target.id, "spam"]]))
        assert not ok and message.startswith("rate-limited:")
        queue = await nip86(relay, "listeventsneedingmoderation")
        assert [(q["id"], q["count"]) for q in queue] == [(target.id, 1)]


async def test_count_hides_what_req_hides_for_banned_authors_and_events(
    relay_factory: RelayFactory, storage: dict[str, str], alice: bytes, bob: bytes
) -> None:
    """NIP-45 COUNT must not reveal what a NIP-86 ban hides from REQ, on both stores."""
    a = crypto.public_key(alice).hex()
    async with relay_factory(storage=storage) as relay, NostrClient(relay.url) as client:
        mine = [signed(alice, 1, f"alice {i}") for i in range(3)]
        theirs = signed(bob, 1, "bob's")
        other = signed(bob, 1, "bob's other")
        for event in (*mine, theirs, other):
            assert (await client.publish(event))[0]

        assert await client.count("before", {"kinds": [1]}) == 5
        await nip86(relay, "banpubkey", a, "spam")
        await nip86(relay, "banevent", other.id, "illegal")
        await nip86(relay, "banevent", mine[0].id, "banned event by a banned author: hidden once")
        req_ids = {e["id"] for e in await client.req("all", {"kinds": [1]})}
        assert req_ids == {theirs.id}
        assert await client.count("kinds", {"kinds": [1]}) == len(req_ids)
        assert await client.count("authors", {"authors": [a]}) == 0
        assert await client.count("ids", {"ids": [other.id, theirs.id]}) == 1
        assert await client.count("two", {"authors": [a]}, {"kinds": [1]}) == 1
        await nip86(relay, "unbanpubkey", a)
        assert await client.count("after", {"kinds": [1]}) == 3
