"""Signed event sets for the load client, made before any timing starts.

Signing costs about as much as verifying, so a load client that signs while it sends
measures its own signing. Sets are signed in a process pool and cached on disk under
``bench/.cache`` (or ``$SATSRELAY_BENCH_CACHE``) keyed by their shape, count and seed; the second run loads them in a
second. Keys derive from the seed, so a set's authors (and the tag targets a query asks
for) are known without reading the file.
"""

from __future__ import annotations

import functools
import hashlib
import multiprocessing
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
from secp256k1 import ffi, lib

from relay.nostr.crypto import public_key
from relay.nostr.event import compute_id

# SATSRELAY_BENCH_CACHE: elsewhere, e.g. a test's temp folder (tests/test_bench_smoke.py).
CACHE_DIR = Path(os.environ.get("SATSRELAY_BENCH_CACHE") or Path(__file__).resolve().parent / ".cache")
BASE_CREATED_AT = 1_700_000_000  # fixed so cached sets stay identical; NIP-22 lower bound is off by default


@dataclass(frozen=True, slots=True)
class EventSetSpec:
    """What a set holds. ``authors`` keys write round-robin; every event tags one of
    ``p_targets`` pubkeys with ``p`` so ``#p`` queries have something to find."""

    name: str
    count: int
    seed: int
    authors: int
    p_targets: int
    kind: int = 1

    @property
    def path(self) -> Path:
        shape = f"n{self.count}-a{self.authors}-p{self.p_targets}-k{self.kind}-s{self.seed}"
        return CACHE_DIR / f"{self.name}-{shape}.jsonl"


def secret_for(seed: int, role: str, index: int) -> bytes:
    """A deterministic valid secret key (sha256 output is below the curve order but for
    a ~2^-128 chance, which this loop handles anyway)."""
    counter = 0
    while True:
        candidate = hashlib.sha256(f"satsrelay-bench/{seed}/{role}/{index}/{counter}".encode()).digest()
        if lib.secp256k1_ec_seckey_verify(_context(), candidate):
            return candidate
        counter += 1


def author_pubkeys(spec: EventSetSpec) -> list[str]:
    return [public_key(secret_for(spec.seed, "author", i)).hex() for i in range(spec.authors)]


def p_target_pubkeys(spec: EventSetSpec) -> list[str]:
    return [public_key(secret_for(spec.seed, "target", i)).hex() for i in range(spec.p_targets)]


class _Signer:
    """One keypair per author, created once per worker process: keypair_create is a
    scalar multiplication and would double the cost of each signature."""

    def __init__(self) -> None:
        self._ctx = _context()
        self._keypairs: dict[bytes, object] = {}

    def sign(self, secret: bytes, msg32: bytes) -> bytes:
        keypair = self._keypairs.get(secret)
        if keypair is None:
            keypair = ffi.new("secp256k1_keypair *")
            if not lib.secp256k1_keypair_create(self._ctx, keypair, secret):
                raise ValueError("invalid secret key")
            self._keypairs[secret] = keypair
        sig = ffi.new("unsigned char[64]")
        if not lib.secp256k1_schnorrsig_sign(self._ctx, sig, msg32, keypair, os.urandom(32)):
            raise ValueError("signing failed")
        return bytes(ffi.buffer(sig, 64))


@functools.cache
def _context() -> object:
    """One libsecp256k1 context per process, made on first use."""
    return lib.secp256k1_context_create(lib.SECP256K1_CONTEXT_VERIFY | lib.SECP256K1_CONTEXT_SIGN)


@functools.cache
def _signer() -> _Signer:
    return _Signer()


def _sign_chunk(args: tuple[EventSetSpec, int, int]) -> list[bytes]:
    spec, start, stop = args
    signer = _signer()
    secrets = [secret_for(spec.seed, "author", i) for i in range(spec.authors)]
    pubkeys = [public_key(s).hex() for s in secrets]
    targets = p_target_pubkeys(spec)
    lines = []
    for i in range(start, stop):
        a = i % spec.authors
        created_at = BASE_CREATED_AT + i // 10  # ten events a second: a realistic spread of timestamps
        tags = [["p", targets[i % spec.p_targets]], ["t", "bench"]]
        content = f"benchmark note {i} of set {spec.seed}: the quick brown fox jumps over the lazy dog"
        id_ = compute_id(pubkeys[a], created_at, spec.kind, tags, content)
        sig = signer.sign(secrets[a], bytes.fromhex(id_)).hex()
        lines.append(
            orjson.dumps(
                {
                    "id": id_,
                    "pubkey": pubkeys[a],
                    "created_at": created_at,
                    "kind": spec.kind,
                    "tags": tags,
                    "content": content,
                    "sig": sig,
                }
            )
        )
    return lines


def ensure_event_set(spec: EventSetSpec, processes: int | None = None) -> tuple[Path, float]:
    """The set's JSONL file (one event per line, in the relay's raw key order), signing it
    first if it is not cached. Returns the path and the seconds spent signing (0 if cached)."""
    path = spec.path
    if path.is_file():
        return path, 0.0
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    chunk = 2000
    jobs = [(spec, s, min(s + chunk, spec.count)) for s in range(0, spec.count, chunk)]
    tmp = path.with_suffix(".tmp")
    with multiprocessing.get_context("spawn").Pool(processes or os.cpu_count() or 1) as pool, tmp.open("wb") as out:
        for lines in pool.imap(_sign_chunk, jobs):
            out.write(b"\n".join(lines) + b"\n")
    tmp.replace(path)
    return path, time.perf_counter() - started


def read_events(path: Path, start: int = 0, stop: int | None = None) -> Iterator[bytes]:
    """Raw event JSON lines ``start``..``stop`` of a set file."""
    with path.open("rb") as f:
        for i, line in enumerate(f):
            if stop is not None and i >= stop:
                return
            if i >= start:
                yield line.rstrip(b"\n")
