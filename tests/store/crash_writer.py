"""Child process for the crash-durability test (not a test module).

Runs a GroupCommitWriter over a store and prints each event id, one line at a time, as
soon as its ``submit()`` returned, then keeps going until it is killed.
Usage: python -m tests.store.crash_writer DB_PATH SYNCHRONOUS
       python -m tests.store.crash_writer --postgres DSN SCHEMA
"""

from __future__ import annotations

import asyncio
import os
import sys

from relay.nostr.event import sign_event
from relay.store.base import Store, WriteRequest
from relay.store.sqlite import SqliteStore
from relay.store.writer import GroupCommitWriter


async def producer(writer: GroupCommitWriter, worker: int) -> None:
    secret = (worker + 1).to_bytes(32, "big")
    n = 0
    out = sys.stdout.fileno()
    while True:
        ev = sign_event(secret, 1, f"w{worker} n{n}", [["t", "crash"]], 1_000 + n)
        n += 1
        await writer.submit(WriteRequest(ev))
        os.write(out, (ev.id + "\n").encode())  # unbuffered, one write per line


async def main(path: str, synchronous: str) -> None:
    store: Store
    if path == "--postgres":
        from relay.store.postgres import PostgresStore

        store = PostgresStore(synchronous, schema=sys.argv[3])
    else:
        store = SqliteStore(path, synchronous=synchronous)
    await store.open()
    writer = GroupCommitWriter(store, batch_max=200)
    await asyncio.gather(*(producer(writer, w) for w in range(16)))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
