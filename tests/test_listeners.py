"""The relay's listening sockets and descriptors as an operator meets them: ``satsrelay
serve`` processes, real ports, real open-file limits. The metrics listener belongs to one
relay (issue 17 item 6); every connection counts toward max_connections, the soft limit
is raised, and a bystander gets in under any flood the caps allow (item 11).

Flooding "addresses" are loopback addresses 127.0.0.2-127.0.0.51 (on Linux the whole
127/8 is local, so a client socket can bind any of them); the relay sees each as a group of
its own, as it would see 50 hosts.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect

from relay.nostr import crypto
from tests.conftest import RelayFactory, RelayProcess, free_port
from tests.waiting import eventually

SERVE_TIMEOUT = 20.0


def serve_until_exit(config: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    """``satsrelay serve``, expected to exit by itself; a relay still serving after
    SERVE_TIMEOUT fails the test (and is killed)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "relay.cli", "serve", "--config", str(config)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )
    try:
        out, err = proc.communicate(timeout=SERVE_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"the relay kept serving instead of exiting:\n{err.decode()}") from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def one_line(err: bytes) -> str:
    text = err.decode()
    assert "Traceback" not in text, text
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    return lines[0]


def relay_config(tmp_path: Path, name: str, metrics_listen: str) -> Path:
    config = tmp_path / f"{name}.toml"
    config.write_text(
        f'log_level = "WARNING"\n[server]\nhost = "127.0.0.1"\nport = {free_port()}\n'
        f'metrics_listen = "{metrics_listen}"\n[storage]\nurl = "sqlite:///{tmp_path}/{name}.db"\n'
    )
    return config


async def test_second_relay_on_a_taken_metrics_address_exits_naming_it(
    relay_process: Callable[..., RelayProcess], tmp_path: Path
) -> None:
    metrics = f"127.0.0.1:{free_port()}"
    first = relay_process(env={"SATSRELAY_SERVER__METRICS_LISTEN": metrics})
    async with httpx.AsyncClient(timeout=5) as http:
        assert (await http.get(f"http://{metrics}/metrics")).status_code == 200

    # Another relay on its own WebSocket port, with the same (e.g. default) metrics address:
    # it must not share the address with the first and split its scrapes.
    second = serve_until_exit(relay_config(tmp_path, "second", metrics))
    assert second.returncode == 1
    line = one_line(second.stderr)
    assert line.startswith("satsrelay: ") and f"cannot listen on {metrics}" in line, line
    assert "metrics_listen" in line and "address already in use" in line, line

    assert first.proc is not None and first.proc.poll() is None
    assert "Traceback" not in first.stderr_text()


# --- every connection counts; a bystander gets in (issue 17 item 11) -----------------------


def loopback(n: int) -> str:
    """The n-th flooding address (127.0.0.2 upwards); bystanders use 127.0.0.200+."""
    return f"127.0.0.{n + 2}"


async def idle_http(port: int, address: str) -> socket.socket:
    """A connection from ``address`` that never sends a byte: a connection still in HTTP."""
    sock = socket.socket()
    sock.setblocking(False)
    sock.bind((address, 0))
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return sock


def still_open(sock: socket.socket) -> bool:
    """Whether the relay still holds this idle connection (no answer, no close, no reset)."""
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"never"
    except BlockingIOError:
        return True
    except OSError:
        return False


async def websocket_from(url: str, address: str) -> ClientConnection:
    return await connect(url, local_addr=(address, 0), open_timeout=10, compression=None, ping_interval=None)


async def flood(port: int, url: str, addresses: int, http_each: int, ws_each: int) -> tuple[list[Any], list[Any]]:
    """From each of ``addresses`` addresses: ``ws_each`` WebSockets, then (the WebSockets
    having left the address's HTTP share) ``http_each`` idle connections; all addresses at
    once. Returns what was opened (refusals are part of the flood)."""
    async def one_address(n: int) -> tuple[list[Any], list[Any]]:
        address = loopback(n)
        upgraded = await asyncio.gather(*(websocket_from(url, address) for _ in range(ws_each)), return_exceptions=True)
        idle = await asyncio.gather(*(idle_http(port, address) for _ in range(http_each)), return_exceptions=True)
        return (
            [o for o in idle if isinstance(o, socket.socket)],
            [o for o in upgraded if isinstance(o, ClientConnection)],
        )

    results = await asyncio.gather(*(one_address(n) for n in range(addresses)))
    return [s for r in results for s in r[0]], [w for r in results for w in r[1]]


async def bystander_is_served(port: int, address: str) -> None:
    """A bystander on ``address``: NIP-11 over HTTP, then a WebSocket with a REQ to EOSE."""
    transport = httpx.AsyncHTTPTransport(local_address=address)
    async with httpx.AsyncClient(transport=transport, timeout=10) as http:
        info = await http.get(f"http://127.0.0.1:{port}/", headers={"Accept": "application/nostr+json"})
    assert info.status_code == 200 and "supported_nips" in info.json()
    ws = await websocket_from(f"ws://127.0.0.1:{port}", address)
    try:
        await ws.send(orjson.dumps(["REQ", "b", {"kinds": [1], "limit": 1}]).decode())
        while (msg := orjson.loads(await asyncio.wait_for(ws.recv(), 10)))[0] != "EOSE":
            assert msg[0] in ("EVENT", "AUTH"), msg  # NIP-42 relays may greet with AUTH
    finally:
        await ws.close()


@contextlib.asynccontextmanager
async def holding(sockets: list[socket.socket], websockets: list[ClientConnection]) -> AsyncIterator[None]:
    try:
        yield
    finally:
        for sock in sockets:
            sock.close()
        await asyncio.gather(*(ws.close() for ws in websockets), return_exceptions=True)


async def test_connections_still_in_http_count_toward_max_connections_and_a_bystander_gets_in(
    relay_factory: RelayFactory,
) -> None:
    """10 addresses each open 4 idle connections (their HTTP share) against max_connections
    = 20: the relay holds 20 at most, not 40, and a bystander from an 11th address still
    gets NIP-11 and a WebSocket (a connection of the largest holder makes room)."""
    async with relay_factory(
        limits={"max_connections": 20, "max_connections_per_ip": 4},
        server={"http_header_timeout_seconds": 60},
    ) as relay:
        sockets, _ = await flood(relay.port, relay.url, addresses=10, http_each=4, ws_each=0)
        assert len(sockets) == 40
        async with holding(sockets, []):
            async def at_most_max_connections() -> bool:
                return sum(still_open(s) for s in sockets) <= 20

            await eventually(at_most_max_connections, what="the relay to hold at most max_connections")
            await bystander_is_served(relay.port, "127.0.0.200")
            assert relay.slots.total <= 20


def limited_relay_config(tmp_path: Path, port: int) -> Path:
    config = tmp_path / "limited.toml"
    config.write_text(
        f'log_level = "INFO"\n[server]\nhost = "127.0.0.1"\nport = {port}\nmetrics_listen = "127.0.0.1:0"\n'
        "http_header_timeout_seconds = 120\n"
        f'[relay]\npublic_url = "ws://127.0.0.1:{port}"\n[storage]\nurl = "sqlite:///{tmp_path}/relay.db"\n'
        "[limits]\nmax_connections_per_ip = 4\n"
        '[payments]\nenabled = true\nbackend = "fake"\n'
    )
    return config


@pytest.fixture
def limited_relay(tmp_path: Path) -> Iterator[Callable[[int, int], RelayProcess]]:
    """``limited_relay(soft, hard)``: ``satsrelay serve`` (payments on, the fake wallet's
    SQLite file included) started under RLIMIT_NOFILE = (soft, hard)."""
    started: list[RelayProcess] = []

    def start(soft: int, hard: int) -> RelayProcess:
        port = free_port()
        relay = RelayProcess(limited_relay_config(tmp_path, port), port)

        def limit() -> None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

        with open(relay.log_path, "ab") as log:
            relay.proc = subprocess.Popen(
                [sys.executable, "-m", "relay.cli", "serve", "--config", str(relay.config)],
                stderr=log, preexec_fn=limit, start_new_session=True,
            )
        started.append(relay)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert relay.proc.poll() is None, relay.stderr_text()
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                return relay
            time.sleep(0.05)
        raise AssertionError(f"relay did not start listening: {relay.stderr_text()}")

    yield start
    for relay in started:
        if relay.proc is not None and relay.proc.poll() is None:
            relay.proc.kill()
            relay.proc.wait()


def open_file_limit(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no open-file limit in /proc/<pid>/limits")


def test_soft_open_file_limit_is_raised_to_the_hard_limit(limited_relay: Callable[[int, int], RelayProcess]) -> None:
    relay = limited_relay(256, 4096)
    assert relay.proc is not None
    assert open_file_limit(relay.proc.pid) == (4096, 4096)
    # max_connections defaults to 10,000: the relay plans with the raised limit, and says so
    assert "open-file limit 4096 is too low for max_connections = 10000" in relay.stderr_text()


async def test_flood_up_to_the_caps_under_a_low_open_file_limit_leaves_bystanders_served(
    limited_relay: Callable[[int, int], RelayProcess],
) -> None:
    """Under soft = hard = 256 open files (raising cannot help), 50 addresses open their
    whole share (4 idle HTTP connections and 4 WebSockets each, and more than that): the
    relay says in one line at start that the limit is below its caps, serves what fits,
    logs refusals a few lines at a time, and a bystander on another address still gets
    NIP-11, a WebSocket and an invoice (the wallet and the database can still open files).
    It used to run out of descriptors: bystanders were reset and the wallet watcher failed
    with "unable to open database file"."""
    relay = limited_relay(256, 256)
    assert relay.proc is not None
    sockets, websockets = await flood(relay.port, relay.url, addresses=50, http_each=5, ws_each=5)
    async with holding(sockets, websockets):
        assert sum(still_open(s) for s in sockets) + len(websockets) > 0
        for n in range(3):  # three bystanders, one after another, each on an address of its own
            await bystander_is_served(relay.port, f"127.0.0.{200 + n}")
        # A bystander already connected stays served while the flood comes again.
        staying = await websocket_from(relay.url, "127.0.0.205")
        more_sockets, more_websockets = await flood(relay.port, relay.url, addresses=50, http_each=5, ws_each=5)
        async with holding([*more_sockets], [staying, *more_websockets]):
            await staying.send(orjson.dumps(["REQ", "s", {"kinds": [1], "limit": 1}]).decode())
            while (msg := orjson.loads(await asyncio.wait_for(staying.recv(), 10)))[0] != "EOSE":
                assert msg[0] in ("EVENT", "AUTH"), msg
        transport = httpx.AsyncHTTPTransport(local_address="127.0.0.210")
        async with httpx.AsyncClient(transport=transport, timeout=10) as http:
            pubkey = crypto.public_key(crypto.generate_secret()).hex()
            invoice = await http.post(
                f"http://127.0.0.1:{relay.port}/api/invoice", json={"pubkey": pubkey, "plan": "admission"}
            )
        assert invoice.status_code == 200, invoice.text
        assert relay.proc.poll() is None
    log = relay.stderr_text()
    assert "Traceback" not in log and "OperationalError" not in log and "Too many open files" not in log, log
    warnings = [line for line in log.splitlines() if "open-file limit 256 is too low for max_connections" in line]
    assert len(warnings) == 1, log
    refusals = [line for line in log.splitlines() if "rejected connection from" in line or "to make room" in line]
    assert refusals, log
    assert len(refusals) <= 6, log  # throttled: a line per reason per 10 s, saying how many more


class _Held:
    """One connection as ``ConnectionSlots`` sees it (the table's only needs of a
    ``RelayProtocol``): whether it is an idle HTTP one, when it last spoke, eviction."""

    def __init__(self, ip: str, now: float) -> None:
        self.ip = ip
        self.idle_http = True
        self.last_seen = now
        self.evicted = False

    def evict(self) -> None:
        self.evicted = True


def test_connection_slots_stay_fair_and_consistent_under_random_churn() -> None:
    """Thousands of random admits, upgrades and closes from 30 addresses against a table of
    40: the count never passes the capacity, the largest holder the table tracks is the
    real one, an HTTP share is never exceeded, and an eviction only ever takes from a group
    holding at least two more than the newcomer's."""
    import random

    from relay.net.slots import ConnectionSlots

    rng = random.Random(17)
    slots = ConnectionSlots(40, 3, 64)
    held: list[_Held] = []
    for step in range(20_000):
        if held and rng.random() < 0.3:
            conn = held.pop(rng.randrange(len(held)))
            slots.release(conn)  # type: ignore[arg-type]
        elif held and rng.random() < 0.2:
            conn = rng.choice(held)
            conn.idle_http = False
            conn.last_seen = step
            slots.leave_http(conn)  # type: ignore[arg-type]
        else:
            ip = f"10.0.0.{rng.randrange(30)}"
            by_group = {c.ip: 0 for c in held} | {ip: 0}
            for c in held:
                by_group[c.ip] += 1
            conn = _Held(ip, step)
            if slots.admit(conn, ip) is None:  # type: ignore[arg-type]
                held.append(conn)
            gone = [c for c in held if c.evicted]
            assert len(gone) <= 1
            for c in gone:
                assert by_group[c.ip] >= by_group[ip] + 2, (by_group[c.ip], by_group[ip])
                held.remove(c)
        assert slots.total == len(held) <= 40
        sizes: dict[str, int] = {}
        for c in held:
            sizes[c.ip] = sizes.get(c.ip, 0) + 1
        assert slots._largest == max(sizes.values(), default=0)
        in_http: dict[str, int] = {}
        for c in held:
            if c.idle_http:
                in_http[c.ip] = in_http.get(c.ip, 0) + 1
        assert max(in_http.values(), default=0) <= 3
    assert slots.evicted > 100  # the full table was exercised, not only the easy path
