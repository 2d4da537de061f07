"""The ledger's schema on its own version line (``payments`` in ``component_versions``,
``relay.store.database``), for SQLite and PostgreSQL.

Until the store stopped knowing the ledger (issue 18), these tables were made by the
core's migrations; steps 1-7 below are those statements, unchanged and in the order the
core ran them, so a database keeps one history whichever line made it. Such a database
has tables but no ``payments`` row yet: ``sqlite_adopt`` / ``postgres_adopt`` read which
of them it holds and the line starts there (nothing made twice, no row lost). The
core's version number cannot say it: the core's old steps have since been emptied of
these tables, so a database made after the split reaches the same core version with
none of them, and the core's later steps move its number on anyway.

Step (old core step that made it): 1 (1) invoices, accounts; 2 (3) invoices.fee_msat;
3 (4) invoices.description; 4 (6) invites; 5 (7) reminder_optins, reminders_sent; 6 (8)
nwc_links, renewal_attempts; 7 (12) the console's indexes, pruned_invoices; 8 (14)
invoices.source; 9 (new) account_changes, the counter the core's store_changes kept as
its ``accounts`` row; 10 (new) accounts.role and comped, invoices.role, roles (tiers as NIP-43 roles);
11 (new) linked_keys (one plan, several keys); 12 (new) accounts.next_role and switch_at (a
downgrade scheduled for the period end).
Never edit a released step: add a new one.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from relay.store.migrations import Migration

# --- SQLite ---------------------------------------------------------------------------------

SQLITE_STEPS: tuple[Migration, ...] = (
    Migration(
        1,
        "invoices, accounts",
        (
            """CREATE TABLE invoices (
                payment_hash TEXT PRIMARY KEY,
                pubkey TEXT NOT NULL,
                plan TEXT NOT NULL,
                amount_msat INTEGER NOT NULL,
                bolt11 TEXT NOT NULL,
                created_at INTEGER NOT NULL,
                expires_at INTEGER NOT NULL,
                admit_seconds INTEGER NOT NULL,
                admit_forever INTEGER NOT NULL,
                credit_msat INTEGER NOT NULL,
                state TEXT NOT NULL,
                paid_at INTEGER,
                paid_msat INTEGER
            )""",
            "CREATE INDEX invoices_pubkey ON invoices (pubkey, created_at)",
            "CREATE INDEX invoices_created ON invoices (created_at)",
            "CREATE INDEX invoices_pending ON invoices (expires_at) WHERE state = 'pending'",
            """CREATE TABLE accounts (
                pubkey TEXT PRIMARY KEY,
                admitted_until INTEGER NOT NULL DEFAULT 0,
                credit_msat INTEGER NOT NULL DEFAULT 0,
                banned INTEGER NOT NULL DEFAULT 0,
                allowed INTEGER NOT NULL DEFAULT 0,
                updated_at INTEGER NOT NULL DEFAULT 0
            )""",
        ),
    ),
    # Phoenixd keeps a liquidity fee out of some incoming payments (issue 13): the payer
    # is credited for what they sent, the operator's cost is recorded beside it.
    Migration(
        2, "invoices.fee_msat: what the wallet kept of a payment", ("ALTER TABLE invoices ADD COLUMN fee_msat INTEGER",)
    ),
    # A zap invoice keeps the zap request its BOLT11 commits to, for the receipt (NIP-57).
    Migration(3, "invoices.description: the hashed description", ("ALTER TABLE invoices ADD COLUMN description TEXT",)),
    # NIP-43 invite codes (issue 10): single use, stored as SHA-256 of the code.
    Migration(
        4,
        "invites: NIP-43 invite codes",
        (
            """CREATE TABLE invites (
                code_hash TEXT PRIMARY KEY,
                plan TEXT NOT NULL,
                created_at INTEGER NOT NULL,
                expires_at INTEGER,
                created_by TEXT NOT NULL,
                admit_seconds INTEGER NOT NULL,
                admit_forever INTEGER NOT NULL,
                credit_msat INTEGER NOT NULL,
                redeemed_by TEXT,
                redeemed_at INTEGER
            )""",
            "CREATE INDEX invites_created_by ON invites (created_by, created_at)",
        ),
    ),
    # Reminders in Nostr (issue 10 item 5): who asked for them, and which were sent, so
    # each goes out once per term, across restarts and nodes.
    Migration(
        5,
        "reminder_optins, reminders_sent",
        (
            "CREATE TABLE reminder_optins (pubkey TEXT PRIMARY KEY, opted_in_at INTEGER NOT NULL)",
            """CREATE TABLE reminders_sent (
                pubkey TEXT NOT NULL,
                reason TEXT NOT NULL,
                term_end INTEGER NOT NULL,
                sent_at INTEGER NOT NULL,
                PRIMARY KEY (pubkey, reason, term_end)
            )""",
        ),
    ),
    # Renewal by Nostr Wallet Connect (issue 10 item 6): the member's NWC URI, sealed with a
    # key derived from the relay's key, and one attempt row per (member, end of period),
    # bound to one invoice: a retry can only pay that invoice again, which Lightning refuses.
    Migration(
        6,
        "nwc_links, renewal_attempts",
        (
            """CREATE TABLE nwc_links (
                pubkey TEXT PRIMARY KEY,
                sealed_uri TEXT NOT NULL,
                budget_msat INTEGER NOT NULL,
                created_at INTEGER NOT NULL
            )""",
            """CREATE TABLE renewal_attempts (
                pubkey TEXT NOT NULL,
                period_end INTEGER NOT NULL,
                payment_hash TEXT NOT NULL,
                state TEXT NOT NULL,
                tries INTEGER NOT NULL,
                detail TEXT NOT NULL,
                created_at INTEGER NOT NULL,
                updated_at INTEGER NOT NULL,
                PRIMARY KEY (pubkey, period_end)
            )""",
        ),
    ),
    # The operator console's payments pages (issue 11 item 3), aggregated in SQL:
    # - invoices_paid covers revenue per day and plan (index-only, paid invoices only);
    # - accounts_admitted serves the member counts and pages by status (a range of
    #   admitted_until each); it moves only on grants, never on per-event credit charges;
    # - pruned_invoices keeps, per UTC day of creation, how many never-paid invoices the
    #   watcher deleted (``prune_expired_invoices_after_seconds``), so the invoice funnel
    #   over 30 or 365 days still counts them.
    Migration(
        7,
        "console: invoices_paid, accounts_admitted indexes; pruned_invoices tally",
        (
            "CREATE INDEX invoices_paid ON invoices (paid_at, plan, paid_msat, fee_msat) WHERE state = 'paid'",
            "CREATE INDEX accounts_admitted ON accounts (admitted_until, pubkey)",
            "CREATE TABLE pruned_invoices (day INTEGER PRIMARY KEY, count INTEGER NOT NULL)",
        ),
    ),
    # Fair shares of the unpaid-invoice pool (issue 17): each pending invoice names the
    # address group that asked for it, so a group's share is counted (and the biggest
    # holder's oldest evicted) in the same transaction as the insert.
    Migration(
        8,
        "invoices.source: the address group holding an unpaid invoice",
        (
            "ALTER TABLE invoices ADD COLUMN source TEXT NOT NULL DEFAULT ''",
            "CREATE INDEX invoices_pending_source ON invoices (source, created_at) WHERE state = 'pending'",
        ),
    ),
    # Change counter (issue 11): a grant, revoke or ban made by the CLI (another process)
    # or on another node bumps it, and running relays poll it (one primary-key read every
    # ~0.5 s) to drop their cached accounts at once instead of after a TTL.
    Migration(
        9,
        "account_changes: a counter bumped by account changes, polled by running relays",
        (
            "CREATE TABLE account_changes (id INTEGER PRIMARY KEY CHECK (id = 1), counter INTEGER NOT NULL)",
            "INSERT INTO account_changes (id, counter) VALUES (1, 0)",
        ),
    ),
    # Tiers as NIP-43 roles (issue 20): the role an account holds (a tier's limits apply
    # to it), whether the operator gave it without payment, the role a tier's invoice
    # grants on settlement, and the roles made through NIP-86 ``createrole``.
    Migration(
        10,
        "accounts.role, accounts.comped, invoices.role, roles",
        (
            "ALTER TABLE accounts ADD COLUMN role TEXT NOT NULL DEFAULT ''",
            "ALTER TABLE accounts ADD COLUMN comped INTEGER NOT NULL DEFAULT 0",
            "ALTER TABLE invoices ADD COLUMN role TEXT NOT NULL DEFAULT ''",
            """CREATE TABLE roles (
                id TEXT PRIMARY KEY,
                label TEXT NOT NULL,
                description TEXT NOT NULL,
                color INTEGER,
                ord INTEGER,
                updated_at INTEGER NOT NULL
            )""",
        ),
    ),
    # One plan, several keys (issue 20 item 4): a key linked to another key's plan writes
    # as that account; one row per linked key (a key joins one plan at most), found by
    # its owner for the plan's count and its quotas.
    Migration(
        11,
        "linked_keys: keys that write under another key's plan",
        (
            """CREATE TABLE linked_keys (
                pubkey TEXT PRIMARY KEY,
                owner TEXT NOT NULL,
                linked_at INTEGER NOT NULL
            )""",
            "CREATE INDEX linked_keys_owner ON linked_keys (owner, linked_at)",
        ),
    ),
    # Downgrades apply at the period end (issue 20 item 3, lightning.billing): the tier the
    # account moves to then, and when.
    Migration(
        12,
        "accounts.next_role, accounts.switch_at",
        (
            "ALTER TABLE accounts ADD COLUMN next_role TEXT NOT NULL DEFAULT ''",
            "ALTER TABLE accounts ADD COLUMN switch_at INTEGER NOT NULL DEFAULT 0",
        ),
    ),
)


def _marks(present: list[bool]) -> int:
    """The step a database made by the old core line is at: the last of ``present`` (one
    mark per step, in order) that holds. Each old step committed whole, so the marks
    hold from the first up to some step and none after it."""
    version = 0
    for step, here in enumerate(present, start=1):
        if not here:
            break
        version = step
    return version


def sqlite_adopt(conn: sqlite3.Connection) -> int:
    """How far the old core line took this SQLite file's ledger tables (0: none made)."""
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "invoices" not in tables:
        return 0
    columns = {row[1] for row in conn.execute("SELECT * FROM pragma_table_info('invoices')")}
    return _marks(
        [
            True,
            "fee_msat" in columns,
            "description" in columns,
            "invites" in tables,
            "reminder_optins" in tables,
            "nwc_links" in tables,
            "pruned_invoices" in tables,
            "source" in columns,
            "account_changes" in tables,
        ]
    )


# --- PostgreSQL -------------------------------------------------------------------------

POSTGRES_STEPS: tuple[Migration, ...] = (
    Migration(
        1,
        "invoices, accounts",
        (
            """CREATE TABLE invoices (
                payment_hash text PRIMARY KEY,
                pubkey text NOT NULL,
                plan text NOT NULL,
                amount_msat bigint NOT NULL,
                bolt11 text NOT NULL,
                created_at bigint NOT NULL,
                expires_at bigint NOT NULL,
                admit_seconds bigint NOT NULL,
                admit_forever boolean NOT NULL,
                credit_msat bigint NOT NULL,
                state text NOT NULL,
                paid_at bigint,
                paid_msat bigint
            )""",
            "CREATE INDEX invoices_pubkey ON invoices (pubkey, created_at DESC)",
            "CREATE INDEX invoices_created ON invoices (created_at DESC)",
            "CREATE INDEX invoices_pending ON invoices (expires_at) WHERE state = 'pending'",
            """CREATE TABLE accounts (
                pubkey text PRIMARY KEY,
                admitted_until bigint NOT NULL DEFAULT 0,
                credit_msat bigint NOT NULL DEFAULT 0,
                banned boolean NOT NULL DEFAULT false,
                allowed boolean NOT NULL DEFAULT false,
                updated_at bigint NOT NULL DEFAULT 0
            )""",
        ),
    ),
    Migration(
        2, "invoices.fee_msat: what the wallet kept of a payment", ("ALTER TABLE invoices ADD COLUMN fee_msat bigint",)
    ),
    Migration(3, "invoices.description: the hashed description", ("ALTER TABLE invoices ADD COLUMN description text",)),
    Migration(
        4,
        "invites: NIP-43 invite codes",
        (
            """CREATE TABLE invites (
                code_hash text PRIMARY KEY,
                plan text NOT NULL,
                created_at bigint NOT NULL,
                expires_at bigint,
                created_by text NOT NULL,
                admit_seconds bigint NOT NULL,
                admit_forever boolean NOT NULL,
                credit_msat bigint NOT NULL,
                redeemed_by text,
                redeemed_at bigint
            )""",
            "CREATE INDEX invites_created_by ON invites (created_by, created_at)",
        ),
    ),
    Migration(
        5,
        "reminder_optins, reminders_sent",
        (
            "CREATE TABLE reminder_optins (pubkey text PRIMARY KEY, opted_in_at bigint NOT NULL)",
            """CREATE TABLE reminders_sent (
                pubkey text NOT NULL,
                reason text NOT NULL,
                term_end bigint NOT NULL,
                sent_at bigint NOT NULL,
                PRIMARY KEY (pubkey, reason, term_end)
            )""",
        ),
    ),
    Migration(
        6,
        "nwc_links, renewal_attempts",
        (
            """CREATE TABLE nwc_links (
                pubkey text PRIMARY KEY,
                sealed_uri text NOT NULL,
                budget_msat bigint NOT NULL,
                created_at bigint NOT NULL
            )""",
            """CREATE TABLE renewal_attempts (
                pubkey text NOT NULL,
                period_end bigint NOT NULL,
                payment_hash text NOT NULL,
                state text NOT NULL,
                tries bigint NOT NULL,
                detail text NOT NULL,
                created_at bigint NOT NULL,
                updated_at bigint NOT NULL,
                PRIMARY KEY (pubkey, period_end)
            )""",
        ),
    ),
    Migration(
        7,
        "console: invoices_paid, accounts_admitted indexes; pruned_invoices tally",
        (
            "CREATE INDEX invoices_paid ON invoices (paid_at, plan, paid_msat, fee_msat) WHERE state = 'paid'",
            "CREATE INDEX accounts_admitted ON accounts (admitted_until, pubkey)",
            "CREATE TABLE pruned_invoices (day bigint PRIMARY KEY, count bigint NOT NULL)",
        ),
    ),
    Migration(
        8,
        "invoices.source: the address group holding an unpaid invoice",
        (
            "ALTER TABLE invoices ADD COLUMN source text NOT NULL DEFAULT ''",
            "CREATE INDEX invoices_pending_source ON invoices (source, created_at) WHERE state = 'pending'",
        ),
    ),
    Migration(
        9,
        "account_changes: a counter bumped by account changes, polled by running relays",
        (
            "CREATE TABLE account_changes (id integer PRIMARY KEY CHECK (id = 1), counter bigint NOT NULL)",
            "INSERT INTO account_changes (id, counter) VALUES (1, 0)",
        ),
    ),
    Migration(
        10,
        "accounts.role, accounts.comped, invoices.role, roles",
        (
            "ALTER TABLE accounts ADD COLUMN role text NOT NULL DEFAULT ''",
            "ALTER TABLE accounts ADD COLUMN comped boolean NOT NULL DEFAULT false",
            "ALTER TABLE invoices ADD COLUMN role text NOT NULL DEFAULT ''",
            """CREATE TABLE roles (
                id text PRIMARY KEY,
                label text NOT NULL,
                description text NOT NULL,
                color integer,
                ord integer,
                updated_at bigint NOT NULL
            )""",
        ),
    ),
    Migration(
        11,
        "linked_keys: keys that write under another key's plan",
        (
            """CREATE TABLE linked_keys (
                pubkey text PRIMARY KEY,
                owner text NOT NULL,
                linked_at bigint NOT NULL
            )""",
            "CREATE INDEX linked_keys_owner ON linked_keys (owner, linked_at)",
        ),
    ),
    Migration(
        12,
        "accounts.next_role, accounts.switch_at",
        (
            "ALTER TABLE accounts ADD COLUMN next_role text NOT NULL DEFAULT ''",
            "ALTER TABLE accounts ADD COLUMN switch_at bigint NOT NULL DEFAULT 0",
        ),
    ),
)


async def postgres_adopt(conn: Any) -> int:
    """How far the old core line took this schema's ledger tables (0: none made); the
    tables are looked up on the connection's search_path, i.e. in the store's schema."""
    found = await conn.fetchrow(
        "SELECT to_regclass('invoices') IS NOT NULL, to_regclass('invites') IS NOT NULL,"
        " to_regclass('reminder_optins') IS NOT NULL, to_regclass('nwc_links') IS NOT NULL,"
        " to_regclass('pruned_invoices') IS NOT NULL, to_regclass('account_changes') IS NOT NULL"
    )
    invoices, invites, reminders, nwc, pruned, changes = (bool(v) for v in found)
    if not invoices:
        return 0
    columns = {
        row[0]
        for row in await conn.fetch(
            "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass('invoices') AND attnum > 0"
            " AND NOT attisdropped"
        )
    }
    marks = [True, "fee_msat" in columns, "description" in columns, invites, reminders, nwc, pruned]
    return _marks([*marks, "source" in columns, changes])
