"""A charge commits with its event or not at all, even under SIGKILL (issue 18: the ledger
left the event store; its write hook takes the price inside the event batch's transaction).

The child (``crash_charger``) writes priced events from sixteen funded authors through the
group-commit writer, printing each id that got STORED; the test kills it mid-stream,
reopens the store and the ledger and checks, per author, that what its credit lost is
exactly the price of the events stored, no more (a charge whose event was lost) and no
less (an event stored free), and that every acknowledged event is there. Half the authors
hold credit for a few dozen events, so refusals happen mid-run too. SQLite (FULL and
NORMAL) and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from pathlib import Path

import pytest

from lightning.store import open_ledger
from relay.nostr import crypto
from relay.nostr.event import is_hex64
from relay.nostr.filters import Filter
from relay.store.base import Store
from relay.store.sqlite import SqliteStore
from tests.lightning.crash_charger import AUTHORS, PRICE_MSAT, secret_of
from tests.store.conftest import _drop_schema
from tests.store.test_durability import _lines_until_killed

NOW = 1_700_000_000
ACKS_BEFORE_KILL = 1_500


def credit_of(author: int) -> int:
    """Even authors can pay for 40 events, odd ones for far more than the run writes."""
    return PRICE_MSAT * (40 if author % 2 == 0 else 100_000)


def pubkey_of(author: int) -> str:
    return crypto.public_key(secret_of(author)).hex()


async def fund(store: Store) -> None:
    await store.open()
    try:
        ledger = open_ledger(store)
        await ledger.open()
        for author in range(AUTHORS):
            await ledger.update_account(pubkey_of(author), NOW, credit_delta_msat=credit_of(author))
    finally:
        await store.close()


async def check(store: Store, acknowledged: list[str]) -> int:
    """Every acknowledged event is stored and every author paid exactly for what is stored;
    returns how many authors were refused (ran out) before the kill."""
    await store.open()
    try:
        ledger = open_ledger(store)
        await ledger.open()
        found = 0
        for i in range(0, len(acknowledged), 500):
            found += await store.count([Filter(ids=frozenset(acknowledged[i : i + 500]))], NOW)
        assert found == len(set(acknowledged)), "an event that got OK true was lost"
        spent_out = 0
        for author in range(AUTHORS):
            pubkey = pubkey_of(author)
            stored = await store.count([Filter(authors=frozenset({pubkey}))], NOW)
            account = await ledger.get_account(pubkey)
            assert account is not None
            spent = credit_of(author) - account.credit_msat
            assert spent == stored * PRICE_MSAT, (author, stored, spent)
            spent_out += account.credit_msat < PRICE_MSAT
        return spent_out
    finally:
        await store.close()


def _run(args: list[str]) -> list[str]:
    ids = _lines_until_killed([sys.executable, "-m", "tests.lightning.crash_charger", *args], ACKS_BEFORE_KILL)
    assert all(is_hex64(i) for i in ids)
    return ids


@pytest.mark.parametrize("synchronous", ["FULL", "NORMAL"])
def test_every_charge_commits_with_its_event_under_sigkill_sqlite(tmp_path: Path, synchronous: str) -> None:
    db = tmp_path / "charges.db"
    asyncio.run(fund(SqliteStore(db)))
    acknowledged = _run([str(db), synchronous])
    assert asyncio.run(check(SqliteStore(db), acknowledged)) == AUTHORS // 2  # the poor ones ran out


@pytest.mark.postgres
def test_every_charge_commits_with_its_event_under_sigkill_postgres() -> None:
    dsn = os.environ.get("SATSRELAY_TEST_POSTGRES")
    if not dsn:
        pytest.skip("SATSRELAY_TEST_POSTGRES is unset (e.g. postgresql://postgres@127.0.0.1:5432/test)")
    from relay.store.postgres import PostgresStore

    schema = f"t_{uuid.uuid4().hex}"
    try:
        asyncio.run(fund(PostgresStore(dsn, schema=schema)))
        acknowledged = _run(["--postgres", dsn, schema])
        assert asyncio.run(check(PostgresStore(dsn, schema=schema), acknowledged)) == AUTHORS // 2
    finally:
        asyncio.run(_drop_schema(dsn, schema))
