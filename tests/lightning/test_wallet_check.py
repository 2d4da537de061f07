"""The start-up wallet check (lightning/wallet_health.py) against a real LNbits: a wrong
invoice key and a URL nobody listens on are each one clear WARNING at start-up, naming the
settings to check, and a "Needs attention" line on the console's overview, instead of
nothing at all (a wrong key: LNbits' push channel accepts any id) or a reconnect warning
every few seconds (a dead URL)."""

from __future__ import annotations

import logging
from typing import Any

import httpx
import pytest

from lightning.extension import PaymentsExtension
from relay.nostr import crypto
from relay.session.server import Relay
from tests.conftest import RelayFactory, free_port
from tests.lnbits_server import LnbitsServer
from tests.test_console import panel
from tests.waiting import eventually


def payments(url: str, key: str) -> dict[str, Any]:
    wallet = {"url": url, "invoice_key": key}
    return {"enabled": True, "backend": "lnbits", "lnbits": wallet, "poll_interval_seconds": 1}


def warnings(caplog: pytest.LogCaptureFixture, logger: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == logger and r.levelno >= logging.WARNING]


def extension(relay: Relay) -> PaymentsExtension:
    assert isinstance(relay.hooks.owner("payments"), PaymentsExtension)
    return relay.hooks.owner("payments")  # type: ignore[return-value]


async def attention(relay: Relay, operator: bytes) -> list[str]:
    async with httpx.AsyncClient() as http:
        doc = await panel(http, relay, "overview", operator)
    return [b["text"] for b in doc["blocks"] if b["type"] == "text" and b["text"].startswith("Needs attention")]


async def test_a_wrong_lnbits_key_is_one_warning_at_start_and_shown_on_the_console(
    lnbits: LnbitsServer, relay_factory: RelayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    operator = crypto.generate_secret()
    admin = {"pubkeys": [crypto.public_key(operator).hex()]}
    caplog.set_level(logging.INFO)
    async with relay_factory(payments=payments(lnbits.url, "0" * 32), admin=admin) as relay:
        [line] = warnings(caplog, "lightning.wallet_health")
        assert "lnbits wallet does not answer" in line and "invoice key was refused" in line, line
        assert "url and invoice_key in [payments.lnbits]" in line and "0" * 32 not in line
        [shown] = await attention(relay, operator)
        assert "lnbits wallet does not answer" in shown and "invoice key was refused" in shown, shown
        # still wrong at the next check: nothing more at WARNING
        ext = extension(relay)
        await ext.health.check()
        assert len(warnings(caplog, "lightning.wallet_health")) == 1


async def test_a_wallet_url_nobody_listens_on_is_one_warning_not_a_reconnect_loop(
    lnbits: LnbitsServer, relay_factory: RelayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    operator = crypto.generate_secret()
    admin = {"pubkeys": [crypto.public_key(operator).hex()]}
    dead = f"http://127.0.0.1:{free_port()}"
    caplog.set_level(logging.INFO)
    async with relay_factory(payments=payments(dead, lnbits.wallet_a.inkey), admin=admin) as relay:
        [line] = warnings(caplog, "lightning.wallet_health")
        assert "lnbits wallet does not answer" in line and "ConnectError" in line, line
        watcher = extension(relay).watcher

        async def retried() -> bool:
            return watcher.stream_connects >= 5  # the push stream failed 4 times (0.5 + 1 + 2 + 4 s)

        await eventually(retried, 20, what="the push stream's reconnects")
        assert len(warnings(caplog, "lightning.watcher")) == 1, warnings(caplog, "lightning.watcher")
        assert len(warnings(caplog, "lightning.wallet_health")) == 1
        [shown] = await attention(relay, operator)
        assert "ConnectError" in shown and "[payments.lnbits]" in shown


async def test_a_wallet_that_answers_gives_no_warning_and_nothing_needs_attention(
    lnbits: LnbitsServer, relay_factory: RelayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    operator = crypto.generate_secret()
    admin = {"pubkeys": [crypto.public_key(operator).hex()]}
    caplog.set_level(logging.INFO)
    async with relay_factory(payments=payments(lnbits.url, lnbits.wallet_a.inkey), admin=admin) as relay:
        assert extension(relay).health.checks == 1 and extension(relay).health.problem is None
        assert warnings(caplog, "lightning.wallet_health") == []
        assert await attention(relay, operator) == []
