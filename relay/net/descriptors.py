"""The process's file descriptors: one budget for connections, the database, the wallet and logs.

Every TCP connection is a descriptor, and so is every database file, WAL, pool connection,
wallet HTTP connection and log file. Under the usual service limit of 1,024 open files,
idle connections from a few dozen addresses used them all (issue 17 item 11): accept()
failed with EMFILE (libuv then accepts and closes every queued connection: bystanders were
reset), and the wallet watcher could not open its database. So at start the relay raises
its soft limit to the hard one, then serves at most as many connections as leave a reserve:

- what is open once the store and the extension have started (measured, not guessed),
- ``HEADROOM`` for what opens later (the PostgreSQL pool growing to its size, the wallet's
  HTTP connections, SQLite temporary files, DNS lookups, a rotated log),
- the metrics listener's own connections,
- the listen backlog: the event loop accepts every queued connection before any of them is
  counted (libuv's accept loop runs to EAGAIN; ``connection_made`` comes a turn later), so
  up to ``backlog`` descriptors can be open beyond the count for a moment. The backlog is
  therefore sized from the limit instead of a fixed 1,024 that alone could exceed it.

Pure apart from ``raise_soft_limit`` and ``open_descriptors``, which read the process.
"""

from __future__ import annotations

import contextlib
import os
import resource
from dataclasses import dataclass

HEADROOM = 64
METRICS_CONNECTIONS = 16  # the metrics listener's own cap (a scraper or two, on loopback)
METRICS_BACKLOG = 16
MAX_BACKLOG = 1024
MIN_BACKLOG = 16
# RLIM_INFINITY as a number to plan with (macOS reports it for the hard limit).
UNLIMITED = 1 << 20


def raise_soft_limit() -> tuple[int, int]:
    """Raise RLIMIT_NOFILE's soft limit to the hard limit (a service manager's default soft
    limit is often 1,024 under a hard one of 512k); return the (soft, hard) now in force.
    A hard limit the kernel will not grant as a soft one (macOS: unlimited) is left alone."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def open_descriptors() -> int:
    """Descriptors this process has open now (Linux /proc, BSD and macOS /dev/fd)."""
    for folder in ("/proc/self/fd", "/dev/fd"):
        try:
            return len(os.listdir(folder)) - 1  # listing the folder opens one itself
        except OSError:
            continue
    return HEADROOM  # unknown: assume a relay's usual start-up set


@dataclass(frozen=True, slots=True)
class ConnectionBudget:
    soft_limit: int
    reserved: int  # descriptors kept for everything but the public listener's connections
    backlog: int  # the public listener's listen() backlog
    connections: int  # open connections the public listener may hold, HTTP and WebSocket
    wanted: int  # the configured max_connections

    @property
    def limited_by_descriptors(self) -> bool:
        return self.connections < self.wanted

    @property
    def limit_needed(self) -> int:
        """The open-file limit at which max_connections would fit."""
        return self.wanted + self.reserved


def plan_connections(soft_limit: int, open_now: int, max_connections: int, *, metrics: bool) -> ConnectionBudget:
    """How many connections fit under ``soft_limit`` with ``open_now`` descriptors in use."""
    limit = UNLIMITED if soft_limit < 0 else soft_limit
    backlog = max(MIN_BACKLOG, min(MAX_BACKLOG, limit // 8))
    reserved = open_now + HEADROOM + backlog
    if metrics:
        reserved += METRICS_CONNECTIONS + METRICS_BACKLOG
    connections = max(1, min(max_connections, limit - reserved))
    return ConnectionBudget(limit, reserved, backlog, connections, max_connections)
