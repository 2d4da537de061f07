"""The README's commands for a checkout work when copied: the quick start's "Other commands"
and the Backups section, run line by line with bash in a copy of the checkout's config; and
the production section's lines that install and edit deploy/'s files, on a folder standing
for / (its other commands need root, systemd or the network; the files they install are
tested in tests/test_deploy_*.py)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lightning.settings import PaymentSettings
from relay.config import load_settings
from tests.conftest import free_port

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()


def sh_block_after(marker: str) -> list[str]:
    """The command lines of the first ```sh block after ``marker``, comments stripped."""
    start = README.index(marker)
    block = re.search(r"```sh\n(.*?)```", README[start:], re.DOTALL)
    assert block is not None, marker
    lines = []
    for line in block[1].splitlines():
        command = re.sub(r"\s+#\s.*$", "", line).strip()
        if command:
            lines.append(command)
    return lines


def checkout_copy(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A folder with config.example.toml and a ``.venv/bin/satsrelay`` running this checkout,
    the relay's port and metrics moved to free ones (the environment overrides the file)."""
    shutil.copy(REPO / "config.example.toml", tmp_path / "config.example.toml")
    launcher = tmp_path / ".venv" / "bin" / "satsrelay"
    launcher.parent.mkdir(parents=True)
    launcher.write_text(f'#!/bin/sh\nexec {sys.executable} -m relay.cli "$@"\n')
    launcher.chmod(0o755)
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "SATSRELAY_SERVER__PORT": str(free_port()),
        "SATSRELAY_SERVER__METRICS_LISTEN": "127.0.0.1:0",
    }
    return tmp_path, env


def run(line: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", line], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def serve_briefly(line: str, cwd: Path, env: dict[str, str]) -> None:
    """A ``serve`` line: it must start listening, and stop cleanly on SIGTERM."""
    proc = subprocess.Popen(["bash", "-c", f"exec {line}"], cwd=cwd, env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        port = int(env["SATSRELAY_SERVER__PORT"])
        while subprocess.run(["bash", "-c", f"exec 3<>/dev/tcp/127.0.0.1/{port}"], capture_output=True).returncode:
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "the relay did not listen"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, proc.communicate()[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_quick_starts_other_commands_work_when_copied(tmp_path: Path) -> None:
    cwd, env = checkout_copy(tmp_path)
    lines = sh_block_after("Other commands (after `make run`")
    assert len(lines) == 5 and lines[0].startswith("cp config.example.toml")
    for line in lines:
        if " serve " in line:
            serve_briefly(line, cwd, env)
            continue
        done = run(line, cwd, env)
        assert done.returncode == 0, f"{line}\n{done.stderr}"
    assert (cwd / "notes.jsonl").exists() and (cwd / "data" / "satsrelay.db").exists()


def test_the_backup_sections_commands_work_when_copied(tmp_path: Path) -> None:
    cwd, env = checkout_copy(tmp_path)
    lines = sh_block_after("## Backups")
    assert [line.split()[0] for line in lines] == ["mkdir", ".venv/bin/satsrelay", ".venv/bin/satsrelay"]
    assert run(".venv/bin/satsrelay import --config config.example.toml /dev/null", cwd, env).returncode == 0
    for line in lines:
        done = run(line, cwd, env)
        assert done.returncode == 0, f"{line}\n{done.stderr}"
    assert "The relay's key" in run(lines[1] + ".again", cwd, env).stdout  # a second copy, to read its output
    [backup] = (cwd / "backups").glob("relay-*.db")
    assert oct(backup.stat().st_mode & 0o777) == "0o600"


def production_section_commands() -> list[str]:
    """The command lines of every ```sh block in "Going to production", comments stripped."""
    start = README.index("## Going to production")
    section = README[start : README.index("\n## ", start + 1)]
    lines = []
    for block in re.findall(r"```sh\n(.*?)```", section, re.DOTALL):
        lines += [c for c in (re.sub(r"\s+#\s.*$", "", line).strip() for line in block.splitlines()) if c]
    return lines


def test_the_production_sections_file_commands_work_on_copies(tmp_path: Path) -> None:
    """The lines of "Going to production" that put deploy/'s files in place and edit them
    (install, sed -i, tee -a), run as written on a folder standing for /, without sudo and
    without the satsrelay group (neither may exist here); then each file is what the section
    says it is: the relay's config valid, naming relay.yourdomain.org, with the wallet and
    PostgreSQL lines it added; no relay.example.com left where a proxy would use it. (The
    commands that need root, systemd or the network were run on a booted Debian 12 server;
    the Monitoring lines are run in tests/test_monitoring.py.)"""
    root = tmp_path / "root"
    for debian_made in ("etc/systemd/system", "etc/nginx/conf.d", "etc/caddy"):  # by systemd, nginx, caddy
        (root / debian_made).mkdir(parents=True)
    edits = [
        line
        for line in production_section_commands()
        if re.match(r"sudo (install|sed -i|tee -a) ", line)
        and "/etc/prometheus" not in line  # tests/test_monitoring.py
        and "relay.key" not in line  # the key's copy: a file the relay makes
    ]
    # install: 4, nginx: 2, Caddy: 2, the wallet: 1, PostgreSQL: 1 (update when the section changes)
    assert len(edits) == 10, edits
    for line in edits:
        command = line.replace("sudo ", "").replace(" -g satsrelay", "")
        for system in ("/etc/", "/opt/", "/var/lib/"):
            command = command.replace(f" {system}", f" {root}{system}")
        done = subprocess.run(["bash", "-c", command], cwd=REPO, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, f"{line}\n{done.stderr}"

    config = root / "etc" / "satsrelay" / "relay.toml"
    assert oct(config.stat().st_mode & 0o777) == "0o640" and oct(config.parent.stat().st_mode & 0o777) == "0o750"
    env = {"SATSRELAY_PAYMENTS__LNBITS__INVOICE_KEY": "0123456789abcdef" * 2}  # what `editor` fills in
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        settings = load_settings(config)
    assert settings.relay.public_url == "wss://relay.yourdomain.org"
    assert settings.storage.url == "postgresql://satsrelay@/satsrelay?host=/var/run/postgresql"  # step 6's sed
    payments = settings.section("payments")
    assert isinstance(payments, PaymentSettings) and payments.backend == "lnbits"
    unit = root / "etc" / "systemd" / "system" / "satsrelay.service"
    assert unit.read_text() == (REPO / "deploy" / "satsrelay.service").read_text()
    for site in (root / "etc" / "nginx" / "conf.d" / "satsrelay.conf", root / "etc" / "caddy" / "Caddyfile"):
        used = [line for line in site.read_text().splitlines() if not line.lstrip().startswith("#")]
        assert not [line for line in used if "example.com" in line], site
        assert any("relay.yourdomain.org" in line for line in used), site
