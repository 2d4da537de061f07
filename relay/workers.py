"""``satsrelay serve --workers N``: N relay processes sharing one port (SO_REUSEPORT).

Each worker is a full, independent relay process; the kernel spreads new connections over
them, and live events cross processes through the same PostgreSQL LISTEN/NOTIFY fan-out
that joins several nodes. SQLite is refused: its single-writer file lock
would serialize the workers' group commits, and there is no cross-process fan-out for it,
so a subscriber on one worker would miss events published on another.

Limits hold for the relay, not per worker: the supervisor creates one shared segment
(``relay.shared_limits``) and hands it to every worker it starts (its descriptor inherited,
its number and the worker's index in the environment), and the workers' rate buckets and
per-address connection counts live in it. Before, the kernel spreading one client's
connections over N workers gave it N times every per-address limit.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

from relay.config import Settings
from relay.shared_limits import SharedLimits
from relay.transport import METRICS_IN_USE_HINT, ListenError, bind_listening_socket

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
# Bucket slots for the plug-ins' tables (invoice requests, NIP-43 claims: 10,000 each), on
# top of the relay's two tables of ``rate_table_size``.
PLUGIN_BUCKETS = 65_536


def shared_limits_for(settings: Settings) -> SharedLimits:
    """A segment for ``settings.server.workers`` workers. Buckets: twice the slots of every
    table together (the headroom ``relay.shared_limits`` counts on for eviction). Connection
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


def run_workers(settings: Settings, config: Path | None) -> int:
    n = settings.server.workers
    if not settings.storage.url.startswith(("postgresql://", "postgres://")):
        print(
            f"satsrelay: --workers {n} needs storage.url = \"postgresql://...\": with SQLite, worker processes "
            "would contend for the database file's single write lock and live events would not reach "
            "subscribers on other workers. Use one process with SQLite, or PostgreSQL for several.",
            file=sys.stderr,
        )
        return 2
    from relay.identity import load_identity

    # The relay's key, made here once when new: workers starting together would each make
    # their own (a worker writes a new key only after its store opened: relay.identity).
    load_identity(settings)
    env = {
        **os.environ,
        "SATSRELAY_SERVER__WORKERS": "1",
        "SATSRELAY_SERVER__REUSE_PORT": "true",
        "SATSRELAY_SERVER__HOST": settings.server.host,
        "SATSRELAY_SERVER__PORT": str(settings.server.port),
    }
    cmd = [sys.executable, "-m", "relay.cli", "serve"]
    if config is not None:
        cmd += ["--config", str(config)]
    # The metrics address is bound once, here, and every worker accepts on that socket: no
    # SO_REUSEPORT, so no other relay on the host can join it (relay.server).
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

    stopping = False
    children: dict[int, subprocess.Popen[bytes]] = {}
    started_at: dict[int, float] = {}
    exits_in_a_row: dict[int, int] = {}
    restart_at: dict[int, float] = {}  # slot -> when its replacement starts
    signaled: set[int] = set()  # pids already sent SIGTERM

    def start(slot: int) -> None:
        if not stopping:
            # The slot's previous worker (if any) has exited, and its connections with it:
            # counts it left in the segment would hold their addresses' places forever.
            shared.forget_worker(slot)
            children[slot] = subprocess.Popen(cmd, env={**env, **shared.worker_environment(slot)}, pass_fds=pass_fds)
            started_at[slot] = time.monotonic()

    def forward(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for child in children.values():
            if child.poll() is None and child.pid not in signaled:
                signaled.add(child.pid)
                child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for slot in range(n):
        start(slot)
    log.info("started %d workers on port %d", n, settings.server.port)
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
                    "worker %d exited with %s within %.0f s of starting, %d times in a row; giving up "
                    "(its own messages above say why)", slot, code, STARTUP_SECONDS, exits_in_a_row[slot],
                )
                gave_up = True
                break
            delay = min(RESTART_DELAY_FIRST * 2 ** (exits_in_a_row[slot] - 1), RESTART_DELAY_MAX)
            log.error("worker %d exited with %s after %.1f s; restarting in %.1f s", slot, code, ran, delay)
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
    return 1 if gave_up else code


def _stop_all(children: dict[int, subprocess.Popen[bytes]], signaled: set[int], grace: float) -> int:
    """SIGTERM each worker the signal handler missed, then wait for all of them.

    A stop request can land between ``start``'s check and its ``Popen`` returning (or
    during a restart back-off), and that worker never got the handler's SIGTERM; one that
    did is not signalled twice, since a second SIGTERM reaching a relay that has finished
    its graceful stop (its loop's handler gone) kills it with -15 during interpreter exit.
    A worker still running well past its own grace period is killed. Exit 0 only when
    every worker stopped cleanly: 0, or -SIGTERM for one stopped before it had installed
    its handler (still starting, no connection yet)."""
    for child in children.values():
        if child.poll() is None and child.pid not in signaled:
            signaled.add(child.pid)
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 2 * grace + 10
    failed = []
    for slot, child in sorted(children.items()):
        try:
            code = child.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            code = child.wait()
        if code not in (0, -signal.SIGTERM):
            failed.append(f"worker {slot} exited with {code}")
    if failed:
        log.error("unclean shutdown: %s", "; ".join(failed))
        return 1
    log.info("workers stopped (%d running at the stop)", len(children))
    return 0
