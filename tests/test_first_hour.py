"""The first hour of a new operator (issue 11 item 7): every mistake gets one line naming
it and a non-zero exit, never a traceback; and the commands do what their help says."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from lightning.settings import REQUIRED_SECRETS
from relay.config import ConfigError, load_settings
from relay.nostr import crypto
from relay.nostr.redaction import MASK
from tests.conftest import RelayFactory, RelayProcess, free_port
from tests.lightning.test_cli import satsrelay_json, write_config
from tests.nostr_client import NostrClient, signed
from tests.test_cli import config_for, jsonl, satsrelay


def one_line_error(result: subprocess.CompletedProcess[bytes]) -> str:
    """The single stderr line of a refused command (and proof there is no traceback)."""
    err = result.stderr.decode()
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("satsrelay: "), err
    return lines[0]


def test_port_in_use_is_one_line_and_exit_1(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = tmp_path / "c.toml"
        cfg.write_text(f'log_level = "WARNING"\n[server]\nport = {port}\n[storage]\nurl = "sqlite:///{tmp_path}/r.db"\n')
        started = time.monotonic()
        # the subprocess timeout proves no thread keeps the process alive after the failure
        result = satsrelay("serve", "--config", str(cfg))
    assert result.returncode == 1
    line = one_line_error(result)
    assert f"cannot listen on 127.0.0.1:{port}: address already in use" in line
    assert time.monotonic() - started < 30


def test_toml_syntax_error_is_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[storage\nurl = 1\n")
    result = satsrelay("serve", "--config", str(cfg))
    assert result.returncode == 2
    assert "is not valid TOML" in one_line_error(result) and str(cfg) in result.stderr.decode()


def test_uncreatable_data_folder_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[storage]\nurl = "sqlite:///{blocker}/data/relay.db"\n')
    result = satsrelay("export", "--config", str(cfg))
    assert result.returncode == 1, result.stderr
    assert f"cannot open SQLite database {blocker}/data/relay.db" in one_line_error(result)
    # serve meets the folder first through the relay's key file (kept beside the database)
    result = satsrelay("serve", "--config", str(cfg))
    assert result.returncode in (1, 2), result.stderr
    assert f"{blocker}/data/" in one_line_error(result) and "Not a directory" in result.stderr.decode()


@pytest.mark.postgres
def test_postgres_login_failure_is_one_line_without_the_password(tmp_path: Path) -> None:
    base = os.environ.get("SATSRELAY_TEST_POSTGRES")
    if not base:
        pytest.skip("SATSRELAY_TEST_POSTGRES not set")
    # The test server trusts local logins, so a role that does not exist stands in for a
    # wrong password: both are an authentication failure asyncpg reports the same way.
    host = base.split("@", 1)[1]
    cfg = tmp_path / "pg.toml"
    cfg.write_text(f'[storage]\nurl = "postgresql://nobody-here:hunter2@{host}"\n')
    result = satsrelay("export", "--config", str(cfg))
    assert result.returncode == 1
    line = one_line_error(result)
    assert f"cannot connect to PostgreSQL postgresql://nobody-here:{MASK}@" in line and "hunter2" not in line
    assert 'role "nobody-here" does not exist' in line
    cfg.write_text(f'[storage]\nurl = "postgresql://postgres:hunter2@127.0.0.1:{free_port()}/x"\n')
    result = satsrelay("export", "--config", str(cfg))
    assert result.returncode == 1 and "cannot connect to PostgreSQL" in one_line_error(result)


def test_import_of_a_missing_file_is_one_line(tmp_path: Path) -> None:
    result = satsrelay("import", "--config", str(config_for(tmp_path, "a")), str(tmp_path / "nope.jsonl"))
    assert result.returncode == 1
    assert one_line_error(result) == f"satsrelay: cannot read {tmp_path}/nope.jsonl: No such file or directory"


def test_export_filter_with_unsupported_field_is_one_line(tmp_path: Path) -> None:
    result = satsrelay("export", "--config", str(config_for(tmp_path, "a")), "--filter", '{"foo":"x"}')
    assert result.returncode == 2
    assert one_line_error(result) == "satsrelay: bad --filter: unsupported: filter field 'foo' is not supported"


def test_export_into_a_closed_pipe_ends_quietly(tmp_path: Path, alice: bytes) -> None:
    events = [signed(alice, 1, "x" * 200 + str(i)) for i in range(1500)]  # > a 64 KiB pipe buffer
    cfg = str(config_for(tmp_path, "a"))
    assert satsrelay("import", "--config", cfg, stdin=jsonl([e.to_dict() for e in events])).returncode == 0
    # what `satsrelay export | head -n 1` does: read one line, close the pipe
    proc = subprocess.Popen(
        [sys.executable, "-m", "relay.cli", "export", "--config", cfg], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0
    assert json.loads(first)["kind"] == 1
    assert err == "", err


def test_export_honours_limit_newest_first(tmp_path: Path, alice: bytes) -> None:
    now = int(time.time())
    events = [signed(alice, 1, f"{i}", created_at=now - i) for i in range(7)]
    events.append(signed(alice, 7, "+", created_at=now + 1))
    cfg = str(config_for(tmp_path, "a"))
    satsrelay("import", "--config", cfg, stdin=jsonl([e.to_dict() for e in events]))
    result = satsrelay("export", "--config", cfg, "--filter", '{"kinds":[1],"limit":3}')
    assert result.stdout.splitlines() == [e.raw for e in events[:3]]
    assert "exported 3 events" in result.stderr.decode()
    everything = satsrelay("export", "--config", cfg, "--filter", '{"kinds":[1]}')
    assert len(everything.stdout.splitlines()) == 7


@pytest.mark.parametrize("backend", sorted(REQUIRED_SECRETS))
def test_wallet_without_its_secret_refuses_to_start(backend: str) -> None:
    section, key = REQUIRED_SECRETS[backend]
    with pytest.raises(ConfigError, match=f"needs payments.{section}.{key}"):
        load_settings(None, payments={"enabled": True, "backend": backend})
    # the same wallet switched off is fine: a free relay needs no key
    load_settings(None, payments={"enabled": False, "backend": backend})


def test_lnbits_with_empty_invoice_key_exits_before_listening(tmp_path: Path) -> None:
    port = free_port()
    cfg = tmp_path / "ln.toml"
    cfg.write_text(
        f'[server]\nport = {port}\n[storage]\nurl = "sqlite:///{tmp_path}/r.db"\n'
        '[payments]\nenabled = true\nbackend = "lnbits"\n[payments.lnbits]\ninvoice_key = ""\n'
    )
    result = satsrelay("serve", "--config", str(cfg))
    assert result.returncode == 2
    assert "backend = 'lnbits' needs payments.lnbits.invoice_key" in one_line_error(result)


async def test_public_url_follows_the_port_when_unset(relay_factory: RelayFactory, alice: bytes) -> None:
    async with relay_factory(relay={"public_url": ""}) as relay, NostrClient(relay.url) as client:
        assert relay.settings.relay.public_url == f"ws://127.0.0.1:{relay.port}"
        ok, message = await client.auth(alice, f"ws://127.0.0.1:{relay.port}")  # NIP-42 checks the URL
        assert ok, message


def test_start_up_warns_when_public_url_names_another_port(tmp_path: Path) -> None:
    port = free_port()
    cfg = tmp_path / "warn.toml"
    cfg.write_text(
        # metrics_listen empty: another relay on this machine may hold the default 9477
        f'log_level = "INFO"\n[server]\nport = {port}\nmetrics_listen = ""\n[relay]\npublic_url = "ws://127.0.0.1:7777"\n'
        f'[storage]\nurl = "sqlite:///{tmp_path}/r.db"\n'
    )
    proc = RelayProcess(cfg, port)
    proc.start()
    proc.kill()
    log = proc.stderr_text()
    assert f"relay.public_url ws://127.0.0.1:7777 does not match server.port {port}" in log


def test_httpx_request_lines_only_when_debugging() -> None:
    import logging

    from relay.cli import _setup_logging

    httpx_log = logging.getLogger("httpx")
    before = httpx_log.level
    try:
        _setup_logging("INFO")
        assert not httpx_log.isEnabledFor(logging.INFO)
        _setup_logging("DEBUG")
        assert httpx_log.isEnabledFor(logging.INFO)
    finally:
        httpx_log.setLevel(before)


def test_import_rejects_file_names_each_refused_line_and_why(tmp_path: Path, alice: bytes) -> None:
    good = signed(alice, 1, "fine").to_dict()
    forged = signed(alice, 1, "forged").to_dict() | {"sig": "00" * 64}
    wrong_id = signed(alice, 1, "x").to_dict() | {"content": "changed"}
    ephemeral = signed(alice, 20000, "never stored").to_dict()
    data = jsonl([good]) + b"not json\n\n" + jsonl([forged, wrong_id, ephemeral])
    rejects = tmp_path / "rejects.jsonl"
    result = satsrelay("import", "--config", str(config_for(tmp_path, "a")), "--rejects", str(rejects), stdin=data)
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().strip() == "imported: 1 accepted, 0 duplicate, 4 rejected"
    refused = [orjson.loads(line) for line in rejects.read_bytes().splitlines()]
    assert [r["line"] for r in sorted(refused, key=lambda r: r["line"])] == [2, 4, 5, 6]
    by_line = {r["line"]: r for r in refused}
    assert by_line[2]["reason"] == "invalid: not a JSON object" and by_line[2]["text"] == "not json"
    assert by_line[4]["reason"] == "invalid: bad signature"
    assert by_line[5]["reason"].startswith("invalid:") and "id" in by_line[5]["reason"]
    assert "ephemeral" in by_line[6]["reason"]
    assert json.loads(by_line[6]["text"]) == ephemeral
    # without --rejects the operator is told how to find out
    plain = satsrelay("import", "--config", str(config_for(tmp_path, "b")), stdin=data)
    assert "--rejects FILE" in plain.stderr.decode()


async def test_cli_grant_and_ban_apply_at_once_on_a_running_relay(
    relay_factory: RelayFactory, tmp_path: Path, alice: bytes
) -> None:
    config = write_config(tmp_path)
    pubkey = crypto.public_key(alice).hex()
    # a long cache life: only the change counter can make the CLI's change visible in time
    payments = {"enabled": True, "backend": "fake", "account_cache_seconds": 600}
    async with relay_factory(payments=payments) as relay, NostrClient(relay.url) as client:
        ok, message = await client.publish(signed(alice, 1, "before"))
        assert not ok and message.startswith("restricted:")
        await satsrelay_json(config, "accounts", "grant", pubkey, "--forever")
        assert await _accepted_within(client, alice, 3.0), "grant did not reach the running relay"
        await satsrelay_json(config, "accounts", "ban", pubkey)
        deadline = time.monotonic() + 3.0
        while True:
            ok, message = await client.publish(signed(alice, 1, f"after ban {time.monotonic()}"))
            if not ok:
                assert message.startswith("blocked:")
                break
            assert time.monotonic() < deadline, "ban did not reach the running relay"
            await asyncio.sleep(0.1)


async def _accepted_within(client: NostrClient, secret: bytes, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        ok, _ = await client.publish(signed(secret, 1, f"try {time.monotonic()}"))
        if ok:
            return True
        await asyncio.sleep(0.1)
    return False


def test_package_license_is_an_spdx_string() -> None:
    import tomllib

    project = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
    assert project["project"]["license"] == "MIT"  # PEP 639: no deprecated table form
    requires = project["build-system"]["requires"]
    assert any(r.replace(" ", "").startswith("setuptools>=") and int(r.split(">=")[1].split(".")[0]) >= 77
               for r in requires)
