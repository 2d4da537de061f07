"""The operator console in real headless Chromium, signed in through a NIP-07 stand-in that
signs real NIP-98 events with a test key: every tab the relay lists (the payments panels too,
when the extension offers them), a ban from the moderation queue, refusals.

Needs Debian's ``chromium`` (``make chromium``); skipped with the reason when absent.
Screenshots go to the test's temp folder, or to docs/img/console-<panel>.png (for the
README) when ``SATSRELAY_UPDATE_SCREENSHOTS=1``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from relay.nostr import crypto
from relay.session.server import Relay
from tests.browser import CHROMIUM, CHROMIUM_ARGS, DOCS_IMG, stand_in_signer
from tests.lightning.payment_stack import ledger_of, nip98_header
from tests.lightning.test_join_page_browser import make_run_relay
from tests.nostr_client import NostrClient, signed
from tests.waiting import eventually

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium not installed (run `make chromium`)")


def run_relay(tmp_path: Path, admin: str) -> contextlib.AbstractAsyncContextManager[Relay]:
    """The relay ``make run`` starts (config.example.toml, demo payments) with one operator."""
    return make_run_relay(tmp_path, admin={"pubkeys": [admin]})


def watch(page: Any, base: str) -> tuple[list[str], list[str]]:
    """(console errors and page errors, URLs requested from anywhere but the relay)."""
    errors: list[str] = []
    elsewhere: list[str] = []

    def console(message: Any) -> None:
        if message.type in ("error", "warning"):
            errors.append(f"console.{message.type}: {message.text}")

    page.on("console", console)
    page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))

    def request(req: Any) -> None:
        if not (req.url.startswith(base + "/") or req.url.startswith(f"blob:{base}/")):
            elsewhere.append(req.url)

    page.on("request", request)
    return errors, elsewhere


async def signed_get(http: httpx.AsyncClient, url: str, secret: bytes) -> Any:
    answer = await http.get(url, headers={"Authorization": nip98_header(secret, url)})
    assert answer.status_code == 200, answer.text
    return answer.json()


async def nip86(http: httpx.AsyncClient, base: str, secret: bytes, method: str, *params: Any) -> Any:
    body = orjson.dumps({"method": method, "params": list(params)})
    headers = {
        "Content-Type": "application/nostr+json+rpc",
        "Authorization": nip98_header(secret, base + "/", "POST", body=body),
    }
    answer = await http.post(base + "/", content=body, headers=headers)
    assert answer.status_code == 200, answer.text
    return answer.json()["result"]


@pytest.mark.parametrize("width", [1000, 390])
async def test_operator_visits_every_panel_and_bans_a_reported_event(
    alice: bytes, bob: bytes, tmp_path: Path, width: int
) -> None:
    from playwright.async_api import async_playwright, expect

    operator = crypto.generate_secret()
    update = os.environ.get("SATSRELAY_UPDATE_SCREENSHOTS") == "1" and width == 1000
    screenshots = DOCS_IMG if update else tmp_path
    screenshots.mkdir(parents=True, exist_ok=True)
    async with (
        run_relay(tmp_path, crypto.public_key(operator).hex()) as relay,
        NostrClient(relay.url) as client,
        httpx.AsyncClient() as http,
    ):
        base = f"http://127.0.0.1:{relay.port}"
        # Alice writes free (operator-allowed); Bob, not a member, reports her note (NIP-56).
        await ledger_of(relay).update_account(crypto.public_key(alice).hex(), int(time.time()), allowed=True)
        bad = signed(alice, 1, "Send 1 BTC, get 2 back: <b>totally</b> legit")
        assert (await client.publish(bad))[0]
        ok, message = await client.publish(signed(bob, 1984, "scam", [["e", bad.id, "spam"], ["p", bad.pubkey]]))
        assert ok, message
        # Members who paid through the join page (the demo wallet), and one invoice left unpaid:
        # the payments pages then draw real figures, charts and rows.
        for plan, pays in (("admission", True), ("subscription", True), ("credit", False)):
            payer = crypto.public_key(crypto.generate_secret()).hex()
            issued = await http.post(base + "/api/invoice", json={"pubkey": payer, "plan": plan})
            assert issued.status_code == 200, issued.text
            if pays:
                settled = await http.post(f"{base}/api/fake/pay/{issued.json()['payment_hash']}")
                assert settled.json()["simulated"] is True
        listed = await signed_get(http, base + "/admin/api/panels", operator)
        assert [p["name"] for p in listed][:3] == ["overview", "moderation", "settings"]
        if update:  # the README's overview shows its chart: half a minute of real traffic first
            for second in range(35):
                for i in range(5 + second % 7 * 3):
                    assert (await client.publish(signed(alice, 1, f"traffic {second}.{i}")))[0]
                await asyncio.sleep(1)

        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = await browser.new_page(viewport={"width": width, "height": 900})
                errors, elsewhere = watch(page, base)
                await stand_in_signer(page, operator)
                await page.goto(base + "/admin", wait_until="load")
                await expect(page.locator("#console")).to_be_hidden()
                if update:
                    await page.screenshot(path=str(screenshots / "console-sign-in.png"), full_page=True)
                await page.click("#sign-in-button")
                await expect(page.locator("#console")).to_be_visible(timeout=10_000)
                await expect(page.locator("#who-key")).to_have_text(crypto.public_key(operator).hex()[:12] + "…")
                tabs = page.locator("#tabs [role=tab]")
                assert await tabs.all_inner_texts() == [p["title"] for p in listed]

                for entry in listed:
                    await page.click(f"#tab-{entry['name']}")
                    await expect(page.locator(f"#tab-{entry['name']}")).to_have_attribute("aria-selected", "true")
                    await expect(page.locator(f"#panel[data-panel={entry['name']}]")).to_be_visible()
                    doc = await signed_get(http, f"{base}/admin/api/panel/{entry['name']}", operator)
                    await expect(page.locator("#panel h2")).to_have_text(doc["title"])
                    blocks = page.locator("#panel > .block")
                    await expect(blocks).to_have_count(len(doc["blocks"]))
                    kinds = [await b.get_attribute("data-block") for b in await blocks.all()]
                    assert kinds == [b["type"] for b in doc["blocks"]], entry
                    for index, block in enumerate(doc["blocks"]):
                        shown = blocks.nth(index)
                        if block.get("title"):
                            await expect(shown.locator("h3")).to_have_text(block["title"])
                        if block["type"] == "chart":  # the SVG decoded from its blob URL
                            image = shown.locator("img")
                            await expect(image).to_have_js_property("complete", True)
                            assert await image.evaluate("img => img.naturalWidth") > 0
                            assert (await image.get_attribute("src") or "").startswith(f"blob:{base}/")
                        if block["type"] == "table" and block["rows"]:
                            await expect(shown.locator("tbody tr")).to_have_count(len(block["rows"]))
                        if block["type"] == "stats":
                            await expect(shown.locator(".tile")).to_have_count(len(block["items"]))
                    width_used = await page.evaluate("document.documentElement.scrollWidth")
                    assert width_used <= width, (entry["name"], width_used)  # nothing scrolls sideways
                    name = f"console-{entry['name']}.png"
                    shot = screenshots / name if update else tmp_path / f"{width}-{name}"
                    # The settings page is every key of the config: the README shows its top.
                    await page.screenshot(path=str(shot), full_page=not (update and entry["name"] == "settings"))

                # The overview redraws by itself (refresh 5 s): a new event moves its figure.
                await page.click("#tab-overview")
                accepted = page.locator(".tile", has_text="accepted since start").locator("dd")
                before = int((await accepted.inner_text()).replace(",", ""))
                assert (await client.publish(signed(alice, 1, "one more")))[0]
                await expect(accepted).to_have_text(f"{before + 1:,}", timeout=12_000)

                # The settings panel's section picker (a form) reloads it with a query.
                await page.click("#tab-settings")
                await page.select_option("#panel select[name=section]", "payments.lnbits")
                await expect(page.locator("#panel .block[data-block=table] h3")).to_have_text(["[payments.lnbits]"])
                await expect(page.locator("#panel tr", has_text="invoice_key")).to_have_count(1)

                # Moderation: ban the reported event with a reason, from its row.
                await page.click("#tab-moderation")
                row = page.locator("#panel tr", has_text=bad.id)
                await expect(row).to_have_count(1)
                await expect(row).to_contain_text("<b>totally</b>")  # shown as text, never markup
                ban = row.locator(".action", has=page.locator("button", has_text="Ban event"))
                await ban.locator("input.reason").fill("scam, reported by bob")
                await ban.locator("button").click()
                await expect(page.locator("#notice")).to_contain_text("Ban event: done", timeout=10_000)
                queue = page.locator("#panel .block", has=page.locator("h3", has_text="Reported events"))
                await expect(queue.locator(".empty")).to_be_visible()
                banned = page.locator("#panel .block", has=page.locator("h3", has_text="Banned events"))
                await expect(banned.locator("tbody tr")).to_contain_text([bad.id])
                listed_bans = await nip86(http, base, operator, "listbannedevents")
                assert listed_bans == [{"id": bad.id, "reason": "scam, reported by bob"}]
                await page.screenshot(path=str(tmp_path / f"{width}-console-moderation-banned.png"), full_page=True)

                assert errors == [], errors
                assert elsewhere == [], elsewhere
            finally:
                await browser.close()


async def test_a_stranger_and_a_browser_without_an_extension_are_told_why(
    alice: bytes, bob: bytes, tmp_path: Path
) -> None:
    from playwright.async_api import async_playwright, expect

    async with run_relay(tmp_path, crypto.public_key(alice).hex()) as relay:
        base = f"http://127.0.0.1:{relay.port}"
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = await browser.new_page(viewport={"width": 390, "height": 800})
                await page.goto(base + "/admin", wait_until="load")
                await page.click("#sign-in-button")
                await expect(page.locator("#sign-in-message")).to_contain_text("No Nostr extension (NIP-07)")
                await expect(page.locator("#console")).to_be_hidden()

                page = await browser.new_page(viewport={"width": 390, "height": 800})
                await stand_in_signer(page, bob)
                await page.goto(base + "/admin", wait_until="load")
                await page.click("#sign-in-button")
                message = page.locator("#sign-in-message")
                await expect(message).to_contain_text("not an operator of this relay", timeout=10_000)
                await expect(message).to_contain_text(crypto.public_key(bob).hex())
                await expect(page.locator("#console")).to_be_hidden()
                await page.screenshot(path=str(tmp_path / "console-refused.png"), full_page=True)
            finally:
                await browser.close()


# Where ``needle`` is drawn in the panel's cells: the left edges of its first and last
# characters, for every occurrence (in the order written).
DRAWN_AT = """(needle) => {
  const found = [];
  for (const td of document.querySelectorAll('#panel td')) {
    const walker = document.createTreeWalker(td, NodeFilter.SHOW_TEXT);
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
      const left = (i) => { const r = document.createRange(); r.setStart(node, i); r.setEnd(node, i + 1);
                            return r.getBoundingClientRect().left; };
      for (let at = node.data.indexOf(needle); at >= 0; at = node.data.indexOf(needle, at + 1)) {
        found.push([left(at), left(at + needle.length - 1)]);
      }
    }
  }
  return found;
}"""


async def test_moderation_wraps_long_strings_and_shows_bidi_overrides_inert(
    alice: bytes, bob: bytes, tmp_path: Path
) -> None:
    """Issue 17 item 12: one unbroken string widened the moderation table to 4,305 px, and a
    right-to-left override in a report (``<U+202E>gpj.exe``) read ``exe.jpg``, running on
    into the reasons after it. Measured in Chromium's layout: the table fits its page and
    the characters are drawn in the order they were written."""
    from playwright.async_api import async_playwright, expect

    operator = crypto.generate_secret()
    carol = crypto.generate_secret()
    async with (
        run_relay(tmp_path, crypto.public_key(operator).hex()) as relay,
        NostrClient(relay.url) as client,
    ):
        base = f"http://127.0.0.1:{relay.port}"
        await ledger_of(relay).update_account(crypto.public_key(alice).hex(), int(time.time()), allowed=True)
        bad = signed(alice, 1, "invoice\u202egpj.exe " + "W" * 3000)
        assert (await client.publish(bad))[0]
        for reporter, note in ((bob, "attached: \u202egpj.exe"), (carol, "see gpj.exe " + "M" * 190)):
            ok, message = await client.publish(signed(reporter, 1984, note, [["e", bad.id, "spam"]]))
            assert ok, message
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = await browser.new_page(viewport={"width": 1000, "height": 900})
                errors, _ = watch(page, base)
                await stand_in_signer(page, operator)
                await page.goto(base + "/admin", wait_until="load")
                await page.click("#sign-in-button")
                await expect(page.locator("#console")).to_be_visible(timeout=10_000)
                await page.click("#tab-moderation")
                queue = page.locator("#panel .block", has=page.locator("h3", has_text="Reported events"))
                await expect(queue.locator("tbody tr")).to_have_count(1)
                await page.screenshot(path=str(tmp_path / "console-moderation-hostile.png"), full_page=True)

                table = await queue.locator("table").evaluate(
                    "t => [t.getBoundingClientRect().width, t.parentElement.clientWidth]"
                )
                assert table[0] <= table[1] <= 1000, table  # the table fits; nothing scrolls sideways

                drawn = await page.evaluate(DRAWN_AT, "gpj.exe")
                assert len(drawn) == 3, drawn  # the content cell, and both reasons in theirs
                for first, last in drawn:
                    assert first < last, drawn  # "g" drawn left of the last "e": not reversed
                reasons = queue.locator("tbody td").nth(4)
                await expect(reasons).to_contain_text("\u27e8U+202E\u27e9gpj.exe")  # the override, visible
                assert errors == [], errors
            finally:
                await browser.close()


READABLE_PX = 10  # the smallest chart label a phone should show, in CSS pixels


def chart_font_px(svg: str, rendered_width: float) -> float:
    """The smallest label of ``svg`` as drawn ``rendered_width`` CSS pixels wide."""
    drawn_width = float(re.search(r'<svg[^>]* width="(\d+)"', svg).group(1))  # type: ignore[union-attr]
    smallest = min(float(size) for size in re.findall(r'font-size="(\d+(?:\.\d+)?)"', svg))
    return smallest * rendered_width / drawn_width


@pytest.mark.parametrize("width", [1000, 390])
async def test_console_on_a_phone_readable_charts_a_tab_bar_that_says_it_scrolls_and_paged_members(
    tmp_path: Path, width: int
) -> None:
    """Issue 22, the console at 390 px (and 1000 px): every chart's labels at least
    ``READABLE_PX``; a tab bar wider than the screen shows arrows that scroll it (none when
    every tab fits); a long member list comes a page at a time, the next page from its top."""
    from playwright.async_api import async_playwright, expect

    from lightning.console import PAGE_ROWS

    operator = crypto.generate_secret()
    members = 2 * PAGE_ROWS + 10
    async with run_relay(tmp_path, crypto.public_key(operator).hex()) as relay, httpx.AsyncClient() as http:
        base = f"http://127.0.0.1:{relay.port}"
        for i in range(members):
            await ledger_of(relay).update_account(f"{i + 1:064x}", int(time.time()), allowed=True)
        for plan in ("admission", "subscription"):  # figures for the revenue charts
            payer = crypto.public_key(crypto.generate_secret()).hex()
            issued = await http.post(base + "/api/invoice", json={"pubkey": payer, "plan": plan})
            assert (await http.post(f"{base}/api/fake/pay/{issued.json()['payment_hash']}")).json()["simulated"]
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = await browser.new_page(viewport={"width": width, "height": 900})
                errors, _ = watch(page, base)
                await stand_in_signer(page, operator)
                await page.goto(base + "/admin", wait_until="load")
                await page.click("#sign-in-button")
                await expect(page.locator("#console")).to_be_visible(timeout=10_000)

                # The tab bar: on a phone, arrows say (and do) that it scrolls.
                tabs, more, back = page.locator("#tabs"), page.locator("#tabs-next"), page.locator("#tabs-prev")
                overflowing = await tabs.evaluate("t => t.scrollWidth > t.clientWidth + 1")
                assert overflowing == (width < 640)
                if overflowing:
                    await expect(more).to_be_visible()
                    await expect(back).to_be_hidden()
                    await expect(page.locator("#tab-invoices")).not_to_be_in_viewport(ratio=0.9)
                    for _ in range(10):
                        if not await more.is_visible():
                            break
                        before = await tabs.evaluate("t => t.scrollLeft")
                        await more.click()

                        last = [before]

                        async def scrolled_and_still(last: list[float] = last) -> bool:  # smooth scrolling ended
                            now = float(await tabs.evaluate("t => t.scrollLeft"))
                            done = now > last[0] and now == last[-1]
                            last.append(now)
                            return done

                        await eventually(scrolled_and_still, interval=0.15, what="the tab bar scrolling on")
                    await expect(more).to_be_hidden()
                    await expect(back).to_be_visible()
                    await expect(page.locator("#tab-invoices")).to_be_in_viewport(ratio=0.9)
                else:
                    await expect(more).to_be_hidden()
                    await expect(back).to_be_hidden()

                # Charts: readable labels, whichever drawing the screen picked.
                for name in ("overview", "revenue"):
                    await page.click(f"#tab-{name}")
                    await expect(page.locator(f"#panel[data-panel={name}]")).to_be_visible()
                    doc = await signed_get(http, f"{base}/admin/api/panel/{name}", operator)
                    charts = [b for b in doc["blocks"] if b["type"] == "chart"]
                    shown = page.locator("#panel .block[data-block=chart] img")
                    await expect(shown).to_have_count(len(charts))
                    for index, block in enumerate(charts):
                        image = shown.nth(index)
                        await expect(image).to_have_js_property("complete", True)
                        narrow = await image.evaluate(  # the <picture>'s phone drawing, or the wide one
                            "img => img.previousElementSibling?.srcset === img.currentSrc"
                        )
                        svg = block["narrow"] if narrow else block["svg"]
                        rendered = (await image.bounding_box() or {"width": 0})["width"]
                        assert chart_font_px(svg, rendered) >= READABLE_PX, (name, index, narrow, rendered)
                    assert await page.evaluate("document.documentElement.scrollWidth") <= width

                # Members: a page at a time; "Next" shows the next rows from the table's top.
                await page.click("#tab-members")
                # the accounts, the page's first table (the demo's tiers add theirs below it)
                rows = page.locator("#panel .block[data-block=table]").first.locator("tbody tr")
                await expect(rows).to_have_count(PAGE_ROWS)
                first = await rows.first.locator("td").nth(1).inner_text()
                pager = page.locator("#panel .pager")
                await expect(pager.locator("[data-page=previous]")).to_be_disabled()
                await pager.locator("[data-page=next]").click()
                second = f"accounts {PAGE_ROWS + 1}\u2013{2 * PAGE_ROWS}"
                await expect(pager.locator(".pager-label")).to_have_text(second)
                await expect(rows).to_have_count(PAGE_ROWS)
                assert await rows.first.locator("td").nth(1).inner_text() != first
                await expect(rows.first).to_be_in_viewport()
                await pager.locator("[data-page=next]").click()
                await expect(rows).to_have_count(members + 2 - 2 * PAGE_ROWS)  # and the two payers
                await expect(pager.locator("[data-page=next]")).to_be_disabled()
                await pager.locator("[data-page=previous]").click()
                await expect(rows).to_have_count(PAGE_ROWS)
                assert await page.evaluate("document.documentElement.scrollWidth") <= width
                await page.screenshot(path=str(tmp_path / f"console-members-{width}.png"), full_page=True)
                assert errors == [], errors
            finally:
                await browser.close()
