"""A minimal Nostr client for tests: real WebSocket, JSON in and out, nothing shared with
the relay's own parsing code beyond building signed events."""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect

from relay.event import Event, sign_event

TIMEOUT = 10.0


class NostrClient:
    def __init__(self, url: str) -> None:
        self.url = url
        self.ws: ClientConnection | None = None
        self.challenge: str | None = None
        self._backlog: list[list[Any]] = []

    async def __aenter__(self) -> NostrClient:
        self.ws = await connect(self.url, max_size=None, compression=None)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.ws is not None:
            await self.ws.close()

    async def send_raw(self, data: str | bytes) -> None:
        assert self.ws is not None
        await self.ws.send(data if isinstance(data, str) else data.decode())

    async def send(self, msg: list[Any]) -> None:
        await self.send_raw(orjson.dumps(msg))

    async def recv(self, timeout: float = TIMEOUT) -> list[Any]:
        """Next message, AUTH challenges excepted (remembered in ``challenge``)."""
        if self._backlog:
            return self._backlog.pop(0)
        assert self.ws is not None
        while True:
            msg = orjson.loads(await asyncio.wait_for(self.ws.recv(), timeout))
            if msg[0] == "AUTH":
                self.challenge = msg[1]
                continue
            return list(msg)

    async def recv_where(self, predicate: Any, timeout: float = TIMEOUT) -> list[Any]:
        """Next message satisfying ``predicate``; others are kept for later ``recv``."""
        skipped: list[list[Any]] = []
        try:
            while True:
                msg = await self.recv(timeout)
                if predicate(msg):
                    return msg
                skipped.append(msg)
        finally:
            self._backlog = skipped + self._backlog

    async def publish(self, event: Event | dict[str, Any]) -> tuple[bool, str]:
        obj = event.to_dict() if isinstance(event, Event) else event
        await self.send(["EVENT", obj])
        msg = await self.recv_where(lambda m: m[0] == "OK" and m[1] == obj.get("id"))
        return bool(msg[2]), str(msg[3])

    async def req(self, sub_id: str, *filters: dict[str, Any]) -> list[dict[str, Any]]:
        """Stored events up to EOSE; the subscription stays open."""
        await self.send(["REQ", sub_id, *filters])
        events: list[dict[str, Any]] = []
        while True:
            msg = await self.recv_where(lambda m: m[0] in ("EVENT", "EOSE", "CLOSED") and m[1] == sub_id)
            if msg[0] == "EVENT":
                events.append(msg[2])
            elif msg[0] == "EOSE":
                return events
            else:
                raise AssertionError(f"subscription closed: {msg}")

    async def auth(self, secret: bytes, relay_url: str) -> tuple[bool, str]:
        if self.challenge is None:
            assert self.ws is not None
            msg = orjson.loads(await asyncio.wait_for(self.ws.recv(), TIMEOUT))
            assert msg[0] == "AUTH", msg
            self.challenge = msg[1]
        import time

        event = sign_event(
            secret, 22242, "", [["relay", relay_url], ["challenge", self.challenge]], int(time.time())
        )
        await self.send(["AUTH", event.to_dict()])
        msg = await self.recv_where(lambda m: m[0] == "OK" and m[1] == event.id)
        return bool(msg[2]), str(msg[3])

    async def expect_silence(self, seconds: float = 0.3) -> None:
        """Assert nothing (but AUTH) arrives for ``seconds``."""
        try:
            msg = await self.recv(timeout=seconds)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected message: {msg}")
