"""Several relay processes on one PostgreSQL: cross-node live fan-out (LISTEN/NOTIFY),
payments seen by every node, listener loss and catch-up, ``serve --workers N``, and the
ledger's exactly-once settlement across two connection pools.

Every test runs real ``satsrelay serve`` processes (or real PostgresStore pools) against
the server named by ``SATSRELAY_TEST_POSTGRES``, each in a fresh schema dropped afterwards,
and is skipped with the reason when that variable is unset.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from relay.nostr import crypto
from tests.conftest import RelayProcess, free_port
from tests.nostr_client import NostrClient, signed
from tests.waiting import eventually

MakeRelay = Callable[..., RelayProcess]

WAIT = 10.0  # seconds any single condition may take before the test fails


@pytest.fixture
def pg_dsn() -> str:
    dsn = os.environ.get("SATSRELAY_TEST_POSTGRES")
    if not dsn:
        pytest.skip("SATSRELAY_TEST_POSTGRES is unset (e.g. postgresql://postgres@127.0.0.1:5432/test)")
    return dsn


@pytest.fixture
def pg_schema(pg_dsn: str) -> Iterator[str]:
    """A fresh schema name; the relays create it, teardown drops it (after ``relay_process``
    killed them, since a test requests this fixture first)."""
    schema = f"nodes_{uuid.uuid4().hex[:16]}"
    yield schema
    asyncio.run(_drop_schema(pg_dsn, schema))


async def _drop_schema(dsn: str, schema: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


@pytest.fixture
def start_node(pg_schema: str, pg_dsn: str, relay_process: MakeRelay) -> Callable[..., RelayProcess]:
    """``start_node(extra_toml=..., args=...)``: a ``satsrelay serve`` on the shared schema."""

    def start(
        extra_toml: str = "", args: list[str] | None = None, env: dict[str, str] | None = None, dsn: str | None = None
    ) -> RelayProcess:
        return relay_process(
            env=env,
            storage_url=dsn or pg_dsn,
            storage_toml=f'schema_name = "{pg_schema}"',
            extra_toml="[limits]\nevents_per_second = 10000\nevents_burst = 10000\n"
            "ip_events_per_second = 10000\nip_events_burst = 10000\n"
            "pubkey_events_per_second = 10000\npubkey_events_burst = 10000\n" + extra_toml,
            args=args,
        )

    return start


async def live_event(client: NostrClient, sub: str, timeout: float = WAIT) -> dict[str, Any]:
    msg = await client.recv_where(lambda m: m[0] == "EVENT" and m[1] == sub, timeout)
    event: dict[str, Any] = msg[2]
    return event


# --- two nodes: publish on A, receive on B ---------------------------------------------


async def test_event_published_on_a_reaches_live_subscriber_and_req_on_b(
    start_node: Callable[..., RelayProcess], alice: bytes
) -> None:
    a, b = start_node(), start_node()
    async with NostrClient(a.url) as pub, NostrClient(b.url) as sub:
        assert await sub.req("live", {"authors": [crypto.public_key(alice).hex()]}) == []

        regular = signed(alice, 1, "from node A")
        assert await pub.publish(regular) == (True, "")
        assert (await live_event(sub, "live"))["id"] == regular.id

        ephemeral = signed(alice, 20001, "ephemeral from node A")
        assert await pub.publish(ephemeral) == (True, "")
        assert (await live_event(sub, "live"))["id"] == ephemeral.id

        # Stored on the shared database: B answers a REQ with A's regular event only
        # (ephemeral events are never stored, NIP-01).
        async with NostrClient(b.url) as reader:
            stored = await reader.req("stored", {"ids": [regular.id, ephemeral.id]})
        assert [e["id"] for e in stored] == [regular.id]
        assert stored[0] == regular.to_dict()
        # each event reached B's subscriber once, not echoed again
        await sub.expect_silence(0.3)


@pytest.fixture
def own_role(pg_dsn: str) -> Iterator[tuple[str, str]]:
    """(role, DSN) of a login role of its own for one node: not a superuser, so a CONNECTION
    LIMIT binds it. Dropped afterwards with what it owns."""
    role = f"node_{uuid.uuid4().hex[:12]}"
    parts = urlsplit(pg_dsn)
    database = parts.path.lstrip("/")
    asyncio.run(_sql(pg_dsn, f'CREATE ROLE "{role}" LOGIN', f'GRANT CREATE ON DATABASE "{database}" TO "{role}"'))
    yield role, urlunsplit(parts._replace(netloc=f"{role}@{parts.hostname}:{parts.port}"))
    asyncio.run(_sql(
        pg_dsn,
        f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'",
        f'DROP OWNED BY "{role}"',
        f'DROP ROLE "{role}"',
    ))


async def _sql(dsn: str, *statements: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


async def grow_pool_to_its_size(node: RelayProcess, pg_dsn: str, schema: str, role: str) -> int:
    """Make ``node`` (running as ``role``) open its whole PostgreSQL pool, so that a
    CONNECTION LIMIT set afterwards binds only connections it would open beyond the pool:
    REQs from 12 addresses (reads take turns per address group, and at most the pool's
    readers' share) and the NIP-86/NIP-62 change watchers wait on locks the test holds on
    the events and store_changes tables until the pool has grown to its 10. Returns how
    many backends the role holds then."""
    import asyncpg

    from tests.test_listeners import websocket_from

    admin, locker = await asyncpg.connect(pg_dsn), await asyncpg.connect(pg_dsn)
    try:
        async with contextlib.AsyncExitStack() as stack:
            readers = []
            for n in range(12):
                ws = await websocket_from(node.url, f"127.0.0.{60 + n}")
                stack.push_async_callback(ws.close)
                readers.append(ws)
            async with locker.transaction():
                await locker.execute(
                    f'LOCK TABLE "{schema}".events, "{schema}".store_changes IN ACCESS EXCLUSIVE MODE'
                )
                for ws in readers:
                    await ws.send('["REQ","grow",{"kinds":[1],"limit":1}]')

                async def pool_full() -> bool:
                    # from another connection: pg_stat_activity is read once per transaction
                    held = await admin.fetchval(
                        "SELECT count(*) FROM pg_stat_activity WHERE usename = $1 AND application_name = ''", role
                    )
                    return int(held) >= 10

                await eventually(pool_full, WAIT, what="the node's pool to grow to 10 connections")
            for ws in readers:
                while '"EOSE"' not in str(await asyncio.wait_for(ws.recv(), WAIT)):
                    pass
        return int(await admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE usename = $1", role))
    finally:
        await admin.close()
        await locker.close()


async def test_event_committed_on_a_reaches_b_although_a_dies_before_it_could_notify(
    own_role: tuple[str, str], start_node: Callable[..., RelayProcess], pg_dsn: str, pg_schema: str, alice: bytes
) -> None:
    """A node commits an event and dies before any NOTIFY of its own could follow: the
    event must still reach other nodes' live subscribers, because its announcement is part
    of the commit. Node A runs as a role held to the connections it has (CONNECTION LIMIT),
    so a NOTIFY needing a connection of its own can never be sent; then A is killed -9
    right after its OK."""
    import asyncpg

    role, dsn = own_role
    a = start_node(dsn=dsn)  # first: it creates the schema, owned by its role
    b = start_node()
    assert a.proc is not None
    held = await grow_pool_to_its_size(a, pg_dsn, pg_schema, role)
    async with NostrClient(a.url) as pub, NostrClient(b.url) as sub:
        assert await sub.req("live", {"authors": [crypto.public_key(alice).hex()]}) == []
        conn = await asyncpg.connect(pg_dsn)
        try:
            await conn.execute(f'ALTER ROLE "{role}" CONNECTION LIMIT {held}')
        finally:
            await conn.close()

        # A regular event (one-statement write) and a replaceable one (the transaction
        # that applies NIP-01's replacement rules): both write paths announce in the commit.
        note = signed(alice, 1, "committed on A, which then died")
        profile = signed(alice, 0, '{"name":"alice"}')
        for event in (note, profile):
            assert await pub.publish(event) == (True, "")
        a.kill()
        got = [(await live_event(sub, "live"))["id"] for _ in range(2)]
        assert sorted(got) == sorted([note.id, profile.id])
        await sub.expect_silence(0.3)


# --- payments: paid on A, admitted on B ---------------------------------------------------

CACHE_SECONDS = 1.5


async def test_payment_on_a_admits_pubkey_on_b_within_cache_window(
    start_node: Callable[..., RelayProcess], alice: bytes, tmp_path: Path
) -> None:
    # One (fake) wallet behind both nodes, as one LNbits/LND would be; a long poll interval
    # so the settlement comes from A's push path, not from both nodes' polling.
    payments = (
        "[payments]\nenabled = true\nbackend = \"fake\"\n"
        f"account_cache_seconds = {CACHE_SECONDS}\npoll_interval_seconds = 30\n"
        f'[payments.fake]\nstate_file = "{tmp_path / "fake-wallet.db"}"\n'
    )
    a, b = start_node(payments), start_node(payments)
    pubkey = crypto.public_key(alice).hex()
    note = signed(alice, 1, "written on B, paid on A")
    async with NostrClient(b.url) as on_b, httpx.AsyncClient(timeout=WAIT) as web:
        ok, message = await on_b.publish(note)
        assert not ok and message.startswith("restricted: ") and "/join" in message, message

        created = await web.post(
            f"http://127.0.0.1:{a.port}/api/invoice", json={"pubkey": pubkey, "plan": "admission"}
        )
        assert created.status_code == 200, created.text
        payment_hash = created.json()["payment_hash"]
        # The ledger is shared: B knows A's invoice, unpaid.
        status_on_b = await web.get(f"http://127.0.0.1:{b.port}/api/invoice/{payment_hash}")
        assert status_on_b.json()["paid"] is False

        # the operator's command, another process writing to the shared wallet
        pay = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "relay.cli", "pay-fake", payment_hash, "--config", str(a.config),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(pay.communicate(), WAIT)
        assert pay.returncode == 0, err.decode()

        async def paid_on_b() -> bool:
            doc = (await web.get(f"http://127.0.0.1:{b.port}/api/invoice/{payment_hash}")).json()
            return bool(doc["paid"])

        await eventually(paid_on_b, WAIT, what="the settlement to reach the shared ledger")
        settled_at = time.monotonic()

        # B cached "not admitted" when it refused the note; it must see the payment within
        # account_cache_seconds (plus scheduling slack), and the same EVENT is then accepted.
        while True:
            ok, message = await on_b.publish(note)
            if ok:
                break
            assert message.startswith("restricted: "), message
            assert time.monotonic() - settled_at < CACHE_SECONDS + 2.0, "B still refuses a paid pubkey"
            await asyncio.sleep(0.1)
        account = (await web.get(f"http://127.0.0.1:{b.port}/account/{pubkey}", headers={"Accept": "application/json"}))
        assert account.json()["admitted"] is True

    async with NostrClient(a.url) as on_a:
        assert [e["id"] for e in await on_a.req("s", {"ids": [note.id]})] == [note.id]


# --- listener loss: reconnect and catch up -------------------------------------------------


async def listener_pids(dsn: str, relay_pid: int) -> list[int]:
    """Backends of the broadcast listener of the relay process ``relay_pid`` (named by
    ``application_name``, see ``PostgresBroadcast._connect``)."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name = $1",
            f"satsrelay listener {relay_pid}",
        )
    finally:
        await conn.close()
    return [int(row["pid"]) for row in rows]


@contextlib.asynccontextmanager
async def listener_killer(dsn: str, relay_pid: int) -> AsyncIterator[list[int]]:
    """While open, terminate every broadcast listener backend of ``relay_pid`` as soon as it
    appears (polled every 10 ms), so the relay is not listening for the whole block except
    for a few milliseconds per reconnect attempt. Yields the list of terminated pids."""
    import asyncpg

    killed: list[int] = []
    conn = await asyncpg.connect(dsn)

    async def kill_forever() -> None:
        while True:
            rows = await conn.fetch(
                "SELECT pid, pg_terminate_backend(pid, 5000) AS ok FROM pg_stat_activity"
                " WHERE datname = current_database() AND application_name = $1",
                f"satsrelay listener {relay_pid}",
            )
            killed.extend(int(row["pid"]) for row in rows if row["ok"])
            await asyncio.sleep(0.01)

    task = asyncio.create_task(kill_forever())
    try:
        yield killed
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await conn.close()


async def publish_all(client: NostrClient, events: list[Any]) -> None:
    """Send every EVENT at once, then collect the OKs: the whole burst lands in a short
    window (here, the one in which B is not listening)."""
    for event in events:
        await client.send(["EVENT", event.to_dict()])
    for event in events:
        msg = await client.recv_where(lambda m, i=event.id: m[0] == "OK" and m[1] == i)
        assert msg[2] is True, msg


async def test_killed_listener_reconnects_and_live_subscriber_misses_nothing(
    start_node: Callable[..., RelayProcess], pg_dsn: str, alice: bytes
) -> None:
    a = start_node()
    async with NostrClient(a.url) as pub:
        # Stored before B exists: B's subscriber gets it from the store, and catch-up must
        # not replay it as a live event.
        old = signed(alice, 1, "before B started")
        assert await pub.publish(old) == (True, "")
        b = start_node()
        assert b.proc is not None
        async with NostrClient(b.url) as sub:
            stored = await sub.req("live", {"authors": [crypto.public_key(alice).hex()]})
            assert [e["id"] for e in stored] == [old.id]

            first = signed(alice, 1, "live before the kill")
            assert await pub.publish(first) == (True, "")
            assert (await live_event(sub, "live"))["id"] == first.id

            (first_listener,) = await listener_pids(pg_dsn, b.proc.pid)
            gap = [signed(alice, 1, f"while B reconnects {i}") for i in range(20)]
            async with listener_killer(pg_dsn, b.proc.pid) as killed:
                await eventually(lambda: asyncio.sleep(0, bool(killed)), WAIT, what="the listener to be terminated")
                await publish_all(pub, gap)
            assert killed[0] == first_listener

            async def listening_again() -> bool:
                pids = await listener_pids(pg_dsn, b.proc.pid) if b.proc is not None else []
                return len(pids) == 1 and pids[0] not in killed

            await eventually(listening_again, WAIT, what="B's listener to reconnect")
            got = [(await live_event(sub, "live"))["id"] for _ in gap]
            assert old.id not in got, "catch-up replayed an event stored before B started"
            assert sorted(got) == sorted(e.id for e in gap)

            after = signed(alice, 1, "live after the reconnect")
            assert await pub.publish(after) == (True, "")
            assert (await live_event(sub, "live"))["id"] == after.id
            # nothing twice, and the event stored before B started was not replayed
            await sub.expect_silence(0.5)
    assert b.terminate() == 0
    log = b.stderr_text()
    assert "broadcast listener lost" in log and "caught up" in log, log


async def test_listener_outage_is_logged_once_and_over_within_a_second_of_postgres_answering(
    own_role: tuple[str, str], start_node: Callable[..., RelayProcess], pg_dsn: str, pg_schema: str, alice: bytes
) -> None:
    """Each second without a listener loses other nodes' ephemeral events on this node, so
    once PostgreSQL takes connections again the listener is back within a second (not after
    a back-off grown to 5 s), and an outage of many refused attempts is two log lines (lost,
    back), not one per attempt. B runs as a role of its own; its listener is terminated
    while the role's CONNECTION LIMIT refuses it a new connection, for 8 s."""
    import asyncpg

    role, dsn = own_role
    b = start_node(dsn=dsn)  # first: it creates the schema, owned by its role
    a = start_node()
    assert b.proc is not None
    held = await grow_pool_to_its_size(b, pg_dsn, pg_schema, role)
    admin = await asyncpg.connect(pg_dsn)
    try:
        await admin.execute(f'ALTER ROLE "{role}" CONNECTION LIMIT {held - 1}')  # no room once it loses one
        (listener,) = await listener_pids(pg_dsn, b.proc.pid)
        assert await admin.fetchval("SELECT pg_terminate_backend($1, 5000)", listener)
        await eventually(
            lambda: asyncio.sleep(0, "broadcast listener lost" in b.stderr_text()), WAIT, what="the outage"
        )
        await asyncio.sleep(8)  # the outage: every reconnect attempt is refused meanwhile
        await admin.execute(f'ALTER ROLE "{role}" CONNECTION LIMIT -1')
        answering = time.monotonic()
    finally:
        await admin.close()

    async def listening_again() -> bool:
        pids = await listener_pids(pg_dsn, b.proc.pid) if b.proc is not None else []
        return len(pids) == 1

    await eventually(listening_again, WAIT, interval=0.02, what="B's listener to reconnect")
    assert time.monotonic() - answering < 2.0, "B's listener took more than 2 s to come back"

    async with NostrClient(a.url) as pub, NostrClient(b.url) as sub:
        assert await sub.req("live", {"authors": [crypto.public_key(alice).hex()]}) == []
        ephemeral = signed(alice, 20001, "after the outage")
        assert await pub.publish(ephemeral) == (True, "")
        assert (await live_event(sub, "live"))["id"] == ephemeral.id

    await eventually(
        lambda: asyncio.sleep(0, "broadcast listener back" in b.stderr_text()), WAIT, what="the 'back' line"
    )
    log = b.stderr_text()
    assert log.count("broadcast listener lost") == 1, log
    assert log.count("broadcast listener back") == 1, log
    assert "Traceback" not in log, log


# --- serve --workers N --------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    """Live child processes of ``pid`` (from /proc/<n>/stat's ppid field)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                out.append(int(entry.name))
    return out


def _tcp_sockets(port: int) -> list[tuple[int, int, str]]:
    """(inode, remote port, state hex) of the TCP sockets whose local port is ``port``."""
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                local, remote, state, inode = fields[1], fields[2], fields[3], int(fields[9])
                if int(local.rsplit(":", 1)[1], 16) == port:
                    out.append((inode, int(remote.rsplit(":", 1)[1], 16), state))
    return out


def _socket_owners(pids: list[int]) -> dict[int, int]:
    """socket inode -> the pid (among ``pids``) holding it."""
    owners = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if target.startswith("socket:["):
                        owners[int(target[8:-1])] = pid
    return owners


def serving_pid(relay_port: int, client: NostrClient, workers: list[int]) -> int:
    """The worker process holding the server side of ``client``'s TCP connection."""
    assert client.ws is not None
    client_port = int(client.ws.local_address[1])
    owners = _socket_owners(workers)
    for inode, remote_port, state in _tcp_sockets(relay_port):
        if remote_port == client_port and state == "01" and inode in owners:  # 01 = ESTABLISHED
            return owners[inode]
    raise AssertionError(f"no worker holds the connection from port {client_port}")


async def test_workers_share_the_port_fan_out_across_processes_and_stop_on_sigterm(
    start_node: Callable[..., RelayProcess], alice: bytes
) -> None:
    supervisor = start_node(args=["--workers", "2"])
    assert supervisor.proc is not None

    async def two_workers_listening() -> bool:
        workers = _children(supervisor.proc.pid) if supervisor.proc is not None else []
        listening = {i for i, _, state in _tcp_sockets(supervisor.port) if state == "0A"}  # 0A = LISTEN
        owners = _socket_owners(workers)
        return len(workers) == 2 and {owners.get(i) for i in listening} >= set(workers)

    await eventually(two_workers_listening, WAIT, what="two worker processes listening on the port")
    workers = _children(supervisor.proc.pid)
    assert supervisor.proc.pid not in workers

    # The kernel spreads connections over the workers; open them until both have some.
    async with contextlib.AsyncExitStack() as stack:
        by_worker: dict[int, list[NostrClient]] = {}
        for _ in range(64):
            client = await stack.enter_async_context(NostrClient(supervisor.url))
            by_worker.setdefault(serving_pid(supervisor.port, client, workers), []).append(client)
            if len(by_worker) == 2:
                break
        assert sorted(by_worker) == sorted(workers), "64 connections all went to one worker"
        (_, (sub, *_)), (w2, (pub, *_)) = by_worker.items()

        assert await sub.req("live", {"authors": [crypto.public_key(alice).hex()]}) == []
        regular, ephemeral = signed(alice, 1, f"through worker {w2}"), signed(alice, 20001, "ephemeral")
        for event in (regular, ephemeral):
            assert await pub.publish(event) == (True, "")
            assert (await live_event(sub, "live"))["id"] == event.id
        # the publishing worker's own subscriber is served locally, once
        assert await pub.req("own", {"ids": [regular.id]}) == [regular.to_dict()]

    assert supervisor.terminate(timeout=WAIT) == 0, supervisor.stderr_text()
    for pid in workers:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


async def test_sigterm_while_a_crashed_worker_is_being_restarted_still_stops_everything(
    start_node: Callable[..., RelayProcess],
) -> None:
    supervisor = start_node(args=["--workers", "2"])
    assert supervisor.proc is not None

    async def two_workers() -> bool:
        return supervisor.proc is not None and len(_children(supervisor.proc.pid)) == 2

    await eventually(two_workers, WAIT, what="two worker processes")
    crashed, survivor = _children(supervisor.proc.pid)
    os.kill(crashed, signal.SIGKILL)

    async def reaped() -> bool:
        return not await asyncio.to_thread(os.path.exists, f"/proc/{crashed}")  # gone, not a zombie

    # Once the supervisor has reaped it, it is waiting out its restart back-off: the stop
    # request arrives before the replacement worker is started.
    await eventually(reaped, WAIT, what="the supervisor to reap the killed worker")
    supervisor.proc.send_signal(signal.SIGTERM)
    try:
        code = await asyncio.to_thread(supervisor.proc.wait, WAIT)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"supervisor still running; workers now {_children(supervisor.proc.pid)}") from None
    assert code == 0
    with pytest.raises(ProcessLookupError):
        os.kill(survivor, 0)


def _holders(inode: int, pids: list[int]) -> set[int]:
    """The processes among ``pids`` holding the socket ``inode``."""
    held = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            if any(os.readlink(fd) == f"socket:[{inode}]" for fd in Path(f"/proc/{pid}/fd").iterdir()):
                held.add(pid)
    return held


async def test_workers_share_one_metrics_socket_that_no_other_relay_can_join(
    start_node: Callable[..., RelayProcess], tmp_path: Path
) -> None:
    """``--workers``: the supervisor binds the metrics address once and its workers accept on
    that one socket; a relay of its own started with the same address exits naming it
    instead of joining (SO_REUSEPORT let it, and the kernel split scrapes between them)."""
    from tests.test_listeners import one_line, relay_config, serve_until_exit

    metrics_port = free_port()
    metrics = f"127.0.0.1:{metrics_port}"
    supervisor = start_node(args=["--workers", "2"], env={"SATSRELAY_SERVER__METRICS_LISTEN": metrics})
    assert supervisor.proc is not None

    async def two_workers_serving_metrics() -> bool:
        workers = _children(supervisor.proc.pid) if supervisor.proc is not None else []
        announced = supervisor.stderr_text().count(f"metrics (Prometheus): http://{metrics}/metrics")
        return len(workers) == 2 and announced == 2

    await eventually(two_workers_serving_metrics, WAIT, what="both workers to serve metrics")
    workers = _children(supervisor.proc.pid)
    listening = [inode for inode, _, state in _tcp_sockets(metrics_port) if state == "0A"]  # 0A = LISTEN
    assert len(listening) == 1, f"{len(listening)} listening sockets on the metrics port"
    assert _holders(listening[0], workers) == set(workers)
    async with httpx.AsyncClient(timeout=WAIT) as http:
        for _ in range(10):
            assert (await http.get(f"http://{metrics}/metrics")).status_code == 200

    other = serve_until_exit(relay_config(tmp_path, "other", metrics))
    assert other.returncode == 1
    line = one_line(other.stderr)
    assert f"cannot listen on {metrics} (server.metrics_listen): address already in use" in line, line


async def test_workers_that_can_never_start_back_off_then_the_supervisor_gives_up(
    start_node: Callable[..., RelayProcess], pg_dsn: str, pg_schema: str, tmp_path: Path
) -> None:
    """A worker that fails right at start every time (here: its port is held by another
    program, without SO_REUSEPORT) is restarted after growing delays, then the supervisor
    stops, says so in one line and exits non-zero; it used to restart it every second,
    forever."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "workers.toml"
        config.write_text(
            f'log_level = "INFO"\n[server]\nhost = "127.0.0.1"\nport = {port}\nmetrics_listen = ""\n'
            f'[storage]\nurl = "{pg_dsn}"\nschema_name = "{pg_schema}"\n'
        )
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "relay.cli", "serve", "--config", str(config), "--workers", "2",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, start_new_session=True,
        )
        try:
            _, err = await asyncio.wait_for(proc.communicate(), 90)
        except TimeoutError:
            os.killpg(proc.pid, signal.SIGKILL)
            _, err = await proc.communicate()
            raise AssertionError(f"the supervisor kept restarting workers:\n{err.decode()[-3000:]}") from None
    log = err.decode()
    assert proc.returncode not in (0, None), log
    assert "Traceback" not in log, log
    giving_up = [line for line in log.splitlines() if "giving up" in line]
    assert len(giving_up) == 1, log
    # Each worker said why it could not start, and the delays between restarts grew.
    assert f"cannot listen on 127.0.0.1:{port}: address already in use" in log, log
    delays = [float(m) for m in re.findall(r"worker 0 exited with \S+ after [\d.]+ s; restarting in ([\d.]+) s", log)]
    assert len(delays) >= 3 and delays == sorted(delays) and delays[-1] >= 4 * delays[0], log


# --- the ledger across nodes ------------------------------------------------------------


async def test_settlement_raced_by_two_nodes_pools_credits_exactly_once(pg_dsn: str, pg_schema: str) -> None:
    from lightning.store import open_ledger
    from lightning.store.base import Invoice, InvoiceState
    from relay.store.postgres import PostgresStore

    # Two stores = two pools, as on two nodes; opened at once, so the schema migrations
    # themselves (the core's, then the ledger's) are raced too.
    store_a, store_b = PostgresStore(pg_dsn, schema=pg_schema), PostgresStore(pg_dsn, schema=pg_schema)
    await asyncio.gather(store_a.open(), store_b.open())
    node_a, node_b = open_ledger(store_a), open_ledger(store_b)
    await asyncio.gather(node_a.open(), node_b.open())
    try:
        now = int(time.time())
        pubkeys = [crypto.public_key(crypto.generate_secret()).hex() for _ in range(4)]
        invoices = [
            Invoice(
                payment_hash=f"{i:064x}", pubkey=pubkeys[i % len(pubkeys)], plan="credit", amount_msat=7_000,
                bolt11=f"lnbcrt70n1fake{i}", created_at=now, expires_at=now + 600, admit_seconds=3600,
                credit_msat=7_000,
            )
            for i in range(16)
        ]
        for inv in invoices:
            await node_a.add_invoice(inv)

        # Every invoice settled 12 times at once, alternating nodes: 192 concurrent calls.
        calls = [
            (inv.payment_hash, (node_a, node_b)[k % 2].settle_invoice(inv.payment_hash, 7_000, now))
            for inv in invoices
            for k in range(12)
        ]
        results = await asyncio.gather(*(call for _, call in calls))
        for inv in invoices:
            wins = [ok for (h, _), ok in zip(calls, results, strict=True) if h == inv.payment_hash]
            assert wins.count(True) == 1, (inv.payment_hash, wins)
            stored = await node_b.get_invoice(inv.payment_hash)
            assert stored is not None and stored.state is InvoiceState.PAID

        for pubkey in pubkeys:
            account = await node_b.get_account(pubkey)
            assert account is not None
            assert account.credit_msat == 4 * 7_000  # four invoices each, credited once
            # admission stacks once per invoice: now + 4 x 1 h, not 48 x
            assert account.admitted_until == now + 4 * 3600
    finally:
        await asyncio.gather(store_a.close(), store_b.close())


async def test_longest_schema_name_still_fans_out(pg_dsn: str, relay_factory: Any, alice: bytes) -> None:
    """PostgreSQL identifiers (schema and NOTIFY channel names) stop at 63 bytes; the
    channel derived from a long schema name must still be one pg_notify accepts."""
    schema = f"nodes_{uuid.uuid4().hex}".ljust(63, "x")
    storage = {"url": pg_dsn, "schema_name": schema}
    try:
        async with (
            relay_factory(storage=storage) as a,
            relay_factory(storage=storage) as b,
            NostrClient(a.url) as pub,
            NostrClient(b.url) as sub,
        ):
            assert await sub.req("live", {"kinds": [1]}) == []
            note = signed(alice, 1, "long schema name")
            assert await pub.publish(note) == (True, "")
            assert (await live_event(sub, "live", timeout=5))["id"] == note.id
    finally:
        await _drop_schema(pg_dsn, schema)


async def test_burst_of_events_too_large_for_notify_is_read_on_b_through_one_connection(
    start_node: Callable[..., RelayProcess], pg_dsn: str, alice: bytes, bob: bytes
) -> None:
    """Events past NOTIFY's 8000 bytes cross as ids and B reads them from the table: a
    burst of 200 (what one address may send at once) must not make B open a PostgreSQL
    connection per event (one stranger could then use up the server's connection limit,
    which every node's writes need); B reads them in batches over one connection."""
    import asyncpg

    a, b = start_node(), start_node()
    assert b.proc is not None
    big = [signed(k, 1, f"{i} " + "x" * 9000) for i in range(100) for k in (alice, bob)]
    async with NostrClient(a.url) as pub, NostrClient(b.url) as sub:
        assert await sub.req("live", {"kinds": [1]}) == []
        admin = await asyncpg.connect(pg_dsn)
        most = 0

        async def watch_fetch_connections() -> None:
            nonlocal most
            while True:
                count = await admin.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", f"satsrelay fetch {b.proc.pid}"
                )
                most = max(most, count)
                await asyncio.sleep(0.002)

        watcher = asyncio.create_task(watch_fetch_connections())
        try:
            await publish_all(pub, big)
            got = {(await live_event(sub, "live"))["id"] for _ in big}
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            await admin.close()
        assert got == {e.id for e in big}
        assert most <= 1, f"B held {most} connections at once to read announced events"


async def test_event_too_large_for_notify_is_announced_by_id_and_read_on_b(
    pg_dsn: str, pg_schema: str, relay_factory: Any, alice: bytes
) -> None:
    """NOTIFY payloads stop at 8000 bytes: a bigger event crosses as its id and B reads it
    from the shared table."""
    storage = {"url": pg_dsn, "schema_name": pg_schema}
    async with (
        relay_factory(storage=storage) as a,
        relay_factory(storage=storage) as b,
        NostrClient(a.url) as pub,
        NostrClient(b.url) as sub,
    ):
        assert await sub.req("live", {"kinds": [1]}) == []
        big = signed(alice, 1, "x" * 20_000)
        assert len(big.raw) > 8000
        assert await pub.publish(big) == (True, "")
        assert await live_event(sub, "live") == big.to_dict()
