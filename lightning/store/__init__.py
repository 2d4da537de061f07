"""The payments plug-in's tables: invoices, accounts, invites, reminders, wallet
connections and renewals, kept in the relay's own database beside the events
(``relay.store.database``), on their own version line. ``lightning.store.base`` says
what they hold; ``open_ledger`` picks the implementation for the relay's store."""

from __future__ import annotations

from typing import TYPE_CHECKING

from relay.store.database import database_of

if TYPE_CHECKING:
    from lightning.store.base import LedgerStore
    from relay.store.base import Store


def open_ledger(store: Store) -> LedgerStore:
    """The ledger on ``store``'s database (call ``open()`` on it once the store is open)."""
    db = database_of(store)
    if db.dialect == "sqlite":
        from lightning.store.sqlite import SqliteLedger

        return SqliteLedger(db)
    from lightning.store.postgres import PostgresLedger

    return PostgresLedger(db)
