"""Backups of the embedded SQLite store: a consistent copy of a live relay, and a restore
that cannot pull the file out from under a running one.

Backup uses SQLite's online backup API in steps (so it can report progress) from one
connection that holds a read transaction for the whole copy. In WAL mode that read
transaction pins one snapshot: every step copies pages of the same committed state, and
the relay's writer keeps committing meanwhile (readers never block the writer). Without
the pinned snapshot, a write by another connection between two steps restarts the copy
from the first page, which on a busy relay may never finish. The cost: while the backup
runs, the WAL cannot be rewound past its snapshot, so it grows by what is written
meanwhile and is truncated again by the relay's checkpointer afterwards.

Restore refuses to run while any process has the database open: every ``SqliteStore``
holds a shared ``flock`` on ``<db>.lock`` while open (``StoreLock``); restore needs it
exclusively. The database being replaced is kept beside it (``<db>.before-restore-<time>``)
rather than deleted, so a restore of the wrong file can be undone.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from relay.store.migrations import SQLITE_MIGRATIONS

BACKUP_STEP_PAGES = 1024  # 4 MiB at SQLite's default page size: progress about every step

Progress = Callable[[int, int], None]  # (pages copied, pages in total)


class BackupError(Exception):
    """An operator-facing reason a backup or restore did not happen (one line)."""


def lock_path(db: Path) -> Path:
    return db.with_name(db.name + ".lock")


class StoreLock:
    """A ``flock`` on ``<db>.lock``: shared while a store is open, exclusive for a restore.

    ``flock`` locks belong to the open file and are released by the kernel when the
    process dies (even by SIGKILL), so a crashed relay never leaves a stale lock.
    """

    def __init__(self, db: Path) -> None:
        self.path = lock_path(db)
        self._fd: int | None = None

    def acquire(self, *, exclusive: bool) -> bool:
        """Take the lock without waiting; False when another holder prevents it."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None


@dataclass(frozen=True, slots=True)
class BackupResult:
    pages: int
    bytes: int
    events: int
    seconds: float


def backup(db: Path, target: Path, progress: Progress | None = None) -> BackupResult:
    """Copy ``db`` (live or not) to ``target``, which must not exist yet. The copy is
    written to ``target.partial`` and renamed when complete and synced, so ``target``
    is never a half-written file."""
    if not db.is_file():
        raise BackupError(f"no database at {db}")
    if target.exists():
        raise BackupError(f"{target} already exists; choose a new file name")
    partial = target.with_name(target.name + ".partial")
    partial.unlink(missing_ok=True)
    try:
        _create_private(partial)
    except OSError as exc:
        raise BackupError(f"cannot write {target}: {exc.strerror or exc}") from None
    started = time.monotonic()
    try:
        source = sqlite3.connect(_read_only(db), uri=True, isolation_level=None)
    except sqlite3.Error as exc:
        partial.unlink(missing_ok=True)
        raise BackupError(f"cannot open {db}: {exc}") from None
    try:
        source.execute("PRAGMA busy_timeout = 5000")
        source.execute("BEGIN")
        (events,) = source.execute("SELECT count(*) FROM events").fetchone()  # pins the snapshot
        try:
            dest = sqlite3.connect(partial, isolation_level=None)
        except sqlite3.Error as exc:
            raise BackupError(f"cannot write {target}: {exc}") from None
        try:

            def step(status: int, remaining: int, total: int) -> None:
                if progress is not None:
                    progress(total - remaining, total)

            source.backup(dest, pages=BACKUP_STEP_PAGES, progress=step)
            (pages,) = dest.execute("PRAGMA page_count").fetchone()
            # The copy is a plain rollback-journal file: one self-contained file to store.
            dest.execute("PRAGMA journal_mode = DELETE")
        finally:
            dest.close()
        source.execute("COMMIT")
    except sqlite3.Error as exc:
        partial.unlink(missing_ok=True)
        raise BackupError(f"backup of {db} failed: {exc}") from None
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise BackupError(f"cannot write {target}: {exc.strerror or exc}") from None
    finally:
        source.close()
    _fsync(partial)
    os.replace(partial, target)
    _fsync(target.parent)
    return BackupResult(int(pages), target.stat().st_size, int(events), time.monotonic() - started)


def check_backup(path: Path) -> int:
    """Refuse a file that is not an intact satsrelay database; return its event count."""
    if not path.is_file():
        raise BackupError(f"no backup at {path}")
    try:
        conn = sqlite3.connect(_read_only(path), uri=True)
    except sqlite3.Error as exc:
        raise BackupError(f"cannot open {path}: {exc}") from None
    try:
        (verdict,) = conn.execute("PRAGMA quick_check").fetchone()
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        if verdict != "ok":
            raise BackupError(f"{path} is damaged: {verdict}")
        if not 1 <= version <= len(SQLITE_MIGRATIONS):
            raise BackupError(f"{path} is not a satsrelay database this version can open (schema {version})")
        (events,) = conn.execute("SELECT count(*) FROM events").fetchone()
        return int(events)
    except sqlite3.DatabaseError as exc:
        raise BackupError(f"{path} is not a satsrelay SQLite database: {exc}") from None
    finally:
        conn.close()


def restore(backup_file: Path, db: Path) -> tuple[int, Path | None]:
    """Replace ``db`` by a copy of ``backup_file``; refuse while any process has ``db``
    open. Return (events restored, where the replaced database was kept, if any)."""
    events = check_backup(backup_file)
    db.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(db):
        incoming = db.with_name(db.name + ".restoring")
        incoming.unlink(missing_ok=True)
        _create_private(incoming)
        src = sqlite3.connect(_read_only(backup_file), uri=True)
        try:
            dest = sqlite3.connect(incoming, isolation_level=None)
            try:
                src.backup(dest)
            finally:
                dest.close()
        finally:
            src.close()
        _fsync(incoming)
        kept: Path | None = None
        if db.exists():
            kept = db.with_name(f"{db.name}.before-restore-{time.strftime('%Y%m%dT%H%M%S')}")
            os.replace(db, kept)
        # The old WAL belongs to the old file: replayed onto the restored one it would
        # corrupt it. Nobody has the database open (we hold the lock), so it can go.
        for suffix in ("-wal", "-shm"):
            db.with_name(db.name + suffix).unlink(missing_ok=True)
        os.replace(incoming, db)
        _fsync(db.parent)
    return events, kept


@contextlib.contextmanager
def _exclusive(db: Path) -> Iterator[None]:
    lock = StoreLock(db)
    if not lock.acquire(exclusive=True):
        raise BackupError(f"{db} is open in a running relay (or another satsrelay command): stop it first")
    try:
        yield
    finally:
        lock.release()


def _create_private(path: Path) -> None:
    """An empty file readable by its owner only (0600, whatever the umask), for SQLite to
    fill: a backup holds every table, the plug-ins' too (accounts, sealed secrets), and a
    copy left world-readable in /backups would hand them to every local user."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def _read_only(path: Path) -> str:
    """A URI opening ``path`` read-only (percent-encoded, so any file name is taken literally)."""
    return path.resolve().as_uri() + "?mode=ro"


def _fsync(path: Path) -> None:
    """Flush a file, or a directory's entries (a rename is durable only after that)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
