"""Nobody who pays nothing can keep a payer from getting an invoice (issue 17, item 1).

Before: 138 addresses asked the zap callback for 999 invoices in 26 s, filling
``max_pending_invoices``; every payer then got 503 from the join page and 429 from the
zap callback for the 15 minutes until they expired. The per-source buckets keyed on the
raw address (one IPv6 host has 2^64) and each route had its own.

Now both routes take from one rate budget per address group (IPv4 address, IPv6 /64, as
the connection caps group them), each group holds at most its share of unpaid invoices,
and a full pool evicts the oldest invoice of the biggest holder instead of refusing the
newcomer. The relay trusts ``X-Forwarded-For`` here (``real_ip_header``), so one test
client speaks for hundreds of addresses, as a proxy in front of the relay would.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable
from typing import Any

import httpx
import orjson

from relay.nostr import crypto
from relay.nostr.event import sign_event
from relay.session.server import Relay
from tests.conftest import RelayFactory
from tests.lightning.payment_stack import ledger_of

POOL = 120  # max_pending_invoices: small, so a few hundred requests overflow it
PAYMENTS: dict[str, Any] = {
    "enabled": True,
    "backend": "fake",
    "admission": {"fee_sats": 21},
    "credit": {"enabled": True},
    "max_pending_invoices": POOL,
    "zaps": {"publish_to_private_addresses": True},
}
SERVER = {"real_ip_header": "X-Forwarded-For"}
ONE_HOST_64 = "2001:db8:17:1"  # an IPv6 host: every address of its /64 is its to pick


def base(relay: Relay) -> str:
    return f"http://127.0.0.1:{relay.port}"


class Requester:
    """The join page's and the zap callback's invoice requests, from any address."""

    def __init__(self, web: httpx.AsyncClient, relay_pubkey: str) -> None:
        self.web = web
        self.relay_pubkey = relay_pubkey
        self.limit = asyncio.Semaphore(16)  # a flood, not a thundering herd of sockets

    async def join(self, address: str, pubkey: str | None = None) -> httpx.Response:
        body = {"pubkey": pubkey or os.urandom(32).hex(), "plan": "admission"}
        async with self.limit:
            return await self.web.post("/api/invoice", json=body, headers={"X-Forwarded-For": address})

    async def zap(self, address: str, secret: bytes | None = None) -> httpx.Response:
        """A valid kind-9734 zap request for 21 sats, signed by a fresh key (as in the report)."""
        request = sign_event(
            secret or crypto.generate_secret(), 9734, "", [["p", self.relay_pubkey], ["amount", "21000"]],
            created_at=int(time.time()),
        )  # fmt: skip
        params = {"amount": "21000", "nostr": orjson.dumps(request.to_dict()).decode()}
        async with self.limit:
            return await self.web.get("/lnurlp/relay/callback", params=params, headers={"X-Forwarded-For": address})


async def requester(relay: Relay, web: httpx.AsyncClient) -> Requester:
    info = await web.get("/", headers={"Accept": "application/nostr+json"})
    return Requester(web, info.json()["self"])


async def codes(calls: list[Awaitable[httpx.Response]]) -> list[int]:
    return [response.status_code for response in await asyncio.gather(*calls)]


async def pending_now(relay: Relay) -> list[Any]:
    now = int(time.time())
    return [i for i in await ledger_of(relay).list_invoices(pending_only=True) if i.expires_at > now]


async def test_a_flood_from_hundreds_of_addresses_cannot_lock_a_payer_out(
    relay_factory: RelayFactory, storage: dict[str, str]
) -> None:
    async with (
        relay_factory(payments=PAYMENTS, server=SERVER, storage=storage) as relay,
        httpx.AsyncClient(base_url=base(relay), timeout=30) as web,
    ):
        ask = await requester(relay, web)
        # 200 IPv4 addresses zap with fresh keys; one IPv6 host uses 200 addresses of its /64 on
        # the join page; 100 more IPv4 addresses ask the join page twice each: 600 requests.
        zap_flood = [ask.zap(f"10.17.{n // 200}.{n % 200 + 1}") for n in range(200)]
        v6_flood = [ask.join(f"{ONE_HOST_64}::{n + 1:x}") for n in range(200)]
        v4_flood = [ask.join(f"10.18.0.{n % 100 + 1}") for n in range(200)]
        zap_codes, v6_codes, v4_codes = await asyncio.gather(codes(zap_flood), codes(v6_flood), codes(v4_flood))
        assert zap_codes.count(200) == 200 and v4_codes.count(200) == 200, (zap_codes, v4_codes)
        # The /64 is one address group: one budget of 10 a minute, whatever address it picks.
        assert v6_codes.count(200) == 10 and v6_codes.count(429) == 190
        assert len(await pending_now(relay)) == POOL  # the pool's bound holds...

        # ...and yet a payer from another address gets an invoice on either route.
        joined = await ask.join("192.0.2.7", pubkey="ab" * 32)
        assert joined.status_code == 200, joined.text
        zapped = await ask.zap("198.51.100.9")
        assert zapped.status_code == 200, zapped.text
        from_v6 = await ask.join("2001:db8:99:1::5", pubkey="cd" * 32)
        assert from_v6.status_code == 200, from_v6.text

        # The flood goes on from 100 fresh addresses: the groups holding the most give way,
        # the payer's invoice stays payable.
        more = await codes([ask.zap(f"10.19.0.{n + 1}") for n in range(100)])
        assert more.count(200) == 100
        still = await ledger_of(relay).get_invoice(joined.json()["payment_hash"])
        assert still is not None and still.expires_at > int(time.time()) and still.state.value == "pending"
        assert len(await pending_now(relay)) == POOL
        by_source: dict[str, int] = {}
        for invoice in await pending_now(relay):
            by_source[invoice.source] = by_source.get(invoice.source, 0) + 1
        assert by_source["192.0.2.7"] == 1 and max(by_source.values()) == 1  # everyone down to a fair share


async def test_the_join_page_and_the_zap_callback_share_one_budget_per_address_group(
    relay_factory: RelayFactory,
) -> None:
    payments = {**PAYMENTS, "invoice_requests_per_minute": 4}
    async with (
        relay_factory(payments=payments, server=SERVER) as relay,
        httpx.AsyncClient(base_url=base(relay)) as web,
    ):
        ask = await requester(relay, web)
        # Two invoices on each route from two addresses of one /64 spend the group's 4.
        spent = [await ask.join(f"{ONE_HOST_64}::a"), await ask.zap(f"{ONE_HOST_64}::b"),
                 await ask.join(f"{ONE_HOST_64}::c"), await ask.zap(f"{ONE_HOST_64}::d")]  # fmt: skip
        assert [r.status_code for r in spent] == [200] * 4, [r.text for r in spent]
        refused_join = await ask.join(f"{ONE_HOST_64}::e")
        assert refused_join.status_code == 429 and refused_join.headers["Retry-After"] == "15"
        refused_zap = await ask.zap(f"{ONE_HOST_64}:0:0:0:f")
        assert refused_zap.status_code == 429
        assert refused_zap.json() == {"status": "ERROR", "reason": "too many invoices from your address; wait a minute"}
        # An IPv4-mapped IPv6 address is its IPv4 address; a neighbouring /64 is another group.
        assert (await ask.join("::ffff:192.0.2.44")).status_code == 200
        assert (await ask.zap("2001:db8:17:2::1")).status_code == 200


async def test_an_address_group_holds_at_most_its_share_of_unpaid_invoices(
    relay_factory: RelayFactory, storage: dict[str, str]
) -> None:
    payments = {**PAYMENTS, "invoice_requests_per_minute": 1000, "max_pending_invoices_per_address": 5}
    async with (
        relay_factory(payments=payments, server=SERVER, storage=storage) as relay,
        httpx.AsyncClient(base_url=base(relay)) as web,
    ):
        ask = await requester(relay, web)
        answers = [await (ask.join if n % 2 else ask.zap)(f"{ONE_HOST_64}::{n + 1:x}") for n in range(8)]
        assert [a.status_code for a in answers] == [200] * 5 + [429] * 3
        assert answers[-1].json()["error"] == "your address has 5 unpaid invoices; pay one or wait for them to expire"
        assert answers[-2].json()["reason"] == "your address has 5 unpaid invoices; pay one or wait for them to expire"
        held = [i for i in await pending_now(relay) if i.source == f"{ONE_HOST_64}::/64"]
        assert len(held) == 5
        # Paying one frees a place in the share; the paid invoice keeps no address.
        paid = await web.post(f"/api/fake/pay/{held[0].payment_hash}")
        assert paid.json()["simulated"] is True
        settled = await ledger_of(relay).get_invoice(held[0].payment_hash)
        assert settled is not None and settled.state.value == "paid" and settled.source == ""
        assert (await ask.join(f"{ONE_HOST_64}::99")).status_code == 200

