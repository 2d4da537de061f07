"""The network shell as clients meet it: HTTP/1.1 keep-alive (raw socket, curl, Node's
keep-alive agent), pipelining, Connection: close, request body caps and timeouts, a
WebSocket upgrade after plain requests on one connection, fragmented WebSocket messages,
and permessage-deflate as a setting."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import shutil
import subprocess

import orjson
import pytest
from websockets.asyncio.client import connect

from relay.session.server import Relay
from tests.conftest import RelayFactory
from tests.nostr_client import NostrClient

NIP11_REQUEST = b"GET / HTTP/1.1\r\nHost: relay\r\nAccept: application/nostr+json\r\n\r\n"


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:] if line)}
    body = await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", "0"))), 5)
    return status, headers, body


async def test_two_requests_on_one_kept_alive_connection(relay: Relay) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
    try:
        for _ in range(2):
            writer.write(NIP11_REQUEST)
            status, headers, body = await read_response(reader)
            assert status == 200
            assert headers.get("connection", "") != "close"
            assert orjson.loads(body)["name"] == "satsrelay"
    finally:
        writer.close()


async def test_pipelined_requests_are_answered_in_order(relay: Relay) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
    try:
        writer.write(NIP11_REQUEST + b"GET /nope HTTP/1.1\r\nHost: relay\r\n\r\n" + NIP11_REQUEST)
        assert (await read_response(reader))[0] == 200
        assert (await read_response(reader))[0] == 404
        assert (await read_response(reader))[0] == 200
    finally:
        writer.close()


async def test_connection_close_is_said_and_done(relay: Relay) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
    writer.write(NIP11_REQUEST.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
    status, headers, _ = await read_response(reader)
    assert status == 200 and headers["connection"] == "close"
    assert await asyncio.wait_for(reader.read(), 5) == b""  # the relay closed the socket
    writer.close()


def run_tool(cmd: list[str], timeout: float = 20) -> subprocess.CompletedProcess[str]:
    if shutil.which(cmd[0]) is None:
        pytest.skip(f"{cmd[0]} is not installed")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


async def test_curl_reuses_the_connection(relay: Relay) -> None:
    url = f"http://127.0.0.1:{relay.port}/"
    result = await asyncio.to_thread(
        run_tool, ["curl", "-sv", "-H", "Accept: application/nostr+json", url, url]
    )
    assert result.returncode == 0, result.stderr
    assert "Connection died" not in result.stderr
    assert "e-using existing connection" in result.stderr or "eusing existing connection" in result.stderr
    docs = result.stdout.replace("}{", "}\n{").splitlines()
    assert [orjson.loads(d)["name"] for d in docs] == ["satsrelay", "satsrelay"]


NODE_KEEPALIVE = r"""
const http = require("http");
const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
function get(i) {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: "127.0.0.1", port: Number(process.argv[1]), path: "/", agent,
                           headers: { Accept: "application/nostr+json" } }, (res) => {
      let body = "";
      res.on("data", (c) => (body += c));
      res.on("end", () => resolve({ status: res.statusCode, reused: req.reusedSocket, name: JSON.parse(body).name }));
    });
    req.on("error", reject);
  });
}
(async () => {
  const out = [];
  for (let i = 0; i < 3; i++) {
    out.push(await get(i));
    await new Promise((r) => setTimeout(r, 50));
  }
  console.log(JSON.stringify(out));
  agent.destroy();
})().catch((err) => { console.error(String(err)); process.exit(1); });
"""


async def test_node_keepalive_agent_fetches_nip11_repeatedly(relay: Relay) -> None:
    result = await asyncio.to_thread(run_tool, ["node", "-e", NODE_KEEPALIVE, str(relay.port)])
    assert result.returncode == 0, result.stderr
    out = orjson.loads(result.stdout)
    assert [r["status"] for r in out] == [200, 200, 200]
    assert [r["name"] for r in out] == ["satsrelay"] * 3
    assert [r["reused"] for r in out] == [False, True, True]  # one socket, kept alive


async def test_request_body_over_the_cap_gets_413(relay_factory: RelayFactory) -> None:
    async with relay_factory(server={"max_request_body_bytes": 100}) as relay:
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
        writer.write(b"POST / HTTP/1.1\r\nHost: relay\r\nContent-Length: 101\r\n\r\n" + b"x" * 101)
        status, headers, _ = await read_response(reader)
        assert status == 413 and headers["connection"] == "close"
        writer.close()
        # a body within the cap is read (and the path answered)
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
        writer.write(b"POST /nope HTTP/1.1\r\nHost: relay\r\nContent-Length: 100\r\n\r\n" + b"x" * 100)
        assert (await read_response(reader))[0] == 404
        writer.write(NIP11_REQUEST)  # and the connection lives on
        assert (await read_response(reader))[0] == 200
        writer.close()


async def test_slow_headers_are_cut_off(relay_factory: RelayFactory) -> None:
    async with relay_factory(server={"http_header_timeout_seconds": 0.3}) as relay:
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: rel")
        started = asyncio.get_running_loop().time()
        assert await asyncio.wait_for(reader.read(), 5) == b""
        assert asyncio.get_running_loop().time() - started < 3
        writer.close()


async def test_slow_body_gets_408(relay_factory: RelayFactory) -> None:
    async with relay_factory(server={"http_body_timeout_seconds": 0.3}) as relay:
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
        writer.write(b"POST / HTTP/1.1\r\nHost: relay\r\nContent-Length: 50\r\n\r\n0123456789")
        status, _, _ = await read_response(reader)
        assert status == 408
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()


async def test_idle_kept_alive_connection_is_closed_after_the_header_timeout(relay_factory: RelayFactory) -> None:
    async with relay_factory(server={"http_header_timeout_seconds": 0.3}) as relay:
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
        writer.write(NIP11_REQUEST)
        assert (await read_response(reader))[0] == 200
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()


async def test_websocket_upgrade_after_plain_requests_on_one_connection(relay: Relay) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
    try:
        writer.write(NIP11_REQUEST)
        assert (await read_response(reader))[0] == 200
        key = base64.b64encode(os.urandom(16))
        writer.write(
            b"GET / HTTP/1.1\r\nHost: relay\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 101 ")
        # one unmasked-length text frame, masked with a zero key (RFC 6455 allows any key)
        payload = b'["REQ","s",{"limit":0}]'
        writer.write(bytes([0x81, 0x80 | len(payload)]) + b"\x00\x00\x00\x00" + payload)
        frames = b""
        while b"EOSE" not in frames:
            frames += await asyncio.wait_for(reader.read(4096), 5)
        assert b'["EOSE","s"]' in frames
    finally:
        writer.close()


async def test_fragmented_message_is_reassembled(client: NostrClient) -> None:
    assert client.ws is not None
    await client.ws.send(['["REQ","frag",', '{"limit":0}', "]"])
    assert await client.recv() == ["EOSE", "frag"]


async def test_compression_is_a_setting(relay_factory: RelayFactory) -> None:
    async with relay_factory() as relay, connect(relay.url, compression="deflate") as ws:
        assert ws.response is not None
        assert "Sec-WebSocket-Extensions" not in ws.response.headers
    async with relay_factory(server={"compression": True}) as relay:
        async with connect(relay.url, compression="deflate") as ws:
            assert ws.response is not None
            assert "permessage-deflate" in ws.response.headers["Sec-WebSocket-Extensions"]
            await ws.send('["REQ","z",{"limit":0}]')
            msgs = [orjson.loads(await asyncio.wait_for(ws.recv(), 5)) for _ in range(2)]
            assert ["EOSE", "z"] in msgs
        async with NostrClient(relay.url) as plain:  # a client without deflate still works
            await plain.assert_alive()


async def test_bad_upgrade_request_is_refused_with_http_error(relay: Relay) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: relay\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
    status, _, _ = await read_response(reader)
    assert status == 400  # no Sec-WebSocket-Key: websockets' handshake check refuses it
    writer.close()
    async with NostrClient(relay.url) as other:
        await other.assert_alive()


async def test_status_lines_carry_their_reason_phrase(relay: Relay) -> None:
    """"HTTP/1.1 200 OK", "404 Not Found": h11 writes an empty phrase unless given one."""
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
    try:
        plain = b"GET /nowhere HTTP/1.1\r\nHost: relay\r\n\r\n"
        for request, line in ((NIP11_REQUEST, b"HTTP/1.1 200 OK\r\n"), (plain, b"HTTP/1.1 404 Not Found\r\n")):
            writer.write(request)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n"), 5)
            assert head == line
            rest = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            length = next(int(h.split(b":")[1]) for h in rest.split(b"\r\n") if h.lower().startswith(b"content-length"))
            await asyncio.wait_for(reader.readexactly(length), 5)
    finally:
        writer.close()


async def test_a_client_still_sending_a_refused_body_reads_its_413(relay_factory: RelayFactory) -> None:
    """The relay answers 413 on the Content-Length alone, while the client is still sending
    megabytes; it then reads and drops the rest for a moment before closing (a lingering
    close): closing with unread data sends a TCP reset, which took the answer with it (a
    client read ECONNRESET; Caddy in front told its client 502)."""
    async with relay_factory(server={"max_request_body_bytes": 100}) as relay:
        for _ in range(5):
            reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
            size = 4 << 20
            writer.write(f"POST / HTTP/1.1\r\nHost: relay\r\nContent-Length: {size}\r\n\r\n".encode())
            writer.write(b"x" * size)  # what a client sends before it looks for an answer
            with contextlib.suppress(ConnectionResetError, BrokenPipeError):
                await asyncio.wait_for(writer.drain(), 5)
            status, headers, body = await read_response(reader)
            assert status == 413 and headers["connection"] == "close" and body == b"request body too large\n"
            writer.close()
