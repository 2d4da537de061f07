"""One helper for "poll until it holds" in tests (several modules had their own copy)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


async def eventually(
    check: Callable[[], Awaitable[bool]], timeout: float = 5.0, *, interval: float = 0.05, what: str = "the condition"
) -> float:
    """Seconds until ``check()`` held; fails the test, naming ``what``, after ``timeout``."""
    start = time.monotonic()
    while not await check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(interval)
    return time.monotonic() - start
