"""Fixtures shared by every test: real relays on 127.0.0.1, real SQLite files, keys.

``relay_factory`` starts an in-process relay (same event loop as the test) on a socket
bound to port 0 and handed to it, with Settings overrides; ``relay_process`` starts
``satsrelay serve`` as a subprocess for tests that kill or signal it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from relay.app import build_relay
from relay.config import Settings, load_settings
from relay.nostr import crypto
from relay.session.server import Relay
from tests.nostr_client import NostrClient

RelayFactory = Callable[..., contextlib.AbstractAsyncContextManager[Relay]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def listening_socket() -> socket.socket:
    """A socket bound to port 0 (the kernel picks a free port) and listening: the relay is
    handed the socket itself, so no other process can take the port in between (as it could
    between free_port() and the relay's own bind)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    return sock


def relay_settings(tmp_path: Path, port: int | None = None, **sections: dict[str, Any]) -> Settings:
    """Test defaults (``port``, else a free one; temp SQLite; generous rate limits) plus
    overrides."""
    port = free_port() if port is None else port
    base: dict[str, Any] = {
        # metrics on a port of their own: several relays (and engineers) share this machine
        "server": {"host": "127.0.0.1", "port": port, "shutdown_grace_seconds": 2.0, "metrics_listen": "127.0.0.1:0"},
        "relay": {"public_url": f"ws://127.0.0.1:{port}"},
        "storage": {"url": f"sqlite:///{tmp_path}/relay.db", "purge_interval_seconds": 0.2},
        "limits": {"events_per_second": 10000, "events_burst": 10000, "ip_events_per_second": 10000,
                   "ip_events_burst": 10000, "pubkey_events_per_second": 10000, "pubkey_events_burst": 10000},
        "log_level": "WARNING",
    }
    merged = _merge(base, sections)
    postgres = not str(merged["storage"]["url"]).startswith("sqlite:")
    # A PostgreSQL relay keeps its key and the demo wallet's file in ./data by default: keep
    # them in the test's folder, not in the checkout's ./data (the operator's, `make run`).
    if postgres and not {"key_file", "secret_key"} & set(merged["relay"]):
        merged["relay"]["key_file"] = str(tmp_path / "relay.key")
    if postgres and "payments" in merged:
        merged["payments"] = _merge({"fake": {"state_file": str(tmp_path / "fake-wallet.db")}}, merged["payments"])
    return load_settings(None, **merged)


@pytest.fixture
def relay_factory(tmp_path: Path) -> RelayFactory:
    @contextlib.asynccontextmanager
    async def start(**sections: dict[str, Any]) -> AsyncIterator[Relay]:
        sock = listening_socket()
        relay = build_relay(relay_settings(tmp_path, sock.getsockname()[1], **sections))
        await relay.start(sock=sock)
        try:
            yield relay
        finally:
            await relay.stop()

    return start


@pytest.fixture
async def relay(relay_factory: RelayFactory) -> AsyncIterator[Relay]:
    async with relay_factory() as r:
        yield r


@pytest.fixture
async def client(relay: Relay) -> AsyncIterator[NostrClient]:
    async with NostrClient(relay.url) as c:
        yield c


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def storage(request: pytest.FixtureRequest) -> AsyncIterator[dict[str, str]]:
    """``[storage]`` overrides for relay_factory: the default SQLite file, or a fresh
    PostgreSQL schema (dropped afterwards) when SATSRELAY_TEST_POSTGRES is set."""
    if request.param == "sqlite":
        yield {}
        return
    async for section in _postgres_schema():
        yield section


@pytest.fixture
async def pg_storage() -> AsyncIterator[dict[str, str]]:
    """``storage``'s PostgreSQL half alone, for what only PostgreSQL does (several nodes on
    one database)."""
    async for section in _postgres_schema():
        yield section


async def _postgres_schema() -> AsyncIterator[dict[str, str]]:
    dsn = os.environ.get("SATSRELAY_TEST_POSTGRES")
    if not dsn:
        pytest.skip("SATSRELAY_TEST_POSTGRES is unset (e.g. postgresql://postgres@127.0.0.1:5432/test)")
    import asyncpg

    schema = f"auth_{uuid.uuid4().hex[:16]}"
    yield {"url": dsn, "schema_name": schema}
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


@pytest.fixture
def alice() -> bytes:
    return crypto.generate_secret()


@pytest.fixture
def bob() -> bytes:
    return crypto.generate_secret()


class RelayProcess:
    """``satsrelay serve`` in a subprocess, for kill -9 and signal tests."""

    def __init__(
        self, config: Path, port: int, env: dict[str, str] | None = None, args: list[str] | None = None
    ) -> None:
        self.config, self.port = config, port
        self.url = f"ws://127.0.0.1:{port}"
        self.env = {**os.environ, **(env or {})}
        self.args = args or []
        self.proc: subprocess.Popen[bytes] | None = None
        # stderr goes to a file, not a pipe: an undrained pipe blocks the relay once it has
        # logged 64 KiB, which turned a noisy shutdown into a hang
        self.log_path = config.with_suffix(".log")

    def start(self, timeout: float = 20.0) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "relay.cli", "serve", "--config", str(self.config), *self.args],
                env=self.env,
                stderr=log,
                # its own process group, so teardown can also reap ``--workers`` children
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"relay exited with {self.proc.returncode}: {self.stderr_text()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2):
                return
            time.sleep(0.05)
        raise RuntimeError("relay did not start listening")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def terminate(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def stderr_text(self) -> str:
        """Everything this relay logged so far (all its starts on this config)."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@pytest.fixture
def relay_process(tmp_path: Path) -> Iterator[Callable[..., RelayProcess]]:
    """Factory: ``relay_process(extra_toml="...")`` -> a started RelayProcess."""
    procs: list[RelayProcess] = []

    def make(
        extra_toml: str = "",
        env: dict[str, str] | None = None,
        port: int | None = None,
        storage_url: str | None = None,
        storage_toml: str = "",
        args: list[str] | None = None,
    ) -> RelayProcess:
        """``extra_toml`` may add keys and sections but not repeat [server], [relay], [storage];
        ``storage_toml`` adds lines to [storage] (e.g. ``schema_name = "..."``); ``args`` are
        extra ``satsrelay serve`` arguments (e.g. ``["--workers", "2"]``)."""
        port = port or free_port()
        storage_url = storage_url or f"sqlite:///{tmp_path}/relay.db"
        # as in relay_settings: a PostgreSQL relay's key in the test's folder, not ./data
        key_file = "" if storage_url.startswith("sqlite:") else f'key_file = "{tmp_path}/relay.key"\n'
        config = tmp_path / f"relay-{port}.toml"
        config.write_text(
            f'log_level = "INFO"\n[server]\nhost = "127.0.0.1"\nport = {port}\nmetrics_listen = "127.0.0.1:0"\n'
            f'[relay]\npublic_url = "ws://127.0.0.1:{port}"\n{key_file}'
            f'[storage]\nurl = "{storage_url}"\n' + (storage_toml.rstrip("\n") + "\n" if storage_toml else "")
            + extra_toml
        )
        proc = RelayProcess(config, port, env, args)
        proc.start()
        procs.append(proc)
        return proc

    yield make
    for proc in procs:
        if proc.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.proc.pid, signal.SIGKILL)
            proc.proc.wait()



def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """With ``SATSRELAY_FAIL_ON_SKIP=1`` (``.ci/run`` sets it) a test skipped for a missing
    tool or service (PostgreSQL, LNbits, Chromium, curl, node) fails the run: CI must
    prove every path, not quietly leave some out."""
    if not os.environ.get("SATSRELAY_FAIL_ON_SKIP") or exitstatus != 0:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    if skipped:
        for report in skipped:
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            print(f"\nSKIPPED (fails CI): {report.nodeid}: {reason}", file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


# --- the PostgreSQL half of the suite ---------------------------------------------------

DEFAULT_TEST_POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"
POSTGRES_HINT = (
    "set SATSRELAY_TEST_POSTGRES=postgresql://<user>@<host>:<port>/<database> (a database the tests may "
    f"create and drop schemas in), or make {DEFAULT_TEST_POSTGRES} answer (README: Tests)"
)


def _postgres_answers(dsn: str) -> bool:
    import asyncio

    import asyncpg

    async def probe() -> None:
        conn = await asyncpg.connect(dsn, timeout=2)
        await conn.close()

    try:
        asyncio.run(probe())
    except (OSError, TimeoutError, asyncpg.PostgresError):
        return False
    return True


def pytest_configure(config: pytest.Config) -> None:
    """Tests marked postgres use SATSRELAY_TEST_POSTGRES; when it is unset and the default
    test database answers (a machine set up like CI), they use that, so ``make test`` runs
    the PostgreSQL half wherever PostgreSQL is there to run it."""
    if not os.environ.get("SATSRELAY_TEST_POSTGRES") and _postgres_answers(DEFAULT_TEST_POSTGRES):
        os.environ["SATSRELAY_TEST_POSTGRES"] = DEFAULT_TEST_POSTGRES


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """Say at the end of the run whether the PostgreSQL half ran, and how to include it."""
    skipped = [
        report
        for report in terminalreporter.stats.get("skipped", [])
        if "SATSRELAY_TEST_POSTGRES" in (report.longrepr[2] if isinstance(report.longrepr, tuple) else "")
    ]
    if skipped:
        terminalreporter.write_line(
            f"PostgreSQL half: {len(skipped)} tests skipped, no PostgreSQL to run them on: {POSTGRES_HINT}"
        )
    elif os.environ.get("SATSRELAY_TEST_POSTGRES"):
        url = os.environ["SATSRELAY_TEST_POSTGRES"]
        terminalreporter.write_line(f"PostgreSQL half: run against {url.split('@')[-1]}")
