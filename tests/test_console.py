"""The operator console's HTTP side (relay/ops/console.py) over real HTTP: the page and its
security headers, NIP-98 admin sign-in, and the relay's own panels (overview, moderation,
settings) as an operator's browser fetches them. The browser itself: test_console_browser.py."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import orjson
import pytest
from pydantic import BaseModel, ConfigDict

from relay.app import build_relay
from relay.config import Settings, load_settings
from relay.nostr import crypto
from relay.nostr.redaction import MASK, redact_url
from relay.ops.console import EventRate, rate_chart
from relay.plugins.hooks import ConsolePanel, PluginHooks
from relay.plugins.protocol import PluginHost
from relay.session.server import Relay
from relay.store.base import Store
from tests.conftest import RelayFactory, listening_socket
from tests.lightning.payment_stack import nip98_header
from tests.nostr_client import NostrClient, signed

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
BLOCK_TYPES = {"stats", "chart", "table", "form", "text"}


def base_url(relay: Relay) -> str:
    return f"http://127.0.0.1:{relay.port}"


async def get_signed(
    http: httpx.AsyncClient, relay: Relay, target: str, secret: bytes, **header: Any
) -> httpx.Response:
    url = base_url(relay) + target
    return await http.get(url, headers={"Authorization": nip98_header(secret, url, **header)})


async def panel(http: httpx.AsyncClient, relay: Relay, name: str, secret: bytes, query: str = "") -> dict[str, Any]:
    answer = await get_signed(http, relay, f"/admin/api/panel/{name}{query}", secret)
    assert answer.status_code == 200, answer.text
    doc: dict[str, Any] = answer.json()
    return doc


async def nip86(http: httpx.AsyncClient, relay: Relay, secret: bytes, method: str, *params: Any) -> Any:
    """NIP-86 as the console's buttons call it: POST to the relay's URL, NIP-98 with payload."""
    url = base_url(relay) + "/"
    body = orjson.dumps({"method": method, "params": list(params)})
    headers = {
        "Content-Type": "application/nostr+json+rpc",
        "Authorization": nip98_header(secret, url, "POST", body=body),
    }
    answer = await http.post(url, content=body, headers=headers)
    assert answer.status_code == 200 and "error" not in answer.json(), answer.text
    return answer.json()["result"]


def tiles(doc: dict[str, Any]) -> dict[str, str]:
    """The overview's figures, label -> value (an events/s label names its window)."""
    out: dict[str, str] = {}
    for block in doc["blocks"]:
        if block["type"] == "stats":
            for item in block["items"]:
                out[item["label"].split(" (")[0]] = item["value"]
    return out


def tables(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {b["title"]: b for b in doc["blocks"] if b["type"] == "table"}


def assert_console_headers(answer: httpx.Response) -> None:
    assert answer.headers["content-security-policy"] == CSP
    assert answer.headers["cache-control"] == "no-store"
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.headers["referrer-policy"] == "no-referrer"
    assert "set-cookie" not in answer.headers


async def test_the_page_and_its_files_are_served_with_a_strict_csp_and_no_cookie(
    relay_factory: RelayFactory, alice: bytes
) -> None:
    async with relay_factory(admin={"pubkeys": [crypto.public_key(alice).hex()]}) as relay, httpx.AsyncClient() as http:
        base = base_url(relay)
        page = await http.get(base + "/admin", headers={"Accept": "text/html"})
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert_console_headers(page)
        html = page.text
        # No inline script or style: the CSP forbids them, so the page must not need them.
        assert '<script src="/admin/console.js" defer></script>' in html
        assert "<style" not in html and " style=" not in html and "javascript:" not in html
        assert html.count("<script") == 1
        assets = (("console.js", "text/javascript"), ("console.css", "text/css"), ("favicon.svg", "image/svg"))
        for name, kind in assets:
            asset = await http.get(f"{base}/admin/{name}")
            assert asset.status_code == 200 and asset.headers["content-type"].startswith(kind), name
            assert_console_headers(asset)
        script = (await http.get(base + "/admin/console.js")).text
        for sink in (".innerHTML", ".outerHTML", "insertAdjacentHTML", "document.write", "eval(", "http://", "https://"):
            assert sink not in script, sink
        for refused in (await http.post(base + "/admin/api/panels"), await http.get(base + "/admin/nothing")):
            assert refused.status_code in (404, 405)
            assert_console_headers(refused)


async def test_the_api_wants_a_fresh_nip98_get_for_this_url_from_an_admin(
    relay_factory: RelayFactory, alice: bytes, bob: bytes
) -> None:
    async with relay_factory(admin={"pubkeys": [crypto.public_key(alice).hex()]}) as relay, httpx.AsyncClient() as http:
        target = "/admin/api/panels"
        url = base_url(relay) + target
        refused = [
            await http.get(url),  # unsigned
            await get_signed(http, relay, target, alice, created_at=int(time.time()) - 600),  # expired
            await http.get(url, headers={"Authorization": nip98_header(alice, url + "?x=1")}),  # another URL
            await http.get(url, headers={"Authorization": nip98_header(alice, url, "POST")}),  # another method
            await http.get(url, headers={"Authorization": "Nostr bm90IGFuIGV2ZW50"}),  # not an event
        ]
        for answer in refused:
            assert answer.status_code == 401, answer.text
            assert answer.json()["error"].startswith("sign-in refused:")
            assert_console_headers(answer)
        # A page opened at another address than relay.public_url is told which one to use.
        assert f"open {base_url(relay)}/admin" in refused[2].json()["error"]
        # The query is part of the signed URL: a signature for one search cannot fetch another.
        signed_for = base_url(relay) + "/admin/api/panel/settings?section=relay"
        swapped = await http.get(
            base_url(relay) + "/admin/api/panel/settings?section=storage",
            headers={"Authorization": nip98_header(alice, signed_for)},
        )
        assert swapped.status_code == 401

        stranger = await get_signed(http, relay, target, bob)
        assert stranger.status_code == 403 and "[admin] pubkeys" in stranger.json()["error"]
        assert_console_headers(stranger)

        admitted = await get_signed(http, relay, target, alice)
        assert admitted.status_code == 200
        assert_console_headers(admitted)
        names = [p["name"] for p in admitted.json()]
        assert names[:3] == ["overview", "moderation", "settings"]
        for entry in admitted.json():
            doc = await panel(http, relay, entry["name"], alice)
            assert doc["title"] == entry["title"] and doc["blocks"], entry
            assert {b["type"] for b in doc["blocks"]} <= BLOCK_TYPES

        unknown = await get_signed(http, relay, "/admin/api/panel/nope", alice)
        assert unknown.status_code == 404 and unknown.json() == {"error": "no such panel"}


async def test_without_admins_nobody_gets_in(relay_factory: RelayFactory, alice: bytes) -> None:
    async with relay_factory() as relay, httpx.AsyncClient() as http:
        answer = await get_signed(http, relay, "/admin/api/panels", alice)
        assert answer.status_code == 403


def _with_password(dsn: str, password: str) -> str:
    parts = urlsplit(dsn)
    user = parts.username or "postgres"
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, f"{user}:{password}@{host}", parts.path, parts.query, parts.fragment))


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def test_settings_shows_every_section_with_secrets_masked(
    relay_factory: RelayFactory, alice: bytes, backend: str
) -> None:
    storage: dict[str, Any] = {}
    if backend == "postgres":
        dsn = os.environ.get("SATSRELAY_TEST_POSTGRES")
        if not dsn:
            pytest.skip("SATSRELAY_TEST_POSTGRES is unset (e.g. postgresql://postgres@127.0.0.1:5432/test)")
        # The test server trusts local connections, so a password in the URL is carried, unused.
        storage = {"url": _with_password(dsn, "pg-pass-7741"), "schema_name": f"console_{os.getpid()}_{time.time_ns()}"}
    secrets = ["metrics-token-5521", "lnbits-invoice-key-9d2f", "pg-pass-7741", "rune-77aa", "phoenixd-pw-13"]
    relay_key = crypto.generate_secret().hex()
    try:
        async with relay_factory(
            admin={"pubkeys": [crypto.public_key(alice).hex()]},
            server={"metrics_token": "metrics-token-5521"},
            relay={"name": "Console test relay", "secret_key": relay_key},
            storage=storage,
            payments={
                "lnbits": {"url": "http://lnbits.local:5000", "invoice_key": "lnbits-invoice-key-9d2f"},
                "cln": {"rune": "rune-77aa"},
                "phoenixd": {"url": "http://user:phoenixd-pw-13@127.0.0.1:9740"},
            },
        ) as relay, httpx.AsyncClient() as http:
            answer = await get_signed(http, relay, "/admin/api/panel/settings", alice)
            assert answer.status_code == 200
            for secret in [*secrets, relay_key]:
                assert secret not in answer.text, secret
            sections = tables(answer.json())
            for name in ("[relay]", "[server]", "[storage]", "[limits]", "[admin]", "[payments]",
                         "[payments.lnbits]", "[payments.cln]", "Top-level keys"):
                assert name in sections, (name, list(sections))

            def value(section: str, key: str) -> str:
                return dict(map(tuple, sections[section]["rows"]))[key]  # type: ignore[arg-type]

            assert value("[relay]", "name") == "Console test relay"
            assert value("[relay]", "secret_key") == "••••"
            assert value("[server]", "metrics_token") == "••••"
            assert value("[payments.lnbits]", "invoice_key") == "••••"
            assert value("[payments.lnbits]", "url") == "http://lnbits.local:5000"
            assert value("[payments.cln]", "rune") == "••••"
            assert value("[payments.lnd]", "macaroon_hex") == "(empty)"  # nothing to hide: an operator sees it is unset
            assert value("[payments.phoenixd]", "url") == "http://user:••••@127.0.0.1:9740"
            assert value("[admin]", "pubkeys") == orjson.dumps([crypto.public_key(alice).hex()]).decode()
            if backend == "postgres":
                assert value("[storage]", "url").startswith("postgresql://postgres:••••@")

            # The section picker (a form) narrows the page to one table.
            only = await panel(http, relay, "settings", alice, "?section=payments.lnbits")
            assert list(tables(only)) == ["[payments.lnbits]"]
            form = next(b for b in only["blocks"] if b["type"] == "form")
            assert form["fields"][0]["value"] == "payments.lnbits"
    finally:
        if backend == "postgres":
            import asyncpg

            conn = await asyncpg.connect(os.environ["SATSRELAY_TEST_POSTGRES"])
            try:
                await conn.execute(f'DROP SCHEMA IF EXISTS "{storage["schema_name"]}" CASCADE')
            finally:
                await conn.close()


async def test_moderation_lists_a_reported_event_until_it_is_banned_through_nip86(
    relay_factory: RelayFactory, alice: bytes, bob: bytes
) -> None:
    admin = crypto.generate_secret()
    async with (
        relay_factory(admin={"pubkeys": [crypto.public_key(admin).hex()]}) as relay,
        httpx.AsyncClient() as http,
        NostrClient(relay.url) as client,
    ):
        bad = signed(alice, 1, "buy   my\ncoins " + "x" * 300)
        assert (await client.publish(bad))[0]
        report = signed(bob, 1984, "scam link", [["e", bad.id, "spam"], ["p", bad.pubkey]])
        assert (await client.publish(report))[0]

        queue = tables(await panel(http, relay, "moderation", admin))["Reported events"]
        assert queue["columns"] == ["Event", "Author", "Content", "Reporters", "Reasons"]
        (row,) = queue["rows"]
        assert row[0] == bad.id and row[1] == bad.pubkey and row[3] == "1" and row[4] == "spam scam link"
        assert row[2].startswith("buy my coins xxx") and row[2].endswith("…") and len(row[2]) == 140
        actions = {(a["method"], a["column"], a["reason"]) for a in queue["actions"]}
        assert actions == {("banevent", 0, True), ("banpubkey", 1, True)}

        assert await nip86(http, relay, admin, "banevent", bad.id, "scam") is True
        doc = await panel(http, relay, "moderation", admin)
        assert tables(doc)["Reported events"]["rows"] == []
        banned = tables(doc)["Banned events"]
        assert banned["rows"] == [[bad.id, "scam"]]
        assert banned["actions"] == [{"label": "Unban", "method": "unbanevent", "column": 0, "reason": False}]
        assert await nip86(http, relay, admin, "banpubkey", bad.pubkey, "spammer") is True
        doc = await panel(http, relay, "moderation", admin)
        assert tables(doc)["Banned pubkeys"]["rows"] == [[bad.pubkey, "spammer"]]


async def test_overview_figures_move_when_clients_publish_and_subscribe(
    relay_factory: RelayFactory, alice: bytes
) -> None:
    admin = crypto.generate_secret()
    async with (
        relay_factory(admin={"pubkeys": [crypto.public_key(admin).hex()]}) as relay,
        httpx.AsyncClient() as http,
    ):
        before = await panel(http, relay, "overview", admin)
        assert before["refresh"] == 5 and before["title"] == "Overview"
        figures = tiles(before)
        assert figures["accepted since start"] == "0" and figures["events/s"] == "0.0"
        assert figures["open connections"] == "0" and figures["live subscriptions"] == "0"
        assert figures["database size"].endswith(("KiB", "MiB")) and figures["version"]
        charts = [b for b in before["blocks"] if b["type"] == "chart"]
        assert len(charts) == 1 and charts[0]["svg"].startswith("<svg xmlns=")

        async with NostrClient(relay.url) as client:
            await client.req("live", {"kinds": [1]})
            for i in range(5):
                assert (await client.publish(signed(alice, 1, f"note {i}")))[0]
            after = tiles(await panel(http, relay, "overview", admin))
        assert after["accepted since start"] == "5"
        assert float(after["events/s"]) > 0
        assert after["open connections"] == "1" and after["live subscriptions"] == "1"


def test_events_per_second_is_measured_over_the_last_seconds_and_charted_every_ten() -> None:
    clock, count = [1000.0], [0.0]
    rate = EventRate(lambda: count[0], lambda: clock[0])
    assert rate.current() == (0.0, 0.0) and rate.history() == []
    for _ in range(30):  # 10 events a second for 30 s, sampled once a second
        rate.sample()
        clock[0] += 1
        count[0] += 10
    assert rate.current() == (10.0, 5.0)
    count[0] += 100  # a burst: it shows at once, spread over the window
    assert rate.current() == (30.0, 5.0)
    assert rate.history() == [(11.0, 10.0), (1.0, 10.0)]  # (seconds ago, events/s), oldest first
    assert "<polyline" in rate_chart(rate.history()) and "collecting" in rate_chart([])


# --- an extension's panels: listed after the relay's; one that fails is logged, not shown ----


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    enabled: bool = True


def _panels() -> list[ConsolePanel]:
    async def echo(query: Mapping[str, str]) -> dict[str, Any]:
        return {"title": "Echo", "refresh": 0, "blocks": [{"type": "text", "text": query.get("q", "")}]}

    async def broken(query: Mapping[str, str]) -> dict[str, Any]:
        raise RuntimeError("secret internals 0xdeadbeef")

    return [ConsolePanel("echo", "Echo", echo), ConsolePanel("broken", "Broken", broken),
            ConsolePanel("overview", "Not the overview", echo)]


class _PanelsPlugin:
    """A plug-in that only adds console pages (relay.plugins.hooks: one list filled)."""

    section = "panels"
    settings_model = _Section

    def build(self, settings: Settings, store: Store, registry: Any, host: PluginHost) -> PluginHooks:
        return PluginHooks(name="panels", console_panels=_panels())

    def add_commands(self, sub: Any, common: Any, load: Any) -> None:
        pass


@contextlib.asynccontextmanager
async def panels_relay(tmp_path: Path, admin: str) -> AsyncIterator[Relay]:
    plugin = _PanelsPlugin()
    sock = listening_socket()
    port = sock.getsockname()[1]
    settings = load_settings(
        None,
        plugins=[plugin],
        server={"port": port, "metrics_listen": "127.0.0.1:0"},
        relay={"public_url": f"ws://127.0.0.1:{port}"},
        storage={"url": f"sqlite:///{tmp_path}/relay.db"},
        admin={"pubkeys": [admin]},
        log_level="WARNING",
    )
    relay = build_relay(settings, plugins=[plugin])
    await relay.start(sock=sock)
    try:
        yield relay
    finally:
        await relay.stop()


async def test_extension_panels_follow_the_relays_and_a_failing_one_is_logged_not_shown(
    tmp_path: Path, alice: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    async with panels_relay(tmp_path, crypto.public_key(alice).hex()) as relay, httpx.AsyncClient() as http:
        listed = (await get_signed(http, relay, "/admin/api/panels", alice)).json()
        # An extension cannot take the name of one of the relay's panels.
        assert [p["name"] for p in listed] == ["overview", "moderation", "settings", "echo", "broken"]
        assert (await panel(http, relay, "overview", alice))["title"] == "Overview"
        echo = await panel(http, relay, "echo", alice, "?q=hello%20there&q=second")
        assert echo["blocks"] == [{"type": "text", "text": "hello there"}]

        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="relay.ops.console"):
            failed = await get_signed(http, relay, "/admin/api/panel/broken", alice)
        assert failed.status_code == 500
        assert failed.json() == {"error": "the Broken panel failed; see the relay's log"}
        assert "0xdeadbeef" not in failed.text and "Traceback" not in failed.text
        assert_console_headers(failed)
        (record,) = [r for r in caplog.records if r.name == "relay.ops.console"]
        assert "'broken'" in record.getMessage() and record.exc_info is not None
        assert "0xdeadbeef" in str(record.exc_info[1])
        # The console still answers afterwards.
        assert (await get_signed(http, relay, "/admin/api/panels", alice)).status_code == 200


def test_redact_url_masks_secrets_and_leaves_other_urls_as_written() -> None:
    assert redact_url("sqlite:///data/satsrelay.db") == "sqlite:///data/satsrelay.db"
    assert redact_url("sqlite:///:memory:") == "sqlite:///:memory:"
    assert redact_url("postgresql://relay:hunter2@db:5432/relay") == f"postgresql://relay:{MASK}@db:5432/relay"
    assert redact_url("https://wallet.example/api?api_key=abc&x=1") == f"https://wallet.example/api?api_key={MASK}&x=1"
    assert redact_url("https://wallet.example/api?x=1") == "https://wallet.example/api?x=1"
