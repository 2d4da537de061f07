"""A NIP-98 header authorises one request on the whole relay (issue 17 item 3): a captured
NIP-86 ``payments.grant`` header replayed after a restart, or on another node of the same
database, is refused, and so is a replayed console sign-in. Real HTTP to real relays on one
SQLite file or one PostgreSQL schema (``storage``): the restarted relay and the second node
answer to the same public address, as they would in production."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx

from relay.nostr import crypto
from relay.session.server import Relay
from tests.conftest import RelayFactory
from tests.lightning.payment_stack import ledger_of, nip98_header

PUBLIC = "ws://relay.test"  # every relay here answers to this address (NIP-98's u tag)
PAID: dict[str, Any] = {"enabled": True, "backend": "fake", "account_cache_seconds": 0}


def nodes(relay_factory: RelayFactory, storage: dict[str, str], admin: bytes) -> Any:
    """``nodes()``: a relay with payments on this storage, one operator, the shared address."""

    def start() -> contextlib.AbstractAsyncContextManager[Relay]:
        return relay_factory(
            storage=storage,
            relay={"public_url": PUBLIC},
            admin={"pubkeys": [crypto.public_key(admin).hex()]},
            payments=PAID,
        )

    return start


@contextlib.asynccontextmanager
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as client:
        yield client


def grant_request(admin: bytes, member: str, sats: int) -> tuple[bytes, dict[str, str]]:
    """A signed ``payments.grant`` as an operator's tool sends it (body and headers)."""
    body = json.dumps({"method": "payments.grant", "params": [member, {"credit_sats": sats}]}).encode()
    headers = {
        "Content-Type": "application/nostr+json+rpc",
        "Authorization": nip98_header(admin, "http://relay.test/", "POST", body=body),
    }
    return body, headers


async def post(client: httpx.AsyncClient, relay: Relay, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return await client.post(f"http://127.0.0.1:{relay.port}/", content=body, headers=headers)


async def credit_msat(relay: Relay, pubkey: str) -> int:
    account = await ledger_of(relay).get_account(pubkey)
    return 0 if account is None else account.credit_msat


async def test_a_replayed_nip86_grant_is_refused_after_a_restart(
    relay_factory: RelayFactory, storage: dict[str, str], alice: bytes, bob: bytes
) -> None:
    start = nodes(relay_factory, storage, alice)
    member = crypto.public_key(bob).hex()
    body, headers = grant_request(alice, member, 100)
    async with http() as client:
        async with start() as relay:
            first = await post(client, relay, body, headers)
            assert first.status_code == 200 and first.json().get("error") is None, first.text
        async with start() as restarted:
            replay = await post(client, restarted, body, headers)
            assert replay.status_code == 401, replay.text
            assert replay.json()["error"] == "unauthorized: this Authorization was used already"
            assert await credit_msat(restarted, member) == 100_000  # granted once, not doubled
            # a fresh header (another request) is honoured: the guard is per header
            body, headers = grant_request(alice, member, 5)
            again = await post(client, restarted, body, headers)
            assert again.status_code == 200, again.text
            assert await credit_msat(restarted, member) == 105_000


async def test_a_nip86_header_used_on_one_node_is_refused_on_another(
    relay_factory: RelayFactory, storage: dict[str, str], alice: bytes, bob: bytes
) -> None:
    """Two relays on one database at once: two nodes of one PostgreSQL, or two processes
    on one SQLite file (what ``--workers`` runs)."""
    start = nodes(relay_factory, storage, alice)
    member = crypto.public_key(bob).hex()
    body, headers = grant_request(alice, member, 21)
    async with start() as node_a, start() as node_b, http() as client:
        assert (await post(client, node_a, body, headers)).status_code == 200
        replay = await post(client, node_b, body, headers)
        assert replay.status_code == 401 and "used already" in replay.json()["error"], replay.text
        replay = await post(client, node_a, body, headers)
        assert replay.status_code == 401, replay.text
        assert await credit_msat(node_b, member) == 21_000


async def test_a_replayed_console_sign_in_is_refused_on_another_node(
    relay_factory: RelayFactory, storage: dict[str, str], alice: bytes
) -> None:
    start = nodes(relay_factory, storage, alice)
    url = "http://relay.test/admin/api/panels"
    header = {"Authorization": nip98_header(alice, url)}
    async with start() as node_a, start() as node_b, http() as client:
        first = await client.get(f"http://127.0.0.1:{node_a.port}/admin/api/panels", headers=header)
        assert first.status_code == 200, first.text
        for node in (node_a, node_b):
            replay = await client.get(f"http://127.0.0.1:{node.port}/admin/api/panels", headers=header)
            assert replay.status_code == 401, replay.text
            assert "used already" in replay.json()["error"], replay.text
