"""Operator commands run as separate processes against the relay's database."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from lightning.pubkeys import npub_encode
from lightning.store.base import LinkOutcome
from relay.nostr import crypto
from relay.nostr.event import sign_event
from tests.conftest import RelayFactory
from tests.lightning.payment_stack import ledger_of, payment_stack
from tests.nostr_client import NostrClient
from tests.waiting import eventually


def write_config(tmp_path: Path) -> Path:
    config = tmp_path / "cli.toml"
    config.write_text(
        f'[storage]\nurl = "sqlite:///{tmp_path}/relay.db"\n[payments]\nenabled = true\nbackend = "fake"\n'
    )
    return config


async def satsrelay(config: Path, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "relay.cli",
        *args,
        "--config",
        str(config),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def satsrelay_json(config: Path, *args: str) -> Any:
    code, out, err = await satsrelay(config, *args, "--json")
    assert code == 0, err
    return json.loads(out)


async def test_grant_show_list_revoke_and_ban(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    pubkey = crypto.public_key(crypto.generate_secret()).hex()
    granted = await satsrelay_json(config, "accounts", "grant", npub_encode(pubkey), "--forever", "--credit-sats", "21")
    assert granted["admitted_until"] == "forever" and granted["credit_msat"] == 21_000

    code, table, _ = await satsrelay(config, "accounts", "list")
    assert code == 0
    header, rule, row = table.splitlines()[:3]
    assert header.split()[:2] == ["pubkey", "admitted"] and set(rule) <= {"-", " "}
    assert row.split()[:3] == [pubkey, "forever", "21"]

    revoked = await satsrelay_json(config, "accounts", "revoke", pubkey, "--credit")
    assert revoked["admitted"] is False and revoked["credit_msat"] == 0

    banned = await satsrelay_json(config, "accounts", "ban", pubkey)
    assert banned["banned"] is True
    shown = await satsrelay_json(config, "accounts", "show", pubkey)
    assert shown["banned"] is True and shown["invoices"] == []
    assert (await satsrelay_json(config, "accounts", "ban", pubkey, "--undo"))["banned"] is False


async def test_grant_days_extends_from_the_current_end(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    pubkey = "b" * 64
    first = await satsrelay_json(config, "accounts", "grant", pubkey, "--days", "1")
    second = await satsrelay_json(config, "accounts", "grant", pubkey, "--days", "1")
    assert second["admitted_until"] - first["admitted_until"] == 86400
    code, _, err = await satsrelay(config, "accounts", "grant", "not-a-key", "--days", "1")
    assert code == 1 and "not a hex pubkey" in err


async def test_grant_refuses_what_no_account_can_hold_in_one_line(tmp_path: Path) -> None:
    """The CLI and NIP-86 share one grant (lightning/accounts.py): its limits hold here too,
    where ``--days inf`` and a credit past int64 used to end in a traceback."""
    config = write_config(tmp_path)
    pubkey = "b" * 64
    for args, expected in (
        (("--days", "inf"), "satsrelay: days must be a finite number"),
        (("--days", "nan"), "satsrelay: days must be a finite number"),
        (("--credit-sats", str(10**30)), "satsrelay: credit too large: an account holds at most"),
        (("--days", "1", "--credit-sats", "-1"), "satsrelay: grants must be positive"),
        ((), "satsrelay: nothing to grant"),
    ):
        code, out, err = await satsrelay(config, "accounts", "grant", pubkey, *args)
        assert (code, out) == (1, "") and err.startswith(expected) and len(err.splitlines()) == 1, err
    shown = await satsrelay_json(config, "accounts", "show", pubkey)
    assert shown["credit_msat"] == 0 and shown["admitted_until"] is None


async def test_invoices_list_pending_and_pay_fake(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    async with payment_stack(tmp_path) as s:
        paid = await s.ext.ledger.issue("c" * 64, "admission", int(time.time()))
        pending = await s.ext.ledger.issue("d" * 64, "admission", int(time.time()))
        await s.wallet.pay(paid.payment_hash)
        await s.ext.ledger.confirm(paid.payment_hash, int(time.time()))

    everything = await satsrelay_json(config, "invoices", "list")
    assert {i["payment_hash"]: i["state"] for i in everything} == {
        pending.payment_hash: "pending",
        paid.payment_hash: "paid",
    }
    only_pending = await satsrelay_json(config, "invoices", "list", "--pending")
    assert [i["payment_hash"] for i in only_pending] == [pending.payment_hash]
    code, table, _ = await satsrelay(config, "invoices", "list", "--pending")
    assert code == 0 and pending.payment_hash in table and "pending" in table

    assert (await satsrelay_json(config, "pay-fake", pending.payment_hash))["paid"] is True
    code, _, _ = await satsrelay(config, "pay-fake", pending.payment_hash)
    assert code == 1  # already paid


async def test_pay_fake_from_another_process_admits_on_the_running_relay(
    relay_factory: RelayFactory, alice: bytes, tmp_path: Path
) -> None:
    config = write_config(tmp_path)
    pubkey = crypto.public_key(alice).hex()
    payments = {"enabled": True, "backend": "fake", "poll_interval_seconds": 60}  # push must do it
    async with relay_factory(payments=payments) as relay, NostrClient(relay.url) as client:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{relay.port}") as web:
            invoice = (await web.post("/api/invoice", json={"pubkey": pubkey, "plan": "admission"})).json()
            assert (await satsrelay_json(config, "pay-fake", invoice["payment_hash"]))["paid"] is True
            deadline = time.monotonic() + 5
            while not (await web.get(f"/api/invoice/{invoice['payment_hash']}")).json()["paid"]:
                assert time.monotonic() < deadline, "relay did not notice the payment"
                await asyncio.sleep(0.1)
        ok, message = await client.publish(sign_event(alice, 1, "paid", [], created_at=int(time.time())))
        assert ok, message


async def test_unlink_takes_a_linked_key_off_its_plan_on_the_running_relay(
    relay_factory: RelayFactory, storage: dict[str, str], alice: bytes, bob: bytes, tmp_path: Path
) -> None:
    """``satsrelay accounts unlink <key>`` from another process, on the relay's database
    (SQLite file or PostgreSQL schema): the running relay refuses the key once its account
    cache hears of the change; the plan's own key, or a key linked nowhere, is refused in
    one line with exit code 1."""
    owner, key = crypto.public_key(alice).hex(), crypto.public_key(bob).hex()
    config = tmp_path / "cli.toml"
    url = storage.get("url", f"sqlite:///{tmp_path}/relay.db")
    schema = f'schema_name = "{storage["schema_name"]}"\n' if "schema_name" in storage else ""
    config.write_text(f'[storage]\nurl = "{url}"\n{schema}[payments]\nenabled = true\nbackend = "fake"\n')
    payments = {"enabled": True, "backend": "fake"}
    async with relay_factory(storage=storage, payments=payments) as relay, NostrClient(relay.url) as client:
        now = int(time.time())
        ledger = ledger_of(relay)
        await ledger.update_account(owner, now, admitted_until=now + 86400)
        assert await ledger.link_key(owner, key, 3, now) is LinkOutcome.LINKED

        async def bob_writes(want: bool) -> bool:
            event = sign_event(bob, 1, f"note {time.monotonic_ns()}", [], created_at=int(time.time()))
            ok, message = await client.publish(event)
            assert ok or message.startswith("restricted: writing here needs a payment"), message
            return ok is want

        await eventually(lambda: bob_writes(True), 5, what="the linked key writing as the plan")

        code, _, err = await satsrelay(config, "accounts", "unlink", owner)
        assert code == 1 and err == (
            f"satsrelay: {owner} is the key of a plan, not a linked key: unlink its linked keys instead ({key})\n"
        )
        code, out, err = await satsrelay(config, "accounts", "unlink", npub_encode(key))
        assert (code, err) == (0, ""), err
        assert out == f"unlinked {key} from the plan of {owner}; 0 other keys still linked to it\n"
        await eventually(lambda: bob_writes(False), 5, what="the running relay refusing the unlinked key")
        code, _, err = await satsrelay(config, "accounts", "unlink", key)
        assert code == 1 and err == f"satsrelay: {key} is not linked to any plan\n"
        code, _, err = await satsrelay(config, "accounts", "unlink", "nope")
        assert code == 1 and err == "satsrelay: not a hex pubkey or npub: 'nope'\n"
        shown = await satsrelay_json(config, "accounts", "show", owner)
        assert shown["linked_keys"] == [] and shown["admitted"] is True

        assert await ledger.link_key(owner, key, 3, now) is LinkOutcome.LINKED
        unlinked = await satsrelay_json(config, "accounts", "unlink", key)
        assert unlinked == {"pubkey": key, "unlinked_from": owner, "linked_keys": []}


def _run_into_closed_pipe(config: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    """Run a command whose stdout is a pipe nobody reads any more, as after
    ``satsrelay ... | head`` once head has printed its lines and exited."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the command writes a byte
    try:
        return subprocess.run(
            [sys.executable, "-m", "relay.cli", *args, "--config", str(config)],
            stdout=write_end,
            stderr=subprocess.PIPE,
            timeout=60,
        )
    finally:
        os.close(write_end)


@pytest.mark.parametrize(
    "command",
    [("accounts", "list"), ("invoices", "list"), ("invites", "list"), ("accounts", "list", "--json"), ("export",)],
)
def test_output_into_a_closed_pipe_exits_quietly(tmp_path: Path, command: tuple[str, ...]) -> None:
    """``satsrelay accounts list | head``: the reader leaving early is not an error of ours;
    no BrokenPipeError traceback (nor Python's "Exception ignored" at exit), exit 0."""
    config = write_config(tmp_path)
    pubkey = crypto.public_key(crypto.generate_secret()).hex()
    result = subprocess.run(
        [sys.executable, "-m", "relay.cli", "accounts", "grant", pubkey, "--days", "1", "--config", str(config)],
        capture_output=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    result = _run_into_closed_pipe(config, *command)
    err = result.stderr.decode()
    assert "Traceback" not in err and "BrokenPipe" not in err and "Exception ignored" not in err, err
    assert result.returncode == 0, err
