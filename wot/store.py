"""What the web of trust keeps in, and reads from, the relay's own database.

- Its result, table ``wot_members`` (pubkey -> hop; ``PROVIDER_HOP`` for a pubkey trusted by
  a NIP-85 rank alone) and ``wot_state`` (when it was computed, and from which rules), on
  its own version line (``relay.store.database``): a restarted relay, and every other node
  on the same PostgreSQL, admits members from the first event instead of after a full
  computation. Writes are differences (a changed contact list moves a handful of rows).
- Its input, read through the event store's ordinary query: NIP-02 contact lists (kind 3,
  one per author: replaceable) of the authors the graph asks for, in chunks, and the
  NIP-85 assertions (kind 30382) of the configured provider.
"""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import orjson

from relay.nostr.event import is_hex64
from relay.nostr.filters import Filter
from relay.store.base import Store
from relay.store.database import database_of
from relay.store.migrations import Migration

COMPONENT = "wot"
PROVIDER_HOP = -1  # trusted by the provider's rank alone (NIP-85), not by follows
CONTACTS_KIND = 3
ASSERTION_KIND = 30382
AUTHORS_PER_QUERY = 500  # well under SQLite's host-parameter limit; one round trip each

SQLITE_STEPS = (
    Migration(
        1,
        "web of trust: members and state",
        (
            "CREATE TABLE wot_members (pubkey TEXT PRIMARY KEY, hops INTEGER NOT NULL) WITHOUT ROWID",
            "CREATE TABLE wot_state (name TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
        ),
    ),
)
POSTGRES_STEPS = (
    Migration(
        1,
        "web of trust: members and state",
        (
            "CREATE TABLE wot_members (pubkey text PRIMARY KEY, hops integer NOT NULL)",
            "CREATE TABLE wot_state (name text PRIMARY KEY, value text NOT NULL)",
        ),
    ),
)

_UPSERT = (
    "INSERT INTO wot_members (pubkey, hops) VALUES ({0}, {1})"
    " ON CONFLICT (pubkey) DO UPDATE SET hops = excluded.hops"
)
_DELETE = "DELETE FROM wot_members WHERE pubkey = {0}"
_STATE = "INSERT INTO wot_state (name, value) VALUES ({0}, {1}) ON CONFLICT (name) DO UPDATE SET value = excluded.value"


class WotTable:
    """The saved result (see the module docstring)."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def open(self) -> None:
        db = database_of(self._store)
        if db.dialect == "sqlite":
            await db.migrate(COMPONENT, SQLITE_STEPS)
        else:
            await db.migrate(COMPONENT, POSTGRES_STEPS)

    async def load(self) -> tuple[dict[str, int], dict[str, str]]:
        db = database_of(self._store)
        if db.dialect == "sqlite":
            members = await db.read("SELECT pubkey, hops FROM wot_members")
            state = await db.read("SELECT name, value FROM wot_state")
        else:
            members = await db.fetch("SELECT pubkey, hops FROM wot_members")
            state = await db.fetch("SELECT name, value FROM wot_state")
        return {sys.intern(p): int(h) for p, h in members}, {n: v for n, v in state}

    async def save(self, upserts: Mapping[str, int], deletes: Iterable[str], state: Mapping[str, str]) -> None:
        """One transaction: a node that reads mid-way sees the old result or the new one."""
        rows = list(upserts.items())
        gone = [(p,) for p in deletes]
        facts = list(state.items())
        db = database_of(self._store)
        if db.dialect == "sqlite":
            await db.write(_save_sqlite, rows, gone, facts)
            return
        async with db.transaction() as conn:
            if rows:
                await conn.executemany(_UPSERT.format("$1", "$2"), rows)
            if gone:
                await conn.executemany(_DELETE.format("$1"), gone)
            await conn.executemany(_STATE.format("$1", "$2"), facts)


def _save_sqlite(
    conn: sqlite3.Connection, rows: list[tuple[str, int]], gone: list[tuple[str]], facts: list[tuple[str, str]]
) -> None:
    """Module-level: under ``serve --workers N`` it runs in the writer process, sent there
    by reference with its arguments pickled (``relay.store.database``)."""
    conn.executemany(_UPSERT.format("?", "?"), rows)
    conn.executemany(_DELETE.format("?"), gone)
    conn.executemany(_STATE.format("?", "?"), facts)


def followed(raw: bytes) -> tuple[str, str, int, frozenset[str]]:
    """(id, author, created_at, followed pubkeys) of a stored contact list (NIP-02: ``p`` tags)."""
    doc = orjson.loads(raw)
    follows = frozenset(
        sys.intern(t[1]) for t in doc["tags"] if len(t) > 1 and t[0] == "p" and is_hex64(t[1])
    )
    return doc["id"], sys.intern(doc["pubkey"]), doc["created_at"], follows


async def contact_lists(
    store: Store, authors: Sequence[str], now: int, ids: dict[str, str] | None = None
) -> dict[str, frozenset[str]]:
    """Each author's stored contact list; an empty set for one that has none (so the graph
    never asks for it again). ``ids``, when given, gets each found list's event id."""
    found: dict[str, frozenset[str]] = {a: frozenset() for a in authors}
    for start in range(0, len(authors), AUTHORS_PER_QUERY):
        chunk = frozenset(authors[start : start + AUTHORS_PER_QUERY])
        for raw in await store.query([Filter(authors=chunk, kinds=frozenset({CONTACTS_KIND}))], now):
            event_id, author, _, follows = followed(raw)
            found[author] = follows
            if ids is not None:
                ids[author] = event_id
    return found


async def lists_changed(store: Store, authors: Sequence[str], ids: Mapping[str, str], now: int) -> set[str]:
    """The authors, a chunk at a time, of a chunk whose stored contact lists are not all the
    ones in ``ids`` (author -> the id last read): one index-only query per chunk
    (``sync_items``: ids, no JSON), whatever the lists' stamps."""
    changed: set[str] = set()
    kinds = frozenset({CONTACTS_KIND})
    for start in range(0, len(authors), AUTHORS_PER_QUERY):
        chunk = authors[start : start + AUTHORS_PER_QUERY]
        held = {ids.get(a) for a in chunk}
        items = await store.sync_items(Filter(authors=frozenset(chunk), kinds=kinds), now, None, len(chunk))
        if any(event_id.hex() not in held for _, event_id in items):
            changed.update(chunk)
    return changed


def ranked(raws: Iterable[bytes], min_rank: int) -> frozenset[str]:
    """NIP-85: the subjects (``d`` tag) of kind 30382 assertions whose ``rank`` (0-100) is
    at least ``min_rank``; a malformed rank trusts nobody."""
    out: set[str] = set()
    for raw in raws:
        doc: dict[str, Any] = orjson.loads(raw)
        subject, rank = "", -1
        for tag in doc["tags"]:
            if len(tag) > 1 and tag[0] == "d":
                subject = tag[1]
            elif len(tag) > 1 and tag[0] == "rank":
                try:
                    rank = int(tag[1])
                except ValueError:
                    rank = -1
        if is_hex64(subject) and rank >= min_rank:
            out.add(sys.intern(subject))
    return frozenset(out)


async def provider_trusted(store: Store, provider: str, min_rank: int, now: int) -> frozenset[str]:
    if not provider:
        return frozenset()
    raws = await store.query(
        [Filter(authors=frozenset({provider}), kinds=frozenset({ASSERTION_KIND}))], now
    )
    return ranked(raws, min_rank)


async def banned_pubkeys(store: Store) -> frozenset[str]:
    """NIP-86 banned pubkeys, from the store's management rows (the core's own state: the
    same rows every node's ``ManagementView`` reads)."""
    return frozenset(key for topic, key, _ in await store.list_management() if topic == "ban_pubkey")
