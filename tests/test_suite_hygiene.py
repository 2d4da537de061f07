"""The test suite keeps to its temp folders: run from a checkout, it must write nothing into
the current directory, whose ``./data`` is the operator's (``make run`` keeps the demo
relay's database and key there). And `make test` says whether its PostgreSQL half ran, and
how to include it when it did not (issue 22)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from relay.nostr import crypto
from tests.conftest import DEFAULT_TEST_POSTGRES, RelayFactory, _postgres_answers
from tests.lnbits_server import LnbitsServer, lnbits_python
from tests.nostr_client import NostrClient, signed

REPO = Path(__file__).resolve().parent.parent


def test_starting_the_test_lnbits_writes_nothing_into_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not lnbits_python().exists():
        pytest.skip(f"no LNbits interpreter at {lnbits_python()}: run `make test-deps`")
    monkeypatch.chdir(tmp_path)
    server = LnbitsServer.start()
    try:
        assert server.wallet_a.inkey
    finally:
        server.stop()
    assert sorted(os.listdir(tmp_path)) == []


async def test_a_test_relay_writes_nothing_into_the_current_directory(
    storage: dict[str, str], relay_factory: RelayFactory, alice: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On PostgreSQL the relay's key file and the demo wallet's file default to ./data: the
    fixtures keep them in the test's folder."""
    here = tmp_path / "cwd"
    here.mkdir()
    monkeypatch.chdir(here)
    payments = {"enabled": True, "backend": "fake", "allow_pubkeys": [crypto.public_key(alice).hex()]}
    async with relay_factory(storage=storage, payments=payments) as relay, NostrClient(relay.url) as client:
        ok, message = await client.publish(signed(alice, 1, "x"))
        assert ok, message
        async with httpx.AsyncClient() as http:  # an invoice: the demo wallet writes its file
            invoice = {"pubkey": "ab" * 32, "plan": "admission"}
            answer = await http.post(f"http://127.0.0.1:{relay.port}/api/invoice", json=invoice)
            assert answer.status_code == 200, answer.text
    assert sorted(os.listdir(here)) == []


def pytest_in_a_subprocess(*prefix: str) -> subprocess.CompletedProcess[str]:
    """``pytest tests/test_deploy_postgres.py`` (one PostgreSQL-only test) as `make test`
    runs it: SATSRELAY_TEST_POSTGRES unset, skips allowed; ``prefix`` wraps the command."""
    env = {k: v for k, v in os.environ.items() if k not in ("SATSRELAY_TEST_POSTGRES", "SATSRELAY_FAIL_ON_SKIP")}
    env["PYTHONPATH"] = str(REPO)
    command = [*prefix, sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_deploy_postgres.py"]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_make_test_runs_the_postgresql_half_where_postgresql_answers() -> None:
    """Nothing to set on a machine set up like CI: the default test database answers, the
    PostgreSQL-only tests run, and the run's last lines say where."""
    if not _postgres_answers(DEFAULT_TEST_POSTGRES):
        pytest.skip(f"SATSRELAY_TEST_POSTGRES: {DEFAULT_TEST_POSTGRES} does not answer on this machine")
    done = pytest_in_a_subprocess()
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    tail = done.stdout.strip().splitlines()[-2:]
    assert tail[0] == "PostgreSQL half: run against 127.0.0.1:5432/test" and "1 passed" in tail[1], tail


def test_without_postgresql_the_run_says_how_to_include_its_half() -> None:
    """The same run on a machine where no PostgreSQL answers (a network namespace of its own,
    where 127.0.0.1:5432 is nobody): the test is skipped and the run's end says so, with
    how to include it (README: Tests)."""
    unshare = shutil.which("unshare")
    if unshare is None or os.geteuid() != 0:
        pytest.skip("needs root and unshare(1) for a network namespace without PostgreSQL")
    done = pytest_in_a_subprocess(unshare, "--net")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    tail = done.stdout.strip().splitlines()[-2:]
    assert tail[0].startswith("PostgreSQL half: 1 tests skipped, no PostgreSQL to run them on: "), tail
    assert "set SATSRELAY_TEST_POSTGRES=postgresql://" in tail[0] and "1 skipped" in tail[1], tail


def test_make_test_installs_every_tool_a_deploy_test_needs() -> None:
    """Each tool a deploy test is skipped without ("... not installed (run `make
    deploy-tools`)") is installed by that target, which `make test` runs (through test-deps):
    the nginx, Caddy, systemd and Prometheus checks run in `make test`, not only by hand."""
    needed = {
        tool
        for path in (REPO / "tests").rglob("*.py")
        for tool in re.findall(r"\"(\S+) not installed \(run `make deploy-tools`\)\"", path.read_text())
    }
    assert {"nginx", "caddy", "systemd-analyze", "promtool"} <= needed, needed
    makefile = (REPO / "Makefile").read_text()
    recipe = re.search(r"^deploy-tools:\n((?:\t.*\n)+)", makefile, re.MULTILINE)
    assert recipe, "Makefile: no deploy-tools target"
    installed = set(re.findall(r"command -v (\S+) ", recipe[1]))
    assert needed <= installed, needed - installed
    assert re.search(r"^test: test-deps\b", makefile, re.MULTILINE)
    assert re.search(r"^test-deps:.*\bdeploy-tools\b", makefile, re.MULTILINE)
