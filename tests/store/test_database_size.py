"""``Store.database_bytes``: the database's size on disk, as the operator console shows it.

Runs against every backend (see conftest)."""

from __future__ import annotations

import os

from relay.nostr.event import sign_event
from relay.store.base import Store, WriteRequest

NOW = 1_700_000_000
ALICE = (1).to_bytes(32, "big")


async def test_database_bytes_grows_by_at_least_what_was_written(store: Store) -> None:
    empty = await store.database_bytes()
    assert empty > 0  # the schema itself takes pages
    # Incompressible content, so neither engine can store it in fewer bytes than it has.
    events = [sign_event(ALICE, 1, os.urandom(600).hex(), [], NOW - i) for i in range(300)]
    for start in range(0, len(events), 100):
        await store.write_batch([WriteRequest(e) for e in events[start : start + 100]], NOW)
    written = sum(len(e.raw) for e in events)
    grown = await store.database_bytes()
    assert grown - empty >= written, (empty, grown, written)
    assert grown < empty + 20 * written  # the figure is this store's, not the whole server's
