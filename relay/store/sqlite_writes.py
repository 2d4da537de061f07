"""The synchronous bodies the SQLite writer thread runs inside one transaction: inserting a
batch's rows, the NIP-01/09 replace and delete rules, plug-ins' write hooks, NIP-62 vanish,
retention, NIP-86 state and the NIP-98 use counts. Plain functions of a ``sqlite3.Connection``
so a whole batch costs one thread hop (see ``relay.store.sqlite``)."""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from relay.nostr.errors import Rejection
from relay.nostr.event import Event, index_tags
from relay.nostr.search import document_words, fts5_body
from relay.store.base import (
    USES_PRUNED_PER_CALL,
    UseLimit,
    WriteOutcome,
    WriteRequest,
)
from relay.store.database import SqliteWriteHook
from relay.store.rules import (
    GIFT_WRAP_KIND,
    a_tag_addresses,
    address_of,
    deletion_removes,
    e_tag_targets,
    gift_wrap_recipients,
    newer,
)

INSERT_EVENT_HEAD = "INSERT INTO events (rid, id, pubkey, created_at, kind, d_tag, expiration, raw) VALUES "
INSERT_TAG_HEAD = "INSERT INTO tags (name, value, created_at, rid) VALUES "
# NIP-50: an indexed event's words, under the event's rid (migration 5).
INSERT_SEARCH_HEAD = "INSERT INTO events_search (rowid, body) VALUES "
VALUES_ROWS_MAX = 128  # x 8 columns: far under SQLite's 32,766 parameters


@functools.cache
def _values_sql(head: str, width: int, rows: int) -> str:
    row = "(" + ", ".join("?" * width) + ")"
    return head + ", ".join([row] * rows)


INSERT_EVENT = _values_sql(INSERT_EVENT_HEAD, 8, 1)
INSERT_TAG = _values_sql(INSERT_TAG_HEAD, 4, 1)
INSERT_SEARCH = _values_sql(INSERT_SEARCH_HEAD, 2, 1)


def insert_rows(
    conn: sqlite3.Connection,
    event_rows: list[tuple[Any, ...]],
    tag_rows: list[tuple[Any, ...]],
    search_rows: list[tuple[int, str]],
) -> None:
    """Write the rows ``_write_all`` has gathered, then empty the lists for reuse."""
    if event_rows:
        _insert_values(conn, INSERT_EVENT_HEAD, 8, event_rows)
        event_rows.clear()
    if tag_rows:
        _insert_values(conn, INSERT_TAG_HEAD, 4, tag_rows)
        tag_rows.clear()
    if search_rows:
        _insert_values(conn, INSERT_SEARCH_HEAD, 2, search_rows)
        search_rows.clear()


def _insert_values(conn: sqlite3.Connection, head: str, width: int, rows: Sequence[tuple[Any, ...]]) -> None:
    """``rows`` through multi-row ``INSERT ... VALUES (...), (...)`` statements of a power
    of two rows each (at most ``VALUES_ROWS_MAX``), instead of ``executemany``'s one step
    per row: the sqlite3 module gives up the GIL around every step and takes it back, and
    on the writer thread each take waits for the event loop to let go (issue 19: the
    writer's wall per event was 1.7-2x its CPU). Powers of two keep the distinct
    statements few enough for the connection's statement cache."""
    done = 0
    while done < len(rows):
        size = min(VALUES_ROWS_MAX, 1 << ((len(rows) - done).bit_length() - 1))
        chunk = rows[done : done + size]
        conn.execute(_values_sql(head, width, size), [value for row in chunk for value in row])
        done += size


def run_write_hooks(
    conn: sqlite3.Connection, hooks: tuple[SqliteWriteHook, ...], req: WriteRequest, now: int
) -> Rejection | None:
    """The write hooks for one event about to be stored, in order; the first refusal wins.
    With several hooks a SAVEPOINT takes back what earlier ones wrote when a later one
    refuses (a lone hook that refuses has written nothing: its contract)."""
    if len(hooks) == 1:
        return hooks[0](conn, req, now)
    conn.execute("SAVEPOINT write_hooks")
    for hook in hooks:
        refusal = hook(conn, req, now)
        if refusal is not None:
            conn.execute("ROLLBACK TO write_hooks")
            conn.execute("RELEASE write_hooks")
            return refusal
    conn.execute("RELEASE write_hooks")
    return None


def write_one(
    conn: sqlite3.Connection,
    req: WriteRequest,
    eid: bytes,
    pk: bytes,
    rid: int,
    now: int,
    search_kinds: frozenset[int],
    hooks: tuple[SqliteWriteHook, ...],
) -> WriteOutcome | Rejection:
    """A replaceable, addressable or kind-5 event, already known to be neither stored nor
    tombstoned: apply the replacement rules, the write hooks, store it as ``rid``, apply a
    deletion."""
    ev = req.event
    address = address_of(ev)
    d_tag: str | None = None
    old: tuple[int, bytes] | None = None
    if address is not None:
        d_tag = address[2]
        row = conn.execute(
            "SELECT until FROM deleted_addresses WHERE pubkey = ? AND kind = ? AND d_tag = ?", (pk, ev.kind, d_tag)
        ).fetchone()
        if row is not None and ev.created_at <= row[0]:
            return WriteOutcome.DELETED
        row = conn.execute(
            "SELECT rid, created_at, id, raw FROM events WHERE pubkey = ? AND kind = ? AND d_tag = ?",
            (pk, ev.kind, d_tag),
        ).fetchone()
        if row is not None:
            if not newer(ev.created_at, ev.id, row[1], row[2].hex()):
                return WriteOutcome.SUPERSEDED
            old = (row[0], row[3])
    refusal = run_write_hooks(conn, hooks, req, now) if req.attachments else None
    if refusal is not None:
        return refusal
    if old is not None:
        delete_event(conn, *old)
    conn.execute(INSERT_EVENT, (rid, eid, pk, ev.created_at, ev.kind, d_tag, ev.expiration, ev.raw))
    tags = set(ev.index_tags())
    if tags:
        conn.executemany(INSERT_TAG, [(name, value, ev.created_at, rid) for name, value in tags])
    doc = document_words(ev.kind, ev.content, ev.tags, search_kinds)
    if doc is not None:
        conn.execute(INSERT_SEARCH, (rid, fts5_body(doc)))
    if ev.kind == 5:
        apply_deletion(conn, ev, pk)
    return WriteOutcome.STORED


def delete_event(conn: sqlite3.Connection, rid: int, raw: bytes) -> None:
    """Remove a stored event and its tag rows, found by their full key: the tags are read
    back from the event's own JSON, since the tags table is keyed by value, not by rid.
    Not through ``parse_event``: a row stored before a parse rule was tightened must stay
    deletable (refusing it here would fail every batch that replaces or deletes it)."""
    obj = orjson.loads(raw)
    created_at = obj["created_at"]
    conn.executemany(
        "DELETE FROM tags WHERE name = ? AND value = ? AND created_at = ? AND rid = ?",
        [(name, value, created_at, rid) for name, value in set(index_tags(obj["tags"]))],
    )
    conn.execute("DELETE FROM events WHERE rid = ?", (rid,))
    # NIP-50: a deleted, replaced or expired event leaves the search index with it (a
    # no-op for kinds that were never indexed).
    conn.execute("DELETE FROM events_search WHERE rowid = ?", (rid,))


def apply_deletion(conn: sqlite3.Connection, ev: Event, pk: bytes) -> None:
    """NIP-09: remove the author's own events named by ``e`` tags (never a kind 5) and every
    version of an ``a``-tag address up to the request's created_at; remember both so a
    deleted event sent again is refused."""
    for target in e_tag_targets(ev):
        tid = bytes.fromhex(target)
        conn.execute("INSERT OR IGNORE INTO deleted_ids (id, pubkey) VALUES (?, ?)", (tid, pk))
        row = conn.execute("SELECT rid, raw, pubkey, kind FROM events WHERE id = ?", (tid,)).fetchone()
        if row is None:
            continue
        # A gift wrap's recipient may delete it: its p tags are read from the stored JSON.
        recipients: frozenset[str] = frozenset()
        if row[3] == GIFT_WRAP_KIND:
            recipients = gift_wrap_recipients(row[3], orjson.loads(row[1])["tags"])
        if deletion_removes(row[2].hex(), row[3], ev.pubkey, recipients):
            delete_event(conn, row[0], row[1])
    for _, kind, d_tag in a_tag_addresses(ev):
        conn.execute(
            "INSERT INTO deleted_addresses (pubkey, kind, d_tag, until) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (pubkey, kind, d_tag) DO UPDATE SET until = max(until, excluded.until)",
            (pk, kind, d_tag, ev.created_at),
        )
        rows = conn.execute(
            "SELECT rid, raw FROM events WHERE pubkey = ? AND kind = ? AND d_tag = ? AND created_at <= ?",
            (pk, kind, d_tag, ev.created_at),
        ).fetchall()
        for rid, raw in rows:
            delete_event(conn, rid, raw)


def vanish_author(conn: sqlite3.Connection, pubkey: str, until: int) -> int:
    """NIP-62 in one transaction: the author's events, then gift wraps addressed to them."""
    pk = bytes.fromhex(pubkey)
    rows = conn.execute("SELECT rid, raw FROM events WHERE pubkey = ? AND created_at <= ?", (pk, until)).fetchall()
    rows += conn.execute(
        "SELECT e.rid, e.raw FROM tags t JOIN events e ON e.rid = t.rid"
        " WHERE t.name = 'p' AND t.value = ? AND t.created_at <= ? AND e.kind = 1059 AND e.pubkey != ?",
        (pubkey, until, pk),
    ).fetchall()
    for rid, raw in rows:
        delete_event(conn, rid, raw)
    if rows:
        conn.execute(
            "INSERT INTO vanished (pubkey, until) VALUES (?, ?)"
            " ON CONFLICT (pubkey) DO UPDATE SET until = max(until, excluded.until)",
            (pk, until),
        )
        bump_changes(conn, "vanish")
    return len(rows)


def purge_older(conn: sqlite3.Connection, kind: int, before: int, limit: int) -> int:
    rows = conn.execute(
        "SELECT rid, raw FROM events WHERE kind = ? AND created_at < ? ORDER BY created_at LIMIT ?",
        (kind, before, limit),
    ).fetchall()
    for rid, raw in rows:
        delete_event(conn, rid, raw)
    return len(rows)


def apply_management(conn: sqlite3.Connection, changes: list[tuple[str, str, str | None]]) -> None:
    for topic, key, value in changes:
        if value is None:
            conn.execute("DELETE FROM management WHERE topic = ? AND key = ?", (topic, key))
        else:
            conn.execute(
                "INSERT INTO management (topic, key, value) VALUES (?, ?, ?)"
                " ON CONFLICT (topic, key) DO UPDATE SET value = excluded.value",
                (topic, key, value),
            )
    bump_changes(conn, "management")


class AtLimit(Exception):
    """Raised inside ``take_uses`` so the transaction rolls back: nothing is counted."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def take_uses(conn: sqlite3.Connection, uses: list[UseLimit], now: int) -> None:
    for use in uses:
        # The upsert's WHERE leaves a live window at its limit untouched (rowcount 0); an
        # ended window starts again at one use.
        counted = conn.execute(
            "INSERT INTO use_counts (key, uses, expires_at) VALUES (:key, 1, :expires_at)"
            " ON CONFLICT (key) DO UPDATE SET"
            " uses = CASE WHEN use_counts.expires_at <= :now THEN 1 ELSE use_counts.uses + 1 END,"
            " expires_at = CASE WHEN use_counts.expires_at <= :now THEN excluded.expires_at"
            " ELSE use_counts.expires_at END"
            " WHERE use_counts.expires_at <= :now OR use_counts.uses < :limit",
            {"key": use.key, "expires_at": use.expires_at, "now": now, "limit": use.limit},
        ).rowcount
        if counted != 1:
            raise AtLimit(use.key)
    conn.execute(
        "DELETE FROM use_counts WHERE key IN (SELECT key FROM use_counts WHERE expires_at <= ? LIMIT ?)",
        (now, USES_PRUNED_PER_CALL),
    )


def purge_expired(conn: sqlite3.Connection, now: int) -> int:
    rows = conn.execute(
        "SELECT rid, raw FROM events WHERE expiration IS NOT NULL AND expiration <= ?", (now,)
    ).fetchall()
    for rid, raw in rows:
        delete_event(conn, rid, raw)
    return len(rows)


def bump_changes(conn: sqlite3.Connection, topic: str) -> None:
    conn.execute("UPDATE store_changes SET counter = counter + 1 WHERE topic = ?", (topic,))


def file_bytes(path: Path) -> int:
    """A file's size, 0 when it does not exist (no WAL between a TRUNCATE checkpoint and the next write)."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
