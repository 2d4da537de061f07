"""NIP-77 over real WebSockets: independent clients (nostr-tools' NegentropySync in Node,
rust-nostr's sync through ``nostr-sdk``) reconcile with the relay on SQLite and PostgreSQL
and find exactly the difference; limits, errors and private kinds as REQ treats them."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from relay.nostr.event import Event
from relay.nostr.negentropy import ItemSet, Negentropy
from relay.session.server import Relay
from tests.conftest import RelayFactory
from tests.node_tools import NODE_DIR, ensure_installed
from tests.nostr_client import NostrClient, signed


@pytest.fixture(scope="session")
def node_modules() -> Path:
    """nostr-tools and ws, installed once into tests/node."""
    why = ensure_installed()
    if why is not None:
        pytest.skip(why)
    return NODE_DIR / "node_modules"


async def publish_all(relay: Relay, events: list[Event]) -> None:
    async with NostrClient(relay.url) as client:
        for ev in events:
            await client.send(["EVENT", ev.to_dict()])
        pending = {ev.id for ev in events}
        while pending:
            msg = await client.recv_where(lambda m: m[0] == "OK")
            assert msg[2] is True, msg
            pending.discard(msg[1])


def three_sets(secret: bytes, common: int = 300, each: int = 25) -> tuple[list[Event], list[Event], list[Event]]:
    """Events both sides hold, events only the client holds, events only the relay holds;
    many share a second, so bounds need id prefixes."""
    base = int(time.time()) - 10_000
    shared = [signed(secret, 1, f"common {i}", created_at=base + i // 4) for i in range(common)]
    client_only = [signed(secret, 1, f"client {i}", created_at=base + i * 37 % 100) for i in range(each)]
    relay_only = [signed(secret, 1, f"relay {i}", created_at=base + i * 53 % 100) for i in range(each)]
    return shared, client_only, relay_only


async def test_nostr_tools_negentropy_sync_finds_exactly_the_difference(
    relay_factory: RelayFactory, storage: dict[str, str], alice: bytes, node_modules: Path, tmp_path: Path
) -> None:
    shared, client_only, relay_only = three_sets(alice)
    items = tmp_path / "items.json"
    items.write_text(json.dumps([[ev.created_at, ev.id] for ev in shared + client_only]))
    async with relay_factory(storage=storage) as relay:
        await publish_all(relay, shared + relay_only + [signed(alice, 7, "+")])  # a kind outside the filter
        proc = await asyncio.create_subprocess_exec(
            "node", str(NODE_DIR / "neg_sync.mjs"), relay.url, str(items), json.dumps({"kinds": [1]}),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 90)
    result = json.loads(out.decode().strip().splitlines()[-1])
    assert result["error"] is None, (result, err.decode()[-2000:])
    assert sorted(result["have"]) == sorted(ev.id for ev in client_only)
    assert sorted(result["need"]) == sorted(ev.id for ev in relay_only)


n = pytest.importorskip("nostr_sdk", reason="nostr-sdk (rust-nostr bindings) not installed")


def sdk_event(ev: Event) -> Any:
    return n.Event.from_json(ev.raw.decode())


async def test_rust_nostr_sync_finds_the_difference_then_transfers_both_ways(
    relay_factory: RelayFactory, storage: dict[str, str], alice: bytes, tmp_path: Path
) -> None:
    shared, client_only, relay_only = three_sets(alice)
    async with relay_factory(storage=storage) as relay:
        await publish_all(relay, shared + relay_only)
        # The default Client keeps no events; sync reconciles the client's database.
        client = n.ClientBuilder().database(await n.NostrLmdb.open(str(tmp_path / "sdk-db"))).build()
        await client.add_relay(n.RelayUrl.parse(relay.url))
        await client.connect()
        try:
            db = client.database()
            for ev in shared + client_only:
                await db.save_event(sdk_event(ev))
            author = n.Filter().author(n.PublicKey.parse(shared[0].pubkey)).kind(n.Kind(1))
            dry = await client.sync(author, opts=n.SyncOptions().direction(n.SyncDirection.BOTH).dry_run())
            assert dry.failed == {}, dry.failed
            assert sorted(i.to_hex() for i in dry.report.local) == sorted(ev.id for ev in client_only)
            assert sorted(i.to_hex() for i in dry.report.remote) == sorted(ev.id for ev in relay_only)
            up = await client.sync(author, opts=n.SyncOptions().direction(n.SyncDirection.UP))
            assert up.failed == {}, up.failed
            assert sorted(i.to_hex() for i in up.report.sent) == sorted(ev.id for ev in client_only)
        finally:
            await client.shutdown()
        async with NostrClient(relay.url) as ours:
            got = await ours.req("all", {"kinds": [1], "limit": 1000})
        assert len(got) == len(shared) + len(client_only) + len(relay_only)


# --- the protocol as a client sees it: limits, errors, private kinds -------------------------


async def neg_open(client: NostrClient, sub_id: str, f: dict[str, Any], neg: Negentropy) -> list[Any]:
    await client.send(["NEG-OPEN", sub_id, f, neg.initiate().hex()])
    return await client.recv_where(lambda m: m[0] in ("NEG-MSG", "NEG-ERR") and m[1] == sub_id)


async def needed_ids(client: NostrClient, f: dict[str, Any]) -> set[str]:
    """What a client holding nothing learns it needs: the relay's set for ``f``."""
    neg = Negentropy(ItemSet([]))
    msg = await neg_open(client, "need", f, neg)
    need: set[str] = set()
    while True:
        assert msg[0] == "NEG-MSG", msg
        result = neg.reconcile_initiator(bytes.fromhex(msg[2]))
        need.update(i.hex() for i in result.need)
        if result.reply is None:
            await client.send(["NEG-CLOSE", "need"])
            return need
        await client.send(["NEG-MSG", "need", result.reply.hex()])
        msg = await client.recv_where(lambda m: m[0] in ("NEG-MSG", "NEG-ERR") and m[1] == "need")


async def test_too_many_items_or_sessions_is_blocked(relay_factory: RelayFactory, alice: bytes) -> None:
    events = [signed(alice, 1, f"n{i}") for i in range(6)]
    async with relay_factory(negentropy={"max_items": 5, "max_sessions": 1, "opens_per_second": 10_000}) as relay:
        await publish_all(relay, events)
        async with NostrClient(relay.url) as client:
            assert await neg_open(client, "big", {}, Negentropy(ItemSet([]))) == [
                "NEG-ERR", "big", "blocked: this query matches more than 5 events"]
            assert (await neg_open(client, "a", {"limit": 5}, Negentropy(ItemSet([]))))[0] == "NEG-MSG"
            assert await neg_open(client, "b", {"limit": 5}, Negentropy(ItemSet([]))) == [
                "NEG-ERR", "b", "blocked: at most 1 open reconciliations per connection"]
            await client.send(["NEG-CLOSE", "a"])
            assert (await neg_open(client, "b", {"limit": 5}, Negentropy(ItemSet([]))))[0] == "NEG-MSG"
            await client.assert_alive()


async def test_neg_open_is_rate_limited_per_connection(relay_factory: RelayFactory) -> None:
    limits = {"max_sessions": 2, "opens_per_second": 0.01}
    async with relay_factory(negentropy=limits) as relay, NostrClient(relay.url) as client:
        answers = [await neg_open(client, "a", {}, Negentropy(ItemSet([]))) for _ in range(5)]
        # Re-opening an id replaces it but still costs a token: a burst of 2 x max_sessions.
        assert [m[0] for m in answers[:4]] == ["NEG-MSG"] * 4
        assert answers[4] == ["NEG-ERR", "a", "rate-limited: too many NEG-OPEN, slow down"]


async def test_bad_negentropy_messages_get_neg_err(relay: Relay, client: NostrClient) -> None:
    await client.send(["NEG-MSG", "nope", "61"])
    assert await client.recv() == ["NEG-ERR", "nope", "closed: no open reconciliation with this id"]
    await client.send(["NEG-OPEN", "x", {}, "zz"])
    assert await client.recv() == ["NEG-ERR", "x", "invalid: negentropy message must be a hex string"]
    await client.send(["NEG-OPEN", "y", {"kinds": "1"}, "6100"])
    assert await client.recv() == ["NEG-ERR", "y", "invalid: kinds must be an array"]
    await client.send(["NEG-OPEN", "z", {}, "61000003"])  # unknown mode
    assert await client.recv() == ["NEG-ERR", "z", "invalid: unknown range mode 3"]
    await client.send(["NEG-MSG", "z", "61"])  # an error closed it
    assert (await client.recv())[:2] == ["NEG-ERR", "z"]
    await client.send(["NEG-OPEN", "v", {}, "62"])  # a later protocol version: we answer with ours
    assert await client.recv() == ["NEG-MSG", "v", "61"]
    await client.assert_alive()


async def test_private_kinds_follow_the_req_visibility_rule(
    relay_factory: RelayFactory, storage: dict[str, str], alice: bytes, bob: bytes
) -> None:
    from relay.nostr import crypto

    bob_pk = crypto.public_key(bob).hex()
    dm = signed(alice, 4, "secret", [["p", bob_pk]])
    note = signed(alice, 1, "public")
    async with relay_factory(storage=storage) as relay:
        await publish_all(relay, [dm, note])
        async with NostrClient(relay.url) as anon:
            assert await needed_ids(anon, {}) == {note.id}
            msg = await neg_open(anon, "dm", {"kinds": [4]}, Negentropy(ItemSet([])))
            assert msg[0] == "NEG-ERR" and msg[2].startswith("auth-required:"), msg
        async with NostrClient(relay.url) as reader:
            assert await reader.auth(bob, relay.url) == (True, "")
            assert await needed_ids(reader, {}) == {note.id, dm.id}


async def test_nip11_lists_77_and_its_limits(relay_factory: RelayFactory) -> None:
    async with relay_factory(negentropy={"max_sessions": 3, "max_items": 1000}) as relay, httpx.AsyncClient() as http:
        url = relay.url.replace("ws://", "http://")
        doc = (await http.get(url, headers={"Accept": "application/nostr+json"})).json()
    assert 77 in doc["supported_nips"]
    assert doc["limitation"]["max_negentropy_sessions"] == 3
    assert doc["limitation"]["max_negentropy_items"] == 1000

