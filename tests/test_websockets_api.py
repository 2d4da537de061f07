"""The part of websockets the network shell relies on: its documented sans-I/O API.

relay/net/transport.py drives ``websockets.server.ServerProtocol`` itself and uses nothing
else of websockets but the frame types and the permessage-deflate extension. If a release
renames or changes any of these, this test fails and names what moved; pyproject.toml pins
the range this was written against (websockets >=16,<18).
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest
from websockets.client import ClientProtocol
from websockets.extensions.permessage_deflate import (
    ClientPerMessageDeflateFactory,
    ServerPerMessageDeflateFactory,
)
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

SERVER_PROTOCOL_API = [
    "receive_data", "receive_eof", "events_received", "data_to_send", "close_expected",
    "accept", "send_response", "send_text", "send_close", "send_ping", "state",
]


@pytest.mark.parametrize("name", SERVER_PROTOCOL_API)
def test_server_protocol_has(name: str) -> None:
    assert hasattr(ServerProtocol(), name), f"websockets.server.ServerProtocol.{name} is gone"


def test_server_protocol_constructor_takes_extensions_and_max_size() -> None:
    params = inspect.signature(ServerProtocol).parameters
    assert "extensions" in params and "max_size" in params


def test_deflate_factory_takes_window_bits_and_compress_settings() -> None:
    params = inspect.signature(ServerPerMessageDeflateFactory).parameters
    for name in ("server_max_window_bits", "client_max_window_bits", "compress_settings"):
        assert name in params, f"ServerPerMessageDeflateFactory({name}=...) is gone"


def test_frame_and_opcode_shape() -> None:
    for name in ("TEXT", "BINARY", "CONT", "CLOSE", "PING", "PONG"):
        assert hasattr(Opcode, name), f"websockets.frames.Opcode.{name} is gone"
    frame = Frame(Opcode.TEXT, b"x", fin=True)
    assert (frame.opcode, frame.data, frame.fin) == (Opcode.TEXT, b"x", True)


def handshake(server: ServerProtocol, client: ClientProtocol) -> None:
    server.receive_data(b"".join(client.data_to_send()))
    [request] = server.events_received()
    assert isinstance(request, Request)
    server.send_response(server.accept(request))
    client.receive_data(b"".join(server.data_to_send()))
    [reply] = client.events_received()
    assert isinstance(reply, Response) and reply.status_code == 101


def test_sans_io_round_trip_as_the_shell_drives_it() -> None:
    """Handshake, a fragmented text message, a reply, a ping, the closing handshake: the
    sequence of calls relay/net/transport.py makes, without a socket."""
    server = ServerProtocol(extensions=[ServerPerMessageDeflateFactory()], max_size=1000)
    client = ClientProtocol(parse_uri("ws://relay/"), extensions=[ClientPerMessageDeflateFactory()])
    client.send_request(client.connect())
    handshake(server, client)
    assert server.state is State.OPEN

    client.send_text(b'["REQ",', fin=False)
    client.send_continuation(b'"s",{}]', fin=True)
    server.receive_data(b"".join(client.data_to_send()))
    frames = [f for f in server.events_received() if isinstance(f, Frame)]
    assert [f.opcode for f in frames] == [Opcode.TEXT, Opcode.CONT]
    assert [f.fin for f in frames] == [False, True]
    assert b"".join(f.data for f in frames) == b'["REQ","s",{}]'

    server.send_text(b'["EOSE","s"]')
    client.receive_data(b"".join(server.data_to_send()))
    [reply] = client.events_received()
    assert isinstance(reply, Frame) and reply.data == b'["EOSE","s"]'

    client.send_ping(b"hi")
    server.receive_data(b"".join(client.data_to_send()))
    assert server.data_to_send()  # the pong websockets queued by itself

    client.send_close(1000, "bye")
    server.receive_data(b"".join(client.data_to_send()))
    out = server.data_to_send()
    assert out[-1] == b""  # end of stream after the close frame: the shell half-closes
    assert server.close_expected()


def test_handshake_headers_can_be_dropped_after_accept() -> None:
    """The shell clears the handshake request's headers once ``accept`` has read them:
    websockets' parser keeps that request for the connection's life (idle memory), and the
    connection must work on without them."""
    server = ServerProtocol()
    client = ClientProtocol(parse_uri("ws://relay/"))
    client.send_request(client.connect())
    server.receive_data(b"".join(client.data_to_send()))
    [request] = server.events_received()
    assert isinstance(request, Request) and "Sec-WebSocket-Key" in request.headers
    server.send_response(server.accept(request))
    request.headers.clear()
    assert len(request.headers) == 0 and list(request.headers.raw_items()) == []
    client.receive_data(b"".join(server.data_to_send()))
    assert [type(e) for e in client.events_received()] == [Response]

    client.send_text(b'["REQ","s",{}]')
    server.receive_data(b"".join(client.data_to_send()))
    [frame] = server.events_received()
    assert isinstance(frame, Frame) and frame.data == b'["REQ","s",{}]'


def test_oversize_message_fails_with_1009() -> None:
    server = ServerProtocol(max_size=10)
    client = ClientProtocol(parse_uri("ws://relay/"))
    client.send_request(client.connect())
    handshake(server, client)
    client.send_text(b"x" * 11)
    server.receive_data(b"".join(client.data_to_send()))
    assert server.events_received() == []  # nothing delivered
    assert server.close_sent is not None and server.close_sent.code == 1009
    assert server.data_to_send()  # the close frame, for the shell to write


RELAY = Path(__file__).resolve().parent.parent / "relay"
SANS_IO_MODULES = {
    "websockets.server", "websockets.frames", "websockets.http11", "websockets.protocol",
    "websockets.extensions.base", "websockets.extensions.permessage_deflate",
}


def imports(path: Path) -> list[str]:
    found: list[str] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.append(node.module)
        elif isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
    return found


def test_relay_uses_only_websockets_sans_io_modules() -> None:
    """The server side is the shell's alone and uses only the sans-I/O modules (no asyncio
    server, no private attribute); other relay modules may only be clients of other relays
    (``satsrelay sync``)."""
    client_side = {"websockets.asyncio.client", "websockets.exceptions"}
    for path in sorted(RELAY.rglob("*.py")):
        used = {m for m in imports(path) if m == "websockets" or m.startswith("websockets.")}
        if path.name == "transport.py":
            assert used <= SANS_IO_MODULES, f"the shell imports {sorted(used - SANS_IO_MODULES)}"
        else:
            assert used <= client_side, f"{path.name} imports {sorted(used - client_side)}: only the shell serves"


def test_relay_core_imports_nothing_from_lightning() -> None:
    """The payments package is a plug-in found through an entry point (relay/extension.py)."""
    for path in sorted(RELAY.rglob("*.py")):
        bad = [m for m in imports(path) if m == "lightning" or m.startswith("lightning.")]
        assert not bad, f"relay/{path.relative_to(RELAY)} imports {bad}"
