"""deploy/nginx/satsrelay.conf and deploy/caddy/Caddyfile, each in front of a relay configured
like deploy/relay.toml, spoken to the way clients on the internet speak to it: TLS, WebSocket
upgrade, NIP-11, the join page and a payment, NIP-42 AUTH against ``public_url``, and
per-address limits applied to the address the proxy forwards, not to the proxy's own.

Both are Debian's packages (``make test-deps``), started as ordinary processes on free ports
with their own folders in a temp folder (no system service; as root they drop to ``nobody``
first). nginx gets a self-signed certificate for relay.example.com in place of the Let's
Encrypt one; Caddy, whose site block is used as it is, gets global options only: its own
internal CA instead of ACME (``local_certs``: no request leaves the machine), no admin
endpoint, free ports on 127.0.0.1. Clients connect to ``wss://relay.example.com:<port>``
(that name in the TLS handshake, the Host header and the AUTH event) over a TCP connection
to 127.0.0.1; two of them come from 127.0.0.2 and 127.0.0.3 (the whole of 127/8 is loopback
on Linux), as two people on the internet would.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import orjson
import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from relay.nostr import crypto
from relay.session.server import Relay
from tests.certificates import self_signed as make_certificate
from tests.conftest import RelayFactory, free_port
from tests.nostr_client import NostrClient, signed
from tests.waiting import eventually

REPO = Path(__file__).resolve().parent.parent
SITE = REPO / "deploy" / "nginx" / "satsrelay.conf"
CADDYFILE = REPO / "deploy" / "caddy" / "Caddyfile"
HOST = "relay.example.com"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
CADDY = shutil.which("caddy") or "/usr/bin/caddy"
NOBODY = 65534

needs_nginx = pytest.mark.skipif(not Path(NGINX).exists(), reason="nginx not installed (run `make deploy-tools`)")
needs_caddy = pytest.mark.skipif(not Path(CADDY).exists(), reason="caddy not installed (run `make deploy-tools`)")


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for relay.example.com (and 127.0.0.1, for the plain HTTP checks)."""
    return make_certificate(
        directory, name=x509.NameAttribute(NameOID.COMMON_NAME, HOST), dns_names=(HOST,),
        files=("fullchain.pem", "privkey.pem"),
    )


def site_config(https_port: int, http_port: int, relay_port: int, cert: Path, key: Path) -> str:
    """deploy/nginx/satsrelay.conf with only what differs on a test machine replaced: its
    ports (free ones on 127.0.0.1), the certificate paths, the relay's port. Every
    replacement must find its text, so the file under test is the one in deploy/."""
    text = SITE.read_text()
    for old, new in (
        ("listen [::]:80;\n", ""),
        ("listen [::]:443 ssl;\n", ""),
        ("listen 80;", f"listen 127.0.0.1:{http_port};"),
        ("listen 443 ssl;", f"listen 127.0.0.1:{https_port} ssl;"),
        (f"/etc/letsencrypt/live/{HOST}/fullchain.pem", str(cert)),
        (f"/etc/letsencrypt/live/{HOST}/privkey.pem", str(key)),
        ("proxy_pass http://127.0.0.1:7777;", f"proxy_pass http://127.0.0.1:{relay_port};"),
    ):
        assert old in text, f"{SITE} no longer has {old!r}: update this test"
        text = text.replace(old, new)
    return text


def caddy_config(https_port: int, http_port: int, relay_port: int, data: Path) -> str:
    """deploy/caddy/Caddyfile as it is (its site block, its relay.example.com) after global
    options that fit a test machine: certificates from Caddy's own local CA, none installed
    into the system's trust store, no admin endpoint, free ports on 127.0.0.1, its storage
    in the temp folder; and the relay's port."""
    text = CADDYFILE.read_text()
    assert "reverse_proxy 127.0.0.1:7777 {" in text, f"{CADDYFILE} no longer proxies 127.0.0.1:7777: update this test"
    assert f"\n{HOST} {{\n" in text, f"{CADDYFILE} no longer serves {HOST}: update this test"
    options = (
        "{\n\tadmin off\n\tdefault_bind 127.0.0.1\n"
        f"\thttp_port {http_port}\n\thttps_port {https_port}\n"
        f"\tlocal_certs\n\tskip_install_trust\n\tstorage file_system {data}\n}}\n\n"
    )
    return options + text.replace("reverse_proxy 127.0.0.1:7777 {", f"reverse_proxy 127.0.0.1:{relay_port} {{")


def drop_privileges() -> None:
    """As root, the proxy runs as ``nobody``, as its own service would not run as root."""
    if os.geteuid() == 0:
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)


def give_to_nobody(folder: Path) -> None:
    if os.geteuid() == 0:
        for path in (folder, *folder.rglob("*")):
            os.chown(path, NOBODY, NOBODY)


@dataclass
class Running:
    """A proxy process, the certificate its clients trust, and where it logs."""

    process: subprocess.Popen[bytes]
    cafile: Path
    log: Path


def stopped(proc: subprocess.Popen[bytes], signum: int) -> None:
    if proc.poll() is None:
        proc.send_signal(signum)  # graceful: finish what is in flight
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def nginx_running(prefix: Path, https_port: int, http_port: int, relay_port: int) -> Iterator[Running]:
    """nginx with its own prefix in the temp folder."""
    cert, key = self_signed(prefix)
    (prefix / "satsrelay.conf").write_text(site_config(https_port, http_port, relay_port, cert, key))
    kinds = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    temp_paths = "\n".join(f"    {kind}_temp_path {prefix}/{kind}_temp;" for kind in kinds)
    (prefix / "nginx.conf").write_text(
        f"daemon off;\nworker_processes 1;\npid {prefix}/nginx.pid;\nerror_log {prefix}/error.log info;\n"
        "events { worker_connections 256; }\n"
        f"http {{\n    access_log {prefix}/access.log;\n{temp_paths}\n    include {prefix}/satsrelay.conf;\n}}\n"
    )
    give_to_nobody(prefix)
    args = ["-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-e", str(prefix / "error.log")]
    check = subprocess.run(
        [NGINX, "-t", *args], capture_output=True, text=True, preexec_fn=drop_privileges, timeout=30
    )
    assert check.returncode == 0, check.stderr
    proc = subprocess.Popen([NGINX, *args], preexec_fn=drop_privileges, stderr=subprocess.DEVNULL)
    try:
        yield Running(proc, cert, prefix / "error.log")
    finally:
        stopped(proc, signal.SIGQUIT)


@contextlib.contextmanager
def caddy_running(prefix: Path, https_port: int, http_port: int, relay_port: int) -> Iterator[Running]:
    """Caddy with its config, storage and home in the temp folder; it makes its local CA and
    the site's certificate at start, and its clients trust that CA's root."""
    data = prefix / "data"
    data.mkdir()
    config = prefix / "Caddyfile"
    config.write_text(caddy_config(https_port, http_port, relay_port, data))
    give_to_nobody(prefix)
    env = {"PATH": "/usr/bin:/bin", **dict.fromkeys(("HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME"), str(prefix))}
    command = [CADDY, "run", "--config", str(config), "--adapter", "caddyfile"]
    with (prefix / "caddy.log").open("wb") as log:
        proc = subprocess.Popen(command, preexec_fn=drop_privileges, env=env, stderr=log, stdout=log)
    try:
        yield Running(proc, data / "pki" / "authorities" / "local" / "root.crt", prefix / "caddy.log")
    finally:
        stopped(proc, signal.SIGTERM)


PROXIES = {"nginx": nginx_running, "caddy": caddy_running}


@pytest.fixture(params=[pytest.param("nginx", marks=needs_nginx), pytest.param("caddy", marks=needs_caddy)])
def proxy(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@dataclass
class Proxied:
    relay: Relay
    port: int  # the proxy's TLS port
    http_port: int  # its plain-HTTP port (redirects to https)
    tls: ssl.SSLContext  # trusts the proxy's certificate

    @property
    def public_url(self) -> str:
        return f"wss://{HOST}:{self.port}"

    def https(self, local_address: str = "127.0.0.1") -> httpx.AsyncClient:
        """HTTPS to relay.example.com (its name in the TLS handshake and the Host header)
        over a connection to 127.0.0.1."""
        transport = NamedTransport(verify=self.tls, local_address=local_address)
        return httpx.AsyncClient(
            base_url=f"https://127.0.0.1:{self.port}", transport=transport, timeout=10,
            headers={"Host": f"{HOST}:{self.port}"},
        )

    def client(self, source: str = "127.0.0.1", headers: dict[str, str] | None = None) -> ProxiedClient:
        return ProxiedClient(self, source, headers or {})


class NamedTransport(httpx.AsyncHTTPTransport):
    """Names relay.example.com in the TLS handshake (SNI, and the certificate check) of a
    connection made to 127.0.0.1: Caddy picks the site's certificate by that name."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        request.extensions = {**request.extensions, "sni_hostname": HOST}
        return await super().handle_async_request(request)


class ProxiedClient(NostrClient):
    """A NostrClient reaching the relay through the proxy from a given source address."""

    def __init__(self, stack: Proxied, source: str, headers: dict[str, str]) -> None:
        super().__init__(stack.public_url)
        self._connect: dict[str, Any] = {
            "ssl": stack.tls,
            "host": "127.0.0.1",
            "port": stack.port,
            "local_addr": (source, 0),
            "additional_headers": headers,
            "proxy": None,
        }

    async def __aenter__(self) -> ProxiedClient:
        self.ws = await connect(self.url, max_size=None, compression=None, **self._connect)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await super().__aexit__(exc_type, exc, tb)


@contextlib.asynccontextmanager
async def behind_proxy(relay_factory: RelayFactory, proxy: str, **sections: dict[str, Any]) -> AsyncIterator[Proxied]:
    """A relay set up like deploy/relay.toml (public_url the proxy's wss:// address,
    real_ip_header X-Real-IP), with payments on the demo wallet, behind ``proxy``."""
    port, http_port = free_port(), free_port()
    settings: dict[str, Any] = {
        "relay": {"public_url": f"wss://{HOST}:{port}"},
        "server": {"real_ip_header": "X-Real-IP"},
        "payments": {"enabled": True, "backend": "fake"},
        **sections,
    }
    async with relay_factory(**settings) as relay:
        prefix = Path(tempfile.mkdtemp(prefix=f"satsrelay-{proxy}-"))
        try:
            with PROXIES[proxy](prefix, port, http_port, relay.port) as running:

                async def serving() -> bool:
                    """Listening, and (Caddy) holding the site's certificate: a TLS handshake
                    naming relay.example.com that the proxy's CA vouches for."""
                    assert running.process.poll() is None, running.log.read_text()
                    if not running.cafile.exists():
                        return False
                    tls = ssl.create_default_context(cafile=str(running.cafile))
                    try:
                        _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=tls, server_hostname=HOST)
                    except (OSError, ssl.SSLError):
                        return False
                    writer.close()
                    return True

                await eventually(serving, 20, what=f"{proxy} to serve {HOST}")
                yield Proxied(relay, port, http_port, ssl.create_default_context(cafile=str(running.cafile)))
        finally:
            shutil.rmtree(prefix, ignore_errors=True)


async def test_nip11_the_join_page_and_the_https_redirect_through_the_proxy(
    relay_factory: RelayFactory, proxy: str
) -> None:
    async with behind_proxy(relay_factory, proxy) as stack, stack.https() as web:
        info = await web.get("/", headers={"Accept": "application/nostr+json"})
        assert info.status_code == 200 and info.headers["access-control-allow-origin"] == "*"
        doc = info.json()
        assert doc["self"] == stack.relay.identity.pubkey and doc["payments_url"] == f"https://{HOST}:{stack.port}/join"
        page = await web.get("/join")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert f"wss://{HOST}:{stack.port}" in page.text  # the address the page tells people to add
        async with httpx.AsyncClient() as plain:
            moved = await plain.get(f"http://127.0.0.1:{stack.http_port}/join", headers={"Host": HOST})
        assert moved.status_code == {"nginx": 301, "caddy": 308}[proxy], moved
        assert moved.headers["location"] == f"https://{HOST}/join"


async def test_websocket_payment_and_nip42_auth_through_the_proxy(
    relay_factory: RelayFactory, alice: bytes, proxy: str
) -> None:
    pubkey = crypto.public_key(alice).hex()
    async with behind_proxy(relay_factory, proxy) as stack, stack.client() as client, stack.https() as web:
        ok, message = await client.publish(signed(alice, 1, "before paying"))
        assert not ok and f"https://{HOST}:{stack.port}/join" in message, message
        invoice = (await web.post("/api/invoice", json={"pubkey": pubkey, "plan": "admission"})).json()
        assert (await web.post(f"/api/fake/pay/{invoice['payment_hash']}")).status_code == 200
        note = signed(alice, 1, f"paid, through {proxy}")
        ok, message = await client.publish(note)
        assert ok, message
        assert [e["id"] for e in await client.req("mine", {"authors": [pubkey]})] == [note.id]

        # NIP-42: the AUTH event must name public_url (the proxy's address) ...
        ok, message = await client.auth(alice, stack.public_url)
        assert ok, message
        async with stack.client() as other:
            # ... and one naming the relay's own socket behind the proxy is refused
            ok, message = await other.auth(alice, f"ws://127.0.0.1:{stack.relay.port}")
            assert not ok and message.startswith("invalid:"), message


async def test_per_address_limits_apply_to_the_address_the_proxy_forwards(
    relay_factory: RelayFactory, proxy: str
) -> None:
    """Two connections per address: each of two clients gets its two (all four reach the
    relay from the proxy's one address), a third from either is refused with 429, and a
    header a client forges to pose as someone else does not get past the proxy."""
    limits = {"max_connections_per_ip": 2}
    async with behind_proxy(relay_factory, proxy, limits=limits) as stack, contextlib.AsyncExitStack() as held:
        for source in ("127.0.0.2", "127.0.0.3"):
            for _ in range(2):
                client = await held.enter_async_context(stack.client(source))
                await client.assert_alive()
            with pytest.raises(InvalidStatus) as refused:
                await held.enter_async_context(stack.client(source))
            assert refused.value.response.status_code == 429
            assert refused.value.response.headers["Retry-After"] == "10"
        forged = {"X-Real-IP": "198.51.100.7", "X-Forwarded-For": "198.51.100.7"}
        with pytest.raises(InvalidStatus) as refused:
            await held.enter_async_context(stack.client("127.0.0.2", forged))
        assert refused.value.response.status_code == 429
        assert stack.relay.metrics.open_connections() == 4


async def test_the_proxy_passes_every_body_the_relay_accepts(
    relay_factory: RelayFactory, alice: bytes, proxy: str
) -> None:
    """The relay's own limit, [server] max_request_body_bytes (64 KiB), is the one that holds:
    a body of exactly that size reaches it through the proxy, one byte more is refused with 413
    (by nginx's client_max_body_size, by the relay itself through Caddy). Caddy had a
    request_body limit of "64KB", which is 64,000 bytes, and answered 502 past it.
    (Megabytes more: the relay's lingering close, tests/test_shell.py; past it, whether a
    client that is still sending reads the 413 is up to the proxy.)"""
    pubkey = crypto.public_key(alice).hex()
    async with behind_proxy(relay_factory, proxy) as stack, stack.https() as web:
        limit = stack.relay.settings.server.max_request_body_bytes
        request = orjson.dumps({"pubkey": pubkey, "plan": "admission"})
        headers = {"Content-Type": "application/json"}
        largest = request + b" " * (limit - len(request))  # valid JSON, padded with whitespace
        reply = await web.post("/api/invoice", content=largest, headers=headers)
        assert reply.status_code == 200 and reply.json()["bolt11"], (reply.status_code, reply.text[:200])
        reply = await web.post("/api/invoice", content=largest + b" ", headers=headers)
        assert reply.status_code == 413, reply.status_code


@needs_caddy
def test_caddy_validates_the_caddyfile_as_it_is(tmp_path: Path) -> None:
    """`caddy validate` on deploy/caddy/Caddyfile unchanged (relay.example.com, ACME): it
    loads and provisions the config without starting it, so nothing is fetched."""
    env = {"PATH": "/usr/bin:/bin", **dict.fromkeys(("HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME"), str(tmp_path))}
    done = subprocess.run(
        [CADDY, "validate", "--config", str(CADDYFILE), "--adapter", "caddyfile"],
        capture_output=True, text=True, env=env, timeout=60,
    )
    assert done.returncode == 0 and "Valid configuration" in done.stdout + done.stderr, done.stderr
    # and it is in caddy fmt's form (Caddy warns at every start about a file that is not)
    assert "not formatted" not in done.stderr, done.stderr
