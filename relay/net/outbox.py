"""One connection's outgoing frames while its socket pushes back, bounded in bytes.

The shell writes frames straight to the transport while the kernel takes them. When the
client reads slower than the relay writes, asyncio calls the protocol's
``pause_writing`` (the transport's buffer passed its high-water mark); from then on
frames wait here, counted in bytes, until ``resume_writing``. Past
``limits.outgoing_queue_bytes`` the client is dropped: a slow reader never makes the
relay's memory grow without bound, and never slows the fan-out to anyone else.
"""

from __future__ import annotations

from collections import deque


class Outbox:
    """The deque exists only while frames wait: an idle connection's outbox holds none, and
    an empty deque costs ~0.7 KiB (its first block), more than the rest of the outbox."""

    __slots__ = ("_frames", "limit", "paused", "queued_bytes")

    def __init__(self, limit: int) -> None:
        self._frames: deque[bytes] | None = None
        self.limit = limit
        self.paused = False
        self.queued_bytes = 0

    def __len__(self) -> int:
        return len(self._frames) if self._frames is not None else 0

    def push(self, frame: bytes) -> bool:
        """Queue a frame; False when the queue now holds more than ``limit`` bytes."""
        if self._frames is None:
            self._frames = deque()
        self._frames.append(frame)
        self.queued_bytes += len(frame)
        return self.queued_bytes <= self.limit

    def take_all(self) -> list[bytes]:
        frames = list(self._frames) if self._frames is not None else []
        self._frames = None
        self.queued_bytes = 0
        return frames

    def clear(self) -> None:
        self._frames = None
        self.queued_bytes = 0
