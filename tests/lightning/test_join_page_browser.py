"""The join page in real headless Chromium: pubkey -> QR -> simulated payment -> "paid" -> publish.

Needs Debian's ``chromium`` (``make chromium``); skipped with the reason when absent.
Screenshots go to the test's temp folder, or to docs/img/ (for the README) when
``SATSRELAY_UPDATE_SCREENSHOTS=1``, so an ordinary test run leaves the work tree clean.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from lightning.pubkeys import npub_encode
from relay import crypto
from relay.event import sign_event
from tests.conftest import RelayFactory
from tests.nostr_client import NostrClient

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
DOCS_IMG = Path(__file__).resolve().parents[2] / "docs" / "img"

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium not installed (run `make chromium`)")


async def test_join_page_pays_and_the_event_is_then_accepted(
    relay_factory: RelayFactory, alice: bytes, tmp_path: Path
) -> None:
    from playwright.async_api import async_playwright, expect

    screenshots = DOCS_IMG if os.environ.get("SATSRELAY_UPDATE_SCREENSHOTS") == "1" else tmp_path

    payments: dict[str, Any] = {"enabled": True, "backend": "fake", "poll_interval_seconds": 0.5}
    pubkey = crypto.public_key(alice).hex()
    screenshots.mkdir(parents=True, exist_ok=True)
    async with relay_factory(payments=payments, relay={"name": "satsrelay demo"}) as relay:
        base = f"http://127.0.0.1:{relay.port}"
        async with NostrClient(relay.url) as client:
            ok, message = await client.publish(sign_event(alice, 1, "before", [], created_at=int(time.time())))
            assert not ok and f"pay at {base}/join" in message

            async with async_playwright() as pw:
                browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                try:
                    page = await browser.new_page(viewport={"width": 900, "height": 1000})
                    requested: list[str] = []
                    page.on("request", lambda request: requested.append(request.url))
                    await page.goto(base + "/", wait_until="load")
                    assert await page.locator("h1").inner_text() == "satsrelay demo"
                    await page.screenshot(path=str(screenshots / "join-page.png"), full_page=True)

                    await page.fill("#pubkey", npub_encode(pubkey))
                    await page.click("#get-invoice")
                    await page.wait_for_selector("#step-pay:not([hidden])")
                    # The page's CSP forbids eval, so waits go through locators, not wait_for_function.
                    await expect(page.locator("#qr")).to_have_js_property("complete", True)
                    assert await page.locator("#qr").bounding_box() is not None
                    bolt11 = await page.input_value("#bolt11")
                    assert bolt11.startswith("lnbcrt")
                    assert await page.inner_text("#status") == "waiting for payment"
                    await page.screenshot(path=str(screenshots / "join-invoice.png"), full_page=True)

                    await page.click("#simulate")
                    await expect(page.locator("#status")).to_have_text("paid", timeout=10_000)
                    assert await page.inner_text("#acct-admitted") == "yes, for good"
                    await page.screenshot(path=str(screenshots / "join-paid.png"), full_page=True)
                    assert requested and all(url.startswith(base + "/") for url in requested), requested
                finally:
                    await browser.close()

            ok, message = await client.publish(sign_event(alice, 1, "after", [], created_at=int(time.time())))
            assert ok, message


async def test_account_page_shows_the_balance_to_its_owner_after_a_nip07_signed_request(
    relay_factory: RelayFactory, alice: bytes
) -> None:
    """The "signed-in view": the page asks the NIP-07 extension to sign a NIP-98 event for
    this very URL and fetches the owner's view with it (a stand-in extension signs here)."""
    from playwright.async_api import async_playwright, expect

    pubkey = crypto.public_key(alice).hex()
    payments: dict[str, Any] = {"enabled": True, "backend": "fake", "credit": {"enabled": True}}
    async with relay_factory(payments=payments) as relay:
        await relay.store.update_account(pubkey, int(time.time()), credit_delta_msat=21_000)
        url = f"http://127.0.0.1:{relay.port}/account/{pubkey}"

        def sign(template: dict[str, Any]) -> dict[str, Any]:
            event = sign_event(alice, template["kind"], template["content"], template["tags"], template["created_at"])
            return event.to_dict()

        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = await browser.new_page()
                await page.expose_function("standInSign", sign)
                await page.add_init_script("window.nostr = { signEvent: (t) => window.standInSign(t) };")
                await page.goto(url, wait_until="load")
                assert "owner only" in await page.inner_text("#acct-credit")  # the public view
                await page.click("#sign-in")
                await expect(page.locator("#acct-credit")).to_have_text("21 sats", timeout=10_000)
                assert await page.inner_text("#acct-state") == "normal"
            finally:
                await browser.close()
