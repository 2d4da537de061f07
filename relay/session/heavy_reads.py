"""Turns at expensive reads, shared fairly between address groups (issue 17, item 2).

What is expensive: building a NIP-77 item set (reading up to ``max_items`` rows, then
packing them on a thread), ranking a NIP-50 search, a NIP-45 COUNT. A client may send
those within every advertised limit from many connections at once; on old main 20
connections from one address opening NEG-OPEN ``{}`` once a second each made a
bystander's ``REQ {"limit":1}`` wait 5.7 s (100k events), 40 sending COUNTs back to back
left it unanswered for 10 s.

So a connection takes a turn here before such a read: at most ``per_group`` turns run
for one address group (``relay.net.limits.address_group``) and ``total`` for the whole relay;
the others wait, and a freed turn goes to the next *group* in line, round robin, not to
the next request: a group with a hundred connections waiting gets one turn in
``groups`` like everyone else. What runs meanwhile is bounded too: the store keeps
readers that only ordinary reads may use (``relay.store.base.ReadLanes``), and ``total``
keeps packing threads from taking every core from the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict, deque
from collections.abc import AsyncIterator


class HeavyReads:
    """Fair turns at expensive reads: ``per_group`` at once per address group, ``total``
    relay-wide, freed turns handed round robin over the groups that wait."""

    def __init__(self, total: int, per_group: int) -> None:
        if total < 1 or per_group < 1:
            raise ValueError("total and per_group must be at least 1")
        self.total = total
        self.per_group = per_group
        self.running = 0
        self._running: dict[str, int] = {}
        self._waiting: dict[str, deque[asyncio.Future[None]]] = {}
        # Groups with a waiter and a turn of their own still free, in the order they queued.
        self._ready: OrderedDict[str, None] = OrderedDict()

    @contextlib.asynccontextmanager
    async def turn(self, group: str) -> AsyncIterator[None]:
        await self._acquire(group)
        try:
            yield
        finally:
            self._release(group)

    async def _acquire(self, group: str) -> None:
        # Every release hands out the turns that fit, so a turn free now is one nobody
        # waiting could take: taking it jumps no line.
        if self.running < self.total and self._running.get(group, 0) < self.per_group:
            self._take(group)
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(group, deque()).append(waiter)
        if self._running.get(group, 0) < self.per_group:
            self._ready.setdefault(group)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._release(group)  # given a turn, but the caller is gone: pass it on
            else:
                self._forget(group, waiter)
            raise

    def _take(self, group: str) -> None:
        self.running += 1
        self._running[group] = self._running.get(group, 0) + 1

    def _forget(self, group: str, waiter: asyncio.Future[None]) -> None:
        line = self._waiting.get(group)
        if line is None:
            return
        with contextlib.suppress(ValueError):
            line.remove(waiter)
        if not line:
            del self._waiting[group]
            self._ready.pop(group, None)

    def _release(self, group: str) -> None:
        self.running -= 1
        left = self._running[group] - 1
        if left:
            self._running[group] = left
        else:
            del self._running[group]
        if group in self._waiting:
            self._ready.setdefault(group)  # it is below its share again
        while self._ready and self.running < self.total:
            next_group, _ = self._ready.popitem(last=False)
            line = self._waiting[next_group]
            waiter = line.popleft()
            if not line:
                del self._waiting[next_group]
            if waiter.done():
                # Cancelled, its caller not yet resumed to forget it: the next one, then.
                if next_group in self._waiting:
                    self._ready[next_group] = None
                    self._ready.move_to_end(next_group, last=False)
                continue
            self._take(next_group)
            waiter.set_result(None)
            if next_group in self._waiting and self._running[next_group] < self.per_group:
                self._ready[next_group] = None  # back of the line
