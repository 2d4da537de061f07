"""``satsrelay serve --workers N``: N relay processes sharing one port (SO_REUSEPORT).

Each worker is a full, independent relay process; the kernel spreads new connections over
them, and live events cross processes through the same PostgreSQL LISTEN/NOTIFY (or
Redis) fan-out that joins several nodes. SQLite is refused: its single-writer file lock
would serialize the workers' group commits, and there is no cross-process fan-out for it,
so a subscriber on one worker would miss events published on another.
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

log = logging.getLogger(__name__)

RESTART_BACKOFF_SECONDS = 1.0


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

    stopping = False
    children: dict[int, subprocess.Popen[bytes]] = {}

    def start(slot: int) -> None:
        children[slot] = subprocess.Popen(cmd, env={**env, "SATSRELAY_WORKER": str(slot)})

    def forward(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for child in children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for slot in range(n):
        start(slot)
    log.info("started %d workers on port %d", n, settings.server.port)
    while True:
        if stopping:
            for child in children.values():
                child.wait()
            return 0
        for slot, child in list(children.items()):
            code = child.poll()
            if code is not None and not stopping:
                log.error("worker %d exited with %s; restarting", slot, code)
                time.sleep(RESTART_BACKOFF_SECONDS)
                start(slot)
        time.sleep(0.2)
