"""``satsrelay backup`` / ``restore`` as an operator runs them, against a relay process
that keeps taking writes over WebSocket and is then killed with SIGKILL (issue 11 item 4)."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import sys
import time
from collections.abc import Callable
from pathlib import Path

from websockets.exceptions import ConnectionClosed

from tests.conftest import RelayProcess
from tests.nostr_client import NostrClient, signed
from tests.test_cli import config_for, jsonl, satsrelay


async def run_cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay.cli", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


NO_RATE_LIMIT = (
    "[limits]\nevents_per_second = 100000\nevents_burst = 100000\nip_events_per_second = 100000\n"
    "ip_events_burst = 100000\npubkey_events_per_second = 100000\npubkey_events_burst = 100000\n"
)


class Writer:
    """Publishes notes one after another and remembers which ones were acknowledged."""

    def __init__(self, url: str, secret: bytes) -> None:
        self.url, self.secret = url, secret
        self.acked: list[str] = []
        self.refused: list[str] = []
        self.n = 0

    async def run(self) -> None:
        with contextlib.suppress(OSError, ConnectionClosed, TimeoutError):
            # the relay is killed under us: that is the test
            async with NostrClient(self.url) as client:
                while True:
                    self.n += 1
                    event = signed(self.secret, 1, f"note {self.n} " + "x" * 500)
                    ok, message = await client.publish(event)
                    if not ok:
                        self.refused.append(message)
                        return
                    self.acked.append(event.id)

    async def until(self, count: int, task: asyncio.Task[None]) -> None:
        deadline = time.monotonic() + 60
        while len(self.acked) < count:
            assert not task.done() and not self.refused, f"writer stopped: {self.refused}"
            assert time.monotonic() < deadline, "writes stalled"
            await asyncio.sleep(0.05)


async def test_backup_of_a_live_relay_survives_sigkill_and_restores_every_acked_event(
    relay_process: Callable[..., RelayProcess], tmp_path: Path, alice: bytes
) -> None:
    relay = relay_process(extra_toml=NO_RATE_LIMIT)
    writer = Writer(relay.url, alice)
    task = asyncio.create_task(writer.run())
    await writer.until(300, task)
    acked_before_backup = list(writer.acked)
    backup_file = tmp_path / "snapshot.db"
    code, out, err = await run_cli("backup", "--config", str(relay.config), str(backup_file))
    assert code == 0, err
    assert "backup: 100%" in err and f"to {backup_file}" in out
    written_during = len(writer.acked) - len(acked_before_backup)
    await writer.until(len(acked_before_backup) + written_during + 100, task)
    relay.kill()  # SIGKILL mid-write
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task

    code, out, err = await run_cli("restore", "--config", str(relay.config), str(backup_file))
    assert code == 0, err
    assert "restored" in out and "kept at" in out

    again = relay_process(port=relay.port, extra_toml=NO_RATE_LIMIT)
    async with NostrClient(again.url) as client:
        got = {e["id"] for e in await client.req("all", {"kinds": [1], "limit": 5000})}
    missing = set(acked_before_backup) - got
    assert not missing, f"{len(missing)} events acknowledged before the backup are gone"
    # everything in the snapshot was committed long before the kill, so its OK arrived
    assert got <= set(writer.acked)
    # the restored file is the backup's snapshot, not the killed relay's later state
    assert len(got) < len(writer.acked)


async def test_restore_refuses_while_the_relay_runs(
    relay_process: Callable[..., RelayProcess], tmp_path: Path, alice: bytes
) -> None:
    relay = relay_process()
    async with NostrClient(relay.url) as client:
        ok, _ = await client.publish(signed(alice, 1, "kept"))
        assert ok
    backup_file = tmp_path / "b.db"
    assert (await run_cli("backup", "--config", str(relay.config), str(backup_file)))[0] == 0
    code, _, err = await run_cli("restore", "--config", str(relay.config), str(backup_file))
    assert code == 1
    assert "is open in a running relay" in err and "Traceback" not in err
    async with NostrClient(relay.url) as client:  # the live database was not touched
        assert len(await client.req("s", {"kinds": [1]})) == 1


def test_backup_refuses_to_overwrite_and_restore_refuses_a_non_database(tmp_path: Path, alice: bytes) -> None:
    cfg = str(config_for(tmp_path, "a"))
    assert satsrelay("import", "--config", cfg, stdin=jsonl([signed(alice, 1, "x").to_dict()])).returncode == 0
    existing = tmp_path / "exists.db"
    existing.write_bytes(b"precious")
    result = satsrelay("backup", "--config", cfg, str(existing))
    assert result.returncode == 1 and "already exists" in result.stderr.decode()
    assert existing.read_bytes() == b"precious"
    result = satsrelay("restore", "--config", cfg, str(existing))
    assert result.returncode == 1 and "not a satsrelay SQLite database" in result.stderr.decode()
    assert "Traceback" not in result.stderr.decode()


def test_backup_is_a_self_contained_file(tmp_path: Path, alice: bytes) -> None:
    cfg = str(config_for(tmp_path, "a"))
    events = [signed(alice, 1, f"n{i}", created_at=int(time.time()) - i) for i in range(50)]
    assert satsrelay("import", "--config", cfg, stdin=jsonl([e.to_dict() for e in events])).returncode == 0
    target = tmp_path / "copy.db"
    result = satsrelay("backup", "--config", cfg, str(target))
    assert result.returncode == 0, result.stderr
    assert "50 events" in result.stdout.decode()
    assert not Path(str(target) + "-wal").exists()
    with contextlib.closing(sqlite3.connect(target)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 50


def test_backup_of_postgres_points_to_pg_dump(tmp_path: Path) -> None:
    cfg = tmp_path / "pg.toml"
    cfg.write_text('[storage]\nurl = "postgresql://postgres@127.0.0.1:5432/test"\n')
    result = satsrelay("backup", "--config", str(cfg), str(tmp_path / "x.db"))
    assert result.returncode == 1
    err = result.stderr.decode()
    assert "pg_dump" in err and len(err.strip().splitlines()) == 1
