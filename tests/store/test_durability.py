"""Group commit is durable: an event whose ``submit()`` returned (the relay would have
sent ``OK true``) survives SIGKILL of the writing process, on every store.

The child (``crash_writer``) prints each id as soon as its submit returned; the test kills
it mid-stream, reopens the store and looks every printed id up. SQLite's NORMAL is durable
against a process crash (not power loss), so it must pass too.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import asyncpg
import pytest

from relay.nostr.event import is_hex64
from relay.nostr.filters import Filter
from relay.store.base import Store
from relay.store.sqlite import SqliteStore

ROOT = Path(__file__).resolve().parents[2]
NOW = 1_700_000_000


def _acknowledged_before_kill(args: list[str]) -> list[str]:
    ids = _lines_until_killed([sys.executable, "-m", "tests.store.crash_writer", *args], 2_000)
    # Every acknowledged id is a whole one: a mangled line must fail as such, not as a
    # "lost" event (nor be looked up as a shorter blob that matches nothing).
    assert all(is_hex64(i) for i in ids), [i for i in ids if not is_hex64(i)]
    return ids


def _lines_until_killed(cmd: list[str], wanted: int) -> list[str]:
    """Start ``cmd``, read ``wanted`` lines from its stdout, SIGKILL it, and return every
    whole line it wrote before it died (a torn last line is not acknowledged).

    The rest is read through ``proc.stdout``, the same buffered reader ``readline()`` used:
    ``communicate()`` reads the pipe's file descriptor directly, so it would skip what
    ``readline()`` had already buffered (up to 8 KiB: the whole lines in it would go
    unchecked, and the torn line at its end would come back as the tail of an id, which
    then looks like a lost event; seen when a loaded machine let the pipe fill up)."""
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        while len(lines) < wanted:
            line = proc.stdout.readline()
            if not line.endswith(b"\n"):
                err = proc.stderr.read().decode() if proc.stderr else ""
                pytest.fail(f"writer exited early: {err}")
            lines.append(line.decode().strip())
    finally:
        proc.send_signal(signal.SIGKILL)
        rest = proc.stdout.read()  # to EOF: the killed child's end of the pipe is closed
        proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    # Lines written before the kill landed are acknowledged too; a torn last line is not.
    return lines + [line for line in rest.decode().split("\n")[:-1] if line]


async def _count_ids(store: Store, wanted: list[str]) -> tuple[int, int]:
    await store.open()
    try:
        found = 0
        for i in range(0, len(wanted), 500):
            found += await store.count([Filter(ids=frozenset(wanted[i : i + 500]))], NOW)
        return found, await store.count([Filter()], NOW)
    finally:
        await store.close()


def test_every_line_written_before_the_kill_is_read_whole() -> None:
    """The harness itself: a child writes 900 ids in one go (58 KiB, the pipe holds it) and
    waits. Reading 300 leaves readline()'s buffer ending inside a line; every id must still
    come back exactly once and whole (reading the rest with communicate() returned the tail
    of one id, which the durability tests then counted as a lost event, and skipped the whole
    lines that were buffered)."""
    ids = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(900)]
    child = (
        "import os, sys, time\n"
        f"os.write(1, {''.join(i + chr(10) for i in ids).encode()!r})\n"
        "time.sleep(60)\n"
    )
    assert _lines_until_killed([sys.executable, "-c", child], 300) == ids


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
