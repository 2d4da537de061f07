"""``ReadLanes``, the fair turns at a store's readers (issue 17): expensive reads keep
their hands off at least one reader, and a reader given back goes to the read that waited
for it, never to one that arrives meanwhile (``asyncio.Queue`` let newcomers take it, and
a bystander's REQ starved for 10 s under a COUNT flood: tests/test_bystander_reads.py
shows that over real sockets)."""

from __future__ import annotations

import asyncio

from relay.store.base import ReadLanes


async def test_read_lanes_keep_a_reader_for_ordinary_reads_and_jump_no_line() -> None:
    lanes = ReadLanes(2, heavy=1)
    entered: list[str] = []
    leave = {tag: asyncio.Event() for tag in ("h1", "h2", "r1", "r2", "r3")}

    async def read(tag: str) -> None:
        async with lanes.turn(heavy=tag.startswith("h")):
            entered.append(tag)
            await leave[tag].wait()

    def start(tag: str) -> asyncio.Task[None]:
        return asyncio.create_task(read(tag))

    tasks = [start("h1")]
    await asyncio.sleep(0)
    tasks += [start("h2"), start("r1")]
    await asyncio.sleep(0)
    assert entered == ["h1", "r1"]  # h2 waits for the heavy lane; r1 is not held up behind it
    tasks.append(start("r2"))
    await asyncio.sleep(0)
    leave["r1"].set()
    await asyncio.sleep(0)
    tasks.append(start("r3"))  # arrives as r1's reader is handed to r2: it must not take it
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert entered == ["h1", "r1", "r2"]
    for tag in ("h1", "r2", "h2", "r3"):
        leave[tag].set()
    await asyncio.gather(*tasks)
    assert entered == ["h1", "r1", "r2", "h2", "r3"] and lanes.busy == lanes.busy_heavy == 0


async def test_a_cancelled_waiter_gives_its_reader_on() -> None:
    lanes = ReadLanes(2, heavy=1)
    leave = asyncio.Event()
    entered: list[str] = []

    async def read(tag: str) -> None:
        async with lanes.turn():
            entered.append(tag)
            await leave.wait()

    holders = [asyncio.create_task(read("a")), asyncio.create_task(read("b"))]
    await asyncio.sleep(0)
    gone, later = asyncio.create_task(read("gone")), asyncio.create_task(read("later"))
    await asyncio.sleep(0)
    gone.cancel()
    leave.set()
    await asyncio.gather(*holders, later)
    assert entered == ["a", "b", "later"] and lanes.busy == 0
