"""Kill the relay with a pending invoice, pay it while it is down, restart: credited once."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx

from lightning.backends.fake import mark_paid
from relay.nostr import crypto
from tests.conftest import RelayProcess
from tests.lightning.payment_stack import nip98_header

PAYMENTS = """
[payments]
enabled = true
backend = "fake"
poll_interval_seconds = 0.3
[payments.admission]
enabled = false
[payments.credit]
enabled = true
"""


def wait_for(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.1)


def test_payment_made_while_relay_is_killed_is_credited_once_after_restart(
    relay_process: Callable[..., RelayProcess], tmp_path: Path
) -> None:
    relay = relay_process(PAYMENTS)
    base = f"http://127.0.0.1:{relay.port}"
    secret = crypto.generate_secret()
    pubkey = crypto.public_key(secret).hex()
    invoice = httpx.post(f"{base}/api/invoice", json={"pubkey": pubkey, "plan": "credit", "amount": "777"}).json()
    relay.kill()  # SIGKILL: no graceful anything

    assert mark_paid(tmp_path / "fake-wallet.db", invoice["payment_hash"])  # paid while nobody listens

    for _ in range(2):  # a second restart must not credit it again
        relay.start()
        status = httpx.get(f"{base}/api/invoice/{invoice['payment_hash']}").json()
        assert status["paid"] is True  # reconciled before the port even opened
        time.sleep(0.8)  # a few poll rounds
        url = f"{base}/account/{pubkey}"
        owner = {"Accept": "application/json", "Authorization": nip98_header(secret, url)}  # NIP-98
        account = httpx.get(url, headers=owner).json()
        assert account["credit_msat"] == 777_000
        assert relay.terminate() == 0
