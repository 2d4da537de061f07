"""The frames between ``--workers`` processes and the SQLite writer process (sans-I/O).

One stream socket per worker; every frame is ``<u32 length><u8 type><payload>``, the
length counting the type byte and the payload. Numbers are little-endian. Nothing here
touches a socket: ``FrameReader`` splits bytes into frames, the ``*_frame`` functions
build them, the ``read_*`` functions take their payloads apart.

Worker -> writer:

- ``EVENT``: ``<u32 request><u32 n><n bytes: the request's attachments, pickled, or
  nothing><raw event JSON>``. An event the worker parsed, verified and admitted; the writer
  answers its outcome in an ``OUTCOMES`` frame.
- ``PASS``: ``<raw event JSON>``, an accepted ephemeral event (NIP-01 20000-29999) for the
  subscribers on the other workers; never stored.
- ``CALL``: ``<u32 request><pickled (method, args, kwargs)>``, one of the store's rarer
  writes (``relay.store.writer_process`` lists which), answered by a ``RESULT`` frame.

Writer -> worker:

- ``HELLO``: ``<u32 link>``, sent once the writer's store is open: the number the writer
  gave this worker's link, which ``STORED`` entries name as their origin.
- ``STORED``: ``<u32 count>`` then per event ``<u32 origin link><u32 request><u32 n><n
  bytes raw JSON>``: the events one commit stored, in commit order; every worker gets
  every one (live fan-out), the origin finds its own by request number.
- ``OUTCOMES``: ``<writer counters><u32 count>`` then per request ``<u32 request><u8
  code>``, a code of ``FAILED`` followed by ``<u32 n><n bytes: the exception, pickled>``.
- ``PASS``: an ephemeral event from another worker.
- ``RESULT``: ``<u32 request><u8 ok><pickled result, or the exception when ok is 0>``.

Pickle is used only between processes of one relay: the writer accepts a link only from a
process of its own user (``SO_PEERCRED``), which could already read and write the database
file itself, so a frame can do nothing its sender could not. Attachments and call
arguments are whatever a plug-in puts there; pickle carries them as they are, so its
module-level functions and plain values pass without a codec of their own.
"""

from __future__ import annotations

import pickle
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from relay.store.base import WriteOutcome

HEADER = struct.Struct("<IB")
U32 = struct.Struct("<I")
EVENT_HEAD = struct.Struct("<II")
ENTRY_HEAD = struct.Struct("<III")
OUTCOME = struct.Struct("<IB")
RESULT_HEAD = struct.Struct("<IB")
# batches, events, failed batches, last batch size, commit seconds, last commit seconds, queued
COUNTERS = struct.Struct("<QQQIddI")

MAX_FRAME = 256 * 1024 * 1024  # far above any batch of stored events; a corrupt length stops the link

EVENT = ord("E")
PASS = ord("P")
CALL = ord("C")
HELLO = ord("H")
STORED = ord("S")
OUTCOMES = ord("O")
RESULT = ord("R")

CODES = list(WriteOutcome)  # an outcome's code is its index here
FAILED = 255


class FrameError(Exception):
    """The peer sent bytes that are not a frame: the link is closed."""


def frame(kind: int, *parts: bytes) -> bytes:
    length = 1 + sum(len(p) for p in parts)
    return b"".join((HEADER.pack(length, kind), *parts))


def event_frame(request: int, attachments: bytes, raw: bytes) -> bytes:
    return frame(EVENT, EVENT_HEAD.pack(request, len(attachments)), attachments, raw)


def read_event(payload: memoryview) -> tuple[int, bytes, bytes]:
    """(request, pickled attachments or b"", raw JSON)."""
    request, n = EVENT_HEAD.unpack_from(payload)
    start = EVENT_HEAD.size
    return request, bytes(payload[start : start + n]), bytes(payload[start + n :])


def call_frame(request: int, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    return frame(CALL, U32.pack(request), pickle.dumps((method, args, kwargs), protocol=pickle.HIGHEST_PROTOCOL))


def read_call(payload: memoryview) -> tuple[int, bytes]:
    """(request, the pickled call): unpickled by ``load_call``, so a call that cannot be
    (a function the writer cannot import) fails alone, answered, not the whole link."""
    (request,) = U32.unpack_from(payload)
    return request, bytes(payload[U32.size :])


def load_call(body: bytes) -> tuple[str, tuple[Any, ...], dict[str, Any]]:
    method, args, kwargs = pickle.loads(body)
    return str(method), tuple(args), dict(kwargs)


def result_frame(request: int, ok: bool, value: object) -> bytes:
    try:
        body = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:  # a result or exception that does not pickle: say so instead
        ok, body = False, pickle.dumps(RuntimeError(f"unpicklable {type(value).__name__}: {exc}"))
    return frame(RESULT, RESULT_HEAD.pack(request, int(ok)), body)


def read_result(payload: memoryview) -> tuple[int, bool, object]:
    request, ok = RESULT_HEAD.unpack_from(payload)
    return request, bool(ok), pickle.loads(payload[RESULT_HEAD.size :])


def hello_frame(link: int) -> bytes:
    return frame(HELLO, U32.pack(link))


def read_hello(payload: memoryview) -> int:
    return int(U32.unpack_from(payload)[0])


def stored_entries(entries: list[tuple[int, int, bytes]]) -> bytes:
    """The body of a ``STORED`` frame: (origin link, request, raw JSON) per event."""
    parts = [U32.pack(len(entries))]
    for origin, request, raw in entries:
        parts.append(ENTRY_HEAD.pack(origin, request, len(raw)))
        parts.append(raw)
    return b"".join(parts)


def read_stored(payload: memoryview) -> Iterator[tuple[int, int, bytes]]:
    (count,) = U32.unpack_from(payload)
    at = U32.size
    for _ in range(count):
        origin, request, n = ENTRY_HEAD.unpack_from(payload, at)
        at += ENTRY_HEAD.size
        yield origin, request, bytes(payload[at : at + n])
        at += n


@dataclass(frozen=True, slots=True)
class WriterCounters:
    """The writer process's group-commit figures, sent with every ``OUTCOMES`` frame so
    each worker's /metrics shows them (``relay.store.writer.WriterStats``)."""

    batches: int = 0
    events: int = 0
    failed_batches: int = 0
    last_batch_size: int = 0
    commit_seconds: float = 0.0
    last_commit_seconds: float = 0.0
    queued: int = 0


def outcomes_frame(counters: WriterCounters, outcomes: list[tuple[int, WriteOutcome | BaseException]]) -> bytes:
    parts = [
        COUNTERS.pack(
            counters.batches,
            counters.events,
            counters.failed_batches,
            counters.last_batch_size,
            counters.commit_seconds,
            counters.last_commit_seconds,
            counters.queued,
        ),
        U32.pack(len(outcomes)),
    ]
    for request, outcome in outcomes:
        if isinstance(outcome, WriteOutcome):
            parts.append(OUTCOME.pack(request, CODES.index(outcome)))
            continue
        try:
            body = pickle.dumps(outcome, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:
            body = pickle.dumps(RuntimeError(str(outcome)))
        parts.append(OUTCOME.pack(request, FAILED))
        parts.append(U32.pack(len(body)))
        parts.append(body)
    return frame(OUTCOMES, *parts)


def read_outcomes(payload: memoryview) -> tuple[WriterCounters, list[tuple[int, WriteOutcome | BaseException]]]:
    counters = WriterCounters(*COUNTERS.unpack_from(payload))
    at = COUNTERS.size
    (count,) = U32.unpack_from(payload, at)
    at += U32.size
    out: list[tuple[int, WriteOutcome | BaseException]] = []
    for _ in range(count):
        request, code = OUTCOME.unpack_from(payload, at)
        at += OUTCOME.size
        if code != FAILED:
            out.append((request, CODES[code]))
            continue
        (n,) = U32.unpack_from(payload, at)
        at += U32.size
        exc = pickle.loads(payload[at : at + n])
        at += n
        out.append((request, exc if isinstance(exc, BaseException) else RuntimeError(repr(exc))))
    return counters, out


class FrameReader:
    """Bytes in (as they arrive), whole frames out."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, memoryview]]:
        """The frames ``data`` completes, as (type, payload), each payload a view of its
        own copy (the buffer moves on while a consumer keeps one). Raises ``FrameError``
        for a length no frame can have."""
        buffer = self._buffer
        buffer += data
        frames: list[tuple[int, memoryview]] = []
        at = 0
        end = len(buffer)
        while end - at >= HEADER.size:
            length, kind = HEADER.unpack_from(buffer, at)
            if not 1 <= length <= MAX_FRAME:
                raise FrameError(f"frame length {length}")
            if end - at - 4 < length:
                break
            frames.append((kind, memoryview(bytes(buffer[at + HEADER.size : at + 4 + length]))))
            at += 4 + length
        if at:
            del buffer[:at]
        return frames
