"""The README's commands for a checkout work when copied: the quick start's "Other commands"
and the Backups section, run line by line with bash in a copy of the checkout's config (the
production section's commands need root and a systemd machine; the files they install are
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
