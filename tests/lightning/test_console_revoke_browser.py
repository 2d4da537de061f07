"""The operator console's revoke, in real headless Chromium (issue 17, item 7).

Before: "Revoke" on a member holding only credit said "done", and the member went on
writing, paid by the credit the revoke kept. Now the members table offers "Revoke, zero
credit" first and "Revoke, keep credit", each asks once before acting (Cancel changes
nothing), and the notice says what is left: whether the key can still write.

Needs Debian's ``chromium`` (``make chromium``); skipped with the reason when absent.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from relay.nostr import crypto
from tests.browser import CHROMIUM, CHROMIUM_ARGS, stand_in_signer
from tests.lightning.payment_stack import ledger_of
from tests.nostr_client import NostrClient, signed
from tests.test_console_browser import run_relay, watch
from tests.waiting import eventually

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium not installed (run `make chromium`)")


async def test_revoking_a_credit_only_member_in_the_console_stops_its_writing(alice: bytes, tmp_path: Path) -> None:
    from playwright.async_api import async_playwright, expect

    operator = crypto.generate_secret()
    member = crypto.public_key(alice).hex()
    async with run_relay(tmp_path, crypto.public_key(operator).hex()) as relay, NostrClient(relay.url) as client:
        base = f"http://127.0.0.1:{relay.port}"
        # A member who topped up credit (the example config's credit plan: 1 sat per note).
        await ledger_of(relay).update_account(member, int(time.time()), credit_delta_msat=21_000)
        ok, message = await client.publish(signed(alice, 1, "paid by credit"))
        assert ok, message

        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = await browser.new_page(viewport={"width": 1000, "height": 900})
                errors, elsewhere = watch(page, base)
                await stand_in_signer(page, operator)
                await page.goto(base + "/admin", wait_until="load")
                await page.click("#sign-in-button")
                await expect(page.locator("#console")).to_be_visible(timeout=10_000)
                await page.click("#tab-members")
                row = page.locator("#panel tr", has_text=member)
                await expect(row).to_contain_text("credit-only")
                revoke = row.locator("button", has_text="Revoke").first  # the first revoke the row offers

                asked: list[str] = []

                async def answer(dialog: Any, accept: bool) -> None:
                    asked.append(dialog.message)
                    await (dialog.accept() if accept else dialog.dismiss())

                page.once("dialog", lambda dialog: answer(dialog, False))
                await revoke.click()

                async def asked_once() -> bool:
                    return len(asked) == 1

                await eventually(asked_once, what="the confirmation dialog")
                assert member in asked[0]  # the question names the key
                account = await ledger_of(relay).get_account(member)
                assert account is not None and account.credit_msat == 20_000  # Cancel changed nothing
                assert (await client.publish(signed(alice, 1, "still a member")))[0]

                page.once("dialog", lambda dialog: answer(dialog, True))
                await revoke.click()
                await expect(page.locator("#notice")).to_contain_text("this key can no longer write", timeout=10_000)
                assert len(asked) == 2
                ok, message = await client.publish(signed(alice, 1, "after the revoke"))
                assert not ok and message.startswith("restricted:"), message
                await expect(page.locator("#panel tr", has_text=member)).to_contain_text("none")  # redrawn
                assert errors == [], errors
                assert elsewhere == [], elsewhere
            finally:
                await browser.close()
