"""Log lines that clients can cause, at a bounded rate.

A client decides how often a line about its own bad input is written: one line per bad
event or query would let anyone fill the operator's disk and bury the relay's real faults
in noise. So a place where client input (or a storm of clients during an outage) can
produce a log line writes through a ``ThrottledLog``: at most ``burst`` lines, refilled at
``per_second``; lines dropped meanwhile are counted, and the next line that passes says
how many. A client's fault is one WARNING line without a traceback; ``exc_info`` is for
the relay's own faults (a store that is down), throttled too so an outage logs a few
tracebacks rather than one per client.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from relay.net.limits import TokenBucket


class ThrottledLog:
    """A token-bucketed front of one ``logging.Logger`` (one instance per call site, so a
    flood of one kind of line never silences another)."""

    def __init__(
        self,
        logger: logging.Logger,
        *,
        per_second: float = 1.0,
        burst: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._bucket = TokenBucket(per_second, burst)
        self._clock = clock
        self.suppressed = 0  # lines dropped since the last one written

    def warning(self, msg: str, *args: object) -> bool:
        """One WARNING line, no traceback; False when it was suppressed."""
        return self._log(logging.WARNING, msg, args, None)

    def error(self, msg: str, *args: object, exc_info: BaseException | None = None) -> bool:
        """One ERROR line, with ``exc_info``'s traceback: for faults of the relay itself."""
        return self._log(logging.ERROR, msg, args, exc_info)

    def _log(self, level: int, msg: str, args: tuple[object, ...], exc_info: BaseException | None) -> bool:
        if not self._logger.isEnabledFor(level):
            return False
        if not self._bucket.take(self._clock()):
            self.suppressed += 1
            return False
        if self.suppressed:
            msg += " (%d similar lines suppressed)"
            args = (*args, self.suppressed)
            self.suppressed = 0
        self._logger.log(level, msg, *args, exc_info=exc_info, stacklevel=3)
        return True
