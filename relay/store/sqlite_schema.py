"""Opening a SQLite file at the right schema: its URL, the core's migrations under the write
lock, a plug-in's own version line (``component_versions``), and the NIP-50 index kept to the
configured kinds."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path

import orjson

from relay.nostr.search import document_words, fts5_body
from relay.store.database import COMPONENT_VERSIONS
from relay.store.migrations import SQLITE_MIGRATIONS, Migration, pending
from relay.store.sqlite_sql import placeholders
from relay.store.sqlite_writes import INSERT_SEARCH

log = logging.getLogger(__name__)


def sqlite_path_from_url(url: str) -> Path:
    """``sqlite:///relative/path`` -> ``relative/path``; ``sqlite:////abs/path`` -> ``/abs/path``
    (the SQLAlchemy convention operators already know)."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or len(url) == len(prefix):
        raise ValueError(f"not a sqlite URL with a path: {url!r} (use sqlite:///relative or sqlite:////absolute)")
    return Path(url[len(prefix) :])


def apply_migrations(conn: sqlite3.Connection, migrations: Sequence[Migration] = SQLITE_MIGRATIONS) -> int:
    """Bring the file to the newest schema; return the version it is at.

    Runs under ``BEGIN IMMEDIATE`` (the write lock) and reads ``user_version`` under it,
    so of two processes opening a fresh file at once one migrates and the other sees the
    result. All pending steps and the new version commit together or not at all.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        current = conn.execute("PRAGMA user_version").fetchone()[0]
        steps = pending(migrations, current)
        for step in steps:
            for statement in step.statements:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {int(step.version)}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return steps[-1].version if steps else int(current)


def apply_component_migrations(
    conn: sqlite3.Connection,
    component: str,
    steps: Sequence[Migration],
    adopt: Callable[[sqlite3.Connection], int] | None = None,
) -> int:
    """A plug-in's version line (``relay.store.database``): its pending steps and its new
    version in one transaction under the write lock, as ``apply_migrations`` does for the
    core's; a component without a row starts where ``adopt`` says (else 0)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {COMPONENT_VERSIONS}"
            " (component TEXT PRIMARY KEY, version INTEGER NOT NULL) WITHOUT ROWID"
        )
        row = conn.execute(f"SELECT version FROM {COMPONENT_VERSIONS} WHERE component = ?", (component,)).fetchone()
        current = int(row[0]) if row is not None else (adopt(conn) if adopt is not None else 0)
        todo = pending(steps, current)
        for step in todo:
            for statement in step.statements:
                conn.execute(statement)
        version = todo[-1].version if todo else current
        if row is None or todo:
            conn.execute(
                f"INSERT INTO {COMPONENT_VERSIONS} (component, version) VALUES (?, ?)"
                " ON CONFLICT (component) DO UPDATE SET version = excluded.version",
                (component, version),
            )
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return version


def sync_search_index(conn: sqlite3.Connection, kinds: frozenset[int]) -> None:
    """Rebuild the NIP-50 index when it was built for other kinds than ``kinds`` (first
    start after migration 5 on a store with events, or ``[search] kinds`` changed), in
    one transaction under the write lock: a search sees the old index or the new one."""
    want = ",".join(str(k) for k in sorted(kinds))
    row = conn.execute("SELECT kinds FROM search_state WHERE id = 1").fetchone()
    if row is not None and row[0] == want:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        row = conn.execute("SELECT kinds FROM search_state WHERE id = 1").fetchone()
        if row is not None and row[0] == want:
            conn.execute("ROLLBACK")
            return
        conn.execute("DELETE FROM events_search")
        indexed = 0
        if kinds:
            sql = f"SELECT rid, raw FROM events WHERE kind IN ({placeholders(len(kinds))})"
            reader = conn.execute(sql, sorted(kinds))
            while rows := reader.fetchmany(5000):
                batch: list[tuple[int, str]] = []
                for rid, raw in rows:
                    obj = orjson.loads(raw)
                    doc = document_words(obj["kind"], obj["content"], obj["tags"], kinds)
                    if doc is not None:
                        batch.append((rid, fts5_body(doc)))
                conn.executemany(INSERT_SEARCH, batch)
                indexed += len(batch)
        conn.execute("INSERT OR REPLACE INTO search_state (id, kinds) VALUES (1, ?)", (want,))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    if indexed:
        log.info("search index rebuilt for kinds [%s]: %d events", want, indexed)
