"""A real LNbits (FakeWallet, offline) for tests: started once, torn down at the end.

Facts behind each step are in shared/notes/lnbits-test-server.md: uvicorn is run directly
(the ``lnbits`` supervisor hangs instead of exiting on failure), from a temp folder holding
``lnbits/static`` and ``lnbits/templates`` symlinks, with its own data folder and a raised
rate limit. Wallet A is the relay's; wallet B is funded by the super user and pays.

LNbits lives in its own venv because its pins clash with ours; the interpreter is
``$SATSRELAY_TEST_LNBITS_PYTHON`` or ``<repo>/.venv-lnbits/bin/python`` (``make test``
creates it). Usable from any test module: ``LnbitsServer.start()`` / ``stop()``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT = 60.0  # seconds: about 3 s idle, 11 s measured under load; CI is slower still


def lnbits_python() -> Path:
    """The interpreter of the LNbits venv (may not exist: callers skip then)."""
    configured = os.environ.get("SATSRELAY_TEST_LNBITS_PYTHON")
    return Path(configured) if configured else REPO / ".venv-lnbits" / "bin" / "python"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _site_packages_lnbits(python: Path, workdir: Path) -> Path:
    """Where the lnbits package is installed. Found without importing it: ``import lnbits``
    loads its settings, which write ``data/.lnbits_auth_key`` under the current directory
    (it used to land in the operator's ``./data``, beside the relay's own data). Run in
    ``workdir`` all the same."""
    locate = "import importlib.util; print(importlib.util.find_spec('lnbits').submodule_search_locations[0])"
    out = subprocess.run(
        [str(python), "-c", locate],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=workdir,
    )
    return Path(out.stdout.strip())


@dataclass(frozen=True, slots=True)
class Wallet:
    id: str
    inkey: str
    adminkey: str


class LnbitsServer:
    """A running LNbits with wallet A (receives; the relay's) and wallet B (funded, pays)."""

    def __init__(self, process: subprocess.Popen[bytes], workdir: tempfile.TemporaryDirectory[str], url: str) -> None:
        self._process = process
        self._workdir = workdir
        self.url = url
        self.wallet_a = Wallet("", "", "")
        self.wallet_b = Wallet("", "", "")

    @classmethod
    def start(cls, funding_sats: int = 1_000_000) -> LnbitsServer:
        python = lnbits_python()
        workdir = tempfile.TemporaryDirectory(prefix="satsrelay-lnbits-")
        root = Path(workdir.name)
        package = _site_packages_lnbits(python, root)
        (root / "lnbits").mkdir()
        (root / "lnbits" / "static").symlink_to(package / "static")
        (root / "lnbits" / "templates").symlink_to(package / "templates")
        (root / "data").mkdir()
        port = _free_port()
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(root),
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "LNBITS_BACKEND_WALLET_CLASS": "FakeWallet",
            "LNBITS_DATA_FOLDER": str(root / "data"),
            "LNBITS_EXTENSIONS_MANIFESTS": "[]",
            "LNBITS_WASM_EXTENSIONS_MANIFESTS": "[]",
            "LNBITS_PRICE_AGGREGATOR_ENABLED": "false",
            "LNBITS_EXCHANGE_RATE_PROVIDERS": "[]",
            "LNBITS_RATE_LIMIT_NO": "100000",
            "ENABLE_LOG_TO_FILE": "false",
        }
        log = (root / "lnbits.log").open("wb")
        process = subprocess.Popen(
            [str(python), "-m", "uvicorn", "lnbits.__main__:app", "--host", "127.0.0.1", "--port", str(port)],
            cwd=root,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        server = cls(process, workdir, f"http://127.0.0.1:{port}")
        try:
            server._wait_ready()
            server._set_up_wallets(funding_sats)
        except BaseException:
            server.stop()
            raise
        return server

    @property
    def pid(self) -> int:
        """The uvicorn process (the only LNbits process: no supervisor, no workers)."""
        return self._process.pid

    def log_tail(self, chars: int = 3000) -> str:
        path = Path(self._workdir.name) / "lnbits.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"LNbits exited with {self._process.returncode}:\n{self.log_tail()}")
            try:
                # Before first_install every route answers 307; any answer means it is up.
                httpx.get(f"{self.url}/api/v1/health", timeout=2.0)
                return
            except httpx.TransportError:
                time.sleep(0.2)
        raise RuntimeError(f"LNbits did not open its port within {START_TIMEOUT:.0f} s:\n{self.log_tail()}")

    def _set_up_wallets(self, funding_sats: int) -> None:
        with httpx.Client(base_url=self.url, timeout=30.0) as http:
            creds = {"username": "super", "password": "secret-super-1", "password_repeat": "secret-super-1"}
            admin = http.put("/api/v1/auth/first_install", json=creds)
            admin.raise_for_status()
            admin_token = admin.json()["access_token"]
            creds = {"username": "relay", "password": "secret-relay-1", "password_repeat": "secret-relay-1"}
            user = http.post("/api/v1/auth/register", json=creds)
            user.raise_for_status()
            bearer = {"Authorization": f"Bearer {user.json()['access_token']}"}
            wallets = []
            for name in ("A", "B"):
                reply = http.post("/api/v1/wallet", json={"name": name}, headers=bearer)
                reply.raise_for_status()
                w = reply.json()
                wallets.append(Wallet(w["id"], w["inkey"], w["adminkey"]))
            self.wallet_a, self.wallet_b = wallets
            funded = http.put(
                "/users/api/v1/balance",
                json={"id": self.wallet_b.id, "amount": funding_sats},
                headers={"Authorization": f"Bearer {admin_token}"},
            )
            funded.raise_for_status()

    def pay(self, bolt11: str) -> dict[str, object]:
        """Pay ``bolt11`` from wallet B; LNbits settles an internal invoice at once."""
        reply = httpx.post(
            f"{self.url}/api/v1/payments",
            json={"out": True, "bolt11": bolt11},
            headers={"X-Api-Key": self.wallet_b.adminkey},
            timeout=30.0,
        )
        reply.raise_for_status()
        body: dict[str, object] = reply.json()
        return body

    def suspend(self) -> None:
        """SIGSTOP: an outage that keeps FakeWallet's in-memory invoices (a restart loses them)."""
        self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGCONT)
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=10)
        self._workdir.cleanup()


if __name__ == "__main__":  # a manual LNbits for poking at: python tests/lnbits_server.py
    srv = LnbitsServer.start()
    print(f"LNbits at {srv.url}\nA: {srv.wallet_a}\nB: {srv.wallet_b}", file=sys.stderr)
    try:
        srv._process.wait()
    except KeyboardInterrupt:
        srv.stop()
