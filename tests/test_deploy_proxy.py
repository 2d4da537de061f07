"""deploy/nginx/satsrelay.conf in front of a relay configured like deploy/relay.toml, spoken
to the way clients on the internet speak to it: TLS, WebSocket upgrade, NIP-11, the join page
and a payment, NIP-42 AUTH against ``public_url``, and per-address limits applied to the
address nginx forwards, not to nginx's own.

nginx is Debian's package (``make test-deps``), started as an ordinary process on free
ports with its own prefix and config in a temp folder (no system service; as root it drops
to ``nobody`` first), with a self-signed certificate for relay.example.com in place of the
Let's Encrypt one. Clients connect to ``wss://relay.example.com:<port>`` (that name in the
TLS handshake, the Host header and the AUTH event) over a TCP connection to 127.0.0.1; two
of them come from 127.0.0.2 and 127.0.0.3 (the whole of 127/8 is loopback on Linux), as two
people on the internet would.
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
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
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
HOST = "relay.example.com"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
NOBODY = 65534

pytestmark = pytest.mark.skipif(not Path(NGINX).exists(), reason="nginx not installed (run `make deploy-tools`)")


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


@dataclass
class Proxied:
    relay: Relay
    port: int  # nginx's TLS port
    http_port: int  # its plain-HTTP port (redirects to https)
    tls: ssl.SSLContext  # trusts the test certificate

    @property
    def public_url(self) -> str:
        return f"wss://{HOST}:{self.port}"

    def https(self, local_address: str = "127.0.0.1") -> httpx.AsyncClient:
        transport = httpx.AsyncHTTPTransport(verify=self.tls, local_address=local_address)
        return httpx.AsyncClient(base_url=f"https://127.0.0.1:{self.port}", transport=transport, timeout=10)

    def client(self, source: str = "127.0.0.1", headers: dict[str, str] | None = None) -> ProxiedClient:
        return ProxiedClient(self, source, headers or {})


class ProxiedClient(NostrClient):
    """A NostrClient reaching the relay through nginx from a given source address."""

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


@contextlib.contextmanager
def nginx_running(site: Callable[[Path], str], port: int) -> Any:
    """nginx with its own prefix in a temp folder; as root, it runs as ``nobody``."""
    prefix = Path(tempfile.mkdtemp(prefix="satsrelay-nginx-"))
    try:
        (prefix / "satsrelay.conf").write_text(site(prefix))
        kinds = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        temp_paths = "\n".join(f"    {kind}_temp_path {prefix}/{kind}_temp;" for kind in kinds)
        (prefix / "nginx.conf").write_text(
            f"daemon off;\nworker_processes 1;\npid {prefix}/nginx.pid;\nerror_log {prefix}/error.log info;\n"
            "events { worker_connections 256; }\n"
            f"http {{\n    access_log {prefix}/access.log;\n{temp_paths}\n    include {prefix}/satsrelay.conf;\n}}\n"
        )
        as_root = os.geteuid() == 0
        if as_root:
            for path in (prefix, *prefix.iterdir()):
                os.chown(path, NOBODY, NOBODY)

        def drop_privileges() -> None:
            if as_root:
                os.setgroups([])
                os.setgid(NOBODY)
                os.setuid(NOBODY)

        check = subprocess.run(
            [NGINX, "-t", "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-e", str(prefix / "error.log")],
            capture_output=True,
            text=True,
            preexec_fn=drop_privileges,
            timeout=30,
        )
        assert check.returncode == 0, check.stderr
        proc = subprocess.Popen(
            [NGINX, "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-e", str(prefix / "error.log")],
            preexec_fn=drop_privileges,
            stderr=subprocess.DEVNULL,
        )
        try:
            yield proc, prefix
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGQUIT)  # graceful: finish what is in flight
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    finally:
        shutil.rmtree(prefix, ignore_errors=True)


@contextlib.asynccontextmanager
async def behind_nginx(relay_factory: RelayFactory, **sections: dict[str, Any]) -> AsyncIterator[Proxied]:
    """A relay set up like deploy/relay.toml (public_url the proxy's wss:// address,
    real_ip_header X-Real-IP), with payments on the demo wallet, behind nginx."""
    port, http_port = free_port(), free_port()
    settings: dict[str, Any] = {
        "relay": {"public_url": f"wss://{HOST}:{port}"},
        "server": {"real_ip_header": "X-Real-IP"},
        "payments": {"enabled": True, "backend": "fake"},
        **sections,
    }
    async with relay_factory(**settings) as relay:
        certs: dict[str, Path] = {}

        def site(prefix: Path) -> str:
            certs["cert"], key = self_signed(prefix)
            return site_config(port, http_port, relay.port, certs["cert"], key)

        with nginx_running(site, port) as (proc, prefix):
            tls = ssl.create_default_context(cafile=str(certs["cert"]))

            async def listening() -> bool:
                assert proc.poll() is None, (prefix / "error.log").read_text()
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                except OSError:
                    return False
                writer.close()
                return True

            await eventually(listening, 10, what="nginx to listen")
            yield Proxied(relay, port, http_port, tls)


async def test_nip11_the_join_page_and_the_https_redirect_through_nginx(relay_factory: RelayFactory) -> None:
    async with behind_nginx(relay_factory) as stack, stack.https() as web:
        info = await web.get("/", headers={"Accept": "application/nostr+json", "Host": HOST})
        assert info.status_code == 200 and info.headers["access-control-allow-origin"] == "*"
        doc = info.json()
        assert doc["self"] == stack.relay.identity.pubkey and doc["payments_url"] == f"https://{HOST}:{stack.port}/join"
        page = await web.get("/join")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert f"wss://{HOST}:{stack.port}" in page.text  # the address the page tells people to add
        async with httpx.AsyncClient() as plain:
            moved = await plain.get(f"http://127.0.0.1:{stack.http_port}/join", headers={"Host": HOST})
        assert moved.status_code == 301 and moved.headers["location"] == f"https://{HOST}/join"


async def test_websocket_payment_and_nip42_auth_through_nginx(relay_factory: RelayFactory, alice: bytes) -> None:
    pubkey = crypto.public_key(alice).hex()
    async with behind_nginx(relay_factory) as stack, stack.client() as client, stack.https() as web:
        ok, message = await client.publish(signed(alice, 1, "before paying"))
        assert not ok and f"https://{HOST}:{stack.port}/join" in message, message
        invoice = (await web.post("/api/invoice", json={"pubkey": pubkey, "plan": "admission"})).json()
        assert (await web.post(f"/api/fake/pay/{invoice['payment_hash']}")).status_code == 200
        note = signed(alice, 1, "paid, through nginx")
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


async def test_per_address_limits_apply_to_the_address_nginx_forwards(relay_factory: RelayFactory) -> None:
    """Two connections per address: each of two clients gets its two (all four reach the
    relay from nginx's one address), a third from either is refused with 429, and a header
    a client forges to pose as someone else does not get past nginx."""
    limits = {"max_connections_per_ip": 2}
    async with behind_nginx(relay_factory, limits=limits) as stack, contextlib.AsyncExitStack() as held:
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
