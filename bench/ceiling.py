"""The machine's Schnorr-verification ceiling: BIP-340 verifications per second on one
core through ``relay.nostr.crypto.verify_schnorr_fresh``: the call the relay makes per event,
without its memo of parsed keys (the ceiling is libsecp256k1's whole cost of a signature).

Every accepted event costs one verification, so a relay on one core can never ingest
faster than this; ingest is reported as a fraction of it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson

from bench.events import read_events
from relay.nostr.crypto import verify_schnorr_fresh


def measure_ceiling(events_file: Path, count: int, rounds: int = 3) -> dict[str, Any]:
    triples = []
    for line in read_events(events_file, 0, count):
        obj = orjson.loads(line)
        triples.append((bytes.fromhex(obj["id"]), bytes.fromhex(obj["pubkey"]), bytes.fromhex(obj["sig"])))
    best = 0.0
    for _ in range(rounds):  # best of a few: the ceiling is what the core can do, not what a busy moment allows
        started = time.perf_counter()
        ok = sum(1 for msg, pub, sig in triples if verify_schnorr_fresh(msg, pub, sig))
        elapsed = time.perf_counter() - started
        if ok != len(triples):
            raise RuntimeError(f"{len(triples) - ok} of the benchmark's own signatures failed to verify")
        best = max(best, len(triples) / elapsed)
    return {
        "verifications_per_second": round(best),
        "microseconds_per_verification": round(1e6 / best, 2),
        "signatures": len(triples),
        "rounds": rounds,
    }
