"""Scenarios ``reconcile`` (NIP-77) and ``search`` (NIP-50), run through ``python -m bench``.

Both fill the relay's store *before* starting it, through the Store API, with events whose
shape and id are valid but whose signatures are random bytes: the figures are about the
relay's reading side, and signing (or verifying) a million events would take longer than
the measurement. A started relay never re-verifies stored events, and these clients do not
verify either.

- ``reconcile``: the relay holds ``n`` events, the client (this process, with satsrelay's
  own negentropy initiator over a plain WebSocket) holds the same set minus ``diff/2`` of
  them plus ``diff/2`` others. Measured: wall time from NEG-OPEN to the last NEG-MSG,
  rounds, and bytes of NEG-* frames both ways, against the bytes of simply sending every
  id as hex (what "send all ids" costs in a JSON frame). The result is checked: have and
  need must be exactly the planted differences.
- ``search``: ``n`` kind-1 events of 12 words drawn from a Zipf-distributed vocabulary,
  plus marker words planted in 0.01 %, 1 % and 10 % of them. Measured: time to EOSE of
  ``{"search": word, "limit": 50}`` REQs, one at a time, p50/p95 per word.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator
from typing import Any

import orjson
from websockets.asyncio.client import connect

from bench.latency import summary_ms
from bench.relayproc import RelayOptions, RelayProcess
from relay.config import StorageSettings
from relay.nostr.event import compute_id, parse_event
from relay.nostr.negentropy import ItemSet, Negentropy
from relay.store import open_store
from relay.store.base import WriteRequest

BATCH = 5000
MARKERS = {"zyxrare": 0.0001, "zyxmedium": 0.01, "zyxcommon": 0.1}


def _event(secret_pubkey: str, created_at: int, content: str, rng: random.Random) -> dict[str, Any]:
    eid = compute_id(secret_pubkey, created_at, 1, [], content)
    return {"id": eid, "pubkey": secret_pubkey, "created_at": created_at, "kind": 1, "tags": [],
            "content": content, "sig": rng.randbytes(64).hex()}


def _pubkeys(rng: random.Random, n: int) -> list[str]:
    return [rng.randbytes(32).hex() for _ in range(n)]


async def _fill(store_url: str, events: Iterator[dict[str, Any]], log: Any) -> float:
    """Write events through the Store in batches; seconds taken."""
    store = open_store(StorageSettings(url=store_url))
    await store.open()
    started = time.perf_counter()
    written = 0
    try:
        batch: list[WriteRequest] = []
        for obj in events:
            batch.append(WriteRequest(parse_event(obj)))
            if len(batch) >= BATCH:
                await store.write_batch(batch, int(time.time()))
                written += len(batch)
                batch = []
                if written % 100_000 == 0:
                    log(f"  {written} events stored ({written / (time.perf_counter() - started):.0f}/s)")
        if batch:
            await store.write_batch(batch, int(time.time()))
    finally:
        await store.close()
    return time.perf_counter() - started


async def run_reconcile(store_url: str | None, n: int, diff_fraction: float, seed: int, log: Any) -> dict[str, Any]:
    rng = random.Random(seed)
    authors = _pubkeys(rng, 200)
    base = 1_700_000_000
    half = max(1, int(n * diff_fraction / 2))
    common = [_event(rng.choice(authors), base + rng.randrange(10_000_000), f"c{i}", rng) for i in range(n - half)]
    relay_only = [_event(rng.choice(authors), base + rng.randrange(10_000_000), f"r{i}", rng) for i in range(half)]
    client_only = [_event(rng.choice(authors), base + rng.randrange(10_000_000), f"l{i}", rng) for i in range(half)]
    relay = RelayProcess(RelayOptions(store_url=store_url), "reconcile")
    try:
        await relay.prepare_store()
        fill_s = await _fill(relay.store_url, iter(common + relay_only), log)
        log(f"reconcile: stored {n} events in {fill_s:.1f} s")
        await relay.start()
        client_items = [(e["created_at"], bytes.fromhex(e["id"])) for e in common + client_only]
        runs = []
        for _ in range(3):
            runs.append(await _reconcile_once(relay.url, client_items))
        best = min(runs, key=lambda r: r["wall_ms"])
        assert best["have"] == {bytes.fromhex(e["id"]) for e in client_only}, "have is not the planted difference"
        assert best["need"] == {bytes.fromhex(e["id"]) for e in relay_only}, "need is not the planted difference"
        all_ids_bytes = len(orjson.dumps(["REQ", "x", {"ids": [e["id"] for e in common + relay_only]}]))
        exchanged = best["bytes_up"] + best["bytes_down"]
        return {
            "events": n, "difference": 2 * half, "store": "postgresql" if relay.pg else "sqlite",
            "wall_ms_runs": [r["wall_ms"] for r in runs], "wall_ms_best": best["wall_ms"],
            "rounds": best["rounds"], "bytes_up": best["bytes_up"], "bytes_down": best["bytes_down"],
            "bytes_exchanged": exchanged, "bytes_all_ids_as_hex_json": all_ids_bytes,
            "fraction_of_all_ids": round(exchanged / all_ids_bytes, 3), "difference_found_exactly": True,
        }
    finally:
        await relay.cleanup()


async def _reconcile_once(url: str, items: list[tuple[int, bytes]]) -> dict[str, Any]:
    neg = Negentropy(ItemSet(items), 60_000)
    have: set[bytes] = set()
    need: set[bytes] = set()
    up = down = rounds = 0
    async with connect(url, max_size=None, compression=None) as ws:
        started = time.perf_counter()
        frame = orjson.dumps(["NEG-OPEN", "b", {}, neg.initiate().hex()])
        while True:
            up += len(frame)
            await ws.send(frame.decode())
            while True:
                raw = await ws.recv()
                msg = orjson.loads(raw)
                if msg[0] in ("NEG-MSG", "NEG-ERR"):
                    break
            down += len(raw)
            if msg[0] == "NEG-ERR":
                raise RuntimeError(f"relay refused: {msg}")
            rounds += 1
            result = neg.reconcile_initiator(bytes.fromhex(msg[2]))
            have.update(result.have)
            need.update(result.need)
            if result.reply is None:
                break
            frame = orjson.dumps(["NEG-MSG", "b", result.reply.hex()])
        wall = time.perf_counter() - started
    return {"wall_ms": round(wall * 1000, 1), "rounds": rounds, "bytes_up": up, "bytes_down": down,
            "have": have, "need": need}


def _search_events(n: int, seed: int) -> Iterator[dict[str, Any]]:
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(50_000)]
    weights = [1 / (i + 1) for i in range(len(vocab))]  # Zipf, s = 1
    authors = _pubkeys(rng, 1000)
    base = 1_700_000_000
    chunk = 10_000
    for start in range(0, n, chunk):
        words = rng.choices(vocab, weights, k=12 * min(chunk, n - start))
        for i in range(min(chunk, n - start)):
            text = words[12 * i : 12 * i + 12]
            for marker, share in MARKERS.items():
                if rng.random() < share:
                    text.append(marker)
            yield _event(rng.choice(authors), base + start + i, " ".join(text), rng)


async def run_search(store_url: str | None, n: int, serial: int, seed: int, log: Any) -> dict[str, Any]:
    relay = RelayProcess(RelayOptions(store_url=store_url), "search")
    try:
        await relay.prepare_store()
        fill_s = await _fill(relay.store_url, _search_events(n, seed), log)
        log(f"search: stored {n} events in {fill_s:.1f} s")
        await relay.start()
        words = {**{m: f"{share:.2%} of events" for m, share in MARKERS.items()},
                 "w0": "the most frequent vocabulary word", "w40000": "a rare vocabulary word"}
        results: dict[str, Any] = {}
        async with connect(relay.url, max_size=None, compression=None) as ws:
            for word, what in words.items():
                latencies: list[float] = []
                counts: list[int] = []
                for i in range(serial):
                    sub = f"s{i}"
                    started = time.perf_counter()
                    await ws.send(orjson.dumps(["REQ", sub, {"search": word, "limit": 50}]).decode())
                    got = 0
                    while True:
                        raw = await ws.recv()
                        if raw.startswith('["EVENT"'):
                            got += 1
                        elif raw.startswith(('["EOSE"', '["CLOSED"')):
                            break
                    latencies.append(time.perf_counter() - started)
                    counts.append(got)
                    await ws.send(orjson.dumps(["CLOSE", sub]).decode())
                results[word] = {"word": what, "events_returned": counts[0], "eose_ms": summary_ms(latencies)}
        return {"events": n, "store": "postgresql" if relay.pg else "sqlite", "fill_seconds": round(fill_s, 1),
                "limit": 50, "serial_reqs_per_word": serial, "words": results, "cpu_count": os.cpu_count()}
    finally:
        await relay.cleanup()

