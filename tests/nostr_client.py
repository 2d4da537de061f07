"""A minimal Nostr client for tests: real WebSocket, JSON in and out, nothing shared with
the relay's own parsing code beyond building signed events."""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect

from relay.nostr.event import Event, sign_event

TIMEOUT = 10.0


class NostrClient:
    def __init__(self, url: str) -> None:
        self.url = url
        self.ws: ClientConnection | None = None
        self.challenge: str | None = None
        self._backlog: list[list[Any]] = []
        self._probe = 0

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

    async def count(self, sub_id: str, *filters: dict[str, Any]) -> int:
        """NIP-45: the relay's COUNT answer (a CLOSED instead fails the test)."""
        await self.send(["COUNT", sub_id, *filters])
        msg = await self.recv_where(lambda m: m[0] in ("COUNT", "CLOSED") and m[1] == sub_id)
        assert msg[0] == "COUNT", msg
        return int(msg[2]["count"])

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

    async def assert_alive(self) -> None:
        """The connection still answers: a throw-away REQ gets its EOSE, then is closed."""
        self._probe += 1
        sub = f"alive-{self._probe}"
        assert await self.req(sub, {"limit": 0}) == []
        await self.send(["CLOSE", sub])

    async def recv_closed(self, timeout: float = TIMEOUT) -> tuple[int | None, str]:
        """Wait until the relay closes the connection; return its close code and reason.
        Messages received meanwhile are kept for ``recv``."""
        assert self.ws is not None
        from websockets.exceptions import ConnectionClosed

        try:
            async with asyncio.timeout(timeout):
                while True:
                    self._backlog.append(orjson.loads(await self.ws.recv()))
        except ConnectionClosed as exc:
            rcvd = exc.rcvd
            return (rcvd.code, rcvd.reason) if rcvd is not None else (None, "")

    async def expect_silence(self, seconds: float = 0.3) -> None:
        """Assert nothing (but AUTH) arrives for ``seconds``."""
        try:
            msg = await self.recv(timeout=seconds)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected message: {msg}")


def signed(
    secret: bytes, kind: int = 1, content: str = "", tags: list[list[str]] | None = None, created_at: int | None = None
) -> Event:
    """A signed event dated now unless ``created_at`` is given."""
    import time

    return sign_event(secret, kind, content, tags or [], int(time.time()) if created_at is None else created_at)
