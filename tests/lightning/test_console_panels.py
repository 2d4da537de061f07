"""The operator console's payments pages (revenue, members, invoices) over a real store,
SQLite and PostgreSQL, holding invoices issued and settled through the real ledger and the
fake wallet; and once through a running relay's console over HTTP with NIP-98.

The ledger takes ``now`` for issuing and confirming, so invoices are issued and paid on
past days of a clock set 400 days ahead (the console's clock is the extension's); only the
bounds tests fill the store directly, through its API, for speed.
"""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from lightning.backends.fake import FakeBackend
from lightning.console import PAGE_ROWS, utc
from lightning.extension import PaymentsExtension, build_backend
from lightning.pubkeys import npub_encode
from lightning.store.base import Invoice, LedgerStore, NwcLink
from relay.nostr import crypto
from relay.store.base import Store
from tests.conftest import RelayFactory
from tests.lightning.payment_stack import nip98_header, payment_settings, pubkey_of
from tests.store.conftest import store, store_factory  # noqa: F401  (SQLite and PostgreSQL, fresh per test)

DAY = 86400
NOW = (int(time.time()) // DAY + 400) * DAY + 12 * 3600  # noon UTC, 400 days ahead
SVG = "{http://www.w3.org/2000/svg}"
PLANS = {
    "subscription": {"enabled": True, "fee_sats": 2000, "period_days": 30},
    "admission": {"enabled": True, "fee_sats": 1000},  # admitted for good
    "credit": {"enabled": True, "min_topup_sats": 100},
}
ALICE, BOB, CAROL, DAVE, ERIN, FRANK, GINA = (pubkey_of(n.to_bytes(32, "big")) for n in range(1, 8))


@dataclass
class Console:
    ext: PaymentsExtension
    store: LedgerStore  # the extension's ledger (lightning.store)
    wallet: FakeBackend
    hashes: dict[str, str]

    async def render(self, panel: str, **params: str) -> dict[str, Any]:
        (found,) = [p for p in self.ext.console_panels() if p.name == panel]
        return await found.render(params)

    async def buy(self, pubkey: str, plan: str, at: int, amount_sats: int | None = None, *, pay: bool = True) -> str:
        invoice = await self.ext.ledger.issue(pubkey, plan, at, amount_sats)
        if pay:
            assert await self.wallet.pay(invoice.payment_hash)
            assert (await self.ext.ledger.confirm(invoice.payment_hash, at)).invoice is not None
            settled = await self.store.get_invoice(invoice.payment_hash)
            assert settled is not None and settled.paid_at == at
        return invoice.payment_hash


@pytest.fixture
async def console(store: Store, tmp_path: Path) -> AsyncIterator[Console]:  # noqa: F811
    settings = payment_settings(tmp_path, **PLANS)
    wallet = build_backend(settings, None)  # type: ignore[arg-type]  # the fake wallet needs no HTTP
    assert isinstance(wallet, FakeBackend)
    ext = PaymentsExtension(settings, store, wallet, clock=lambda: NOW)
    await ext.store.open()
    try:
        yield Console(ext, ext.store, wallet, {})
    finally:
        await wallet.close()


@pytest.fixture
async def sales(console: Console) -> Console:
    """Seven pubkeys, each in another situation at NOW."""
    h = console.hashes
    h["alice"] = await console.buy(ALICE, "subscription", NOW - 10 * DAY)  # admitted 20 more days
    h["bob"] = await console.buy(BOB, "admission", NOW - 2 * DAY)  # for good
    h["carol"] = await console.buy(CAROL, "credit", NOW, amount_sats=500)  # credit only
    h["dave"] = await console.buy(DAVE, "subscription", NOW - 40 * DAY)  # lapsed 10 days ago
    h["erin"] = await console.buy(ERIN, "subscription", NOW - 25 * DAY)  # 5 days left
    h["frank"] = await console.buy(FRANK, "subscription", NOW - 3 * DAY, pay=False)  # expired unpaid
    h["gina"] = await console.buy(GINA, "credit", NOW - 60, amount_sats=300, pay=False)  # still payable
    return console


def blocks_of(doc: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [b for b in doc["blocks"] if b["type"] == kind]


def stat(doc: dict[str, Any], label: str) -> str:
    values = [i["value"] for b in blocks_of(doc, "stats") for i in b["items"] if i["label"] == label]
    assert len(values) == 1, label
    return str(values[0])


def lines(doc: dict[str, Any]) -> list[str]:
    return [b["text"] for b in blocks_of(doc, "text")]


def bar_heights(svg: str) -> list[float]:
    root = ET.fromstring(svg)
    (group,) = [g for g in root.iter(f"{SVG}g") if g.get("class") == "bars"]
    return [float(r.get("height", "")) for r in group.iter(f"{SVG}rect")]


def field_value(doc: dict[str, Any], name: str) -> str:
    (form,) = blocks_of(doc, "form")
    (value,) = [f["value"] for f in form["fields"] if f["name"] == name]
    return str(value)


async def test_extension_offers_the_three_payments_pages(console: Console) -> None:
    assert [(p.name, p.title) for p in console.ext.console_panels()] == [
        ("revenue", "Revenue"),
        ("members", "Members"),
        ("invoices", "Invoices"),
    ]


async def test_revenue_over_30_days_sums_paid_sats_per_day_and_plan_funnel_and_mrr(sales: Console) -> None:
    doc = await sales.render("revenue")
    assert field_value(doc, "days") == "30"
    # alice 2000 + bob 1000 + carol 500 + erin 2000 (dave paid 40 days ago: outside)
    assert stat(doc, "Sats received") == "5,500"
    assert stat(doc, "Paid invoices") == "4"
    assert stat(doc, "Wallet fees (sats)") == "0"
    # Admitted now for a time: alice and erin, 2,000 sats per 30 days each; bob is in for
    # good, carol holds credit, dave lapsed.
    assert stat(doc, "Monthly recurring revenue (sats)") == "4,000"
    # Created in the period: alice, bob, carol, erin (paid), frank (expired), gina (payable).
    assert stat(doc, "Created") == "6"
    assert stat(doc, "Paid") == "4 (66.7%)"
    assert stat(doc, "Expired") == "1 (16.7%)"
    assert stat(doc, "Still payable") == "1 (16.7%)"
    per_day, per_plan = (b["svg"] for b in blocks_of(doc, "chart"))
    heights = bar_heights(per_day)
    assert len(heights) == 4  # four days with payments
    # Bars measure sats: 2000 (erin, 25 days ago), 2000 (alice), 1000 (bob), 500 (carol), in day order.
    assert [h / heights[0] for h in heights] == pytest.approx([1, 1, 0.5, 0.25], rel=1e-3)
    desc = ET.fromstring(per_day).findtext(f"{SVG}desc") or ""
    assert "5,500 sats in all" in desc
    plan_desc = ET.fromstring(per_plan).findtext(f"{SVG}desc") or ""
    assert plan_desc == "5,500 sats in all: subscription 4,000 sats; admission 1,000 sats; credit 500 sats"


async def test_revenue_period_choice_and_garbage_falls_back_to_30_days(sales: Console) -> None:
    year = await sales.render("revenue", days="365")
    assert field_value(year, "days") == "365"
    assert stat(year, "Sats received") == "7,500"  # dave's too
    assert stat(year, "Created") == "7"
    assert len(bar_heights(blocks_of(year, "chart")[0]["svg"])) == 5
    week = await sales.render("revenue", days="7")
    assert stat(week, "Sats received") == "1,500"  # bob and carol
    assert stat(week, "Created") == "4"  # bob, carol, frank, gina
    for garbage in ("abc", "0", "-7", "365 ", "1e3", "", "30" * 1000):
        doc = await sales.render("revenue", days=garbage, unknown="x")
        assert field_value(doc, "days") == "30"
        assert stat(doc, "Sats received") == "5,500"


async def test_revenue_with_no_payments_draws_empty_charts(console: Console) -> None:
    doc = await console.render("revenue")
    assert stat(doc, "Sats received") == "0" and stat(doc, "Created") == "0"
    assert stat(doc, "Paid") == "0 (-)"
    for chart in blocks_of(doc, "chart"):
        assert bar_heights(chart["svg"]) == []
        assert "no payments in this period" in chart["svg"]


async def test_members_counts_by_status_and_revoke_action(sales: Console) -> None:
    doc = await sales.render("members")
    counts = {label: stat(doc, label) for label in ("Active", "Expiring within 7 days", "Expired", "Credit only")}
    assert counts == {"Active": "2", "Expiring within 7 days": "1", "Expired": "1", "Credit only": "1"}
    assert stat(doc, "Accounts in all") == "5"  # frank and gina never paid: no account
    (table,) = blocks_of(doc, "table")
    zero, keep = table["actions"]
    assert zero["label"] == "Revoke, zero credit" and keep["label"] == "Revoke, keep credit"
    assert zero["method"] == keep["method"] == "payments.revoke" and zero["column"] == keep["column"] == 1
    assert zero["options"] == {"credit": True} and "options" not in keep
    assert "can no longer write" in zero["confirm"] and "still pays" in keep["confirm"]  # both ask first
    hex_column = table["columns"].index("pubkey (hex)")
    assert hex_column == 1
    rows = {row[1]: row for row in table["rows"]}
    assert set(rows) == {ALICE, BOB, CAROL, DAVE, ERIN}
    assert rows[BOB][2:4] == ["active", "forever"]
    assert rows[ERIN][2] == "expiring"
    assert rows[ERIN][3] == time.strftime("%Y-%m-%d %H:%M", time.gmtime(NOW + 5 * DAY))
    assert rows[DAVE][2] == "expired"
    assert rows[CAROL][2:5] == ["credit-only", "-", "500"]
    npub = npub_encode(ALICE)
    assert rows[ALICE][0] == npub[:12] + "\u2026" + npub[-6:]


async def test_members_revoke_actions_name_a_real_method_that_takes_the_row_cell(sales: Console) -> None:
    """What console.js does on a click: NIP-86 ``method`` with ``[row[column]]`` (+ ``options``)."""

    async def click(action: dict[str, Any], row: list[str]) -> Any:
        params: list[Any] = [row[action["column"]], *([action["options"]] if "options" in action else [])]
        return (await sales.ext.management_methods()[action["method"]](params)).result

    doc = await sales.render("members", q=npub_encode(ALICE))
    (table,) = blocks_of(doc, "table")
    zero, keep = table["actions"]
    (row,) = table["rows"]
    await click(keep, row)
    doc = await sales.render("members", q=ALICE)
    assert [row[2] for row in blocks_of(doc, "table")[0]["rows"]] == ["none"]
    assert stat(doc, "Active") == "1"  # bob, for good
    # Carol holds only credit: "keep credit" leaves her a credit-only member, "zero credit" does not.
    (row,) = blocks_of(await sales.render("members", q=CAROL), "table")[0]["rows"]
    assert "500 sats of credit kept" in (await click(keep, row))["summary"]
    assert [r[2] for r in blocks_of(await sales.render("members", q=CAROL), "table")[0]["rows"]] == ["credit-only"]
    assert "no credit left" in (await click(zero, row))["summary"]
    assert [r[2] for r in blocks_of(await sales.render("members", q=CAROL), "table")[0]["rows"]] == ["none"]


async def test_members_search_by_npub_hex_or_prefix_and_by_status(sales: Console) -> None:
    for q in (npub_encode(DAVE), DAVE, DAVE.upper(), DAVE[:10], f"  {DAVE[:10]}  "):
        doc = await sales.render("members", q=q)
        (table,) = blocks_of(doc, "table")
        assert [row[1] for row in table["rows"]] == [DAVE], q
    doc = await sales.render("members", status="expiring")
    assert [row[1] for row in blocks_of(doc, "table")[0]["rows"]] == [ERIN]
    assert field_value(doc, "status") == "expiring"
    doc = await sales.render("members", status="credit-only", q=ALICE)
    assert blocks_of(doc, "table")[0]["rows"] == []


async def test_members_unparsable_search_is_a_line_of_text_and_bad_status_means_any(sales: Console) -> None:
    for q in ("zzz", "npub1notanpub", "abc", "g" * 64, "<script>", "x" * 10_000):
        doc = await sales.render("members", q=q)
        assert blocks_of(doc, "table") == []
        (line,) = lines(doc)
        assert "is not a pubkey" in line and len(line) < 250
        assert stat(doc, "Active") == "2"  # the counts still show
        assert field_value(doc, "q") == ""
    doc = await sales.render("members", status="bogus")
    assert field_value(doc, "status") == ""
    assert len(blocks_of(doc, "table")[0]["rows"]) == 5


async def test_members_list_pages_keeping_the_search(console: Console) -> None:
    """A long member list comes a page at a time (``PAGE_ROWS``), with a pager whose
    queries keep the search; nothing is shown twice or skipped; garbage is the first page."""
    total = 2 * PAGE_ROWS + 3
    for n in range(total):
        await console.store.update_account(f"{n:064x}", NOW, admitted_until=NOW + DAY * (n + 1))
    doc = await console.render("members")
    assert stat(doc, "Accounts in all") == f"{total}"
    seen: list[str] = []
    page, pages = {}, 0
    while True:
        doc = await console.render("members", **page)
        (table,) = blocks_of(doc, "table")
        seen += [row[1] for row in table["rows"]]
        (pager,) = blocks_of(doc, "pager")
        pages += 1
        assert pager["label"] == f"accounts {(pages - 1) * PAGE_ROWS + 1:,}\u2013{len(seen):,}"
        if pager["next"] is None:
            break
        assert len(table["rows"]) == PAGE_ROWS
        page = pager["next"]
    assert pages == 3 and len(table["rows"]) == 3 and pager["previous"] == {"page": "2"}
    assert sorted(seen) == sorted(f"{n:064x}" for n in range(total))  # each once
    # The pager keeps the search: 7 accounts expire within 7 days, one page of them, no pager.
    doc = await console.render("members", status="expiring")
    assert len(blocks_of(doc, "table")[0]["rows"]) == 7 and blocks_of(doc, "pager") == [] and lines(doc) == []
    doc = await console.render("members", status="active", page="2")
    (pager,) = blocks_of(doc, "pager")
    assert pager["previous"] == {"status": "active", "page": "1"}
    for garbage in ("0", "-1", "x", "99999999999999999999", "²"):
        doc = await console.render("members", page=garbage)
        assert blocks_of(doc, "table")[0]["rows"][0][1] == seen[0], garbage


async def test_invoices_newest_first_with_states_and_search(sales: Console) -> None:
    doc = await sales.render("invoices")
    (table,) = blocks_of(doc, "table")
    assert table["columns"] == [
        "payment hash",
        "pubkey",
        "plan",
        "sats",
        "state",
        "created (UTC)",
        "paid (UTC)",
        "wallet fee (sats)",
    ]
    h = sales.hashes
    order = ["carol", "gina", "bob", "frank", "alice", "erin", "dave"]
    assert [row[0] for row in table["rows"]] == [h[name] for name in order]
    by_hash = {row[0]: row for row in table["rows"]}
    assert by_hash[h["frank"]][4] == "expired"  # pending past its expiry
    assert by_hash[h["gina"]][4] == "pending"
    assert by_hash[h["alice"]][1:6] == [
        ALICE,
        "subscription",
        "2,000",
        "paid",
        time.strftime("%Y-%m-%d %H:%M", time.gmtime(NOW - 10 * DAY)),
    ]
    assert by_hash[h["gina"]][6] == "-"
    # By npub (pubkey only), hex pubkey, payment hash, and prefixes of either.
    for q, want in (
        (npub_encode(ERIN), ["erin"]),
        (ERIN, ["erin"]),
        (h["frank"], ["frank"]),
        (h["frank"][:12], ["frank"]),
        (GINA[:12].upper(), ["gina"]),
    ):
        doc = await sales.render("invoices", q=q)
        assert [row[0] for row in blocks_of(doc, "table")[0]["rows"]] == [h[n] for n in want], q
    doc = await sales.render("invoices", q="ffff" * 16)
    assert blocks_of(doc, "table")[0]["rows"] == []


async def test_invoices_garbage_search_and_bounds(console: Console) -> None:
    doc = await console.render("invoices", q="not a hash")
    assert blocks_of(doc, "table") == []
    (line,) = lines(doc)
    assert "is not a pubkey or payment hash" in line
    for n in range(PAGE_ROWS + 1):
        await console.store.add_invoice(
            Invoice(f"{n:064x}", ALICE, "credit", 100_000, f"lnbcrt{n}", NOW - n, NOW - n + 900, credit_msat=100_000)
        )
    doc = await console.render("invoices")
    (table,) = blocks_of(doc, "table")
    assert len(table["rows"]) == PAGE_ROWS
    assert table["rows"][0][0] == f"{0:064x}"  # the newest
    (pager,) = blocks_of(doc, "pager")
    assert pager["previous"] is None and pager["next"] == {"page": "2"}
    doc = await console.render("invoices", **pager["next"])
    assert blocks_of(doc, "table")[0]["rows"][0][0] == f"{PAGE_ROWS:064x}"  # the next newest
    doc = await console.render("invoices", q=f"{7:064x}")
    assert [row[0] for row in blocks_of(doc, "table")[0]["rows"]] == [f"{7:064x}"] and lines(doc) == []
    assert blocks_of(doc, "pager") == []


async def test_pages_through_the_running_relays_console_with_nip98(
    relay_factory: RelayFactory, storage: dict[str, str], alice: bytes, bob: bytes
) -> None:
    """As the operator's browser asks: GET /admin/api/panel/<name>?<query>, NIP-98 signed;
    the invoices bought and paid through the join page's API, as a member would."""
    operator = crypto.generate_secret()
    sections: dict[str, Any] = {
        "payments": {"enabled": True, "backend": "fake", **PLANS},
        "admin": {"pubkeys": [pubkey_of(operator)]},
        **({"storage": storage} if storage else {}),
    }
    async with relay_factory(**sections) as relay, httpx.AsyncClient() as http:
        base = f"http://127.0.0.1:{relay.port}"

        async def get(target: str, secret: bytes = operator) -> httpx.Response:
            return await http.get(base + target, headers={"Authorization": nip98_header(secret, base + target)})

        hashes = []
        for secret, plan in ((alice, "subscription"), (bob, "admission")):
            res = await http.post(f"{base}/api/invoice", json={"pubkey": pubkey_of(secret), "plan": plan})
            assert res.status_code == 200, res.text
            hashes.append(res.json()["payment_hash"])
        assert (await http.post(f"{base}/api/fake/pay/{hashes[0]}")).json()["simulated"] is True

        tabs = (await get("/admin/api/panels")).json()
        assert [t["name"] for t in tabs][-3:] == ["revenue", "members", "invoices"]
        revenue = (await get("/admin/api/panel/revenue?days=7")).json()
        assert field_value(revenue, "days") == "7"
        assert stat(revenue, "Sats received") == "2,000" and stat(revenue, "Paid invoices") == "1"
        assert stat(revenue, "Monthly recurring revenue (sats)") == "2,000"
        assert stat(revenue, "Created") == "2" and stat(revenue, "Paid") == "1 (50.0%)"
        assert len(bar_heights(blocks_of(revenue, "chart")[0]["svg"])) == 1
        garbage = await get("/admin/api/panel/revenue?days=%00%ff&days=7")
        assert garbage.status_code == 200 and field_value(garbage.json(), "days") == "30"

        members = (await get(f"/admin/api/panel/members?q={npub_encode(pubkey_of(alice))}")).json()
        assert [row[1:3] for row in blocks_of(members, "table")[0]["rows"]] == [[pubkey_of(alice), "active"]]
        found = (await get(f"/admin/api/panel/invoices?q={hashes[1][:10]}")).json()
        assert [row[0] for row in blocks_of(found, "table")[0]["rows"]] == [hashes[1]]
        bad = (await get("/admin/api/panel/members?q=%3Cb%3E")).json()
        assert any("is not a pubkey" in line for line in lines(bad))

        # Only admins: another key's signature is refused before any payments figure is read.
        assert (await get("/admin/api/panel/revenue", secret=alice)).status_code == 403
        assert (await http.get(base + "/admin/api/panel/members")).status_code == 401


TIERS = {
    "supporter": {"label": "Supporter", "order": 1, "price_sats": 2000, "period_days": 30, "grace_days": 3},
    "pro": {"label": "Pro", "order": 2, "price_sats": 20000, "period_days": 365, "grace_days": 7},
}


def short(pubkey: str) -> str:
    npub = npub_encode(pubkey)
    return npub[:12] + "\u2026" + npub[-6:]


@pytest.fixture
async def tiered(store: Store, tmp_path: Path) -> AsyncIterator[Console]:  # noqa: F811
    """Tiers beside the subscription plan, each pubkey in another situation at NOW."""
    plans = {"subscription": PLANS["subscription"], "admission": {"enabled": False}, "tiers": TIERS}
    settings = payment_settings(tmp_path, **plans)
    wallet = build_backend(settings, None)  # type: ignore[arg-type]  # the fake wallet needs no HTTP
    assert isinstance(wallet, FakeBackend)
    ext = PaymentsExtension(settings, store, wallet, clock=lambda: NOW)
    await ext.store.open()
    c = Console(ext, ext.store, wallet, {})
    try:
        await c.buy(ALICE, "supporter", NOW - 10 * DAY)  # a supporter for 20 more days
        await c.buy(BOB, "supporter", NOW - 28 * DAY)  # renewal due in 2 days, from his wallet
        await c.ext.store.set_nwc_link(NwcLink(BOB, "sealed", 5_000_000, NOW - DAY))
        await c.buy(CAROL, "supporter", NOW - 31 * DAY)  # ended yesterday: in grace 2 more days
        await c.buy(DAVE, "supporter", NOW - 40 * DAY)  # lapsed 7 days after its 3-day grace
        await c.buy(ERIN, "pro", NOW - 100 * DAY)
        await c.buy(ERIN, "supporter", NOW - 50 * DAY)  # a downgrade, at the end of pro's year
        await c.ext.store.update_account(FRANK, NOW - DAY, role="pro", comped=True)
        await c.buy(GINA, "subscription", NOW - 5 * DAY)  # the single plan, no tier
        yield c
    finally:
        await wallet.close()


async def test_members_page_shows_members_per_tier_grace_and_upcoming_renewals(tiered: Console) -> None:
    doc = await tiered.render("members")
    accounts, per_tier, grace, renewals = blocks_of(doc, "table")  # the accounts first: the pager scrolls there
    assert per_tier["columns"] == ["tier", "members", "comped", "in grace", "renewing", "moving here at period end"]
    assert per_tier["rows"] == [
        ["Supporter", "2", "0", "1", "1", "1"],  # alice and bob; carol in grace; bob due; erin coming
        ["Pro", "1", "1", "0", "0", "0"],  # erin (until her year ends), frank comped
        ["no tier (single plans)", "1", "0", "0", "0", "0"],  # gina's subscription
    ]
    ended = NOW - 31 * DAY + 30 * DAY
    assert grace["rows"] == [[short(CAROL), CAROL, "Supporter", utc(ended), utc(ended + 3 * DAY)]]
    assert renewals["rows"] == [[short(BOB), BOB, "Supporter", utc(NOW + 2 * DAY), "wallet connected (NWC)"]]
    rows = {row[1]: row for row in accounts["rows"]}
    assert accounts["columns"][-1] == "tier"
    erin_switch = NOW - 100 * DAY + 365 * DAY
    assert rows[ERIN][-1] == f"Pro, then Supporter from {utc(erin_switch)}"
    assert rows[FRANK][-1] == "Pro (comped)"
    assert rows[GINA][-1] == "" and rows[DAVE][-1] == "Supporter"


async def test_revenue_page_shows_revenue_per_tier(tiered: Console) -> None:
    month = blocks_of(await tiered.render("revenue"), "table")
    assert [t["title"] for t in month] == ["Revenue per tier, last 30 days"]
    assert month[0]["columns"] == ["tier", "price", "sats received", "paid invoices", "members now", "in grace"]
    assert month[0]["rows"] == [
        ["Supporter", "2000 sats for 30 days", "4,000", "2", "2", "1"],  # alice and bob paid in these 30 days
        ["Pro", "20000 sats for 365 days", "0", "0", "1", "0"],
    ]
    (year,) = blocks_of(await tiered.render("revenue", days="365"), "table")
    assert year["rows"][0][2:4] == ["10,000", "5"]  # carol, dave and erin's downgrade too
    assert year["rows"][1][2:4] == ["20,000", "1"]


async def test_pages_without_tiers_show_no_tier_tables(sales: Console) -> None:
    assert [t["title"] for t in blocks_of(await sales.render("members"), "table")] == ["Accounts"]
    assert blocks_of(await sales.render("revenue"), "table") == []
