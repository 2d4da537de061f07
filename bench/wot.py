"""``python -m bench.wot``: the web-of-trust free tier at scale (issue 21).

Two parts, each printed as JSON on stdout (progress on stderr):

1. **Graph, in memory, at the issue's scale**: 500k pubkeys, 20M follow edges (40 per
   pubkey, uniform; the root follows 1,000). Contact lists come from an in-memory edge
   array instead of the store (20M ``p`` tags as signed kind-3 events would take this
   machine far longer to generate than to read): full computation at 2 and 3 hops,
   incremental update for one changed list (a hop-1 member's, and the root's), the
   write gate's membership check, and RSS.
2. **Store-backed, smaller**: ``--store-authors`` signed kind-3 events of 40 follows each
   in a SQLite file, then ``WotTier.compute`` (reads through the store's query path) and
   one incremental ``poll`` after a changed list.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import json
import random
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from relay.config import StorageSettings
from relay.nostr.event import sign_event
from relay.nostr.policy import WriteContext
from relay.store import open_store
from relay.store.base import WriteRequest
from wot.graph import GraphRules, TrustGraph
from wot.settings import WotSettings
from wot.tier import WotTier

FOLLOWS = 40


def log(msg: str) -> None:
    print(f"[wot bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class EdgeSet:
    """``pubkeys`` x ``FOLLOWS`` random targets in one 4-byte array (80 MB for 20M edges)."""

    def __init__(self, pubkeys: int, seed: int) -> None:
        rng = random.Random(seed)
        self.n = pubkeys
        self.keys = [f"{rng.getrandbits(256):064x}" for _ in range(pubkeys)]
        self.index = {k: i for i, k in enumerate(self.keys)}
        self.edges = array.array("I")
        self.edges.frombytes(rng.randbytes(pubkeys * FOLLOWS * 4))
        self.root_follows = frozenset(self.keys[rng.randrange(1, pubkeys)] for _ in range(1000))

    def list_of(self, pubkey: str) -> frozenset[str]:
        i = self.index[pubkey]
        if i == 0:  # the root
            return self.root_follows
        keys, n = self.keys, self.n
        return frozenset(keys[v % n] for v in self.edges[i * FOLLOWS : (i + 1) * FOLLOWS])


def load_all(graph: TrustGraph, edges: EdgeSet, override: dict[str, frozenset[str]]) -> int:
    loaded = 0
    while graph.pending:
        batch = {a: override.get(a) or edges.list_of(a) for a in graph.pending}
        loaded += len(batch)
        graph.provide(batch)
    return loaded


def graph_at_scale(pubkeys: int, seed: int) -> dict[str, Any]:
    t = time.perf_counter()
    edges = EdgeSet(pubkeys, seed)
    out: dict[str, Any] = {"pubkeys": pubkeys, "edges": pubkeys * FOLLOWS,
                           "generate_s": round(time.perf_counter() - t, 1), "rss_edges_mib": round(rss_mib())}
    log(f"edge set ready: {out}")
    root = edges.keys[0]
    for hops in (2, 3):
        rules = GraphRules(frozenset({root}), hops, 1, 3)  # min_followers 1: the largest set
        override: dict[str, frozenset[str]] = {}
        t = time.perf_counter()
        graph = TrustGraph(rules)
        loaded = load_all(graph, edges, override)
        full = time.perf_counter() - t
        per_hop = graph.hop_counts()
        # One hop-1 member replaces 10 of its follows.
        rng = random.Random(seed + hops)
        member = sorted(p for p, h in graph.hops.items() if h == 1)[0]
        new = frozenset(list(edges.list_of(member))[10:] + [edges.keys[rng.randrange(pubkeys)] for _ in range(10)])
        t = time.perf_counter()
        changed = graph.set_list(member, new)
        override[member] = new
        load_all(graph, edges, override)
        incremental_member = time.perf_counter() - t
        # The root follows one more account (its list and everything it reaches is loaded).
        grown = edges.root_follows | {edges.keys[rng.randrange(pubkeys)]}
        t = time.perf_counter()
        changed_root = graph.set_list(root, grown)
        override[root] = grown
        load_all(graph, edges, override)
        incremental_root = time.perf_counter() - t
        out[f"max_hops_{hops}"] = {
            "min_followers": rules.min_followers, "members_per_hop": per_hop, "lists_loaded": loaded,
            "full_s": round(full, 2), "incremental_member_ms": round(incremental_member * 1000, 2),
            "changed_member": len(changed), "incremental_root_ms": round(incremental_root * 1000, 2),
            "changed_root": len(changed_root), "rss_mib": round(rss_mib()),
        }
        log(f"{hops} hops: {out[f'max_hops_{hops}']}")
        members = dict(graph.hops)
        out[f"max_hops_{hops}"]["membership_check_us"] = membership_check(members, edges.keys)
        del graph
    return out


def membership_check(members: dict[str, int], keys: list[str]) -> dict[str, float]:
    """The gate's cost per event: the dict lookup, and the whole ``judge`` coroutine."""
    sample = keys[:100_000]
    t = time.perf_counter()
    hits = sum(1 for k in sample if k in members)
    lookup = (time.perf_counter() - t) / len(sample) * 1e6
    tier = WotTier(WotSettings(enabled=True, events_per_hour=0), store=None, page_url="")  # type: ignore[arg-type]
    tier.members = members
    ctx = WriteContext(int(time.time()), frozenset(), "127.0.0.1")

    class Ev:
        __slots__ = ("kind", "pubkey")

        def __init__(self, pubkey: str) -> None:
            self.pubkey, self.kind = pubkey, 1

    events = [Ev(k) for k in sample]

    async def judge_all() -> float:
        t = time.perf_counter()
        for ev in events:
            await tier.judge(ev, ctx)  # type: ignore[arg-type]
        return (time.perf_counter() - t) / len(events) * 1e6

    judge = asyncio.run(judge_all())
    return {"dict_lookup": round(lookup, 3), "judge": round(judge, 3), "members_in_sample": hits}


async def store_backed(authors: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    secrets = [rng.randbytes(32) for _ in range(authors)]
    from relay.nostr import crypto

    keys = [crypto.public_key(s).hex() for s in secrets]
    now = int(time.time())
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(StorageSettings(url=f"sqlite:///{Path(tmp) / 'wot.db'}"))
        await store.open()
        try:
            t = time.perf_counter()
            batch = []
            for i, secret in enumerate(secrets):
                follows = keys[1:1001] if i == 0 else rng.sample(keys, FOLLOWS)
                batch.append(WriteRequest(sign_event(secret, 3, "", [["p", k] for k in follows], now - 3600)))
                if len(batch) == 1000:
                    await store.write_batch(batch, now)
                    batch = []
            if batch:
                await store.write_batch(batch, now)
            out: dict[str, Any] = {"authors": authors, "edges": authors * FOLLOWS,
                                   "write_s": round(time.perf_counter() - t, 1)}
            for hops in (2, 3):
                settings = WotSettings(enabled=True, roots=[keys[0]], max_hops=hops,
                                       min_followers=1)
                tier = WotTier(settings, store, "")
                await tier.table.open()
                t = time.perf_counter()
                await tier.compute(now)
                full = time.perf_counter() - t
                member = sorted(p for p, h in tier.members.items() if h == 1)[0]
                secret = secrets[keys.index(member)]
                await store.write_batch([WriteRequest(sign_event(secret, 3, "", [["p", k] for k in rng.sample(
                    keys, FOLLOWS)], now + 1))], now)
                t = time.perf_counter()
                await tier.poll(now + 2)
                poll = time.perf_counter() - t
                out[f"max_hops_{hops}"] = {"members": len(tier.members), "full_s": round(full, 2),
                                           "poll_with_one_changed_list_ms": round(poll * 1000, 1)}
                log(f"store-backed {hops} hops: {out[f'max_hops_{hops}']}")
            return out
        finally:
            await store.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.wot", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pubkeys", type=int, default=500_000)
    p.add_argument("--store-authors", type=int, default=20_000)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    result = {"graph": graph_at_scale(args.pubkeys, args.seed)}
    result["store"] = asyncio.run(store_backed(args.store_authors, args.seed))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
