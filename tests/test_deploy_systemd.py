"""deploy/satsrelay.service, checked as far as a machine without systemd as PID 1 allows.

``systemd-analyze verify`` and ``systemd-analyze security --offline`` read the unit file
itself (no running manager needed; ``make test-deps`` installs Debian's systemd when
systemd-analyze is missing). What they cannot do, start the unit, is done here by hand: the
unit's own ExecStart line, with its WorkingDirectory and UMask, on deploy/relay.toml moved
to a temp folder; then the unit's KillSignal must stop it, cleanly, within TimeoutStopSec.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from relay.config import load_settings
from relay.store.sqlite_schema import sqlite_path_from_url
from tests.conftest import RelayProcess, free_port
from tests.nostr_client import NostrClient, signed
from tests.waiting import eventually

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "deploy" / "satsrelay.service"
CONFIG = REPO / "deploy" / "relay.toml"
INSTALLED = "/opt/satsrelay/bin/satsrelay"  # where the README installs the relay
STATE = "/var/lib/satsrelay"

pytestmark = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed (run `make deploy-tools`)"
)


def unit_settings() -> dict[str, list[str]]:
    """Every ``Key=value`` of the unit (a key may repeat), comments skipped."""
    found: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


def seconds(value: str) -> float:
    units = {"ms": 0.001, "s": 1, "min": 60}
    for suffix, factor in units.items():
        if value.endswith(suffix) and value[: -len(suffix)].replace(".", "").isdigit():
            return float(value[: -len(suffix)]) * factor
    return float(value)


def installed_copy(tmp_path: Path) -> Path:
    """The unit with its ExecStart binary at a path that exists here (systemd-analyze
    refuses a command it cannot find): a launcher running this checkout's relay."""
    launcher = tmp_path / "opt" / "satsrelay" / "bin" / "satsrelay"
    launcher.parent.mkdir(parents=True)
    launcher.write_text(f'#!/bin/sh\nPYTHONPATH={REPO} exec {sys.executable} -m relay.cli "$@"\n')
    launcher.chmod(0o755)
    unit = tmp_path / "satsrelay.service"
    unit.write_text(UNIT.read_text().replace(INSTALLED, str(launcher)))
    return unit


def test_systemd_analyze_verify_finds_nothing_to_say(tmp_path: Path) -> None:
    done = subprocess.run(
        ["systemd-analyze", "verify", str(installed_copy(tmp_path))], capture_output=True, text=True, timeout=60
    )
    # verify exits 0 even for an unknown key or a bad value, printing a warning: none allowed
    assert done.returncode == 0 and done.stderr.strip() == "" and done.stdout.strip() == "", done.stderr


def test_the_unit_is_hardened(tmp_path: Path) -> None:
    """systemd's own exposure score, offline: 'OK' is at most 2.9 (of 10); this unit scores 1.4."""
    done = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--threshold=20", str(installed_copy(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr
    unit = unit_settings()
    assert unit["User"] == ["satsrelay"] and unit["ProtectSystem"] == ["strict"]
    assert unit["NoNewPrivileges"] == ["yes"] and unit["UMask"] == ["0077"]


def test_the_unit_and_deploy_config_agree() -> None:
    unit = unit_settings()
    settings = load_settings(CONFIG)
    [exec_start] = unit["ExecStart"]
    assert shlex.split(exec_start) == [INSTALLED, "serve", "--config", "/etc/satsrelay/relay.toml"]
    assert unit["StateDirectory"] == ["satsrelay"] and unit["WorkingDirectory"] == [STATE]
    writable = unit["ReadWritePaths"][0].split()
    assert writable == [STATE]
    # everything the relay writes is under the one writable (and systemd-owned) directory
    for path in (sqlite_path_from_url(settings.storage.url), Path(str(settings.relay.key_file))):
        assert path.is_absolute() and path.parent == Path(STATE), path
    # the graceful stop has its grace and some more before systemd kills
    assert seconds(unit["TimeoutStopSec"][0]) >= 2 * settings.server.shutdown_grace_seconds
    assert unit["KillSignal"] == ["SIGTERM"]
    assert int(unit["LimitNOFILE"][0]) > settings.limits.max_connections + 1000
    assert unit["Restart"] == ["on-failure"] and unit["RestartPreventExitStatus"] == ["2"]
    assert settings.server.host == "127.0.0.1" and settings.server.real_ip_header == "X-Real-IP"


async def test_the_units_command_serves_and_stops_on_its_kill_signal_in_time(tmp_path: Path) -> None:
    unit = unit_settings()
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    port = free_port()
    config = tmp_path / "relay.toml"
    text = CONFIG.read_text().replace(STATE, str(state)).replace("port = 7777", f"port = {port}")
    config.write_text(text.replace("127.0.0.1:9477", "127.0.0.1:0"))
    command = shlex.split(installed_copy(tmp_path).read_text().split("ExecStart=", 1)[1].splitlines()[0])
    command[command.index("/etc/satsrelay/relay.toml")] = str(config)
    umask = int(unit["UMask"][0], 8)
    stop_timeout = seconds(unit["TimeoutStopSec"][0])
    log_path = tmp_path / "journal.log"  # a file, not a pipe: an undrained pipe can block the relay
    with log_path.open("wb") as journal:
        proc = await asyncio.create_subprocess_exec(
            *command,
            cwd=state,  # WorkingDirectory
            stderr=journal,
            preexec_fn=lambda: os.umask(umask),  # the unit's UMask, applied as systemd does
        )
    try:

        async def listening() -> bool:
            assert proc.returncode is None, log_path.read_text()
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                return False
            writer.close()
            return True

        await eventually(listening, 30, what="the relay to listen")
        async with NostrClient(f"ws://127.0.0.1:{port}") as client:
            ok, message = await client.publish(signed(os.urandom(32), 1, "before the stop"))
            assert ok, message
            started = time.monotonic()
            proc.send_signal(getattr(signal, unit["KillSignal"][0]))
            code = await asyncio.wait_for(proc.wait(), stop_timeout)
        assert code == 0 and time.monotonic() - started < stop_timeout
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    log = log_path.read_text()
    assert "satsrelay stopped" in log and "Traceback" not in log, log
    made = sorted(p.name for p in state.iterdir())
    assert "satsrelay.db" in made and "relay.key" in made, made
    for name in made:  # UMask=0077: nothing the relay wrote is readable by other users
        assert stat.S_IMODE((state / name).stat().st_mode) & 0o077 == 0, name


def test_under_systemd_each_log_line_carries_its_priority_for_journald(
    relay_process: Callable[..., RelayProcess], tmp_path: Path
) -> None:
    """systemd connects the unit's stderr to journald and names that stream in
    $JOURNAL_STREAM; journald files a line as info unless it starts with ``<N>``. So a
    warning (here: a wallet URL nobody listens on) must carry ``<4>``, or `journalctl -u
    satsrelay -p warning` (README: Logs) shows nothing; and no timestamp, journald adds its
    own. The same relay with its stderr elsewhere (a terminal, a file) keeps the plain lines."""
    port = free_port()
    journal = tmp_path / f"relay-{port}.log"  # RelayProcess's stderr file, made first to name it
    journal.touch()
    info = journal.stat()
    wallet = f'[payments]\nenabled = true\nbackend = "lnbits"\n[payments.lnbits]\nurl = "http://127.0.0.1:{free_port()}"\n'
    env = {"JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino}", "SATSRELAY_PAYMENTS__LNBITS__INVOICE_KEY": "0" * 32}
    relay = relay_process(wallet, env=env, port=port)
    relay.terminate()
    lines = relay.stderr_text().splitlines()
    assert lines and all(re.match(r"<[2-7]>[A-Z]+ [a-z_.]+: ", line) for line in lines), lines
    warning = "<4>WARNING lightning.wallet_health: the lnbits wallet does not answer"
    assert any(line.startswith(warning) for line in lines), lines
    assert any(line.startswith("<6>INFO relay.session.server: satsrelay listening on") for line in lines), lines

    elsewhere = relay_process(wallet, env={**env, "JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino + 1}"})
    elsewhere.terminate()
    plain = elsewhere.stderr_text().splitlines()
    assert plain and all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ ", line) for line in plain), plain
