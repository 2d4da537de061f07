"""Versioned schema migrations: an ordered list of steps per backend, applied once each.

Shape (mirrored by the PostgreSQL store, which keeps its own ``POSTGRES_MIGRATIONS`` list
of the same ``Migration`` values next to its code):

- a migration is ``(version, description, statements)``; versions start at 1 and grow by 1;
- a database records the last version it applied (SQLite: ``PRAGMA user_version``;
  PostgreSQL: a one-row table) and ``pending`` answers which steps remain;
- the runner applies all pending steps and the new version number in ONE transaction
  taken with the write lock (SQLite ``BEGIN IMMEDIATE``), re-reading the version under
  that lock so two processes opening the same file at once cannot both migrate.

Statements are kept separate (not one script) because Python's ``executescript`` commits
any open transaction first, which would break the "all or nothing" rule above.
Never edit a released step: add a new one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    description: str
    statements: tuple[str, ...]


def pending(migrations: Sequence[Migration], current: int) -> list[Migration]:
    """Steps newer than ``current``, in order; refuses a list with gaps or disorder, and a
    database newer than this code (downgrades are not supported)."""
    for expected, step in enumerate(migrations, start=1):
        if step.version != expected:
            raise ValueError(f"migration {step.version} out of order (expected {expected})")
    if current > len(migrations):
        raise RuntimeError(f"database schema version {current} is newer than this code ({len(migrations)})")
    return list(migrations[current:])


# --- SQLite -----------------------------------------------------------------------------
#
# Ids and pubkeys are 32-byte BLOBs: half the size of hex in the table and every index, and
# BLOB order (memcmp) equals lowercase-hex order, so "ties by lowest id" sorts the same.
# ``raw`` is the event's compact JSON, returned to clients byte for byte.
# ``d_tag`` is NULL for regular events, "" for replaceable ones and the d value for
# addressable ones, so one UNIQUE index enforces "one version per (pubkey, kind, d)".
# ``tags`` repeats created_at so a ``#x`` filter with since/until is one index range in
# created_at order; its primary key (rid, name, value) serves both the deletion of an
# event's tags and the "also has tag y" check of a filter with several tag conditions.

SQLITE_MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "events, tags, deletions",
        (
            """CREATE TABLE events (
                rid INTEGER PRIMARY KEY,
                id BLOB NOT NULL UNIQUE,
                pubkey BLOB NOT NULL,
                created_at INTEGER NOT NULL,
                kind INTEGER NOT NULL,
                d_tag TEXT,
                expiration INTEGER,
                raw BLOB NOT NULL
            )""",
            "CREATE INDEX events_created ON events (created_at)",
            "CREATE INDEX events_pubkey ON events (pubkey, created_at)",
            "CREATE INDEX events_pubkey_kind ON events (pubkey, kind, created_at)",
            "CREATE INDEX events_kind ON events (kind, created_at)",
            "CREATE UNIQUE INDEX events_address ON events (pubkey, kind, d_tag) WHERE d_tag IS NOT NULL",
            "CREATE INDEX events_expiration ON events (expiration) WHERE expiration IS NOT NULL",
            """CREATE TABLE tags (
                rid INTEGER NOT NULL,
                name TEXT NOT NULL,
                value TEXT NOT NULL,
                created_at INTEGER NOT NULL,
                PRIMARY KEY (rid, name, value)
            ) WITHOUT ROWID""",
            "CREATE INDEX tags_value ON tags (name, value, created_at)",
            # NIP-09 "e" deletions: (id, author of the deletion). An event with this id by
            # this author is refused forever, even if it arrives after its deletion.
            """CREATE TABLE deleted_ids (
                id BLOB NOT NULL,
                pubkey BLOB NOT NULL,
                PRIMARY KEY (id, pubkey)
            ) WITHOUT ROWID""",
            # NIP-09 "a" deletions: versions with created_at <= until are refused.
            """CREATE TABLE deleted_addresses (
                pubkey BLOB NOT NULL,
                kind INTEGER NOT NULL,
                d_tag TEXT NOT NULL,
                until INTEGER NOT NULL,
                PRIMARY KEY (pubkey, kind, d_tag)
            ) WITHOUT ROWID""",
        ),
    ),
    # Fewer pages dirtied per stored event (the writer's COMMIT was the ingest bottleneck:
    # each B-tree keyed by a random value dirties about one page per event per batch).
    # - events_pubkey (pubkey, created_at) and events_pubkey_kind (pubkey, kind,
    #   created_at), two B-trees keyed by the author, become one, events_author (pubkey,
    #   created_at, kind): authors filters read it newest first and test kinds on the
    #   index entry; filters whose kinds are all replaceable/addressable (profiles,
    #   follow lists) search events_address instead.
    # - tags becomes ONE B-tree keyed (name, value, created_at, rid) instead of a table
    #   keyed (rid, name, value) plus the tags_value index: it is the index every tag
    #   filter searches, and an event's rows are deleted by their full key (the store
    #   re-reads the tags from the event's raw JSON, deletions being rare).
    Migration(
        2,
        "one author index (pubkey, created_at, kind); tags as one B-tree keyed (name, value, created_at, rid)",
        (
            "DROP INDEX events_pubkey",
            "DROP INDEX events_pubkey_kind",
            "CREATE INDEX events_author ON events (pubkey, created_at, kind)",
            """CREATE TABLE tags_v2 (
                name TEXT NOT NULL,
                value TEXT NOT NULL,
                created_at INTEGER NOT NULL,
                rid INTEGER NOT NULL,
                PRIMARY KEY (name, value, created_at, rid)
            ) WITHOUT ROWID""",
            "INSERT INTO tags_v2 (name, value, created_at, rid) SELECT name, value, created_at, rid FROM tags",
            "DROP TABLE tags",
            "ALTER TABLE tags_v2 RENAME TO tags",
        ),
    ),
    # Steps 3, 4, 6, 7, 8, 12 and 14 (and part of 1 and 9) made a plug-in's tables before each
    # plug-in had its own version line (relay.store.database); their statements moved to
    # that plug-in's line, which adopts the tables a database made before holds. Kept
    # empty so the core's numbers, recorded by every database, keep their meaning.
    Migration(3, "retired: a plug-in's table, now on its own line", ()),
    Migration(4, "retired: a plug-in's table, now on its own line", ()),
    # NIP-50 search (relay/nostr/search.py): the words of each event of an indexed kind, under
    # the event's rid, in an FTS5 table. Words arrive already cut and case-folded, joined
    # by spaces; unicode61 with diacritics kept only splits them back. A regular (not
    # contentless) table: SQLite 3.40 cannot delete from a contentless one without being
    # handed the very text indexed, and a Unicode update to Python's str.isalnum could
    # change that text between insert and delete. ``search_state`` records which kinds
    # the index covers, so a change of ``[search] kinds`` rebuilds it at start-up.
    Migration(
        5,
        "NIP-50 search: events_search (FTS5, rowid = events.rid), search_state",
        (
            "CREATE VIRTUAL TABLE events_search USING fts5(body, tokenize = 'unicode61 remove_diacritics 0')",
            "CREATE TABLE search_state (id INTEGER PRIMARY KEY CHECK (id = 1), kinds TEXT NOT NULL)",
        ),
    ),
    Migration(6, "retired: a plug-in's table, now on its own line", ()),
    Migration(7, "retired: a plug-in's tables, now on its own line", ()),
    Migration(8, "retired: a plug-in's tables, now on its own line", ()),
    # Change counters (issue 11): a change made by the CLI (another process) or on another
    # node bumps a counter that running relays poll (one primary-key read every ~0.5 s) to
    # reload their copies at once instead of after a TTL; steps 10 and 11 add their rows.
    # (Its first row, a plug-in's counter, moved to that plug-in's line.)
    Migration(
        9,
        "store_changes: counters bumped by changes other processes must see, polled by running relays",
        ("CREATE TABLE store_changes (topic TEXT PRIMARY KEY, counter INTEGER NOT NULL) WITHOUT ROWID",),
    ),
    # NIP-62 (issue 11): one row per author who vanished, the latest request's created_at;
    # a counter row so other processes re-read them.
    Migration(
        10,
        "vanished: NIP-62 requests to vanish, by author",
        (
            "CREATE TABLE vanished (pubkey BLOB PRIMARY KEY, until INTEGER NOT NULL) WITHOUT ROWID",
            "INSERT INTO store_changes (topic, counter) VALUES ('vanish', 0)",
        ),
    ),
    # NIP-86 management state (issue 11 item 1): (topic, key) -> value rows, e.g.
    # ("ban_pubkey", <hex>, <reason>); relay/nostr/management.py says what each topic means.
    Migration(
        11,
        "management: NIP-86 bans, allows, kinds, blocked IPs, relay info overrides",
        (
            "CREATE TABLE management (topic TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,"
            " PRIMARY KEY (topic, key)) WITHOUT ROWID",
            "INSERT INTO store_changes (topic, counter) VALUES ('management', 0)",
        ),
    ),
    Migration(12, "retired: a plug-in's indexes and table, now on its own line", ()),
    # Relay-wide guards (issue 17 items 3 and 9, ``Store.take_uses``): a NIP-98 header's
    # single use, the free inbox allowance. The expiry index serves the pruning.
    Migration(
        13,
        "use_counts: single-use NIP-98 headers and free allowances, for every process and node",
        (
            "CREATE TABLE use_counts (key TEXT PRIMARY KEY, uses INTEGER NOT NULL, expires_at INTEGER NOT NULL)"
            " WITHOUT ROWID",
            "CREATE INDEX use_counts_expiry ON use_counts (expires_at)",
        ),
    ),
    Migration(14, "retired: a plug-in's column, now on its own line", ()),
)
