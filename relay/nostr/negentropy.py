"""Negentropy protocol version 1 (NIP-77 appendix): range-based set reconciliation over
``(created_at, id)`` items. Pure: bytes in, bytes out, no I/O, no clock.

Written from the specification (NIP-77 and hoytech/negentropy docs/negentropy-protocol-v1.md):

- items sort by timestamp, then id bytes; timestamp 2**64-1 is "infinity", reserved;
- a message is the version byte 0x61 then ranges ``<bound><mode varint><payload>``; each
  range's lower bound is the previous range's upper bound (the first starts at 0/empty id);
  a message that stops short of infinity ends in an implicit Skip;
- a bound is ``<timestamp varint><prefix length varint><id prefix>``; the timestamp is 0 for
  infinity, else 1 + the difference to the previous bound's timestamp in the same message;
  missing prefix bytes are zeros;
- modes: 0 Skip (no payload), 1 Fingerprint (16 bytes), 2 IdList (varint count, ids);
- fingerprint = first 16 bytes of sha256(sum of the ids as little-endian 256-bit integers
  mod 2**256, as 32 little-endian bytes || varint(count));
- varints are base-128, most significant digit first, high bit set on all but the last byte.

How this side answers (implementation-defined parts): a Fingerprint that differs is split
into ``BUCKETS`` sub-ranges of equal item counts (fingerprints) or, when the range holds
fewer than ``2 * BUCKETS`` items, answered with its IdList; a server answers an IdList with
its own IdList of the range; adjacent Skips are merged. With a frame size limit, once the
output nears the limit the rest of the message is answered with one Fingerprint range up
to infinity (so it is reconciled in a later round), and an IdList answer is cut at the
limit the same way. Fingerprints of any range cost O(1): prefix sums are kept per item.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import dataclass

PROTOCOL_VERSION = 0x61
INFINITY = 2**64 - 1
ID_SIZE = 32
FINGERPRINT_SIZE = 16
BUCKETS = 16
MIN_FRAME_SIZE_LIMIT = 4096
_MOD = 2**256
# Room kept below the frame size limit for what one more range can add: a split (16
# fingerprint ranges of <= 60 bytes, or an IdList of < 32 ids) plus the Fingerprint range
# that closes a truncated message.
_FRAME_RESERVE = 1200

SKIP, FINGERPRINT, ID_LIST = 0, 1, 2


class NegentropyError(Exception):
    """A malformed or unusable message; the text is safe to send back (NEG-ERR)."""


def encode_varint(n: int) -> bytes:
    if n < 0:
        raise ValueError("varint must be non-negative")
    digits = [n & 0x7F]
    n >>= 7
    while n:
        digits.append((n & 0x7F) | 0x80)
        n >>= 7
    return bytes(reversed(digits))


def decode_varint(buf: bytes, pos: int) -> tuple[int, int]:
    """The varint at ``pos`` and the position after it."""
    n = 0
    for i in range(pos, min(len(buf), pos + 10)):  # 10 digits hold any 64-bit value
        byte = buf[i]
        n = (n << 7) | (byte & 0x7F)
        if not byte & 0x80:
            return n, i + 1
    raise NegentropyError("invalid: truncated or oversized varint")


def fingerprint_of_sum(id_sum: int, count: int) -> bytes:
    """Fingerprint from the ids' sum (mod 2**256) and their count."""
    data = (id_sum % _MOD).to_bytes(32, "little") + encode_varint(count)
    return hashlib.sha256(data).digest()[:FINGERPRINT_SIZE]


def fingerprint(ids: Iterable[bytes]) -> bytes:
    total = 0
    count = 0
    for i in ids:
        total += int.from_bytes(i, "little")
        count += 1
    return fingerprint_of_sum(total, count)


@dataclass(frozen=True, slots=True)
class Bound:
    """An exclusive upper / inclusive lower bound: a timestamp and an id prefix."""

    timestamp: int
    prefix: bytes = b""

    def key(self) -> tuple[int, bytes]:
        """The (timestamp, 32-byte id) the bound stands for (missing bytes are zeros)."""
        return (self.timestamp, self.prefix.ljust(ID_SIZE, b"\0"))


class _Writer:
    """Message builder: keeps the previous bound's timestamp for delta encoding."""

    def __init__(self) -> None:
        self.out = bytearray([PROTOCOL_VERSION])
        self._last = 0

    def bound(self, b: Bound) -> None:
        if b.timestamp == INFINITY:
            self.out += encode_varint(0)
            self._last = INFINITY
        else:
            self.out += encode_varint(1 + b.timestamp - self._last)
            self._last = b.timestamp
        self.out += encode_varint(len(b.prefix)) + b.prefix

    def range(self, upper: Bound, mode: int, payload: bytes = b"") -> None:
        self.bound(upper)
        self.out += encode_varint(mode) + payload

    def __len__(self) -> int:
        return len(self.out)


class _Reader:
    def __init__(self, msg: bytes) -> None:
        self.buf = msg
        self.pos = 0
        self._last = 0

    def done(self) -> bool:
        return self.pos >= len(self.buf)

    def varint(self) -> int:
        n, self.pos = decode_varint(self.buf, self.pos)
        return n

    def take(self, n: int) -> bytes:
        if n > len(self.buf) - self.pos:
            raise NegentropyError("invalid: message ends inside a field")
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return bytes(out)

    def bound(self) -> Bound:
        encoded = self.varint()
        if encoded == 0:
            timestamp = INFINITY
        else:
            timestamp = self._last + encoded - 1
            if timestamp >= INFINITY:
                raise NegentropyError("invalid: bound timestamp out of range")
        self._last = timestamp
        length = self.varint()
        if length > ID_SIZE:
            raise NegentropyError("invalid: id prefix longer than 32 bytes")
        return Bound(timestamp, self.take(length))


_RECORD = 8 + ID_SIZE  # big-endian timestamp then id: bytes order is (timestamp, id) order
_CHECKPOINT = 32  # a prefix sum kept every this many items


class _Records:
    """The packed records as a sequence of 40-byte keys, for ``bisect``."""

    __slots__ = ("_packed",)

    def __init__(self, packed: bytes) -> None:
        self._packed = packed

    def __len__(self) -> int:
        return len(self._packed) // _RECORD

    def __getitem__(self, i: int) -> bytes:
        return self._packed[i * _RECORD : (i + 1) * _RECORD]


class ItemSet:
    """One side's items, sorted, packed 40 bytes per item (a relay may hold several
    reconciliations of 10^5..10^6 items: tuples of Python ints and bytes would cost ~200
    bytes each), with an id prefix sum every ``_CHECKPOINT`` items so any range's
    fingerprint costs at most ``2 * _CHECKPOINT`` additions."""

    def __init__(self, items: Iterable[tuple[int, bytes]]) -> None:
        records = set()
        for ts, eid in items:
            if len(eid) != ID_SIZE:
                raise ValueError("ids must be 32 bytes")
            if not 0 <= ts < INFINITY:
                raise ValueError("timestamp out of range")
            records.add(ts.to_bytes(8, "big") + eid)
        self._packed = b"".join(sorted(records))
        self._records = _Records(self._packed)
        self._n = len(records)
        sums = [0]
        total = 0
        for i in range(self._n):
            total += int.from_bytes(self._id(i), "little")
            if (i + 1) % _CHECKPOINT == 0:
                total %= _MOD
                sums.append(total)
        self._sums = sums

    def __len__(self) -> int:
        return self._n

    def _id(self, i: int) -> bytes:
        return self._packed[i * _RECORD + 8 : (i + 1) * _RECORD]

    def _timestamp(self, i: int) -> int:
        return int.from_bytes(self._packed[i * _RECORD : i * _RECORD + 8], "big")

    def _sum_to(self, k: int) -> int:
        """Sum of the first ``k`` ids (not reduced)."""
        base = k // _CHECKPOINT
        total = self._sums[base]
        for i in range(base * _CHECKPOINT, k):
            total += int.from_bytes(self._id(i), "little")
        return total

    def fingerprint(self, lower: int, upper: int) -> bytes:
        return fingerprint_of_sum(self._sum_to(upper) - self._sum_to(lower), upper - lower)

    def index_of(self, bound: Bound, lo: int = 0) -> int:
        """First item at or after ``bound``."""
        if bound.timestamp == INFINITY:
            return self._n
        ts, padded = bound.key()
        return bisect_left(self._records, ts.to_bytes(8, "big") + padded, lo)

    def ids(self, lower: int, upper: int) -> list[bytes]:
        return [self._id(i) for i in range(lower, upper)]

    def separating_bound(self, index: int) -> Bound:
        """The shortest bound between item ``index - 1`` and item ``index``."""
        ts, prev_ts = self._timestamp(index), self._timestamp(index - 1)
        if ts != prev_ts:
            return Bound(ts)
        eid, prev_id = self._id(index), self._id(index - 1)
        shared = 0
        while shared < ID_SIZE and eid[shared] == prev_id[shared]:
            shared += 1
        return Bound(ts, eid[: shared + 1])


@dataclass(slots=True)
class Round:
    """What one received message taught the initiator."""

    reply: bytes | None  # next message to send; None when reconciliation is complete
    have: list[bytes]  # ids the initiator holds and the other side lacks
    need: list[bytes]  # ids the other side holds and the initiator lacks


class Negentropy:
    """One side of a reconciliation. The initiator (client) calls ``initiate`` then feeds
    every answer to ``reconcile_initiator``; the other side (server) answers each message
    with ``reconcile``."""

    def __init__(self, items: ItemSet, frame_size_limit: int = 0) -> None:
        if frame_size_limit and frame_size_limit < MIN_FRAME_SIZE_LIMIT:
            raise ValueError(f"frame size limit must be 0 (none) or at least {MIN_FRAME_SIZE_LIMIT}")
        self.items = items
        self.frame_size_limit = frame_size_limit
        self._initiator = False

    def initiate(self) -> bytes:
        """The first message: the whole universe, split as a differing range would be."""
        self._initiator = True
        w = _Writer()
        self._split(w, 0, len(self.items), Bound(INFINITY))
        return bytes(w.out)

    def reconcile(self, msg: bytes) -> bytes:
        """Server side: the answer to one message (a lone version byte when the message
        speaks another protocol version, as the spec asks)."""
        if self._initiator:
            raise RuntimeError("the initiator uses reconcile_initiator")
        if not msg:
            raise NegentropyError("invalid: empty message")
        if msg[0] != PROTOCOL_VERSION:
            return bytes([PROTOCOL_VERSION])
        return self._answer(msg, None, None)

    def reconcile_initiator(self, msg: bytes) -> Round:
        if not self._initiator:
            raise RuntimeError("call initiate first")
        if not msg:
            raise NegentropyError("invalid: empty message")
        if msg[0] != PROTOCOL_VERSION:
            raise NegentropyError(f"invalid: peer speaks negentropy version {msg[0]:#x}, not 0x61")
        have: list[bytes] = []
        need: list[bytes] = []
        reply = self._answer(msg, have, need)
        return Round(None if len(reply) == 1 else reply, have, need)

    # --- the algorithm -----------------------------------------------------------

    def _answer(self, msg: bytes, have: list[bytes] | None, need: list[bytes] | None) -> bytes:
        items = self.items
        r = _Reader(msg)
        r.pos = 1
        w = _Writer()
        limit = self.frame_size_limit
        prev_bound = Bound(0)
        prev_index = 0
        skip = False  # a Skip waiting to be written, merged with any that follow

        def flush_skip() -> None:
            nonlocal skip
            if skip:
                w.range(prev_bound, SKIP)
                skip = False

        while not r.done():
            if limit and len(w) + _FRAME_RESERVE > limit:
                # Near the limit: everything from here on is left for a later round.
                flush_skip()
                w.range(Bound(INFINITY), FINGERPRINT, items.fingerprint(prev_index, len(items)))
                break
            upper_bound = r.bound()
            if upper_bound.key() < prev_bound.key():
                raise NegentropyError("invalid: ranges out of order")
            mode = r.varint()
            lower = prev_index
            upper = items.index_of(upper_bound, lower)
            if mode == SKIP:
                skip = True
            elif mode == FINGERPRINT:
                theirs = r.take(FINGERPRINT_SIZE)
                if items.fingerprint(lower, upper) == theirs:
                    skip = True
                else:
                    flush_skip()
                    self._split(w, lower, upper, upper_bound)
            elif mode == ID_LIST:
                count = r.varint()
                if count * ID_SIZE > len(r.buf) - r.pos:
                    raise NegentropyError("invalid: id list longer than the message")
                their_ids = [r.take(ID_SIZE) for _ in range(count)]
                if have is not None and need is not None:  # initiator: the range is settled
                    ours = items.ids(lower, upper)
                    mine, others = set(ours), set(their_ids)
                    have.extend(i for i in ours if i not in others)
                    need.extend(i for i in dict.fromkeys(their_ids) if i not in mine)
                    skip = True
                else:
                    flush_skip()
                    cut = self._id_list(w, lower, upper, upper_bound)
                    if cut is not None:
                        # The rest of this range and of the message: a later round.
                        w.range(Bound(INFINITY), FINGERPRINT, items.fingerprint(cut, len(items)))
                        break
            else:
                raise NegentropyError(f"invalid: unknown range mode {mode}")
            prev_bound = upper_bound
            prev_index = upper
        return bytes(w.out)

    def _id_list(self, w: _Writer, lower: int, upper: int, upper_bound: Bound) -> int | None:
        """Write our ids of [lower, upper) as an IdList. With a frame limit the list may
        stop early: then return the index of the first id left out (the caller covers the
        rest), else None."""
        cut: int | None = None
        limit = self.frame_size_limit
        if limit:
            room = max(1, (limit - _FRAME_RESERVE - len(w) - 60) // ID_SIZE)  # 60: bound, mode, count
            if upper - lower > room:
                cut = lower + room
                upper_bound, upper = self.items.separating_bound(cut), cut
        ids = self.items.ids(lower, upper)
        w.range(upper_bound, ID_LIST, encode_varint(len(ids)) + b"".join(ids))
        return cut

    def _split(self, w: _Writer, lower: int, upper: int, upper_bound: Bound) -> None:
        """Answer a range whose fingerprints differ: its IdList when small, else
        ``BUCKETS`` fingerprints of equal item counts covering exactly [lower, upper)."""
        n = upper - lower
        if n < 2 * BUCKETS:
            w.range(upper_bound, ID_LIST, encode_varint(n) + b"".join(self.items.ids(lower, upper)))
            return
        per, extra = divmod(n, BUCKETS)
        start = lower
        for b in range(BUCKETS):
            end = start + per + (1 if b < extra else 0)
            bound = upper_bound if end == upper else self.items.separating_bound(end)
            w.range(bound, FINGERPRINT, self.items.fingerprint(start, end))
            start = end


class ItemBudget:
    """Items held by open reconciliations (40 bytes each), relay-wide and per address group
    (issue 17): many connections each under their own caps still cannot make the relay hold
    unbounded memory, nor one address group take the whole of it. A NEG-OPEN reserves the
    most it may load *before* the store reads anything and gives back what it did not use
    (``give_back``); on old main the store read the whole set first and only then asked."""

    def __init__(self, capacity: int, per_group: int | None = None) -> None:
        self.capacity = capacity
        self.per_group = capacity if per_group is None else per_group
        self.used = 0
        self._held: dict[str, int] = {}

    def held(self, group: str) -> int:
        return self._held.get(group, 0)

    def room(self, group: str) -> int:
        """How many more items ``group`` may take now."""
        return max(0, min(self.capacity - self.used, self.per_group - self.held(group)))

    def take(self, group: str, n: int) -> bool:
        if n > self.room(group):
            return False
        self.used += n
        self._held[group] = self.held(group) + n
        return True

    def give_back(self, group: str, n: int) -> None:
        self.used = max(0, self.used - n)
        left = self.held(group) - n
        if left > 0:
            self._held[group] = left
        else:
            self._held.pop(group, None)
