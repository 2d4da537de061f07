"""The join page in real headless Chromium: pubkey -> QR -> simulated payment -> "paid" -> publish.

Needs Debian's ``chromium`` (``make chromium``); skipped with the reason when absent.
Screenshots go to the test's temp folder, or to docs/img/ (for the README) when
``SATSRELAY_UPDATE_SCREENSHOTS=1``, so an ordinary test run leaves the work tree clean.
"""

from __future__ import annotations

import contextlib
import io
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from lightning.pubkeys import bech32_encode, npub_encode
from relay.app import build_relay
from relay.config import load_settings
from relay.nostr import crypto
from relay.nostr.event import sign_event
from relay.session.server import Relay
from tests.browser import CHROMIUM, CHROMIUM_ARGS, DOCS_IMG, stand_in_signer
from tests.conftest import RelayFactory, free_port
from tests.lightning.payment_stack import ledger_of
from tests.nostr_client import NostrClient, signed

CONFIG_EXAMPLE = Path(__file__).resolve().parents[2] / "config.example.toml"

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium not installed (run `make chromium`)")


@contextlib.asynccontextmanager
async def make_run_relay(tmp_path: Path, **sections: Any) -> AsyncIterator[Relay]:
    """The relay ``make run`` starts (config.example.toml: its name, prices, plans and demo
    wallet), on a free port and a temp database, plus ``sections`` (e.g. ``admin``): the
    README's screenshots show its pages."""
    settings = load_settings(
        CONFIG_EXAMPLE,
        server={"port": free_port(), "metrics_listen": "127.0.0.1:0"},
        storage={"url": f"sqlite:///{tmp_path}/relay.db"},
        payments={"poll_interval_seconds": 0.5, "fake": {"state_file": str(tmp_path / "fake-wallet.db")}},
        log_level="WARNING",
        **sections,
    )
    relay = build_relay(settings)
    await relay.start()
    try:
        yield relay
    finally:
        await relay.stop()


async def _no_sideways_scroll(page: Any, width: int) -> None:
    """Nothing on the page is wider than the viewport (a phone would scroll sideways)."""
    for selector in ("main", "#step-key", "#step-pay", "#step-next", "#bolt11", "#qr"):
        box = await page.locator(selector).bounding_box()
        if box is not None:
            assert box["x"] >= 0 and box["x"] + box["width"] <= width + 1, (selector, box)


@pytest.mark.parametrize("width", [1000, 390])
async def test_join_page_pays_and_the_event_is_then_accepted(alice: bytes, tmp_path: Path, width: int) -> None:
    """As a new user of ``make run``'s page, at desktop and phone width: the top-up field
    only with the credit plan, a pasted nsec caught in the page and never sent, invoice,
    simulated payment, "paid" and what to do next, then the EVENT is accepted."""
    from playwright.async_api import async_playwright, expect

    update = os.environ.get("SATSRELAY_UPDATE_SCREENSHOTS") == "1" and width == 1000
    screenshots = DOCS_IMG if update else tmp_path
    pubkey = crypto.public_key(alice).hex()
    screenshots.mkdir(parents=True, exist_ok=True)
    async with make_run_relay(tmp_path) as relay:
        base = f"http://127.0.0.1:{relay.port}"
        async with NostrClient(relay.url) as client:
            ok, message = await client.publish(sign_event(alice, 1, "before", [], created_at=int(time.time())))
            assert not ok and "/join" in message

            async with async_playwright() as pw:
                browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                try:
                    page = await browser.new_page(viewport={"width": width, "height": 1000})
                    requested: list[str] = []
                    sent: list[str] = []
                    page.on("request", lambda request: requested.append(request.url))
                    page.on("request", lambda request: sent.append(request.url + (request.post_data or "")))
                    await page.goto(base + "/", wait_until="load")
                    assert await page.locator("h1").inner_text() == "satsrelay"
                    icon = await page.request.get(base + "/favicon.ico")
                    assert icon.status == 200 and icon.headers["content-type"] == "image/x-icon"
                    assert (await icon.body())[:4] == b"\x00\x00\x01\x00"  # an ICO file

                    # The top-up amount belongs to the credit plan only (a CSS rule beat `hidden`).
                    await expect(page.locator("#credit-amount")).to_be_hidden()
                    await page.check("input[name=plan][value=credit]")
                    await expect(page.locator("#credit-amount")).to_be_visible()
                    await page.check("input[name=plan][value=admission]")
                    await expect(page.locator("#credit-amount")).to_be_hidden()
                    if update:
                        await page.screenshot(path=str(screenshots / "join-page.png"), full_page=True)

                    # A secret key pasted by mistake: warned, cleared, and never sent anywhere.
                    nsec = bech32_encode("nsec", crypto.generate_secret())
                    await page.fill("#pubkey", nsec)
                    await expect(page.locator("#key-warning")).to_be_visible()
                    assert await page.input_value("#pubkey") == ""
                    await page.click("#get-invoice")
                    await page.wait_for_timeout(300)
                    await expect(page.locator("#step-pay")).to_be_hidden()
                    assert not any("nsec" in item for item in sent), sent

                    await page.fill("#pubkey", npub_encode(pubkey))
                    await expect(page.locator("#key-warning")).to_be_hidden()
                    await page.click("#get-invoice")
                    await page.wait_for_selector("#step-pay:not([hidden])")
                    # The page's CSP forbids eval, so waits go through locators, not wait_for_function.
                    await expect(page.locator("#qr")).to_have_js_property("complete", True)
                    assert await page.locator("#qr").bounding_box() is not None
                    bolt11 = await page.input_value("#bolt11")
                    assert bolt11.startswith("lnbcrt")
                    assert await page.inner_text("#status") == "waiting for payment"
                    await expect(page.locator("#step-next")).to_be_hidden()
                    await _no_sideways_scroll(page, width)
                    if update:
                        await page.screenshot(path=str(screenshots / "join-invoice.png"), full_page=True)

                    await page.click("#simulate")
                    await expect(page.locator("#status")).to_have_text("paid", timeout=10_000)
                    assert await page.inner_text("#acct-admitted") == "yes, for good"
                    # What to do next: the relay's address, with a copy button.
                    await expect(page.locator("#step-next")).to_be_visible()
                    assert await page.inner_text("#next-relay-url") == relay.settings.relay.public_url
                    await expect(page.locator("#copy-relay")).to_be_enabled()
                    await _no_sideways_scroll(page, width)
                    if update:
                        await page.screenshot(path=str(screenshots / "join-paid.png"), full_page=True)
                    else:
                        await page.screenshot(path=str(tmp_path / f"join-paid-{width}.png"), full_page=True)
                    assert requested and all(url.startswith(base + "/") for url in requested), requested
                finally:
                    await browser.close()

            ok, message = await client.publish(sign_event(alice, 1, "after", [], created_at=int(time.time())))
            assert ok, message


async def _one_line(locator: Any, width: int) -> None:
    """A relay address shown on one line (never broken inside its host), inside the page."""
    box = await locator.bounding_box()
    assert box is not None
    line = float((await locator.evaluate("el => getComputedStyle(el).lineHeight")).removesuffix("px"))
    assert box["height"] < 1.5 * line, (await locator.inner_text(), box, line)
    assert box["x"] >= 0 and box["x"] + box["width"] <= width + 1, box


@pytest.mark.parametrize("width", [1000, 390])
async def test_join_page_on_a_phone_opens_the_wallet_and_puts_the_next_step_in_place(
    alice: bytes, tmp_path: Path, width: int
) -> None:
    """Issue 22, the join page on a phone: an "Open in wallet" button (lightning: URI) beside
    the QR, the QR in the wallets' upper-case form, the invoice scrolled into view on a
    narrow screen, the QR and copy button replaced by the next step once paid, and the
    relay address never broken inside its host."""
    import segno
    from playwright.async_api import async_playwright, expect

    long_url = "wss://relay.sats-and-notes.example.com"
    pubkey = crypto.public_key(alice).hex()
    async with make_run_relay(tmp_path, relay={"public_url": long_url}) as relay:
        base = f"http://127.0.0.1:{relay.port}"
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = await browser.new_page(viewport={"width": width, "height": 800})
                await page.goto(f"{base}/join?pubkey={pubkey}", wait_until="load")
                address = page.locator("main > section code.relay-url").first
                assert await address.inner_text() == long_url
                await _one_line(address, width)

                await page.click("#get-invoice")
                await page.wait_for_selector("#step-pay:not([hidden])")
                bolt11 = await page.input_value("#bolt11")
                wallet = page.locator("#open-wallet")
                await expect(wallet).to_be_visible()
                assert await wallet.get_attribute("href") == "lightning:" + bolt11
                qr, button = await page.locator("#qr").bounding_box(), await wallet.bounding_box()
                assert qr is not None and button is not None
                if width >= 640:  # beside the QR on a wide screen, below it on a phone
                    assert button["x"] >= qr["x"] + qr["width"] and button["y"] < qr["y"] + qr["height"]
                else:
                    # The invoice was brought into view: the form above it fills a phone's screen.
                    await expect(page.locator("#step-pay h2")).to_be_in_viewport()
                    await expect(wallet).to_be_in_viewport()
                    assert await page.evaluate("() => window.scrollY") > 0
                # The QR: upper case, so the denser alphanumeric mode, a smaller symbol.
                svg = await page.request.get(base + (await page.locator("#qr").get_attribute("src") or ""))
                upper = segno.make(f"LIGHTNING:{bolt11.upper()}", error="m")
                assert upper.mode == "alphanumeric"
                assert upper.version < segno.make(f"lightning:{bolt11}", error="m").version
                drawn = io.BytesIO()
                upper.save(drawn, kind="svg", scale=5, border=2, xmldecl=False, title="Lightning invoice")
                assert await svg.body() == drawn.getvalue()
                await _no_sideways_scroll(page, width)

                await page.click("#simulate")
                await expect(page.locator("#status")).to_have_text("paid", timeout=10_000)
                # Paid: the QR, the wallet and copy buttons are gone; the next step is in their place.
                for done in ("#qr", "#open-wallet", "#copy", "#bolt11"):
                    await expect(page.locator(done)).to_be_hidden()
                await expect(page.locator("#step-next")).to_be_in_viewport()
                await _one_line(page.locator("#next-relay-url"), width)
                await _no_sideways_scroll(page, width)
                await page.screenshot(path=str(tmp_path / f"join-phone-paid-{width}.png"), full_page=True)
            finally:
                await browser.close()


async def test_expired_invoice_is_greyed_out_and_cannot_be_copied_or_simulated(alice: bytes, tmp_path: Path) -> None:
    from playwright.async_api import async_playwright, expect

    async with make_run_relay(tmp_path) as relay:
        base = f"http://127.0.0.1:{relay.port}"
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = await browser.new_page(viewport={"width": 390, "height": 900})
                await page.goto(f"{base}/join?pubkey={crypto.public_key(alice).hex()}", wait_until="load")
                await page.click("#get-invoice")
                await page.wait_for_selector("#step-pay:not([hidden])")
                await expect(page.locator("#copy")).to_be_enabled()
                # Time passes: the invoice's expiry is behind us (what the watcher's round does).
                assert await ledger_of(relay).expire_invoices(int(time.time()) + 10**6) == 1
                await expect(page.locator("#status")).to_have_text("expired: get a new invoice", timeout=10_000)
                await expect(page.locator("#invoice")).to_have_class("invoice expired")
                await expect(page.locator("#copy")).to_be_disabled()
                await expect(page.locator("#simulate")).to_be_disabled()
                await expect(page.locator("#expired-note")).to_be_visible()
                assert await page.locator("#wallet-link").get_attribute("href") is None
                await page.screenshot(path=str(tmp_path / "join-expired.png"), full_page=True)
            finally:
                await browser.close()


async def test_account_page_shows_the_balance_to_its_owner_after_a_nip07_signed_request(
    relay_factory: RelayFactory, alice: bytes
) -> None:
    """The "signed-in view": the page asks the NIP-07 extension to sign a NIP-98 event for
    this very URL and fetches the owner's view with it (a stand-in extension signs here)."""
    from playwright.async_api import async_playwright, expect

    pubkey = crypto.public_key(alice).hex()
    payments: dict[str, Any] = {"enabled": True, "backend": "fake", "credit": {"enabled": True}}
    async with relay_factory(payments=payments) as relay:
        await ledger_of(relay).update_account(pubkey, int(time.time()), credit_delta_msat=21_000)
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


async def test_after_paying_a_member_turns_on_reminders_with_the_browser_extension(
    relay_factory: RelayFactory, alice: bytes
) -> None:
    """The join page's opt-in: the NIP-07 extension (a stand-in here) signs a NIP-98 request
    for the reminders URL; the relay keeps the opt-in."""
    from playwright.async_api import async_playwright, expect

    pubkey = crypto.public_key(alice).hex()
    payments: dict[str, Any] = {"enabled": True, "backend": "fake", "poll_interval_seconds": 0.5}
    async with relay_factory(payments=payments) as relay:
        base = f"http://127.0.0.1:{relay.port}"


        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = await browser.new_page(viewport={"width": 390, "height": 900})
                await stand_in_signer(page, alice)
                await page.goto(base + "/join", wait_until="load")
                await page.click("#nip07")
                await expect(page.locator("#pubkey")).to_have_value(pubkey)
                await page.click("#get-invoice")
                await page.wait_for_selector("#step-pay:not([hidden])")
                await expect(page.locator("#remind-row")).to_be_hidden()
                await page.click("#simulate")
                await expect(page.locator("#status")).to_have_text("paid", timeout=10_000)
                assert not await ledger_of(relay).reminders_on(pubkey)
                await page.click("#remind")
                await expect(page.locator("#remind-note")).to_contain_text("reminders on", timeout=10_000)
                assert await ledger_of(relay).reminders_on(pubkey)
            finally:
                await browser.close()


async def test_account_page_hands_over_a_wallet_connection_encrypted_to_the_relay(
    relay_factory: RelayFactory, alice: bytes
) -> None:
    """Renewal by NWC: the extension (a stand-in) NIP-44 encrypts the URI to the relay's key
    and signs the NIP-98 request; the secret never appears in a URL; forgetting deletes it."""
    from playwright.async_api import async_playwright, expect

    from lightning import nip44
    from lightning.renewal import UriSeal

    pubkey = crypto.public_key(alice).hex()
    secret = crypto.generate_secret().hex()
    uri = f"nostr+walletconnect://{'ab' * 32}?relay=wss://wallet.example.com&secret={secret}"
    payments: dict[str, Any] = {"enabled": True, "backend": "fake", "subscription": {"enabled": True}}
    async with relay_factory(payments=payments) as relay:
        url = f"http://127.0.0.1:{relay.port}/account/{pubkey}"
        await ledger_of(relay).update_account(pubkey, int(time.time()), admitted_until=int(time.time()) + 86400)

        def sign(template: dict[str, Any]) -> dict[str, Any]:
            event = sign_event(alice, template["kind"], template["content"], template["tags"], template["created_at"])
            return event.to_dict()

        def encrypt(peer: str, plaintext: str) -> str:
            return nip44.encrypt(plaintext, nip44.conversation_key(alice, bytes.fromhex(peer)))

        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = await browser.new_page(viewport={"width": 390, "height": 900})
                requested: list[str] = []
                page.on("request", lambda request: requested.append(request.url))
                await page.expose_function("standInSign", sign)
                await page.expose_function("standInEncrypt", encrypt)
                await page.add_init_script(
                    "window.nostr = { signEvent: (t) => window.standInSign(t),"
                    " nip44: { encrypt: (p, m) => window.standInEncrypt(p, m) } };"
                )
                await page.goto(url, wait_until="load")
                await expect(page.locator("#wallet")).to_be_visible()
                await page.fill("#nwc-uri", uri)
                await page.fill("#nwc-budget", "700")
                await page.click("#nwc-connect")
                await expect(page.locator("#nwc-state")).to_contain_text("renewals up to 700 sats", timeout=10_000)
                (link,) = await ledger_of(relay).nwc_links()
                assert link.pubkey == pubkey and link.budget_msat == 700_000
                assert UriSeal(relay.identity).open(link.sealed_uri, pubkey) == uri
                assert secret not in link.sealed_uri and not any(secret in u for u in requested)
                await page.click("#nwc-forget")
                await expect(page.locator("#nwc-state")).to_have_text("no wallet connected", timeout=10_000)
                assert await ledger_of(relay).nwc_links() == []
            finally:
                await browser.close()


async def test_account_page_links_a_second_key_signed_by_both_and_unlinks_it(
    relay_factory: RelayFactory, alice: bytes, bob: bytes
) -> None:
    """One plan, several keys, as a member does it with one NIP-07 extension holding two
    keys (a stand-in whose active key the test switches, as the member does in theirs): sign
    the consent with the key to link, switch back, link; the linked key then writes; the
    member unlinks it from the same page."""
    from playwright.async_api import async_playwright, expect

    keys = [alice, bob]
    owner, linked = (crypto.public_key(k).hex() for k in keys)
    payments: dict[str, Any] = {"enabled": True, "backend": "fake", "account_cache_seconds": 0}
    async with relay_factory(payments=payments) as relay:
        now = int(time.time())
        await ledger_of(relay).update_account(owner, now, admitted_until=now + 86400)
        active = {"key": 0}

        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = await browser.new_page(viewport={"width": 390, "height": 900})
                await stand_in_signer(page, lambda: keys[active["key"]])
                await page.goto(f"http://127.0.0.1:{relay.port}/account/{owner}", wait_until="load")
                assert "up to 3 other keys" in await page.inner_text("#acct-links")
                await page.click("#sign-in")
                await expect(page.locator("#links")).to_be_visible(timeout=10_000)
                await expect(page.locator("#acct-links")).to_have_text("0 of 3 linked")
                active["key"] = 1  # the member switches the extension to the key to link
                await page.click("#link-consent")
                await expect(page.locator("#link-state")).to_contain_text("consent signed by " + linked)
                await page.click("#link-confirm")  # still the other key: the page says so
                await expect(page.locator("#link-state")).to_contain_text("switch your extension back")
                active["key"] = 0
                await page.click("#link-confirm")
                await expect(page.locator("#link-state")).to_have_text("linked " + linked, timeout=10_000)
                await expect(page.locator("#acct-links")).to_have_text("1 of 3 linked")
                assert [k.pubkey for k in await ledger_of(relay).linked_keys(owner)] == [linked]
                async with NostrClient(relay.url) as client:
                    ok, message = await client.publish(signed(bob, 1, "written under the member's plan"))
                    assert ok, message
                await page.click("#link-list button")
                await expect(page.locator("#link-state")).to_have_text("unlinked", timeout=10_000)
                assert await ledger_of(relay).linked_keys(owner) == []
            finally:
                await browser.close()


async def test_join_page_shows_a_tier_its_renewal_date_grace_and_linked_keys_once_paid(
    alice: bytes, tmp_path: Path
) -> None:
    """``make run``'s page sells the demo's Supporter tier: its offer names its grace and
    how many keys it links; once paid, the account part shows the tier, the date to renew
    by, the end of the grace and the linked keys, as the account page does."""
    from playwright.async_api import async_playwright, expect

    pubkey = crypto.public_key(alice).hex()
    async with make_run_relay(tmp_path) as relay:
        base = f"http://127.0.0.1:{relay.port}"
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = await browser.new_page(viewport={"width": 390, "height": 1000})
                await page.goto(base + "/join", wait_until="load")
                offers = await page.inner_text("main")
                supporter = "Supporter: 2,000 sats (posts, replies and reactions; 3-day grace; links up to 1 other key)"
                assert supporter in offers, offers
                assert "Pro: 20,000 sats (everything, a year; 7-day grace; links up to 3 other keys)" in offers
                await page.check("input[name=plan][value=supporter]")
                await page.fill("#pubkey", pubkey)
                await page.click("#get-invoice")
                await page.wait_for_selector("#step-pay:not([hidden])")
                await page.click("#simulate")
                await expect(page.locator("#status")).to_have_text("paid", timeout=10_000)
                account = await ledger_of(relay).get_account(pubkey)
                assert account is not None and account.role == "supporter"
                ends = account.admitted_until
                day = lambda t: time.strftime("%Y-%m-%d", time.gmtime(t))  # noqa: E731
                assert await page.inner_text("#acct-tier") == "Supporter"
                assert await page.inner_text("#acct-renew") == day(ends)
                assert await page.inner_text("#acct-grace") == "writes go on until " + day(ends + 3 * 86400)
                assert (await page.inner_text("#acct-links")).startswith("up to 1 other key may write under this plan")
                await page.goto(f"{base}/account/{pubkey}", wait_until="load")
                tier = await page.inner_text("#acct-tier")
                assert tier == (f"Supporter (2000 sats for 30 days), renew by {day(ends)}"
                                f" (writes go on until {day(ends + 3 * 86400)})")
                links = await page.inner_text("#acct-links")
                assert links == "up to 1 other key may write under this plan (listed to its owner)", links

                # The same member back on the page (a renewal link) buys the subscription:
                # the page said it does not renew the tier, and the account box shows it
                # following the tier, with no tier's grace after it.
                await page.goto(f"{base}/join?pubkey={pubkey}", wait_until="load")
                note = await page.inner_text("#plans-note")
                assert note.startswith("Renewing a tier? Choose that tier. Admission and Subscription are not tiers")
                await page.check("input[name=plan][value=subscription]")
                await page.click("#get-invoice")
                await page.wait_for_selector("#step-pay:not([hidden])")
                await page.click("#simulate")
                await expect(page.locator("#status")).to_have_text("paid", timeout=10_000)
                then = f"Supporter until {day(ends)}, then the single plan (no tier)"
                await expect(page.locator("#acct-tier")).to_have_text(then)
                assert await page.inner_text("#acct-renew") == day(ends + 30 * 86400)
                assert await page.inner_text("#acct-grace") == "none"
            finally:
                await browser.close()
