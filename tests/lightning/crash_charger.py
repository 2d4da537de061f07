"""Child process for the charge durability test (not a test module).

Like ``tests.store.crash_writer``, with every event priced: a GroupCommitWriter over a
store whose payments ledger takes each event's ``Charge`` in the event's own transaction
(its write hook). Sixteen authors write at once; each STORED event's id is printed, one
line at a time, as soon as its ``submit()`` returned (the relay would have sent OK true);
an author whose credit runs out is refused and stops. Runs until it is killed.
Usage: python -m tests.lightning.crash_charger DB_PATH SYNCHRONOUS
       python -m tests.lightning.crash_charger --postgres DSN SCHEMA
"""

from __future__ import annotations

import asyncio
import os
import sys

from lightning.store import open_ledger
from lightning.store.base import Charge
from relay.nostr.errors import Restricted
from relay.nostr.event import sign_event
from relay.store.base import Store, WriteOutcome, WriteRequest
from relay.store.sqlite import SqliteStore
from relay.store.writer import GroupCommitWriter

AUTHORS = 16
PRICE_MSAT = 7


def secret_of(author: int) -> bytes:
    return (author + 1).to_bytes(32, "big")


async def producer(writer: GroupCommitWriter, author: int) -> None:
    out = sys.stdout.fileno()
    n = 0
    while True:
        ev = sign_event(secret_of(author), 1, f"a{author} n{n}", [["t", "crash"]], 1_000 + n)
        n += 1
        try:
            outcome = await writer.submit(WriteRequest(ev, attachments=(Charge(PRICE_MSAT),)))
        except Restricted:
            return  # this author's credit ran out
        if outcome is WriteOutcome.STORED:
            os.write(out, (ev.id + "\n").encode())  # unbuffered, one write per line


async def main(path: str, arg: str) -> None:
    store: Store
    if path == "--postgres":
        from relay.store.postgres import PostgresStore

        store = PostgresStore(arg, schema=sys.argv[3])
    else:
        store = SqliteStore(path, synchronous=arg)
    await store.open()
    ledger = open_ledger(store)
    await ledger.open()
    ledger.charge_events(lambda ev: Restricted("credit ran out"), lambda pubkey: None)
    writer = GroupCommitWriter(store, batch_max=200)
    await asyncio.gather(*(producer(writer, a) for a in range(AUTHORS)))
    await asyncio.Event().wait()  # every author spent: wait to be killed


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
