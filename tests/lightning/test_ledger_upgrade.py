"""A database made before the ledger left the core (issue 18) keeps every ledger row.

Until then the core's one version line made the ledger's tables; now the core's steps
that did are empty and the ledger has its own line (``lightning.store.migrations``),
which adopts the tables such a database holds. ``old_core_line`` rebuilds the line the
core ran before the split from the statements themselves, unchanged: each core step
with the ledger statements it held (old steps 1, 3, 4, 6, 7, 8, 12, 14, and step 9's
``accounts`` counter row). A database is made with it up to a version, filled with rows
as the old code wrote them, then opened by the current store and ledger: nothing lost,
nothing made twice, the missing steps applied, and the ledger working on it. On SQLite
and PostgreSQL.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from lightning.store import open_ledger
from lightning.store.base import Charge, Invite, InviteOutcome, Invoice, InvoiceState, LedgerStore
from lightning.store.migrations import POSTGRES_STEPS, SQLITE_STEPS
from relay.nostr.errors import Restricted
from relay.nostr.event import sign_event
from relay.nostr.filters import Filter
from relay.store.base import Store, WriteOutcome, WriteRequest
from relay.store.migrations import SQLITE_MIGRATIONS, Migration
from relay.store.postgres_migrations import POSTGRES_MIGRATIONS
from relay.store.postgres_migrations import apply_migrations as apply_postgres_migrations
from relay.store.sqlite import SqliteStore
from relay.store.sqlite_schema import apply_migrations as apply_sqlite_migrations
from tests.store.conftest import _drop_schema, _postgres_class

NOW = 1_700_000_000
ALICE = (1).to_bytes(32, "big")
PAYER = sign_event(ALICE, 1, "", [], 1).pubkey
BOB = "b" * 64
PRE_SPLIT_VERSION = 14  # the core's last step on main when the ledger left it

# Old core step -> the ledger step that holds the ledger statements it ran.
MOVED = {1: 1, 3: 2, 4: 3, 6: 4, 7: 5, 8: 6, 12: 7, 14: 8}
ACCOUNTS_COUNTER = "INSERT INTO store_changes (topic, counter) VALUES ('accounts', 0)"


def old_core_line(core: tuple[Migration, ...], ledger: tuple[Migration, ...]) -> tuple[Migration, ...]:
    """The core's line as it ran before the ledger had one of its own."""
    out = []
    for step in core[:PRE_SPLIT_VERSION]:
        statements = list(step.statements)
        if step.version in MOVED:
            statements += ledger[MOVED[step.version] - 1].statements
        if step.version == 9:
            statements.append(ACCOUNTS_COUNTER)
        out.append(Migration(step.version, step.description, tuple(statements)))
    return tuple(out)


def old_rows(version: int, mark: Callable[[int], str]) -> list[tuple[str, list[Any]]]:
    """What the old code would have stored by ``version``: an account with credit, a paid
    invoice (with its wallet fee from step 3 on), a pending one; then an invite (6), a
    reminder opt-in (7), a wallet link (8) and a tally of pruned invoices (12). ``mark(n)``
    is the store's n-th placeholder."""
    m = mark
    rows: list[tuple[str, list[Any]]] = [
        (
            "INSERT INTO accounts (pubkey, admitted_until, credit_msat, updated_at)"
            f" VALUES ({m(1)}, {m(2)}, {m(3)}, {m(4)})",
            [PAYER, NOW + 3600, 5_000, NOW],
        ),
    ]
    columns = "payment_hash, pubkey, plan, amount_msat, bolt11, created_at, expires_at, admit_seconds,"
    columns += " admit_forever, credit_msat, state, paid_at, paid_msat"
    marks = ", ".join(m(i) for i in range(1, 14))
    paid: list[Any] = ["01" * 32, PAYER, "credit", 5_000, "lnbc50n1paid", NOW - 60, NOW + 540, 0, False, 5_000]
    rows.append((f"INSERT INTO invoices ({columns}) VALUES ({marks})", [*paid, "paid", NOW - 30, 5_000]))
    pending: list[Any] = ["02" * 32, PAYER, "admission", 9_000, "lnbc90n1", NOW - 10, NOW + 590, 0, True, 0]
    rows.append((f"INSERT INTO invoices ({columns}) VALUES ({marks})", [*pending, "pending", None, None]))
    if version >= 3:
        rows.append((f"UPDATE invoices SET fee_msat = {m(1)} WHERE payment_hash = {m(2)}", [40, "01" * 32]))
    if version >= 6:
        rows.append(
            (
                "INSERT INTO invites (code_hash, plan, created_at, expires_at, created_by, admit_seconds,"
                f" admit_forever, credit_msat) VALUES ({', '.join(m(i) for i in range(1, 9))})",
                ["cc" * 32, "admission", NOW - 5, None, "operator", 0, True, 0],
            )
        )
    if version >= 7:
        rows.append((f"INSERT INTO reminder_optins (pubkey, opted_in_at) VALUES ({m(1)}, {m(2)})", [PAYER, NOW]))
    if version >= 8:
        rows.append(
            (
                "INSERT INTO nwc_links (pubkey, sealed_uri, budget_msat, created_at)"
                f" VALUES ({m(1)}, {m(2)}, {m(3)}, {m(4)})",
                [PAYER, "sealed", 21_000, NOW],
            )
        )
    if version >= 12:
        rows.append((f"INSERT INTO pruned_invoices (day, count) VALUES ({m(1)}, {m(2)})", [NOW // 86400, 3]))
    return rows


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def old_database(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[int], Any]:
    """``async with old_database(version) as store``: a database made by the pre-split core
    line up to ``version`` and filled by ``old_rows``, opened (not yet the ledger) by the
    current store."""
    import contextlib

    backend: str = request.param

    @contextlib.asynccontextmanager
    async def make(version: int) -> AsyncIterator[Store]:
        if backend == "sqlite":
            path = tmp_path / f"old-{version}.db"
            conn = sqlite3.connect(path, isolation_level=None)
            assert apply_sqlite_migrations(conn, old_core_line(SQLITE_MIGRATIONS, SQLITE_STEPS)[:version]) == version
            for sql, params in old_rows(version, lambda n: "?"):
                conn.execute(sql, [int(v) if isinstance(v, bool) else v for v in params])
            conn.close()
            store: Store = SqliteStore(path)
            await store.open()
            try:
                yield store
            finally:
                await store.close()
            return
        dsn, postgres_store = _postgres_class()
        schema = f"t_{uuid.uuid4().hex}"
        conn = await asyncpg.connect(dsn, server_settings={"search_path": f'"{schema}"'})
        try:
            line = old_core_line(POSTGRES_MIGRATIONS, POSTGRES_STEPS)[:version]
            assert await apply_postgres_migrations(conn, schema, line) == version
            for sql, params in old_rows(version, lambda n: f"${n}"):
                await conn.execute(sql, *params)
        finally:
            await conn.close()
        store = postgres_store(dsn, schema=schema)
        await store.open()
        try:
            yield store
        finally:
            await store.close()
            await _drop_schema(dsn, schema)

    return make


async def _tables(store: Store) -> set[str]:
    from relay.store.database import database_of

    db = database_of(store)
    if db.dialect == "sqlite":
        return {r[0] for r in await db.read("SELECT name FROM sqlite_master WHERE type = 'table'")}
    return {r[0] for r in await db.fetch("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")}


async def _ledger_version(store: Store) -> int:
    from relay.store.database import database_of

    db = database_of(store)
    sql = "SELECT version FROM component_versions WHERE component = 'payments'"
    rows = await (db.read(sql) if db.dialect == "sqlite" else db.fetch(sql))
    return int(rows[0][0])


async def _charge_one_event(store: Store, ledger: LedgerStore) -> None:
    ledger.charge_events(lambda ev: Restricted("credit ran out"), lambda pubkey: None)
    ev = sign_event(ALICE, 1, "paid after the upgrade", [], NOW)
    assert await store.write_batch([WriteRequest(ev, attachments=(Charge(1_000),))], NOW) == [WriteOutcome.STORED]
    assert await store.query([Filter(authors=frozenset({PAYER}))], NOW) == [ev.raw]


async def test_a_pre_split_database_keeps_every_ledger_row(old_database: Callable[[int], Any]) -> None:
    async with old_database(PRE_SPLIT_VERSION) as store:
        assert await store.schema_version() == PRE_SPLIT_VERSION  # the core's line: nothing to do
        ledger = open_ledger(store)
        await ledger.open()
        assert await _ledger_version(store) == len(SQLITE_STEPS)  # adopted at 8, then step 9
        account = await ledger.get_account(PAYER)
        assert account is not None and (account.credit_msat, account.admitted_until) == (5_000, NOW + 3600)
        paid = await ledger.get_invoice("01" * 32)
        assert paid is not None and (paid.state, paid.paid_msat, paid.fee_msat) == (InvoiceState.PAID, 5_000, 40)
        (invite,) = await ledger.list_invites()
        assert (invite.code_hash, invite.admit_forever) == ("cc" * 32, True)
        assert await ledger.reminders_on(PAYER)
        (link,) = await ledger.nwc_links()
        assert (link.pubkey, link.budget_msat) == (PAYER, 21_000)
        funnel = await ledger.invoice_funnel((NOW // 86400) * 86400, NOW)
        assert (funnel.created, funnel.paid, funnel.expired) == (2 + 3, 1, 3)  # pruned tally kept
        # The ledger works on it: settle the pending invoice, count a change, charge an event.
        before = await ledger.account_changes()
        assert await ledger.settle_invoice("02" * 32, 9_000, NOW)
        assert await ledger.account_changes() > before
        await _charge_one_event(store, ledger)
        account = await ledger.get_account(PAYER)
        assert account is not None and account.credit_msat == 4_000 and account.admitted_until > NOW + 10**9
        # Opened again (a restart): nothing adopted or applied twice.
        again = open_ledger(store)
        await again.open()
        assert await _ledger_version(store) == len(SQLITE_STEPS)
        assert len(await again.list_invoices()) == 2


async def test_an_older_database_gets_the_steps_it_lacks(old_database: Callable[[int], Any]) -> None:
    """Made at the old core step 5 (invoices with fees and descriptions, no invites yet):
    the core runs its steps 6-14 (all but 9-11 and 13 now empty), the ledger adopts at 3 and
    makes the rest."""
    async with old_database(5) as store:
        assert await store.schema_version() >= PRE_SPLIT_VERSION
        assert "invites" not in await _tables(store)
        ledger = open_ledger(store)
        await ledger.open()
        assert await _ledger_version(store) == len(SQLITE_STEPS)
        paid = await ledger.get_invoice("01" * 32)
        assert paid is not None and paid.fee_msat == 40
        await ledger.add_invites([Invite("dd" * 32, "admission", NOW, None, "operator", admit_forever=True)])
        assert await ledger.redeem_invite("dd" * 32, BOB, NOW) is InviteOutcome.REDEEMED
        await ledger.set_reminders(BOB, True, NOW)
        assert await ledger.reminders_on(BOB)
        inv = Invoice("03" * 32, BOB, "credit", 1_000, "lnbc10n1", NOW, NOW + 600, credit_msat=1_000)
        await ledger.add_invoice(inv)
        assert await ledger.settle_invoice(inv.payment_hash, 1_000, NOW)
        (day,) = await ledger.revenue_by_day(0)  # the old paid invoice and the new, one day, one plan
        assert (day.plan, day.paid_msat, day.fee_msat, day.invoices) == ("credit", 6_000, 40, 2)
        await _charge_one_event(store, ledger)


async def test_a_store_without_the_plugin_has_none_of_its_tables(store: Store) -> None:
    """The core's schema holds no ledger table, and the ledger's line changes nothing of the
    core's: installing the plug-in only adds, removing it leaves the core as it is."""
    core_tables = await _tables(store)
    version = await store.schema_version()  # type: ignore[attr-defined]
    assert not core_tables & {"invoices", "accounts", "invites", "nwc_links", "reminder_optins", "pruned_invoices"}
    ledger = open_ledger(store)
    await ledger.open()
    assert await store.schema_version() == version  # type: ignore[attr-defined]
    assert core_tables < await _tables(store)
    assert await _ledger_version(store) == len(SQLITE_STEPS)
