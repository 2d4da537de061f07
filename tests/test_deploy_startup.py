"""Start-up as an operator meets it (issue 22): the log says where to go next, and a start
that fails on its database leaves nothing behind in the directory it was started from."""

from __future__ import annotations

import re
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx

from relay.app import build_relay
from relay.nostr import crypto
from relay.store.identity import key_file_path
from tests.conftest import RelayProcess, free_port, listening_socket, relay_settings

REPO = Path(__file__).resolve().parent.parent


def test_a_relay_that_cannot_open_its_database_leaves_no_data_directory(tmp_path: Path) -> None:
    """A PostgreSQL URL nobody answers, payments on with the demo wallet: the relay exits with
    one line, and the directory it was started from stays empty (it used to get
    ``data/relay.key`` and ``data/fake-wallet.db``)."""
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    config = tmp_path / "relay.toml"
    config.write_text(
        f'[server]\nport = {free_port()}\nmetrics_listen = ""\n'
        f'[storage]\nurl = "postgresql://nobody@127.0.0.1:{free_port()}/relay"\n'
        "[payments]\nenabled = true\nbackend = \"fake\"\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "relay.cli", "serve", "--config", str(config)],
        cwd=workdir,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stderr
    assert done.stderr.splitlines()[-1].startswith("satsrelay: cannot connect to PostgreSQL"), done.stderr
    assert "Traceback" not in done.stderr
    assert sorted(p.name for p in workdir.iterdir()) == []


async def test_a_new_relay_key_is_written_once_the_store_opened(tmp_path: Path) -> None:
    """The other half: a relay that starts keeps its generated key, private (0600), and
    publishes it as NIP-11 ``self``."""
    sock = listening_socket()
    settings = relay_settings(tmp_path, sock.getsockname()[1])
    path = key_file_path(settings)
    relay = build_relay(settings)
    assert not path.exists()
    await relay.start(sock=sock)
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert crypto.public_key(bytes.fromhex(path.read_text().strip())).hex() == relay.identity.pubkey
        async with httpx.AsyncClient() as http:
            info = (await http.get(f"http://127.0.0.1:{relay.port}/", headers={"Accept": "application/nostr+json"}))
        assert info.json()["self"] == relay.identity.pubkey
    finally:
        await relay.stop()


def test_the_start_up_log_says_where_to_go_next(relay_process: Callable[..., RelayProcess], tmp_path: Path) -> None:
    """The join page, the console (admins set) and the metrics address, each logged as a URL
    that answers."""
    operator = crypto.public_key(crypto.generate_secret()).hex()
    relay = relay_process(f'[admin]\npubkeys = ["{operator}"]\n[payments]\nenabled = true\nbackend = "fake"\n')
    log = relay.stderr_text()
    base = f"http://127.0.0.1:{relay.port}"
    assert f"clients connect to ws://127.0.0.1:{relay.port}" in log, log
    join = re.search(r"join page \(unpaid writers are sent here\): (\S+)", log)
    console = re.search(r"operator console: (\S+) \(sign in with a NIP-07 extension", log)
    metrics = re.search(r"metrics \(Prometheus\): (\S+)", log)
    assert join and console and metrics, log
    assert join[1] == f"{base}/join" and console[1] == f"{base}/admin"
    with httpx.Client(timeout=10) as http:
        assert "text/html" in http.get(join[1]).headers["content-type"]
        assert http.get(console[1]).status_code == 200
        scraped = http.get(metrics[1])  # metrics_listen is 127.0.0.1:0 here: the logged port is the real one
        assert scraped.status_code == 200 and "satsrelay_events_accepted_total" in scraped.text


def test_without_admins_the_log_says_how_to_open_the_console(relay_process: Callable[..., RelayProcess]) -> None:
    relay = relay_process()
    log = relay.stderr_text()
    assert f"operator console: http://127.0.0.1:{relay.port}/admin opens once [admin] pubkeys names" in log, log
