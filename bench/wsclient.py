"""A deliberately thin WebSocket client for load generation (RFC 6455, text frames only).

A general client (websockets) spends tens of microseconds of Python per frame, which on
a 2-core machine is CPU taken from the relay being measured. This one does the minimum:
frames are built once before timing with a zero masking key (legal: RFC 6455 asks the
key to be unpredictable only to protect proxies, which a loopback benchmark has none of),
so masking costs nothing, and received frames are split without decoding JSON.
It does not negotiate compression; the idle-connection scenario uses websockets for that.
"""

from __future__ import annotations

import asyncio
import base64
import os
import struct
import time
from collections.abc import Callable
from urllib.parse import urlsplit

OP_TEXT = 0x1
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA
_ZERO_MASK = b"\x00\x00\x00\x00"

MessageHandler = Callable[[bytes, float], None]


def client_frame(payload: bytes, opcode: int = OP_TEXT) -> bytes:
    """One final, masked client frame (the zero key leaves the payload as it is)."""
    n = len(payload)
    head = bytes([0x80 | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    return head + _ZERO_MASK + payload


class RawWebSocket(asyncio.Protocol):
    """One connection. ``on_message(payload, received_at)`` gets each text message with
    the ``perf_counter`` time its bytes arrived; pings are answered, a close ends it."""

    def __init__(self, on_message: MessageHandler) -> None:
        self.on_message = on_message
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._handshaken = False
        self._handshake: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @classmethod
    async def connect(
        cls, url: str, on_message: MessageHandler, timeout: float = 30.0, source: str | None = None
    ) -> RawWebSocket:
        """``source``: the local address to connect from (e.g. ``127.0.0.5``: any address in
        127/8 reaches a loopback relay, so one machine can play clients from many IPs)."""
        parts = urlsplit(url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        loop = asyncio.get_running_loop()
        local = (source, 0) if source else None
        _, proto = await asyncio.wait_for(
            loop.create_connection(lambda: cls(on_message), host, port, local_addr=local), timeout
        )
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET {parts.path or '/'} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        assert proto.transport is not None
        proto.transport.write(request.encode())
        await asyncio.wait_for(proto._handshake, timeout)
        return proto

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._handshake.done():
            self._handshake.set_exception(exc or ConnectionError("closed during handshake"))
        if not self.closed.done():
            self.closed.set_result(None)

    def send_frames(self, frames: bytes) -> None:
        """Write already-built frames (one or several concatenated)."""
        assert self.transport is not None
        self.transport.write(frames)

    def send(self, payload: bytes) -> None:
        self.send_frames(client_frame(payload))

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(client_frame(struct.pack("!H", 1000), OP_CLOSE))
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        buf = self._buf
        buf += data
        if not self._handshaken:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(buf[: buf.find(b"\r\n")])
            del buf[: end + 4]
            if b" 101 " not in status:
                self._handshake.set_exception(ConnectionError(f"handshake refused: {status.decode(errors='replace')}"))
                assert self.transport is not None
                self.transport.close()
                return
            self._handshaken = True
            self._handshake.set_result(None)
        pos = 0
        size = len(buf)
        while size - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            n = b1 & 0x7F
            head = 2
            if n == 126:
                if size - pos < 4:
                    break
                n = (buf[pos + 2] << 8) | buf[pos + 3]
                head = 4
            elif n == 127:
                if size - pos < 10:
                    break
                (n,) = struct.unpack_from("!Q", buf, pos + 2)
                head = 10
            if size - pos < head + n:
                break
            start = pos + head
            pos = start + n
            opcode = b0 & 0x0F
            if opcode == OP_TEXT:
                self.on_message(bytes(buf[start:pos]), now)
            elif opcode == OP_PING:
                self.send_frames(client_frame(bytes(buf[start:pos]), OP_PONG))
            elif opcode == OP_CLOSE:
                assert self.transport is not None
                self.transport.close()
        if pos:
            del buf[:pos]
