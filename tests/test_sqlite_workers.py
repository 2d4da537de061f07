"""``satsrelay serve --workers N`` on SQLite (issue 19, item 1): N worker processes share the
port and one writer process owns the database file (``relay.store.writer_process``).

Real ``serve --workers 2`` process trees on a real SQLite file, driven over WebSockets:
fan-out across the workers in commit order and each event once, the rarer writes (NIP-62)
through the writer, a priced event charged by the payments plug-in's write hook in the
writer process, ``kill -9`` of the writer and of a worker during ingest (no acknowledged
event lost, no live subscriber missing a stored event), a stop during ingest (every event
in flight gets its real OK), and a restart on the same file. Before this, ``--workers`` on
SQLite exited at once ("needs storage.url = postgresql://").
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from relay.cli import _settings as cli_settings
from relay.cli import build_parser
from relay.config import load_settings
from relay.nostr import crypto
from relay.nostr.event import Event
from tests.conftest import RelayProcess
from tests.nostr_client import NostrClient, signed
from tests.test_nodes import WAIT, _children, _socket_owners, _tcp_sockets, serving_pid
from tests.test_vanish import vanish_request
from tests.waiting import eventually

MakeRelay = Callable[..., RelayProcess]

RELAXED = (
    "[limits]\nevents_per_second = 100000\nevents_burst = 100000\nip_events_per_second = 100000\n"
    "ip_events_burst = 100000\npubkey_events_per_second = 100000\npubkey_events_burst = 100000\n"
)
WRITER_GONE = "error: the relay's writer restarted; try again"


def start_workers(relay_process: MakeRelay, extra_toml: str = "", port: int | None = None) -> RelayProcess:
    return relay_process(extra_toml=RELAXED + extra_toml, args=["--workers", "2"], port=port)


def roles(supervisor: RelayProcess) -> tuple[int | None, list[int]]:
    """(the writer process's pid or None, the workers' pids) among the supervisor's children."""
    assert supervisor.proc is not None
    writer, workers = None, []
    for pid in _children(supervisor.proc.pid):
        with contextlib.suppress(OSError):
            if b"--writer-fd" in Path(f"/proc/{pid}/cmdline").read_bytes():
                writer = pid
            else:
                workers.append(pid)
    return writer, sorted(workers)


async def serving(supervisor: RelayProcess, workers: int = 2) -> tuple[int, list[int]]:
    """Once the writer runs and each worker listens on the port: (writer pid, worker pids)."""

    async def ready() -> bool:
        writer, pids = roles(supervisor)
        owners = _socket_owners(pids)
        listening = {owners.get(inode) for inode, _, state in _tcp_sockets(supervisor.port) if state == "0A"}
        return writer is not None and len(pids) == workers and listening >= set(pids)

    await eventually(ready, WAIT, what=f"the writer process and {workers} workers listening")
    writer, pids = roles(supervisor)
    assert writer is not None
    return writer, pids


async def clients_on_each_worker(
    stack: contextlib.AsyncExitStack, supervisor: RelayProcess, workers: list[int], each: int
) -> dict[int, list[NostrClient]]:
    """``each`` connections served by every worker (the kernel picks; open until it has)."""
    by_worker: dict[int, list[NostrClient]] = {pid: [] for pid in workers}
    for _ in range(400):
        client = await stack.enter_async_context(NostrClient(supervisor.url))
        pid = serving_pid(supervisor.port, client, workers)
        if len(by_worker[pid]) < each:
            by_worker[pid].append(client)
        if all(len(c) == each for c in by_worker.values()):
            return by_worker
    raise AssertionError(f"400 connections did not give each worker {each}")


async def live_ids(client: NostrClient, sub: str, count: int, timeout: float = WAIT) -> list[str]:
    """The ids of the next ``count`` live EVENTs of ``sub``, in arrival order."""
    out: list[str] = []
    while len(out) < count:
        msg = await client.recv_where(lambda m: m[0] == "EVENT" and m[1] == sub, timeout=timeout)
        out.append(msg[2]["id"])
    return out


async def no_more_live(client: NostrClient, sub: str) -> None:
    with contextlib.suppress(TimeoutError):
        msg = await client.recv_where(lambda m: m[0] == "EVENT" and m[1] == sub, timeout=0.5)
        raise AssertionError(f"an event delivered twice or unasked: {msg}")


async def stored_ids(url: str, authors: list[str]) -> set[str]:
    async with NostrClient(url) as reader:
        return {e["id"] for e in await reader.req("all", {"authors": authors, "limit": 5000})}


class Pump:
    """One connection sending ``events`` with at most ``window`` in flight, recording each
    OK; stops quietly when its connection goes (a killed worker)."""

    def __init__(self, client: NostrClient, events: list[Event], window: int = 64) -> None:
        self.client, self.events, self.window = client, events, window
        self.acked: list[str] = []
        self.refused: dict[str, str] = {}
        self.closed = False
        self._answer = asyncio.Event()

    @property
    def answered(self) -> int:
        return len(self.acked) + len(self.refused)

    async def run(self) -> None:
        sent = 0
        try:
            reader = asyncio.create_task(self._read())
            for event in self.events:
                while sent - self.answered >= self.window and not reader.done():
                    self._answer.clear()
                    await asyncio.wait_for(self._answer.wait(), WAIT)
                if reader.done():
                    break
                await self.client.send(["EVENT", event.to_dict()])
                sent += 1
            await reader
        except ConnectionClosed:
            self.closed = True

    async def _read(self) -> None:
        try:
            while self.answered < len(self.events):
                msg = await self.client.recv_where(lambda m: m[0] == "OK", timeout=WAIT)
                if msg[2] is True:
                    self.acked.append(msg[1])
                else:
                    self.refused[msg[1]] = msg[3]
                self._answer.set()
        except ConnectionClosed:
            self.closed = True
        finally:
            self._answer.set()


def test_workers_auto_is_one_per_core(tmp_path: Path) -> None:
    config = tmp_path / "relay.toml"
    config.write_text('[server]\nworkers = "auto"\n')
    assert load_settings(config).server.workers == len(os.sched_getaffinity(0))
    config.write_text("[server]\nworkers = 1\n")
    args = build_parser().parse_args(["serve", "--config", str(config), "--workers", "auto"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # pydantic warned of a str serialised as the int field
        assert cli_settings(args).server.workers == len(os.sched_getaffinity(0))


async def test_sqlite_workers_fan_out_in_commit_order_each_once_and_stop_on_sigterm(
    relay_process: MakeRelay, alice: bytes, bob: bytes
) -> None:
    supervisor = start_workers(relay_process)
    writer, workers = await serving(supervisor)
    authors = [crypto.public_key(k).hex() for k in (alice, bob)]
    async with contextlib.AsyncExitStack() as stack:
        by_worker = await clients_on_each_worker(stack, supervisor, workers, 2)
        subs = [clients[0] for clients in by_worker.values()]
        pubs = [clients[1] for clients in by_worker.values()]
        for sub in subs:
            assert await sub.req("live", {"authors": authors}) == []
        batches = [[signed(key, 1, f"{n} from worker {i}") for n in range(150)] for i, key in enumerate((alice, bob))]
        pumps = [Pump(pub, batch) for pub, batch in zip(pubs, batches, strict=True)]
        await asyncio.gather(*(p.run() for p in pumps))
        for pump in pumps:
            assert len(pump.acked) == 150 and not pump.refused, pump.refused
        # Every subscriber, on either worker, sees every stored event once, in one order (the commit's).
        seen = [await live_ids(sub, "live", 300) for sub in subs]
        assert seen[0] == seen[1]
        assert sorted(seen[0]) == sorted(e.id for batch in batches for e in batch)
        for batch in batches:  # and each publisher's events in the order it sent them
            mine = {e.id for e in batch}
            assert [i for i in seen[0] if i in mine] == [e.id for e in batch]
        # An ephemeral event crosses the workers too (never stored).
        ephemeral = signed(alice, 20001, "ephemeral")
        assert await pubs[0].publish(ephemeral) == (True, "")
        for sub in subs:
            assert await live_ids(sub, "live", 1) == [ephemeral.id]
            await no_more_live(sub, "live")
        assert await stored_ids(supervisor.url, authors) == {e.id for batch in batches for e in batch}

        # NIP-62 through one worker: the writer process deletes; the other worker reads none.
        ok, message = await pubs[0].publish(vanish_request(alice, supervisor.url))
        assert ok, message
        assert await stored_ids(supervisor.url, authors[:1]) == set()
        assert await pubs[1].req("gone", {"authors": authors[:1]}) == []

    assert supervisor.terminate(timeout=WAIT) == 0, supervisor.stderr_text()
    for pid in [writer, *workers]:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert "Traceback" not in supervisor.stderr_text()


async def test_kill_9_of_the_writer_during_ingest_loses_no_acknowledged_event_nor_a_live_one(
    relay_process: MakeRelay, alice: bytes, bob: bytes
) -> None:
    supervisor = start_workers(relay_process)
    writer, workers = await serving(supervisor)
    authors = [crypto.public_key(k).hex() for k in (alice, bob)]
    batches = [[signed(key, 1, f"{n} of {i}") for n in range(1500)] for i, key in enumerate((alice, bob))]
    async with contextlib.AsyncExitStack() as stack:
        by_worker = await clients_on_each_worker(stack, supervisor, workers, 2)
        subs = [clients[0] for clients in by_worker.values()]
        for sub in subs:
            assert await sub.req("live", {"authors": authors}) == []
        pumps = [Pump(clients[1], batch) for clients, batch in zip(by_worker.values(), batches, strict=True)]
        running = asyncio.gather(*(p.run() for p in pumps))

        async def mid_stream() -> bool:
            return sum(len(p.acked) for p in pumps) >= 400

        await eventually(mid_stream, WAIT, what="400 events acknowledged")
        os.kill(writer, signal.SIGKILL)
        await running
        acked = {i for p in pumps for i in p.acked}
        assert len(acked) < 3000, "the kill should land mid-stream"
        for pump in pumps:
            assert not pump.closed
            # The events in flight when the writer died were answered "try again", never OK.
            assert set(pump.refused.values()) <= {WRITER_GONE}, set(pump.refused.values())
        new_writer, _ = await serving(supervisor)
        assert new_writer != writer
        stored = await stored_ids(supervisor.url, authors)
        assert not acked - stored, f"{len(acked - stored)} acknowledged events lost"
        # Each subscriber got every stored event, once, in one order: those the dead writer
        # committed without announcing them were read back from the file.
        seen = [await live_ids(sub, "live", len(stored)) for sub in subs]
        assert set(seen[0]) == stored and len(seen[0]) == len(stored)
        assert seen[0] == seen[1]
        for sub in subs:
            await no_more_live(sub, "live")

    # Stopped and started again on the same file: still every acknowledged event.
    assert supervisor.terminate(timeout=WAIT) == 0, supervisor.stderr_text()
    again = start_workers(relay_process, port=supervisor.port)
    await serving(again)
    assert not acked - await stored_ids(again.url, authors)


async def test_what_a_writer_committed_but_never_streamed_reaches_live_subscribers_after_it_restarts(
    relay_process: MakeRelay, alice: bytes, tmp_path: Path
) -> None:
    """The commit a writer dies in the middle of announcing is read back from the file by
    every worker once the writer is back. Made certain here with events written to the
    file while the relay runs (``satsrelay import``: committed, never on the stream)."""
    supervisor = start_workers(relay_process)
    writer, workers = await serving(supervisor)
    author = crypto.public_key(alice).hex()
    async with contextlib.AsyncExitStack() as stack:
        subs = [clients[0] for clients in (await clients_on_each_worker(stack, supervisor, workers, 1)).values()]
        for sub in subs:
            assert await sub.req("live", {"authors": [author]}) == []
        first = signed(alice, 1, "streamed")
        assert await subs[0].publish(first) == (True, "")
        for sub in subs:
            assert await live_ids(sub, "live", 1) == [first.id]
        behind = [signed(alice, 1, f"committed behind the stream {i}") for i in range(5)]
        jsonl = tmp_path / "behind.jsonl"
        jsonl.write_bytes(b"".join(e.raw + b"\n" for e in behind))
        imported = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "relay.cli", "import", str(jsonl), "--config", str(supervisor.config),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(imported.communicate(), WAIT)
        assert imported.returncode == 0, err.decode()
        for sub in subs:
            await no_more_live(sub, "live")
        os.kill(writer, signal.SIGKILL)
        for sub in subs:
            assert await live_ids(sub, "live", 5) == [e.id for e in behind]
        last = signed(alice, 1, "after the restart")
        assert await subs[1].publish(last) == (True, "")
        for sub in subs:
            assert await live_ids(sub, "live", 1) == [last.id]
            await no_more_live(sub, "live")


async def test_a_database_the_writer_cannot_open_is_one_line_and_a_quick_non_zero_exit(tmp_path: Path) -> None:
    database = tmp_path / "relay.db"
    database.write_bytes(b"not a SQLite database" * 100)
    config = tmp_path / "relay.toml"
    config.write_text(f'[storage]\nurl = "sqlite:///{database}"\n[server]\nport = 0\nmetrics_listen = ""\n')
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay.cli", "serve", "--config", str(config), "--workers", "2",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), WAIT)
    assert proc.returncode == 1
    message = err.decode()
    assert f"satsrelay: cannot open SQLite database {database}" in message, message
    assert "Traceback" not in message and "worker 0" not in message, message


async def test_kill_9_of_a_worker_during_ingest_spares_the_other_and_loses_no_acknowledged_event(
    relay_process: MakeRelay, alice: bytes, bob: bytes
) -> None:
    supervisor = start_workers(relay_process)
    writer, workers = await serving(supervisor)
    authors = [crypto.public_key(k).hex() for k in (alice, bob)]
    batches = [[signed(key, 1, f"{n} of {i}") for n in range(1500)] for i, key in enumerate((alice, bob))]
    async with contextlib.AsyncExitStack() as stack:
        by_worker = await clients_on_each_worker(stack, supervisor, workers, 2)
        (survivor, survivor_clients), (victim, victim_clients) = by_worker.items()
        sub = survivor_clients[0]
        assert await sub.req("live", {"authors": authors}) == []
        pumps = [Pump(survivor_clients[1], batches[0]), Pump(victim_clients[1], batches[1])]
        running = asyncio.gather(*(p.run() for p in pumps))

        async def mid_stream() -> bool:
            return len(pumps[1].acked) >= 300

        await eventually(mid_stream, WAIT, what="300 events acknowledged by the victim")
        os.kill(victim, signal.SIGKILL)
        await running
        assert pumps[1].closed and len(pumps[1].acked) < 1500
        # The other worker's client noticed nothing: every event of its stream stored.
        assert len(pumps[0].acked) == 1500 and not pumps[0].refused, pumps[0].refused
        acked = {i for p in pumps for i in p.acked}
        stored = await stored_ids(supervisor.url, authors)
        assert not acked - stored, f"{len(acked - stored)} acknowledged events lost"
        seen = await live_ids(sub, "live", len(stored))
        assert set(seen) == stored

        # The supervisor restarts the worker, which serves and fans out again.
        async def replaced() -> bool:
            _, pids = roles(supervisor)
            return victim not in pids and len(pids) == 2

        await eventually(replaced, WAIT, what="the supervisor to restart the killed worker")
        same_writer, workers = await serving(supervisor)
        assert same_writer == writer
        fresh = next(pid for pid in workers if pid != survivor)
        clients = (await clients_on_each_worker(stack, supervisor, workers, 1))[fresh]
        late = signed(bob, 1, "through the restarted worker")
        assert await clients[0].publish(late) == (True, "")
        assert await live_ids(sub, "live", 1) == [late.id]


@pytest.mark.parametrize("whom", ["supervisor", "process group"])
async def test_sigterm_during_ingest_answers_every_event_in_flight_through_the_writer(
    relay_process: MakeRelay, alice: bytes, bob: bytes, whom: str
) -> None:
    """The workers stop first and drain through the writer, which stops last: an event in
    flight at the stop gets its real OK, not "try again" (the writer stopping first would
    fail them all). Also when every process gets the SIGTERM at once, as systemd's default
    KillMode (control-group) sends it: the writer then serves the workers until they have
    gone."""
    supervisor = start_workers(relay_process)
    _, workers = await serving(supervisor)
    authors = [crypto.public_key(k).hex() for k in (alice, bob)]
    # fewer than MAX_IN_FLIGHT per connection, all sent before the stop
    batches = [[signed(key, 1, f"{n} of {i}") for n in range(900)] for i, key in enumerate((alice, bob))]
    replies: dict[str, tuple[bool, str]] = {}
    async with contextlib.AsyncExitStack() as stack:
        by_worker = await clients_on_each_worker(stack, supervisor, workers, 1)
        pubs = [clients[0] for clients in by_worker.values()]
        for pub, batch in zip(pubs, batches, strict=True):
            for event in batch:
                await pub.send(["EVENT", event.to_dict()])
        assert supervisor.proc is not None
        if whom == "supervisor":
            supervisor.proc.send_signal(signal.SIGTERM)
        else:
            os.killpg(supervisor.proc.pid, signal.SIGTERM)  # its own session: start_new_session
        for pub in pubs:
            with contextlib.suppress(ConnectionClosed):
                while True:
                    msg = await pub.recv(timeout=WAIT)
                    if msg[0] == "OK":
                        replies[msg[1]] = (msg[2], msg[3])
    assert supervisor.proc.wait(WAIT) == 0, supervisor.stderr_text()
    answered = {event_id for event_id, (ok, _) in replies.items() if ok}
    refused = {text for ok, text in replies.values() if not ok}
    # Events not read before the stop are refused as "shutting down"; none is told to try
    # again because the writer went first.
    assert all(text.startswith("error: ") and "shutting down" in text for text in refused), refused
    assert answered, "no event was in flight at the stop"
    again = start_workers(relay_process, port=supervisor.port)
    await serving(again)
    assert answered <= await stored_ids(again.url, authors)


async def test_sigterm_while_a_worker_is_being_restarted_stops_the_writer_too(relay_process: MakeRelay) -> None:
    """A stop that lands during a crashed worker's restart back-off still stops the other
    worker and then the writer process, and the supervisor exits 0."""
    supervisor = start_workers(relay_process)
    writer, (crashed, survivor) = await serving(supervisor)
    os.kill(crashed, signal.SIGKILL)

    async def reaped() -> bool:
        return not await asyncio.to_thread(os.path.exists, f"/proc/{crashed}")  # gone, not a zombie

    await eventually(reaped, WAIT, what="the supervisor to reap the killed worker")
    assert supervisor.proc is not None
    supervisor.proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(supervisor.proc.wait, WAIT) == 0, supervisor.stderr_text()
    for pid in (survivor, writer):
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


async def test_an_address_gets_its_connection_cap_once_across_sqlite_workers(relay_process: MakeRelay) -> None:
    """The per-address limits live in the supervisor's shared segment on SQLite as on
    PostgreSQL (``relay.net.shared_limits``): 3 connections for the address in all, not 3 per
    worker (tests/test_worker_limits.py proves the rate limits on PostgreSQL). Twelve
    attempts: a per-worker cap would pass only if the kernel sent all twelve to one worker
    (2 in 4,096)."""
    supervisor = start_workers(relay_process, "max_connections_per_ip = 3\n")
    await serving(supervisor)
    async with contextlib.AsyncExitStack() as stack:
        held: list[NostrClient] = []
        refused: list[int] = []
        for _ in range(12):
            try:
                held.append(await stack.enter_async_context(NostrClient(supervisor.url)))
            except InvalidStatus as exc:
                refused.append(exc.response.status_code)
        assert len(held) == 3 and refused == [429] * 9, (len(held), refused)
        for client in held:
            await client.assert_alive()


async def test_priced_events_are_charged_by_the_write_hook_in_the_writer_process(
    relay_process: MakeRelay, alice: bytes
) -> None:
    """The payments plug-in's charge runs inside the batch's transaction, which under
    ``--workers`` on SQLite commits in the writer process: its hook is registered there, the
    price travels as the request's attachment, and the ledger's own writes (its migrations
    at start, the grant below) reach the same file."""
    price = 1_000
    supervisor = start_workers(
        relay_process,
        '[payments]\nenabled = true\nbackend = "fake"\n[payments.admission]\nenabled = false\n'
        f"[payments.credit]\nenabled = true\ndefault_price_msat = {price}\n",
    )
    _, workers = await serving(supervisor)
    pubkey = crypto.public_key(alice).hex()
    granted = await satsrelay_json(supervisor.config, "accounts", "grant", pubkey, "--credit-sats", "3")
    assert granted["credit_msat"] == 3_000, granted
    async with contextlib.AsyncExitStack() as stack:
        by_worker = await clients_on_each_worker(stack, supervisor, workers, 1)
        first, second = (clients[0] for clients in by_worker.values())
        events = [signed(alice, 1, f"priced {i}") for i in range(4)]
        replies = [await (first if i % 2 else second).publish(e) for i, e in enumerate(events)]
        assert replies[:3] == [(True, "")] * 3, replies
        assert not replies[3][0] and replies[3][1].startswith("restricted: "), replies[3]
        assert await first.publish(events[0]) == (True, "duplicate: already have this event")
    account = await satsrelay_json(supervisor.config, "accounts", "show", pubkey)
    assert account["credit_msat"] == 0, account
    assert await stored_ids(supervisor.url, [pubkey]) == {e.id for e in events[:3]}


async def satsrelay_json(config: Path, *args: str) -> Any:
    """An operator command against the running relay's file (its own SQLite connection)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay.cli", *args, "--config", str(config), "--json",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), WAIT)
    assert proc.returncode == 0, err.decode()
    return json.loads(out)
