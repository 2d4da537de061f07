"""Group-commit durability on PostgreSQL: an event whose submit() returned survives SIGKILL
of the writing process (the SQLite counterpart is in test_sqlite.py)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import asyncpg
import pytest

from relay.filters import Filter

pytestmark = pytest.mark.postgres
ROOT = Path(__file__).resolve().parents[2]
NOW = 1_700_000_000


@pytest.fixture
def dsn() -> str:
    value = os.environ.get("SATSRELAY_TEST_POSTGRES")
    if not value:
        pytest.skip("SATSRELAY_TEST_POSTGRES is unset (e.g. postgresql://postgres@127.0.0.1:5432/test)")
    return value


def test_every_acknowledged_event_survives_sigkill_on_postgres(dsn: str) -> None:
    from relay.store.postgres import PostgresStore

    schema = f"t_{uuid.uuid4().hex}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.store.crash_writer", "--postgres", dsn, schema],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    acknowledged: list[str] = []
    try:
        while len(acknowledged) < 2_000:
            line = proc.stdout.readline()
            if not line:
                err = proc.stderr.read().decode() if proc.stderr else ""
                pytest.fail(f"writer exited early: {err}")
            acknowledged.append(line.decode().strip())
    finally:
        proc.send_signal(signal.SIGKILL)
        rest, _ = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    acknowledged += [line for line in rest.decode().split("\n")[:-1] if line]

    async def count() -> tuple[int, int]:
        store = PostgresStore(dsn, schema=schema)
        await store.open()
        try:
            found = 0
            for i in range(0, len(acknowledged), 500):
                found += await store.count([Filter(ids=frozenset(acknowledged[i : i + 500]))], NOW)
            return found, await store.count([Filter()], NOW)
        finally:
            await store.close()
            conn = await asyncpg.connect(dsn)
            try:
                await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            finally:
                await conn.close()

    found, total = asyncio.run(count())
    assert found == len(set(acknowledged))
    assert total >= found
