"""Several plug-ins through the core's hook lists (issue 18, ``relay.plugins.hooks``): two enabled
at once compose over real WebSockets, in their documented order, and a relay whose payments
plug-in is not installed starts and serves as a free relay.

The test plug-in is a small "allowlist" free tier (order 10): it admits listed pubkeys
free, refuses banned ones for good, and otherwise refuses with a hint that a later gate may
override; it also fills the NIP-11, HTTP route and NIP-86 method lists.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator, Mapping
from http import HTTPStatus
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import BaseModel, ConfigDict

from lightning.plugin import PLUGIN as PAYMENTS
from relay.app import build_relay
from relay.config import load_settings
from relay.net.http import HttpRequest, HttpResponse, response
from relay.nostr import crypto
from relay.nostr.errors import Blocked, Restricted
from relay.nostr.event import Event, sign_event
from relay.nostr.policy import WriteContext
from relay.plugins.hooks import Admit, HookError, Hooks, PluginHooks, Refuse, Verdict
from relay.plugins.protocol import PluginHost
from relay.session.server import Relay
from relay.store.base import Store
from tests.conftest import listening_socket
from tests.nostr_client import NostrClient

REPO = Path(__file__).resolve().parent.parent


class AllowlistSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = False
    pubkeys: list[str] = []
    banned: list[str] = []


class AllowlistPlugin:
    section = "allowlist"
    settings_model = AllowlistSettings

    def build(self, settings: Any, store: Store, registry: Any, host: PluginHost) -> PluginHooks | None:
        conf = settings.section("allowlist")
        assert isinstance(conf, AllowlistSettings)
        if not conf.enabled:
            return None
        listed, banned = frozenset(conf.pubkeys), frozenset(conf.banned)

        async def gate(event: Event, ctx: WriteContext) -> Verdict:
            if event.pubkey in banned:
                return Refuse(Blocked("banned by the allowlist"), final=True)
            if event.pubkey in listed:
                return Admit()
            return Refuse(Restricted("ask the operator to add you to the allowlist"))

        async def route(request: HttpRequest) -> HttpResponse | None:
            if request.target == "/allowlist":
                return response(HTTPStatus.OK, b"%d listed\n" % len(listed), "text/plain")
            return None

        async def listed_method(params: list[Any]) -> Any:
            return sorted(listed)

        def nip11() -> Mapping[str, Any]:
            return {"limitation": {"restricted_writes": True}, "allowlist_size": len(listed)}

        return PluginHooks(
            name="allowlist", order=10, write_gates=(gate,), http_routes=(route,),
            management_methods={"allowlist.list": listed_method}, nip11_fields=(nip11,),
        )

    def add_commands(self, sub: Any, common: Any, load: Any) -> None:
        pass


@contextlib.asynccontextmanager
async def two_plugin_relay(tmp_path: Path, **sections: Any) -> AsyncIterator[Relay]:
    plugins = [AllowlistPlugin(), PAYMENTS]
    sock = listening_socket()
    port = sock.getsockname()[1]
    settings = load_settings(
        None,
        plugins=plugins,
        server={"port": port, "metrics_listen": "127.0.0.1:0"},
        relay={"public_url": f"ws://127.0.0.1:{port}"},
        storage={"url": f"sqlite:///{tmp_path}/relay.db"},
        log_level="WARNING",
        **sections,
    )
    relay = build_relay(settings, plugins=plugins)
    await relay.start(sock=sock)
    try:
        yield relay
    finally:
        await relay.stop()


def note(secret: bytes) -> Event:
    return sign_event(secret, 1, f"hello {time.monotonic_ns()}", [], int(time.time()))


async def test_a_free_tier_and_payments_compose_in_order_over_websockets(tmp_path: Path) -> None:
    friend, banned, stranger = crypto.generate_secret(), crypto.generate_secret(), crypto.generate_secret()
    payments = {"enabled": True, "backend": "fake", "admission": {"enabled": True, "fee_sats": 21},
                "fake": {"state_file": str(tmp_path / "fake.db")}}
    allowlist = {"enabled": True, "pubkeys": [crypto.public_key(friend).hex()],
                 "banned": [crypto.public_key(banned).hex()]}
    async with two_plugin_relay(tmp_path, payments=payments, allowlist=allowlist) as relay:
        assert [p.name for p in relay.hooks.plugins] == ["allowlist", "payments"]
        async with NostrClient(relay.url) as c:
            # The free tier (order 10) admits its member before the paywall is asked.
            assert await c.publish(note(friend)) == (True, "")
            # A banned key is refused for good: the paywall is never asked.
            assert await c.publish(note(banned)) == (False, "blocked: banned by the allowlist")
            # A stranger hears every way in: the free tier's, then the payment reply.
            ok, message = await c.publish(note(stranger))
            assert not ok
            assert message.startswith("restricted: ask the operator to add you to the allowlist; or ")
            assert "/join?pubkey=" in message and "21 sats" in message
            # Paying opens the paywall; the free tier's refusal does not stand in its way.
            await relay.hooks.owner("payments").store.update_account(  # type: ignore[attr-defined]
                crypto.public_key(stranger).hex(), int(time.time()), admitted_until=2**62
            )
            await _eventually_accepted(c, stranger)
        async with httpx.AsyncClient(base_url=relay.url.replace("ws://", "http://")) as http:
            info = (await http.get("/", headers={"Accept": "application/nostr+json"})).json()
            # Both plug-ins' NIP-11 fields, limitation merged key by key.
            assert info["allowlist_size"] == 1 and "payments_url" in info
            assert info["limitation"]["restricted_writes"] is True and info["limitation"]["payment_required"] is True
            # Both plug-ins' routes answer.
            assert (await http.get("/allowlist")).text == "1 listed\n"
            assert (await http.get("/join")).status_code == 200
        assert "allowlist.list" in relay.hooks.management_methods and "payments.grant" in relay.hooks.management_methods


async def _eventually_accepted(c: NostrClient, secret: bytes) -> None:
    deadline = time.monotonic() + 5
    while True:
        ok, message = await c.publish(note(secret))
        if ok or time.monotonic() > deadline:
            assert ok, message
            return
        await asyncio.sleep(0.2)


async def test_composition_rules_without_a_relay() -> None:
    """The verdict rules themselves: first admit wins, a final refusal ends the walk, no
    opinion at all admits, non-final refusals are joined."""
    ev = note(crypto.generate_secret())
    ctx = WriteContext(0, frozenset(), "127.0.0.1")

    def gate(verdict: Verdict) -> Any:
        async def judge(event: Event, ctx: WriteContext) -> Verdict:
            return verdict

        return judge

    def hooks(*verdicts: Verdict) -> Hooks:
        return Hooks([PluginHooks(name=f"p{i}", order=i, write_gates=(gate(v),)) for i, v in enumerate(verdicts)])

    assert await hooks().judge(ev, ctx) == Admit()
    assert await hooks(None, None).judge(ev, ctx) == Admit()
    assert await hooks(Refuse(Restricted("a")), Admit(("x",))).judge(ev, ctx) == Admit(("x",))
    final = Refuse(Blocked("no"), final=True)
    assert await hooks(final, Admit()).judge(ev, ctx) == final
    joined = await hooks(Refuse(Restricted("a")), None, Refuse(Restricted("b"))).judge(ev, ctx)
    assert isinstance(joined, Refuse) and str(joined.rejection) == "restricted: a; or b"
    with pytest.raises(HookError, match=r"x\.y"):
        Hooks([PluginHooks(name="a", management_methods={"x.y": gate(None)}),
               PluginHooks(name="b", management_methods={"x.y": gate(None)})])


# A relay process in which the payments plug-in is not installed: its entry point is not
# found and its package cannot be imported.
WITHOUT_PAYMENTS = """
import sys
import importlib.metadata as metadata
sys.modules["lightning"] = None  # importing it fails, as when the package is absent
found = metadata.entry_points
metadata.entry_points = lambda **kw: [e for e in found(**kw) if not e.value.startswith("lightning")]
from relay.cli import main
sys.exit(main(sys.argv[1:]))
"""


async def test_without_the_payments_plugin_the_relay_is_a_free_relay(tmp_path: Path) -> None:
    sock = listening_socket()
    port = sock.getsockname()[1]
    sock.close()
    config = tmp_path / "relay.toml"
    config.write_text(
        f'[server]\nport = {port}\nmetrics_listen = ""\n[storage]\nurl = "sqlite:///{tmp_path}/relay.db"\n'
        f'[relay]\nkey_file = "{tmp_path}/relay.key"\n'
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", WITHOUT_PAYMENTS, "serve", "--config", str(config),
        cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    try:
        url = f"ws://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                async with NostrClient(url) as c:
                    assert await c.publish(note(crypto.generate_secret())) == (True, "")
                    break
            except OSError:
                assert proc.returncode is None, "the relay exited at start"
                assert time.monotonic() < deadline, "the relay did not start"
                await asyncio.sleep(0.2)
        async with httpx.AsyncClient() as http:
            info = (await http.get(f"http://127.0.0.1:{port}/", headers={"Accept": "application/nostr+json"})).json()
        assert "payments_url" not in info and not info.get("limitation", {}).get("payment_required")
    finally:
        if proc.returncode is None:
            proc.terminate()
        out, _ = await asyncio.wait_for(proc.communicate(), 20)
    text = out.decode()
    assert proc.returncode == 0, text
    assert "plug-ins: none" in text and "Traceback" not in text
