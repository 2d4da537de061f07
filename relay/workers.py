"""``satsrelay serve --workers N``: N relay processes sharing one port (SO_REUSEPORT).

Each worker is a full relay process; the kernel spreads new connections over them, and
each parses, verifies and answers its own connections, so the cores share that work.

- **PostgreSQL**: each worker is an independent node on the database; live events cross
  processes through the same LISTEN/NOTIFY fan-out that joins several nodes.
- **SQLite**: one file has one writer at a time, so the supervisor also starts a writer
  process (``relay.store.writer_process``) that owns the file's write connection and the
  group commit, and listens on an abstract Unix socket bound here (so it outlives any one
  writer: a restarted writer accepts the workers' reconnections on the same socket). The
  workers send it what they accepted and keep their own read connections (WAL); its commit
  stream carries every stored event to every worker for live fan-out, in commit order.
  It starts first and stops last: at a stop the workers finish their in-flight events
  through it, then it commits what is queued and exits. Should it die, the supervisor
  restarts it like a worker, and the workers reconnect (``relay.store.writer_client``).

Limits hold for the relay, not per worker: the supervisor creates one shared segment
(``relay.net.shared_limits``) and hands it to every worker it starts (its descriptor inherited,
its number and the worker's index in the environment), and the workers' rate buckets and
per-address connection counts live in it. Before, the kernel spreading one client's
connections over N workers gave it N times every per-address limit.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from relay.config import Settings
from relay.net.listen import METRICS_IN_USE_HINT, ListenError, bind_listening_socket
from relay.net.shared_limits import SharedLimits

log = logging.getLogger(__name__)

# A worker that exits is restarted after RESTART_DELAY_FIRST, doubled after each exit in a
# row up to RESTART_DELAY_MAX. One that keeps failing right at start (within
# STARTUP_SECONDS, GIVE_UP_AFTER times in a row: a port taken, a database refusing it, a bad
# key file) never will start: restarting it every second forever only filled the log, so the
# supervisor gives up, stops the others and exits non-zero for the service manager to see.
RESTART_DELAY_FIRST = 0.5
RESTART_DELAY_MAX = 30.0
STARTUP_SECONDS = 10.0
GIVE_UP_AFTER = 5
POLL_SECONDS = 0.2
# Bucket slots for the plug-ins' tables (per-address requests and claims: 10,000 each), on
# top of the relay's two tables of ``rate_table_size``.
PLUGIN_BUCKETS = 65_536


def shared_limits_for(settings: Settings) -> SharedLimits:
    """A segment for ``settings.server.workers`` workers. Buckets: twice the slots of every
    table together (the headroom ``relay.net.shared_limits`` counts on for eviction). Connection
    counts: four slots per connection the workers can hold (``max_connections`` each), since
    every counted address group holds at least one. 100,000-entry tables and 10,000
    connections per worker take ~10 MB with 2 workers, ~12 MB with 4."""
    limits = settings.limits
    n = settings.server.workers
    return SharedLimits.create(
        workers=n,
        bucket_slots=2 * (2 * limits.rate_table_size + PLUGIN_BUCKETS),
        connection_slots=4 * n * limits.max_connections,
    )


WRITER = -1  # the writer process's slot among the children (workers are 0 .. N-1)


def _name(slot: int) -> str:
    return "the writer process" if slot == WRITER else f"worker {slot}"


def bind_writer_socket() -> tuple[socket.socket, str]:
    """The listening socket of the SQLite writer process and its address for the workers
    (``@name``: Linux's abstract namespace, no file to clean up and no path-length limit;
    ``relay.store.writer_process`` checks that whoever connects runs as this user)."""
    name = f"satsrelay-writer-{os.getpid()}-{secrets.token_hex(8)}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind("\0" + name)
    sock.listen(256)
    return sock, "@" + name


def run_workers(settings: Settings, config: Path | None) -> int:
    n = settings.server.workers
    sqlite = settings.storage.url.startswith("sqlite:")
    from relay.store.identity import load_identity

    # The relay's key, made here once when new: workers starting together would each make
    # their own (a worker writes a new key only after its store opened: relay.store.identity).
    load_identity(settings)
    env = {
        **os.environ,
        "SATSRELAY_SERVER__WORKERS": "1",
        "SATSRELAY_SERVER__REUSE_PORT": "true",
        "SATSRELAY_SERVER__HOST": settings.server.host,
        "SATSRELAY_SERVER__PORT": str(settings.server.port),
    }
    serve = [sys.executable, "-m", "relay.cli", "serve"]
    if config is not None:
        serve += ["--config", str(config)]
    cmd = list(serve)
    # The metrics address is bound once, here, and every worker accepts on that socket: no
    # SO_REUSEPORT, so no other relay on the host can join it (relay.session.server).
    metrics_sock: socket.socket | None = None
    address = settings.server.metrics_address()
    if address is not None:
        try:
            metrics_sock = bind_listening_socket(
                *address, setting=" (server.metrics_listen)", hint=METRICS_IN_USE_HINT
            )
        except ListenError as exc:
            print(f"satsrelay: {exc}", file=sys.stderr)
            return 1
        cmd += ["--metrics-fd", str(metrics_sock.fileno())]
    shared = shared_limits_for(settings)  # anonymous: gone with the last process holding it
    pass_fds = (shared.fd,) if metrics_sock is None else (shared.fd, metrics_sock.fileno())
    writer_sock: socket.socket | None = None
    writer_cmd: list[str] = []
    if sqlite:
        writer_sock, writer_address = bind_writer_socket()
        cmd += ["--writer-address", writer_address]
        writer_cmd = [*serve, "--writer-fd", str(writer_sock.fileno())]

    stopping = False
    children: dict[int, subprocess.Popen[bytes]] = {}
    started_at: dict[int, float] = {}
    exits_in_a_row: dict[int, int] = {}
    restart_at: dict[int, float] = {}  # slot -> when its replacement starts
    signaled: set[int] = set()  # pids already sent SIGTERM

    def start(slot: int) -> None:
        if stopping:
            return
        if slot == WRITER:
            assert writer_sock is not None
            children[slot] = subprocess.Popen(writer_cmd, env=env, pass_fds=(writer_sock.fileno(),))
        else:
            # The slot's previous worker (if any) has exited, and its connections with it:
            # counts it left in the segment would hold their addresses' places forever.
            shared.forget_worker(slot)
            children[slot] = subprocess.Popen(cmd, env={**env, **shared.worker_environment(slot)}, pass_fds=pass_fds)
        started_at[slot] = time.monotonic()

    def forward(signum: int, frame: FrameType | None) -> None:
        # The workers only: the writer stops after them, once they have drained (_stop_all).
        nonlocal stopping
        stopping = True
        for slot, child in children.items():
            if slot != WRITER and child.poll() is None and child.pid not in signaled:
                signaled.add(child.pid)
                child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    if sqlite:
        assert writer_sock is not None
        # First, and waited for: a database it cannot open (a path, permissions, a restore
        # under way) is the operator's to fix, and is said once, as one process would.
        start(WRITER)
        code = _wait_for_writer(writer_sock, children[WRITER], lambda: stopping)
        if code is not None:
            log.error("the writer process exited with %s while starting (its own messages above say why)", code)
            writer_sock.close()
            return 1
    for slot in range(n):
        start(slot)
    log.info(
        "started %d workers on port %d%s", n, settings.server.port, " and the SQLite writer process" if sqlite else ""
    )
    gave_up = False
    while not stopping and not gave_up:
        now = time.monotonic()
        for slot, child in list(children.items()):
            code = child.poll()
            if code is None or stopping:
                continue
            del children[slot]  # reported; a stop during the back-off must not count it again
            ran = now - started_at[slot]
            at_start = ran < STARTUP_SECONDS
            exits_in_a_row[slot] = (exits_in_a_row.get(slot, 0) if at_start else 0) + 1
            if at_start and exits_in_a_row[slot] >= GIVE_UP_AFTER:
                log.error(
                    "%s exited with %s within %.0f s of starting, %d times in a row; giving up "
                    "(its own messages above say why)", _name(slot), code, STARTUP_SECONDS, exits_in_a_row[slot],
                )
                gave_up = True
                break
            delay = min(RESTART_DELAY_FIRST * 2 ** (exits_in_a_row[slot] - 1), RESTART_DELAY_MAX)
            log.error("%s exited with %s after %.1f s; restarting in %.1f s", _name(slot), code, ran, delay)
            restart_at[slot] = now + delay
        for slot, when in list(restart_at.items()):
            if now >= when and not gave_up:
                del restart_at[slot]
                start(slot)
        # Sleeping in short steps: a stop request during a long back-off is served at once.
        time.sleep(POLL_SECONDS)
    code = _stop_all(children, signaled, settings.server.shutdown_grace_seconds)
    if metrics_sock is not None:
        metrics_sock.close()
    if writer_sock is not None:
        writer_sock.close()
    return 1 if gave_up else code


def _wait_for_writer(
    listening: socket.socket, writer: subprocess.Popen[bytes], stopping: Callable[[], bool]
) -> int | None:
    """Wait until the writer process answers on its socket (its store is open: it sends
    HELLO then); None when it does or a stop was asked for, its exit code when it exits
    first. No time limit: a first start may migrate or re-index a large database."""
    address = listening.getsockname()
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(address)  # queued on the backlog until the writer accepts
        probe.settimeout(POLL_SECONDS)
        while not stopping():
            try:
                if probe.recv(64):
                    return None
            except TimeoutError:
                pass
            code = writer.poll()
            if code is not None:
                return code
        return None
    finally:
        probe.close()


async def serve_writer(settings: Settings, sock: socket.socket) -> None:
    """The SQLite writer process (``relay.store.writer_process``), until SIGTERM or SIGINT:
    then it serves the workers until they have drained and gone, commits what is queued,
    and closes the store."""
    from relay.app import build_writer_service
    from relay.nostr.redaction import redact_url

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    store, service = build_writer_service(settings)
    try:
        await store.open()
        await service.start(sock)
        log.info("SQLite writer process serving the workers (%s)", redact_url(settings.storage.url))
        await stop.wait()
        # The workers have shutdown_grace_seconds each to answer their clients and drain.
        await service.stop(settings.server.shutdown_grace_seconds + 5)
    finally:
        await store.close()
    log.info("SQLite writer process stopped")


def _stop_all(children: dict[int, subprocess.Popen[bytes]], signaled: set[int], grace: float) -> int:
    """SIGTERM each worker the signal handler missed and wait for them, then the same for
    the writer process (last: the workers' in-flight events go through it as they stop).

    A stop request can land between ``start``'s check and its ``Popen`` returning (or
    during a restart back-off), and that worker never got the handler's SIGTERM; one that
    did is not signalled twice, since a second SIGTERM reaching a relay that has finished
    its graceful stop (its loop's handler gone) kills it with -15 during interpreter exit.
    A child still running well past its own grace period is killed. Exit 0 only when
    every child stopped cleanly: 0, or -SIGTERM for one stopped before it had installed
    its handler (still starting, no connection yet)."""
    failed = []
    for group in ([s for s in children if s != WRITER], [s for s in children if s == WRITER]):
        for slot in group:
            child = children[slot]
            if child.poll() is None and child.pid not in signaled:
                signaled.add(child.pid)
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 2 * grace + 10
        for slot in sorted(group):
            child = children[slot]
            try:
                code = child.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                code = child.wait()
            if code not in (0, -signal.SIGTERM):
                failed.append(f"{_name(slot)} exited with {code}")
    if failed:
        log.error("unclean shutdown: %s", "; ".join(failed))
        return 1
    log.info("workers stopped (%d running at the stop)", len([s for s in children if s != WRITER]))
    return 0
