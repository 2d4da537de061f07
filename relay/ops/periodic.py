"""Background rounds: do one thing every N seconds for as long as the relay runs.

Several stages poll (other nodes' NIP-62 requests and NIP-86 changes, plug-ins' jobs):
each round may fail (the store or a wallet is briefly away), and a failed round must be
logged and followed by the next one, never end the loop silently (STYLE.md: a background
task that dies is logged and restarted or stops the relay).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import NoReturn


async def run_every(
    seconds: float,
    round_: Callable[[], Awaitable[object]],
    log: logging.Logger,
    failure: str,
    *,
    wait_first: bool = False,
) -> NoReturn:
    """Await ``round_()`` every ``seconds`` (first at once, or after one wait with
    ``wait_first``); a round that raises is logged as ``failure`` with its traceback."""
    if wait_first:
        await asyncio.sleep(seconds)
    while True:
        try:
            await round_()
        except Exception:
            log.exception("%s; retrying in %.0f s", failure, seconds)
        await asyncio.sleep(seconds)
