"""PostgreSQL schema, as versioned steps (same ``Migration`` shape as SQLite's list).

Applied by ``apply_migrations`` in ONE transaction under a transaction-level advisory
lock, re-reading ``schema_version`` under it: of several relay nodes starting together
against an empty database, one creates the schema and the others find it done. DDL is
transactional in PostgreSQL, so a failed step leaves nothing half-built.

Layout choices (figures from ``bench/pg_tags.py``, 1M events, see ``relay.store.postgres``):

- ids and pubkeys are ``bytea`` (32 bytes, half of hex in the table and every index);
  bytea order is memcmp order, which equals lowercase-hex order, so "ties by lowest id"
  sorts the same as the spec's hex comparison;
- ``raw`` is ``bytea``: asyncpg hands it back as ``bytes`` with no decode, and REQ answers
  send it as is;
- ``seq`` (identity) is the row's short handle, used by ``tags`` instead of the 32-byte id;
- ``d_tag`` is NULL for regular events, "" for replaceable ones and the ``d`` value for
  addressable ones, so one partial UNIQUE index backs "one version per (pubkey, kind, d)"
  even if the application-level locking were ever wrong;
- ``tags`` (one row per distinct single-letter tag name/value) repeats created_at, kind
  and expiration so a ``#p``/``#e`` filter with kinds/since/until and the NIP-40 check is
  answered from ``tags_lookup`` alone, newest first, stopping after ``limit`` rows;
- tombstones (``deleted_ids``, ``deleted_addresses``) keep NIP-09 deletions so a deleted
  event sent again is refused.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from relay.store.database import COMPONENT_VERSIONS
from relay.store.migrations import Migration, pending

# pg_advisory_xact_lock(classid, objid) namespace for "migrating this schema".
LOCK_CLASS_MIGRATE = 0x53520001

POSTGRES_MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "events, tags, deletions",
        (
            """CREATE TABLE events (
                seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                id bytea NOT NULL,
                pubkey bytea NOT NULL,
                created_at bigint NOT NULL,
                kind integer NOT NULL,
                d_tag text,
                expiration bigint,
                raw bytea NOT NULL,
                CONSTRAINT events_id UNIQUE (id)
            )""",
            "CREATE INDEX events_created ON events (created_at DESC, id)",
            "CREATE INDEX events_pubkey ON events (pubkey, created_at DESC)",
            "CREATE INDEX events_pubkey_kind ON events (pubkey, kind, created_at DESC)",
            "CREATE INDEX events_kind ON events (kind, created_at DESC)",
            "CREATE UNIQUE INDEX events_address ON events (pubkey, kind, d_tag) WHERE d_tag IS NOT NULL",
            "CREATE INDEX events_expiration ON events (expiration) WHERE expiration IS NOT NULL",
            """CREATE TABLE tags (
                seq bigint NOT NULL,
                name text NOT NULL,
                value text NOT NULL,
                created_at bigint NOT NULL,
                kind integer NOT NULL,
                expiration bigint
            )""",
            "CREATE INDEX tags_lookup ON tags (name, value, created_at DESC) INCLUDE (kind, expiration, seq)",
            "CREATE INDEX tags_seq ON tags (seq)",
            """CREATE TABLE deleted_ids (
                id bytea NOT NULL,
                pubkey bytea NOT NULL,
                PRIMARY KEY (id, pubkey)
            )""",
            """CREATE TABLE deleted_addresses (
                pubkey bytea NOT NULL,
                kind integer NOT NULL,
                d_tag text NOT NULL,
                until bigint NOT NULL,
                PRIMARY KEY (pubkey, kind, d_tag)
            )""",
        ),
    ),
    Migration(
        2,
        "write_regular_batch: a batch of regular events in one round trip",
        (
            # One call = one statement = one implicit transaction: the author-bucket locks
            # are taken first, and every later statement of a VOLATILE function takes a new
            # snapshot (READ COMMITTED), so the tombstone check sees any deletion committed
            # before the locks were granted, as the multi-statement path does. The answer is
            # one string, one letter per input in order: 's' STORED, 'd' DELETED, 'u' not
            # inserted by ON CONFLICT (stored before, or by another node meanwhile:
            # DUPLICATE); one short value is cheaper to decode on a busy event loop than a
            # row per event. A stored event that is also tombstoned (a kind 5 named by a
            # later kind 5, NIP-09) is a duplicate, hence "not stored" in the DELETED test.
            # ``search_path`` is pinned to the schema the function lives in.
            """CREATE FUNCTION write_regular_batch(
                lock_class integer, lock_keys integer[],
                ids bytea[], pubkeys bytea[], created bigint[], kinds integer[],
                expirations bigint[], raws bytea[],
                tag_index bigint[], tag_names text[], tag_values text[]
            ) RETURNS text
            LANGUAGE plpgsql VOLATILE SET search_path FROM CURRENT AS $fn$
            DECLARE
                answer text;
            BEGIN
                PERFORM pg_advisory_xact_lock_shared(lock_class, k) FROM unnest(lock_keys) AS k;
                WITH input AS (
                    SELECT * FROM unnest(ids, pubkeys, created, kinds, expirations, raws)
                        WITH ORDINALITY AS u(id, pubkey, created_at, kind, expiration, raw, i)
                ),
                deleted AS (
                    SELECT u.id FROM input u
                    WHERE EXISTS (SELECT 1 FROM deleted_ids d WHERE d.id = u.id AND d.pubkey = u.pubkey)
                      AND NOT EXISTS (SELECT 1 FROM events e WHERE e.id = u.id)
                ),
                ins AS (
                    INSERT INTO events (id, pubkey, created_at, kind, d_tag, expiration, raw)
                    SELECT u.id, u.pubkey, u.created_at, u.kind, NULL, u.expiration, u.raw FROM input u
                    WHERE NOT EXISTS (SELECT 1 FROM deleted WHERE deleted.id = u.id)
                    ORDER BY u.id
                    ON CONFLICT ON CONSTRAINT events_id DO NOTHING
                    RETURNING events.seq, events.id, events.created_at, events.kind, events.expiration
                ),
                tg AS (
                    INSERT INTO tags (seq, name, value, created_at, kind, expiration)
                    SELECT ins.seq, t.name, t.value, ins.created_at, ins.kind, ins.expiration
                    FROM unnest(tag_index, tag_names, tag_values) AS t(i, name, value)
                    JOIN input u ON u.i = t.i
                    JOIN ins ON ins.id = u.id
                )
                SELECT string_agg(
                    CASE WHEN ins.id IS NOT NULL THEN 's' WHEN deleted.id IS NOT NULL THEN 'd' ELSE 'u' END,
                    '' ORDER BY u.i)
                INTO answer
                FROM input u
                LEFT JOIN ins ON ins.id = u.id
                LEFT JOIN deleted ON deleted.id = u.id;
                RETURN answer;
            END
            $fn$""",
        ),
    ),
    # Steps 3, 4, 6, 7, 8, 12 and 14 (and part of 1 and 9): see the SQLite list.
    Migration(3, "retired: a plug-in's table, now on its own line", ()),
    Migration(4, "retired: a plug-in's table, now on its own line", ()),
    # NIP-50 search (relay/nostr/search.py): a tsvector column on events, set only for the
    # indexed kinds (NULL otherwise, and then in no index entry: the GIN index is partial),
    # written by the same INSERT as the event, so it commits in the event's transaction and
    # leaves with the row on deletion, replacement or expiry. Its lexemes are the words of
    # relay/nostr/search.py given as a tsvector literal (no parser, no dictionary), so both
    # stores match the same words. ``search_state`` records which kinds the column covers
    # (a change of ``[search] kinds`` rebuilds it at start-up).
    # write_regular_batch gains the searches argument (one literal or NULL per event).
    Migration(
        5,
        "NIP-50 search: events.search tsvector + partial GIN index, search_state, write_regular_batch(searches)",
        (
            "ALTER TABLE events ADD COLUMN search tsvector",
            "CREATE INDEX events_search ON events USING gin (search) WHERE search IS NOT NULL",
            "CREATE TABLE search_state (id integer PRIMARY KEY CHECK (id = 1), kinds text NOT NULL)",
            "DROP FUNCTION write_regular_batch(integer, integer[], bytea[], bytea[], bigint[], integer[],"
            " bigint[], bytea[], bigint[], text[], text[])",
            """CREATE FUNCTION write_regular_batch(
                lock_class integer, lock_keys integer[],
                ids bytea[], pubkeys bytea[], created bigint[], kinds integer[],
                expirations bigint[], raws bytea[], searches text[],
                tag_index bigint[], tag_names text[], tag_values text[]
            ) RETURNS text
            LANGUAGE plpgsql VOLATILE SET search_path FROM CURRENT AS $fn$
            DECLARE
                answer text;
            BEGIN
                PERFORM pg_advisory_xact_lock_shared(lock_class, k) FROM unnest(lock_keys) AS k;
                WITH input AS (
                    SELECT * FROM unnest(ids, pubkeys, created, kinds, expirations, raws, searches)
                        WITH ORDINALITY AS u(id, pubkey, created_at, kind, expiration, raw, search, i)
                ),
                deleted AS (
                    SELECT u.id FROM input u
                    WHERE EXISTS (SELECT 1 FROM deleted_ids d WHERE d.id = u.id AND d.pubkey = u.pubkey)
                      AND NOT EXISTS (SELECT 1 FROM events e WHERE e.id = u.id)
                ),
                ins AS (
                    INSERT INTO events (id, pubkey, created_at, kind, d_tag, expiration, raw, search)
                    SELECT u.id, u.pubkey, u.created_at, u.kind, NULL, u.expiration, u.raw, u.search::tsvector
                    FROM input u
                    WHERE NOT EXISTS (SELECT 1 FROM deleted WHERE deleted.id = u.id)
                    ORDER BY u.id
                    ON CONFLICT ON CONSTRAINT events_id DO NOTHING
                    RETURNING events.seq, events.id, events.created_at, events.kind, events.expiration
                ),
                tg AS (
                    INSERT INTO tags (seq, name, value, created_at, kind, expiration)
                    SELECT ins.seq, t.name, t.value, ins.created_at, ins.kind, ins.expiration
                    FROM unnest(tag_index, tag_names, tag_values) AS t(i, name, value)
                    JOIN input u ON u.i = t.i
                    JOIN ins ON ins.id = u.id
                )
                SELECT string_agg(
                    CASE WHEN ins.id IS NOT NULL THEN 's' WHEN deleted.id IS NOT NULL THEN 'd' ELSE 'u' END,
                    '' ORDER BY u.i)
                INTO answer
                FROM input u
                LEFT JOIN ins ON ins.id = u.id
                LEFT JOIN deleted ON deleted.id = u.id;
                RETURN answer;
            END
            $fn$""",
        ),
    ),
    Migration(6, "retired: a plug-in's table, now on its own line", ()),
    Migration(7, "retired: a plug-in's tables, now on its own line", ()),
    Migration(8, "retired: a plug-in's tables, now on its own line", ()),
    # Change counters (issue 11): see the SQLite migration 9.
    Migration(
        9,
        "store_changes: counters bumped by changes other processes must see, polled by running relays",
        ("CREATE TABLE store_changes (topic text PRIMARY KEY, counter bigint NOT NULL)",),
    ),
    # NIP-62 (issue 11): see the SQLite migration 10.
    Migration(
        10,
        "vanished: NIP-62 requests to vanish, by author",
        (
            "CREATE TABLE vanished (pubkey bytea PRIMARY KEY, until bigint NOT NULL)",
            "INSERT INTO store_changes (topic, counter) VALUES ('vanish', 0)",
        ),
    ),
    # NIP-86 management state (issue 11 item 1): see the SQLite migration 11.
    Migration(
        11,
        "management: NIP-86 bans, allows, kinds, blocked IPs, relay info overrides",
        (
            "CREATE TABLE management (topic text NOT NULL, key text NOT NULL, value text NOT NULL,"
            " PRIMARY KEY (topic, key))",
            "INSERT INTO store_changes (topic, counter) VALUES ('management', 0)",
        ),
    ),
    Migration(12, "retired: a plug-in's indexes and table, now on its own line", ()),
    # Relay-wide guards (issue 17 items 3 and 9, ``Store.take_uses``); see the SQLite twin.
    Migration(
        13,
        "use_counts: single-use NIP-98 headers and free allowances, for every process and node",
        (
            "CREATE TABLE use_counts (key text PRIMARY KEY, uses integer NOT NULL, expires_at bigint NOT NULL)",
            "CREATE INDEX use_counts_expiry ON use_counts (expires_at)",
        ),
    ),
    Migration(14, "retired: a plug-in's column, now on its own line", ()),
)


def quote_ident(name: str) -> str:
    """A PostgreSQL identifier, quoted so any schema name is taken literally."""
    if not name or "\x00" in name:
        raise ValueError(f"invalid identifier {name!r}")
    return '"' + name.replace('"', '""') + '"'


async def apply_migrations(
    conn: Any, schema: str | None, migrations: tuple[Migration, ...] = POSTGRES_MIGRATIONS
) -> int:
    """Create ``schema`` when missing and apply pending steps; return the version reached.

    ``conn`` is an asyncpg connection whose search_path already names ``schema``. The lock
    key mixes in the schema name so unrelated schemas (one per test) migrate in parallel.
    """
    target = schema or "public"
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", LOCK_CLASS_MIGRATE, target)
        if schema is not None:
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(schema)}")
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL, applied_at timestamptz NOT NULL)"
        )
        current = await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_version")
        steps = pending(migrations, int(current))
        for step in steps:
            for statement in step.statements:
                await conn.execute(statement)
            await conn.execute("INSERT INTO schema_version (version, applied_at) VALUES ($1, now())", step.version)
        return steps[-1].version if steps else int(current)


async def apply_component_migrations(
    conn: Any,
    scope: str,
    component: str,
    steps: Sequence[Migration],
    adopt: Callable[[Any], Awaitable[int]] | None = None,
) -> int:
    """A plug-in's version line (``relay.store.database``): its pending steps and its new
    version in one transaction, under the lock the core's migrations take for this schema,
    so of several nodes starting together one migrates and the others find it done."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", LOCK_CLASS_MIGRATE, scope)
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {COMPONENT_VERSIONS} (component text PRIMARY KEY, version integer NOT NULL)"
        )
        row = await conn.fetchrow(f"SELECT version FROM {COMPONENT_VERSIONS} WHERE component = $1", component)
        current = int(row[0]) if row is not None else (await adopt(conn) if adopt is not None else 0)
        todo = pending(steps, current)
        for step in todo:
            for statement in step.statements:
                await conn.execute(statement)
        version = todo[-1].version if todo else current
        if row is None or todo:
            await conn.execute(
                f"INSERT INTO {COMPONENT_VERSIONS} (component, version) VALUES ($1, $2)"
                " ON CONFLICT (component) DO UPDATE SET version = excluded.version",
                component,
                version,
            )
    return version
