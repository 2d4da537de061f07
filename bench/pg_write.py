"""Write throughput of ``PostgresStore.write_batch``, one node and two nodes at once.

Signs ``--events`` events up front (kind 1 with ``p``/``e`` tags; ``--replaceable`` of
them kinds 0/3/10002 from a small author pool so replacements really happen; every
event charged 1 msat from a funded account by the payments ledger's write hook when
``--charge``, ``lightning.store``), then writes them in
batches of ``--batch`` into a scratch schema and prints events/s as JSON.

    python bench/pg_write.py --events 50000 --batch 1000 --replaceable 0.1 --charge

``--nodes 2`` opens two stores on the same schema and writes alternate batches from
both concurrently, as two relay processes sharing one database would.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import time
import uuid

import asyncpg

from lightning.store import open_ledger
from lightning.store.base import Charge
from relay.nostr.errors import Rejection, Restricted
from relay.nostr.event import Event, sign_event
from relay.store.base import WriteOutcome, WriteRequest
from relay.store.postgres import PostgresStore


def make_events(count: int, replaceable: float, seed: int) -> list[Event]:
    rng = random.Random(seed)
    secrets = [rng.randbytes(32) for _ in range(200)]
    base = 1_700_000_000
    out = []
    for i in range(count):
        secret = rng.choice(secrets)
        if rng.random() < replaceable:
            kind = rng.choice((0, 3, 10002))
            tags = [["p", rng.randbytes(32).hex()] for _ in range(rng.randrange(0, 5))]
        else:
            kind = 1
            tags = [["p", rng.randbytes(32).hex()], ["e", rng.randbytes(32).hex()], ["t", "bench"]]
        out.append(sign_event(secret, kind, f"note {i} " + "x" * rng.randrange(20, 200), tags, base + i))
    return out


async def write_all(store: PostgresStore, batches: list[list[WriteRequest]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for i, batch in enumerate(batches):
        for outcome in await store.write_batch(batch, 1_800_000_000 + i):
            name = outcome.value if isinstance(outcome, WriteOutcome) else "refused"
            counts[name] = counts.get(name, 0) + 1
    return counts


def _refusal(event: Event) -> Rejection:
    return Restricted("credit ran out")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dsn", default=os.environ.get("SATSRELAY_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
    )
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--replaceable", type=float, default=0.1)
    parser.add_argument("--charge", action="store_true")
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    events = make_events(args.events, args.replaceable, args.seed)
    attachments = (Charge(1),) if args.charge else ()
    requests = [WriteRequest(ev, attachments=attachments) for ev in events]
    batches = [requests[i : i + args.batch] for i in range(0, len(requests), args.batch)]
    schema = f"bench_write_{uuid.uuid4().hex[:8]}"
    stores = [PostgresStore(args.dsn, schema=schema, pool_size=2) for _ in range(args.nodes)]
    for store in stores:
        await store.open()
    try:
        ledgers = [open_ledger(store) for store in stores]
        for ledger in ledgers:
            await ledger.open()
            ledger.charge_events(_refusal, lambda pubkey: None)
        for pubkey in {ev.pubkey for ev in events}:
            await ledgers[0].update_account(pubkey, 0, credit_delta_msat=10**12)
        t0 = time.perf_counter()
        results = await asyncio.gather(*(write_all(store, batches[n :: args.nodes]) for n, store in enumerate(stores)))
        elapsed = time.perf_counter() - t0
        outcomes: dict[str, int] = {}
        for counts in results:
            for outcome, n in counts.items():
                outcomes[outcome] = outcomes.get(outcome, 0) + n
        print(
            json.dumps(
                {
                    "events": len(events),
                    "batch": args.batch,
                    "nodes": args.nodes,
                    "replaceable": args.replaceable,
                    "charge": args.charge,
                    "seconds": round(elapsed, 2),
                    "events_per_s": round(len(events) / elapsed),
                    "outcomes": outcomes,
                }
            )
        )
    finally:
        for store in stores:
            await store.close()
        conn = await asyncpg.connect(args.dsn)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()


if __name__ == "__main__":
    asyncio.run(main())
