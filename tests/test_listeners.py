"""The relay's listening sockets as an operator meets them: ``satsrelay serve`` processes,
real ports. The metrics listener belongs to one relay (issue 17 item 6)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.conftest import RelayProcess, free_port

SERVE_TIMEOUT = 20.0


def serve_until_exit(config: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    """``satsrelay serve``, expected to exit by itself; a relay still serving after
    SERVE_TIMEOUT fails the test (and is killed)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "relay.cli", "serve", "--config", str(config)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )
    try:
        out, err = proc.communicate(timeout=SERVE_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"the relay kept serving instead of exiting:\n{err.decode()}") from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def one_line(err: bytes) -> str:
    text = err.decode()
    assert "Traceback" not in text, text
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    return lines[0]


def relay_config(tmp_path: Path, name: str, metrics_listen: str) -> Path:
    config = tmp_path / f"{name}.toml"
    config.write_text(
        f'log_level = "WARNING"\n[server]\nhost = "127.0.0.1"\nport = {free_port()}\n'
        f'metrics_listen = "{metrics_listen}"\n[storage]\nurl = "sqlite:///{tmp_path}/{name}.db"\n'
    )
    return config


async def test_second_relay_on_a_taken_metrics_address_exits_naming_it(
    relay_process: Callable[..., RelayProcess], tmp_path: Path
) -> None:
    metrics = f"127.0.0.1:{free_port()}"
    first = relay_process(env={"SATSRELAY_SERVER__METRICS_LISTEN": metrics})
    async with httpx.AsyncClient(timeout=5) as http:
        assert (await http.get(f"http://{metrics}/metrics")).status_code == 200

    # Another relay on its own WebSocket port, with the same (e.g. default) metrics address:
    # it must not share the address with the first and split its scrapes.
    second = serve_until_exit(relay_config(tmp_path, "second", metrics))
    assert second.returncode == 1
    line = one_line(second.stderr)
    assert line.startswith("satsrelay: ") and f"cannot listen on {metrics}" in line, line
    assert "metrics_listen" in line and "address already in use" in line, line

    assert first.proc is not None and first.proc.poll() is None
    assert "Traceback" not in first.stderr_text()
