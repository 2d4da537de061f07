"""What a hostile zapper sends, and where it points the relay (issue 17, items 5 and 12).

- the LNURL callback's ``amount`` (and the join page's) in non-ASCII digits was HTTP 500
  and a traceback per request (``"²".isdigit()`` is true, ``int("²")`` raises);
- a zap request's ``relays`` may name IPv6 addresses that carry an IPv4 one (NAT64, 6to4,
  IPv4-compatible, SIIT), which Python's ``is_global`` calls global;
- a relay named there that never answers held the receipt's socket for the publish
  timeout plus websockets' 10 s close timeout, and the receipt's DNS lookups waited in
  asyncio's default thread pool, shared with NIP-77 set building.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import bolt11
import httpx
import orjson
import pytest

from lightning.zap import public_address
from relay.nostr import crypto
from relay.nostr.event import sign_event
from relay.session.server import Relay
from tests.conftest import RelayFactory
from tests.lightning.payment_stack import ledger_of
from tests.waiting import eventually

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 1.3


def payments(**zaps: Any) -> dict[str, Any]:
    return {
        "enabled": True,
        "backend": "fake",
        "poll_interval_seconds": 0.2,
        "admission": {"fee_sats": 21},
        "zaps": zaps,
    }


def base(relay: Relay) -> str:
    return f"http://127.0.0.1:{relay.port}"


async def zap_invoice(relay: Relay, web: httpx.AsyncClient, relays: list[str]) -> str:
    """A zap request naming ``relays``, sent to the LNURL callback; its payment hash."""
    me = (await web.get("/", headers={"Accept": "application/nostr+json"})).json()["self"]
    tags = [["p", me], ["amount", "21000"], ["relays", *relays]]
    request = sign_event(crypto.generate_secret(), 9734, "", tags, created_at=int(time.time()))
    params = {"amount": "21000", "nostr": orjson.dumps(request.to_dict()).decode()}
    answer = await web.get("/lnurlp/relay/callback", params=params)
    assert answer.status_code == 200, answer.text
    return str(bolt11.decode(answer.json()["pr"]).payment_hash)


def no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    noisy = [r for r in caplog.records if r.exc_info is not None or r.levelno >= logging.ERROR]
    assert noisy == [], [r.getMessage() for r in noisy]


async def test_non_ascii_digits_in_an_amount_are_a_400_without_a_traceback(
    relay_factory: RelayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with relay_factory(payments=payments()) as relay, httpx.AsyncClient(base_url=base(relay)) as web:
        # superscript two; fullwidth, Arabic-Indic and superscript forms of 21000
        for amount in ("\u00b2", "21000\u00b2", "\uff12\uff11\uff10\uff10\uff10", "\u0662\u0661\u0660\u0660\u0660",
                       "\u00b2\u00b9\u2070\u2070\u2070"):
            answer = await web.get("/lnurlp/relay/callback", params={"amount": amount, "nostr": "{}"})
            assert answer.status_code == 400, (amount, answer.text)
            assert answer.json() == {"status": "ERROR", "reason": "amount must be a whole number of millisatoshis"}
            body = {"pubkey": "ab" * 32, "plan": "admission", "amount": amount}
            joined = await web.post("/api/invoice", json=body)
            assert joined.status_code == 400, (amount, joined.text)
            assert joined.json() == {"error": "amount must be a whole number of sats"}
        assert await ledger_of(relay).list_invoices() == []
    no_traceback(caplog)


def test_ipv6_addresses_that_carry_an_ipv4_address_are_not_public() -> None:
    for url in (
        "ws://[::7f00:1]:7777",  # IPv4-compatible ::127.0.0.1
        "ws://[::a00:1]",  # ::10.0.0.1
        "ws://[64:ff9b::a9fe:a9fe]",  # NAT64 of 169.254.169.254
        "ws://[64:ff9b::808:808]",  # NAT64 of a public address: refused too, a gateway decides
        "ws://[64:ff9b:1::a00:1]",  # local-use NAT64
        "ws://[2002:a00:1::1]",  # 6to4 of 10.0.0.1
        "ws://[::ffff:0:a00:1]",  # SIIT
        "ws://[::ffff:10.0.0.1]",  # IPv4-mapped private
    ):
        assert public_address(url) is None, url
    assert public_address("wss://[2606:4700:4700::1111]/") == "2606:4700:4700::1111"
    assert public_address("wss://[::ffff:8.8.8.8]/") == "::ffff:8.8.8.8"


@asynccontextmanager
async def saturated_default_pool() -> AsyncIterator[None]:
    """Every thread of the loop's default executor busy until the block ends (what a burst
    of NIP-77 set building, or slow lookups sharing that pool, does to it)."""
    loop = asyncio.get_running_loop()
    release = threading.Event()
    jobs = [loop.run_in_executor(None, release.wait) for _ in range(40)]  # more than the pool's 32 at most
    try:
        yield
    finally:
        release.set()
        await asyncio.gather(*jobs)


async def test_receipt_addresses_are_checked_in_the_publishers_own_pool(
    relay_factory: RelayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """With asyncio's default pool fully busy, the receipt's relays are still looked up at
    once, and the IPv4-carrying IPv6 ones refused before any connection is tried."""
    caplog.set_level(logging.INFO, logger="lightning.zapper")
    names = ["ws://[::7f00:1]:1", "ws://[64:ff9b::7f00:1]:1", "ws://[2002:7f00:1::1]:1", "ws://localhost:1"]
    async with (
        relay_factory(payments=payments(publish_timeout_seconds=3.0)) as relay,
        httpx.AsyncClient(base_url=base(relay)) as web,
    ):
        payment_hash = await zap_invoice(relay, web, names)
        assert await ledger_of(relay).settle_invoice(payment_hash, 21_000, int(time.time()))  # as the watcher does
        invoice = await ledger_of(relay).get_invoice(payment_hash)
        ext: Any = relay.hooks.owner("payments")
        async with saturated_default_pool():
            ext.zapper.settled(invoice, None)  # the watcher's call after a credit

            async def all_refused() -> bool:
                return sum("not a public address" in r.getMessage() for r in caplog.records) == len(names)

            took = await eventually(all_refused, timeout=6.0, what="every receipt address refused")
        assert took < 1.5, took  # not after the 3 s publish timeout
        assert not [r for r in caplog.records if "not delivered" in r.getMessage()]


@dataclass
class SilentRelay:
    """Completes the WebSocket handshake, then reads and ignores everything: no OK, no
    answer to the close. Records how long each connection stayed open."""

    held: list[float] = field(default_factory=list)
    port: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        opened = time.monotonic()
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            key = next(
                line.split(b":", 1)[1].strip()
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"sec-websocket-key:")
            )
            accept = base64.b64encode(hashlib.sha1(key + WS_GUID.encode()).digest())
            writer.write(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
            )
            while await reader.read(65536):
                pass  # the EVENT, then the close frame: never answered
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self.held.append(time.monotonic() - opened)
            writer.close()


async def test_a_relay_that_never_answers_holds_the_receipt_socket_no_longer_than_the_timeout(
    relay_factory: RelayFactory,
) -> None:
    silent = SilentRelay()
    server = await asyncio.start_server(silent.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    zaps = {"publish_timeout_seconds": 1.0, "publish_to_private_addresses": True}
    try:
        async with (
            relay_factory(payments=payments(**zaps)) as relay,
            httpx.AsyncClient(base_url=base(relay)) as web,
        ):
            payment_hash = await zap_invoice(relay, web, [f"ws://127.0.0.1:{port}"])
            paid = await web.post(f"/api/fake/pay/{payment_hash}")
            assert paid.json()["simulated"] is True

            async def let_go() -> bool:
                return bool(silent.held)

            await eventually(let_go, timeout=20.0, what="the receipt's socket to close")
            # before: 1 s, then websockets' 10 s close timeout (about 11 s)
            assert silent.held[0] < 1.0 + 0.5, silent.held
    finally:
        server.close()
        await server.wait_closed()
