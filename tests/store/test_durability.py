"""Group commit is durable: an event whose ``submit()`` returned (the relay would have
sent ``OK true``) survives SIGKILL of the writing process, on every store.

The child (``crash_writer``) prints each id as soon as its submit returned; the test kills
it mid-stream, reopens the store and looks every printed id up. SQLite's NORMAL is durable
against a process crash (not power loss), so it must pass too.
"""

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
from relay.store.base import Store
from relay.store.sqlite import SqliteStore

ROOT = Path(__file__).resolve().parents[2]
NOW = 1_700_000_000


def _acknowledged_before_kill(args: list[str]) -> list[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.store.crash_writer", *args],
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
    # Lines written before the kill landed are acknowledged too; a torn last line is not.
    return acknowledged + [line for line in rest.decode().split("\n")[:-1] if line]


async def _count_ids(store: Store, wanted: list[str]) -> tuple[int, int]:
    await store.open()
    try:
        found = 0
        for i in range(0, len(wanted), 500):
            found += await store.count([Filter(ids=frozenset(wanted[i : i + 500]))], NOW)
        return found, await store.count([Filter()], NOW)
    finally:
        await store.close()


@pytest.mark.parametrize("synchronous", ["FULL", "NORMAL"])
def test_every_acknowledged_event_survives_sigkill_sqlite(tmp_path: Path, synchronous: str) -> None:
    db = tmp_path / "crash.db"
    acknowledged = _acknowledged_before_kill([str(db), synchronous])
    found, total = asyncio.run(_count_ids(SqliteStore(db), acknowledged))
    assert found == len(set(acknowledged))
    assert total >= found


@pytest.mark.postgres
def test_every_acknowledged_event_survives_sigkill_postgres() -> None:
    dsn = os.environ.get("SATSRELAY_TEST_POSTGRES")
    if not dsn:
        pytest.skip("SATSRELAY_TEST_POSTGRES is unset (e.g. postgresql://postgres@127.0.0.1:5432/test)")
    from relay.store.postgres import PostgresStore

    schema = f"t_{uuid.uuid4().hex}"

    async def drop_schema() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()

    try:
        acknowledged = _acknowledged_before_kill(["--postgres", dsn, schema])
        found, total = asyncio.run(_count_ids(PostgresStore(dsn, schema=schema), acknowledged))
    finally:
        asyncio.run(drop_schema())
    assert found == len(set(acknowledged))
    assert total >= found
