"""Limit state shared by the worker processes of ``satsrelay serve --workers N``.

SO_REUSEPORT spreads one client's connections over the workers, so state that each worker
kept for itself let one address through N times over (issue 17, item 10: one address
reconnecting in a loop got 2,996 events accepted in 10 s with two workers, 1,501 with one;
a plug-in's route allowing 10 a minute gave 20). The supervisor therefore creates one
``SharedLimits`` segment and hands its descriptor to every worker it starts; each worker's
``relay.net.limits.BucketTable`` and ``IpTable`` keep their state in it, so a limit holds for the
relay as a whole. One process alone (no ``--workers``) never creates a segment and keeps the
in-process tables, which cost nothing extra.

What the segment holds, after a header:

- **Token buckets** of every ``BucketTable`` (address events, author events, NIP-43 claims),
  in one pool, told apart by the table's name hashed with the key. A slot is (64-bit key
  hash, the moment its bucket is full again): GCRA's "theoretical arrival time", which is the
  whole state of a token bucket and says at once what evicting it would give away (nothing
  once that moment has passed).
- **Connection counts** per address group, one count per worker, so the supervisor zeroes
  the counts of a worker that crashed before it starts its replacement.

Slots are grouped in stripes of ``STRIPE_SLOTS``; a key's hash picks its stripe and where
its probe starts in it. Each stripe is guarded by a POSIX record lock (``lockf``) on one byte
of the segment: the kernel releases it when its holder dies, so a crashed worker cannot
leave a stripe locked (a spin lock in shared memory could). An uncontended lock and unlock
cost ~0.7 µs. POSIX locks belong to a process, not a thread, so a thread lock is taken too.

A full stripe evicts the bucket that is full soonest (the earliest moment; one already full
loses nothing). The in-process table evicts its least recently used bucket once ``capacity``
others are newer; here an attacker's drained bucket goes only when every other slot of its
stripe holds a bucket drained further, i.e. 63 buckets the attacker drained itself in that
stripe, which keyed hashing (a random salt per segment) keeps them from aiming at. The pool
has twice the slots of the tables it serves, so with every table at its capacity a stripe
holds 32 keys on average and is full (evicts at all) with a chance of 4e-7.

Times are ``time.monotonic()`` (CLOCK_MONOTONIC: one clock for every process of a machine).
Nothing here knows the store, so the same segment serves SQLite workers once they exist.
"""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
import secrets
import struct
import tempfile
import threading
from functools import cache
from typing import IO

FD_ENV = "SATSRELAY_SHARED_LIMITS_FD"  # the segment's descriptor, inherited by the worker
WORKER_ENV = "SATSRELAY_WORKER_INDEX"  # which count column of the segment is this worker's

STRIPE_SLOTS = 64
MAGIC = b"SRLIMIT1"
_HEADER = struct.Struct("<8sIII16s")  # magic, workers, bucket stripes, connection stripes, hash salt
_REGION_START = 4096
_BUCKET_SLOT = struct.Struct("<Qd")  # key hash (0: never used), moment the bucket is full again
_KEY = struct.Struct("<Q")
_COUNT = struct.Struct("<I")  # one worker's connections of one address group


def _stripes(slots: int) -> int:
    return max(1, -(-slots // STRIPE_SLOTS))


class SharedLimits:
    """One shared-memory segment of buckets and connection counts, mapped by this process.

    ``create`` (the supervisor) makes it; ``attach`` (a worker) maps the inherited
    descriptor. ``worker`` is this process's count column, or -1 in the supervisor.
    """

    def __init__(self, fd: int, worker: int, owner: IO[bytes] | None = None) -> None:
        self.fd = fd
        self.worker = worker
        self._owner = owner  # the supervisor's file object, keeping the descriptor open
        size = os.fstat(fd).st_size
        self._map = mmap.mmap(fd, size)
        magic, workers, bucket_stripes, connection_stripes, salt = _HEADER.unpack_from(self._map, 0)
        if magic != MAGIC:
            raise ValueError(f"descriptor {fd} is not a satsrelay limits segment")
        if not -1 <= worker < workers:
            raise ValueError(f"worker index {worker} outside 0..{workers - 1}")
        self.workers = workers
        self.bucket_stripes = bucket_stripes
        self.connection_stripes = connection_stripes
        self._salt = salt
        self._counts = struct.Struct(f"<{workers}I")
        self._connection_slot = 8 + self._counts.size
        self._buckets_at = _REGION_START
        self._connections_at = _REGION_START + bucket_stripes * STRIPE_SLOTS * _BUCKET_SLOT.size
        self._thread_lock = threading.Lock()

    # --- life cycle ----------------------------------------------------------------------

    @classmethod
    def create(cls, *, workers: int, bucket_slots: int, connection_slots: int) -> SharedLimits:
        """A new zeroed segment: an anonymous memfd (Linux), else an unlinked temporary
        file. Neither has a name, so nothing is left behind however the supervisor ends."""
        bucket_stripes, connection_stripes = _stripes(bucket_slots), _stripes(connection_slots)
        size = (
            _REGION_START
            + bucket_stripes * STRIPE_SLOTS * _BUCKET_SLOT.size
            + connection_stripes * STRIPE_SLOTS * (8 + 4 * workers)
        )
        owner: IO[bytes] | None = None
        if hasattr(os, "memfd_create"):
            fd = os.memfd_create("satsrelay-limits")
        else:  # pragma: no cover - not Linux
            owner = tempfile.TemporaryFile()  # noqa: SIM115 - held open for the segment's life, closed by close()
            fd = owner.fileno()
        os.ftruncate(fd, size)
        header = _HEADER.pack(MAGIC, workers, bucket_stripes, connection_stripes, secrets.token_bytes(16))
        os.pwrite(fd, header, 0)
        return cls(fd, -1, owner)

    @classmethod
    def attach(cls, fd: int, worker: int) -> SharedLimits:
        return cls(fd, worker)

    def worker_environment(self, worker: int) -> dict[str, str]:
        """What a worker's environment needs to find the segment (with ``pass_fds``)."""
        return {FD_ENV: str(self.fd), WORKER_ENV: str(worker)}

    def close(self) -> None:
        self._map.close()
        if self._owner is not None:
            self._owner.close()
        else:
            os.close(self.fd)

    # --- hashing and locking ------------------------------------------------------------

    def _hash(self, namespace: str, key: str) -> int:
        digest = hashlib.blake2b(f"{namespace}\0{key}".encode(), digest_size=8, key=self._salt).digest()
        return _KEY.unpack(digest)[0] or 1  # 0 marks a slot never used

    def _lock(self, byte: int) -> None:
        self._thread_lock.acquire()
        try:
            fcntl.lockf(self.fd, fcntl.LOCK_EX, 1, byte, os.SEEK_SET)
        except BaseException:
            self._thread_lock.release()
            raise

    def _unlock(self, byte: int) -> None:
        try:
            fcntl.lockf(self.fd, fcntl.LOCK_UN, 1, byte, os.SEEK_SET)
        finally:
            self._thread_lock.release()

    # --- token buckets -------------------------------------------------------------------

    def take(self, namespace: str, key: str, now: float, rate: float, burst: float) -> bool:
        """Take one token from ``key``'s bucket in table ``namespace`` (``rate`` tokens a
        second, at most ``burst``; a bucket never seen is full). GCRA: the slot holds the
        moment the bucket is full again; a take moves it ``1/rate`` later, allowed while it
        stays within ``burst/rate`` of now."""
        h = self._hash(namespace, key)
        stripe = h % self.bucket_stripes
        base = self._buckets_at + stripe * STRIPE_SLOTS * _BUCKET_SLOT.size
        start = (h >> 40) % STRIPE_SLOTS
        tolerance = burst / rate * (1 + 1e-9)  # a float sum of 1/rate steps must not lose the last token
        self._lock(stripe)
        try:
            found = free = -1  # free: the first slot whose bucket is full (forgetting it changes nothing)
            victim, victim_full_at = -1, float("inf")
            full_at = now
            for n in range(STRIPE_SLOTS):
                at = base + ((start + n) % STRIPE_SLOTS) * _BUCKET_SLOT.size
                slot_key, slot_full_at = _BUCKET_SLOT.unpack_from(self._map, at)
                if slot_key == h:
                    found, full_at = at, max(slot_full_at, now)
                    break
                if slot_key == 0:  # every probe that passes here ends here: the key is not present
                    if free < 0:
                        free = at
                    break
                if slot_full_at <= now and free < 0:
                    free = at
                if slot_full_at < victim_full_at:
                    victim, victim_full_at = at, slot_full_at
            full_at += 1 / rate
            if full_at - now > tolerance:
                return False
            # A key not present gets a full bucket, less this take: in a slot never used or
            # one whose bucket is full, else the one full soonest. Slots are reused, never
            # emptied, so every probe passing this one still goes on past it.
            at = found if found >= 0 else free if free >= 0 else victim
            _BUCKET_SLOT.pack_into(self._map, at, h, full_at)
            return True
        finally:
            self._unlock(stripe)

    # --- connection counts ---------------------------------------------------------------

    def _connection_base(self, h: int) -> tuple[int, int, int]:
        stripe = h % self.connection_stripes
        base = self._connections_at + stripe * STRIPE_SLOTS * self._connection_slot
        return self.bucket_stripes + stripe, base, (h >> 40) % STRIPE_SLOTS

    def _find_connections(self, h: int, base: int, start: int, insert: bool) -> int:
        """The offset of ``h``'s slot (-1: none); with ``insert``, one is claimed for it:
        the first slot with no connections on any worker, else a never-used one."""
        reusable = -1
        size = self._connection_slot
        for n in range(STRIPE_SLOTS):
            at = base + ((start + n) % STRIPE_SLOTS) * size
            slot_key = _KEY.unpack_from(self._map, at)[0]
            if slot_key == h:
                return at
            if slot_key == 0:
                if reusable < 0:
                    reusable = at
                break
            if reusable < 0 and not any(self._counts.unpack_from(self._map, at + 8)):
                reusable = at
        if not insert or reusable < 0:
            return -1
        _KEY.pack_into(self._map, reusable, h)
        self._counts.pack_into(self._map, reusable + 8, *([0] * self.workers))
        return reusable

    def connections(self, namespace: str, key: str) -> int:
        """Open connections of ``key`` on every worker together."""
        h = self._hash(namespace, key)
        lock, base, start = self._connection_base(h)
        self._lock(lock)
        try:
            at = self._find_connections(h, base, start, insert=False)
            return 0 if at < 0 else sum(self._counts.unpack_from(self._map, at + 8))
        finally:
            self._unlock(lock)

    def admit(self, namespace: str, key: str, cap: int) -> bool:
        """Count one more connection of ``key`` on this worker unless all workers together
        hold ``cap`` already: checked and counted under one lock, so two workers admitting
        at once cannot both take the last place. A stripe with no free slot (not reachable
        without the salt: the table has four times the slots of the connections it can
        count) refuses rather than count nothing."""
        h = self._hash(namespace, key)
        lock, base, start = self._connection_base(h)
        self._lock(lock)
        try:
            at = self._find_connections(h, base, start, insert=True)
            if at < 0:
                return False
            counts = list(self._counts.unpack_from(self._map, at + 8))
            if sum(counts) >= cap:
                return False
            counts[self.worker] += 1
            self._counts.pack_into(self._map, at + 8, *counts)
            return True
        finally:
            self._unlock(lock)

    def release(self, namespace: str, key: str) -> None:
        h = self._hash(namespace, key)
        lock, base, start = self._connection_base(h)
        self._lock(lock)
        try:
            at = self._find_connections(h, base, start, insert=False)
            if at >= 0:
                column = at + 8 + 4 * self.worker
                count = _COUNT.unpack_from(self._map, column)[0]
                if count > 0:
                    _COUNT.pack_into(self._map, column, count - 1)
        finally:
            self._unlock(lock)

    def forget_worker(self, worker: int) -> None:
        """Zero ``worker``'s connection counts: it has exited, and with it every connection
        it counted. The supervisor calls this before starting its replacement."""
        size = self._connection_slot
        for stripe in range(self.connection_stripes):
            base = self._connections_at + stripe * STRIPE_SLOTS * size
            self._lock(self.bucket_stripes + stripe)
            try:
                for n in range(STRIPE_SLOTS):
                    at = base + n * size
                    if _KEY.unpack_from(self._map, at)[0]:
                        _COUNT.pack_into(self._map, at + 8 + 4 * worker, 0)
            finally:
                self._unlock(self.bucket_stripes + stripe)



@cache
def shared_limits_of_this_process() -> SharedLimits | None:
    """The segment the ``--workers`` supervisor handed this worker (``FD_ENV`` and
    ``WORKER_ENV`` in its environment), mapped once; None in a relay running alone. Every
    table a worker makes shares it, the plug-ins' included, with nothing passed to them."""
    fd = os.environ.get(FD_ENV)
    if fd is None:
        return None
    try:
        return SharedLimits.attach(int(fd), int(os.environ.get(WORKER_ENV, "")))
    except (ValueError, OSError) as exc:
        raise RuntimeError(f"{FD_ENV}={fd} ({WORKER_ENV}={os.environ.get(WORKER_ENV)}) is unusable: {exc}") from exc
