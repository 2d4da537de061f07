"""A flood of one kind of expensive read from one address, in a process of its own:
``python -m tests.flood URL KIND CONNECTIONS ADDRESS``. It runs until its stdin closes and
prints, about ten times a second, the answers it has had so far as one JSON line
(``{"verb": count}``).

Its own process because the relay under test runs in the test's event loop: attacking
clients there would parse their million events on that loop, and the bystander's
latencies would measure them rather than the relay (tests/test_bystander_reads.py)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sys
from collections.abc import Awaitable, Callable

import orjson
from websockets.asyncio.client import ClientConnection, connect

from relay.nostr.negentropy import ItemSet, Negentropy


async def neg_open_flood(ws: ClientConnection, n: int) -> None:
    """NEG-OPEN {} at the advertised pace: 4 sessions (re-opening an id replaces it), one
    open per second after the burst of 2 x 4."""
    first = Negentropy(ItemSet([])).initiate().hex()
    for i in itertools.count():
        await ws.send(orjson.dumps(["NEG-OPEN", f"s{i % 4}", {}, first]).decode())
        await asyncio.sleep(0 if i < 7 else 1.0)


async def count_flood(ws: ClientConnection, n: int) -> None:
    """COUNT {} back to back (NIP-45 has no rate limit here): the relay answers one
    connection's messages in order, so each connection always has one COUNT running."""
    for i in itertools.count():
        await ws.send(orjson.dumps(["COUNT", f"c{i}", {}]).decode())
        await asyncio.sleep(0.01)


async def search_flood(ws: ClientConnection, n: int) -> None:
    """NIP-50 search of the word every event holds, back to back."""
    for i in itertools.count():
        await ws.send(orjson.dumps(["REQ", f"q{i}", {"search": "common", "limit": 10}]).decode())
        await ws.send(orjson.dumps(["CLOSE", f"q{i}"]).decode())
        await asyncio.sleep(0.01)


async def huge_req_flood(ws: ClientConnection, n: int) -> None:
    """``REQ {"limit":5000}`` (5,000 stored events each, read as fast as they come) back
    to back: nothing expensive to find, but pages to read and frame on the event loop."""
    for i in itertools.count():
        await ws.send(orjson.dumps(["REQ", f"h{i % 4}", {"limit": 5000}]).decode())
        await asyncio.sleep(0.05)


FLOODS: dict[str, Callable[[ClientConnection, int], Awaitable[None]]] = {
    "neg-open": neg_open_flood,
    "count": count_flood,
    "search": search_flood,
    "huge-req": huge_req_flood,
}


async def attack(url: str, kind: str, connections: int, address: str) -> None:
    answers: dict[str, int] = {}
    send = FLOODS[kind]

    async def read(ws: ClientConnection) -> None:
        # The verb is read off the frame's head, not parsed.
        async for frame in ws:
            head = frame[:16] if isinstance(frame, str) else frame[:16].decode()
            verb = head[2 : head.index('"', 2)]
            answers[verb] = answers.get(verb, 0) + 1

    async def one(n: int) -> None:
        # A connection whose queue of requests is full is not read (back-pressure), so its
        # close frame would wait: the attackers give up at once.
        headers = {"X-Forwarded-For": address}
        async with connect(url, additional_headers=headers, max_size=None, close_timeout=0.1) as ws:
            reader = asyncio.create_task(read(ws))
            try:
                await send(ws, n)
            finally:
                reader.cancel()

    async def report() -> None:
        while True:
            sys.stdout.write(orjson.dumps(answers).decode() + "\n")
            sys.stdout.flush()
            await asyncio.sleep(0.1)

    loop = asyncio.get_running_loop()
    stdin_closed = loop.create_future()
    loop.add_reader(sys.stdin.fileno(), lambda: stdin_closed.done() or stdin_closed.set_result(None))
    tasks = [asyncio.create_task(one(n)) for n in range(connections)] + [asyncio.create_task(report())]
    await stdin_closed
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    sys.stdout.write(orjson.dumps(answers).decode() + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    url, kind, connections, address = sys.argv[1:5]
    asyncio.run(attack(url, kind, int(connections), address))
