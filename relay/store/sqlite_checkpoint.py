"""WAL checkpoints on their own thread, so no writer COMMIT pays for copying the WAL back."""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path

log = logging.getLogger(__name__)

# WalCheckpointer: a PASSIVE pass at most every 250 ms while commits happen; the WAL rewound
# once it holds 16,384 frames (64 MiB at 4 KiB pages) and its file truncated back to 64 MiB.
# Measured in the relay (ingest, 256 in flight): intervals of 0.05-0.5 s and rewinds at
# 4k-16k frames are within noise of each other; 64k frames was worse (p99 60-70 ms).
CHECKPOINT_INTERVAL = 0.25
RESTART_FRAMES = 16_384
WAL_SIZE_LIMIT = 64 * 1024 * 1024


class WalCheckpointer:
    """Copies committed WAL frames into the database file on its own thread and connection.

    Why: with SQLite's automatic checkpoint, the COMMIT that pushes the WAL past 1,000
    pages also copies them into the database file and fsyncs it, on the writer thread,
    while every event of the next batch waits (bench/README.md: the COMMIT line was 62%
    of the writer thread, which was busy 89-93% of an ingest run). Here the writer's
    connection has ``wal_autocheckpoint = 0`` and only appends to the WAL; after each
    commit it calls ``after_commit``, which wakes this thread for a PASSIVE checkpoint
    (never blocks the writer or readers) at most once per ``interval`` seconds.

    Rewinding the WAL: SQLite writes the WAL from its start again only when a write
    transaction begins with every frame already copied. Under steady load a pass on this
    thread never achieves that (the writer has appended more by the time it ends), and a
    RESTART checkpoint from this connection starves on the write lock that the writer
    keeps retaking (measured: 0.2-1 s, stalling a batch as long). So once a pass finds
    ``restart_frames`` frames, the *writer* runs one PASSIVE checkpoint itself between
    two transactions (copying only what arrived since the pass: 5-20 ms, once per
    ``restart_frames``), and its next BEGIN rewinds the WAL; ``journal_size_limit`` then
    truncates the file. A reader still on old frames turns that into a no-op that a later
    pass retries; past four times the limit the writer uses RESTART, which waits for such
    readers (up to the writer's busy_timeout). A WAL kept short also keeps page reads
    fast: SQLite searches one WAL-index hash table per 4,096 frames for every page read.

    Durability is unchanged: a commit is durable once it is in the WAL, checkpointed or
    not. Should this thread die, the writer goes back to SQLite's automatic checkpoint.
    """

    def __init__(self, path: Path, synchronous: str, *, interval: float, restart_frames: int) -> None:
        self._path = path
        self._synchronous = synchronous
        self._interval = interval
        self._restart_frames = restart_frames
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sqlite-checkpointer", daemon=True)
        self._conn: sqlite3.Connection | None = None
        # Set by this thread, cleared by the writer: while set, no pass starts here, so the
        # writer's own checkpoint never finds the checkpoint lock taken.
        self._rewind_due = False
        self._fallback = False
        self.wal_frames = 0

    def start(self) -> None:
        """Connect (errors surface to the caller) and start the thread."""
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA synchronous = {self._synchronous}")
        self._conn = conn
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join()
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def after_commit(self, writer: sqlite3.Connection) -> None:
        """Called on the writer thread after each COMMIT, outside any transaction.

        Never raises: the batch is already committed, and an exception here would report
        it failed (the writer would retry it in halves, answer "duplicate" and skip its
        live fan-out). A checkpoint that fails loses nothing: the frames stay in the WAL.
        """
        try:
            if self._rewind_due:
                mode = "RESTART" if self.wal_frames >= 4 * self._restart_frames else "PASSIVE"
                try:
                    writer.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
                finally:
                    self._rewind_due = False
            elif self._thread.is_alive():
                self._wake.set()
            elif not self._fallback and not self._stop.is_set():
                self._fallback = True
                writer.execute("PRAGMA wal_autocheckpoint = 1000")
                log.error("WAL checkpointer is gone: the writer checkpoints inside its commits again")
        except sqlite3.Error:
            log.exception("WAL checkpoint after a commit failed; the commit stands, the WAL keeps its frames")

    def _run(self) -> None:
        try:
            while True:
                self._wake.wait()
                if self._stop.is_set():
                    return
                self._wake.clear()
                if not self._rewind_due:
                    self._pass()
                self._stop.wait(self._interval)
        except Exception:
            # after_commit sees the thread gone and falls back to automatic checkpoints.
            log.exception("WAL checkpointer stopped")

    def _pass(self) -> None:
        assert self._conn is not None
        try:
            _busy, frames, _copied = self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error:
            # A failed pass loses nothing (the frames stay in the WAL); the next commit
            # wakes another.
            log.exception("WAL checkpoint failed")
            return
        self.wal_frames = frames
        self._rewind_due = frames >= self._restart_frames
