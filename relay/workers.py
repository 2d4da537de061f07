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
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

from relay.config import Settings
from relay.shared_limits import SharedLimits

log = logging.getLogger(__name__)

RESTART_BACKOFF_SECONDS = 1.0
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
    shared = shared_limits_for(settings)  # anonymous: gone with the last process holding it

    stopping = False
    children: dict[int, subprocess.Popen[bytes]] = {}
    signaled: set[int] = set()  # pids already sent SIGTERM

    def start(slot: int) -> None:
        if not stopping:
            # The slot's previous worker (if any) has exited, and its connections with it:
            # counts it left in the segment would hold their addresses' places forever.
            shared.forget_worker(slot)
            children[slot] = subprocess.Popen(
                cmd, env={**env, **shared.worker_environment(slot)}, pass_fds=(shared.fd,)
            )

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
    while not stopping:
        for slot, child in list(children.items()):
            code = child.poll()
            if code is not None and not stopping:
                log.error("worker %d exited with %s; restarting", slot, code)
                del children[slot]  # reported; a stop during the back-off must not count it again
                time.sleep(RESTART_BACKOFF_SECONDS)
                start(slot)
        time.sleep(0.2)
    return _stop_all(children, signaled, settings.server.shutdown_grace_seconds)


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
    log.info("all %d workers stopped", len(children))
    return 0
