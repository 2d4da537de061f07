"""NIP-11 as the spec now stands (tests/nip11_fields.json keeps its field list and date):
the relay publishes the fields it names, with their types, nothing the spec removed, and
nothing else but the few fields of its own listed there."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import RelayFactory

SPEC = json.loads((Path(__file__).parent / "nip11_fields.json").read_text())
NIP11 = {"Accept": "application/nostr+json"}
HEX = set("0123456789abcdef")
PAID: dict[str, Any] = {
    "enabled": True,
    "backend": "fake",
    "subscription": {"enabled": True, "fee_sats": 2000, "period_days": 30},
    "credit": {"enabled": True, "default_price_msat": 50, "kind_prices_msat": {"4": 100}},
}


async def _document(relay_factory: RelayFactory, **sections: Any) -> tuple[dict[str, Any], httpx.Headers]:
    async with relay_factory(**sections) as relay, httpx.AsyncClient() as http:
        resp = await http.get(f"http://127.0.0.1:{relay.port}/", headers=NIP11)
        assert resp.status_code == 200
        doc: dict[str, Any] = resp.json()
        assert doc["self"] == relay.identity.pubkey
        return doc, resp.headers


def _check_against_spec(doc: dict[str, Any]) -> None:
    removed = set(SPEC["removed"])
    fields = set(SPEC["fields"]) | set(SPEC["ours"]["fields"])
    limitation = set(SPEC["limitation"]) | set(SPEC["ours"]["limitation"])
    assert not removed & (set(doc) | set(doc["limitation"])), f"fields NIP-11 of {SPEC['as_of']} removed"
    assert set(doc) <= fields, set(doc) - fields
    assert set(doc["limitation"]) <= limitation, set(doc["limitation"]) - limitation
    assert isinstance(doc["self"], str) and len(doc["self"]) == 64 and set(doc["self"]) <= HEX
    assert all(isinstance(n, int) for n in doc["supported_nips"]) and doc["supported_nips"] == sorted(
        set(doc["supported_nips"])
    )
    for key in ("name", "description", "version"):
        assert isinstance(doc[key], str)
    for key in ("auth_required", "payment_required", "restricted_writes"):
        assert isinstance(doc["limitation"][key], bool), key
    for key, value in doc["limitation"].items():
        if key not in ("auth_required", "payment_required", "restricted_writes"):
            assert isinstance(value, int) and not isinstance(value, bool), key


async def test_free_relay_publishes_only_current_nip11_fields(relay_factory: RelayFactory) -> None:
    # max_filters and retention are configured: the relay enforces them, NIP-11 no longer names them.
    doc, headers = await _document(
        relay_factory, limits={"max_filters": 3}, retention={"kinds": {"1": "30d"}}, relay={"contact": "mailto:a@b"}
    )
    _check_against_spec(doc)
    assert doc["limitation"]["payment_required"] is False and doc["contact"] == "mailto:a@b"
    assert "payments_url" not in doc and "fees" not in doc
    assert 67 in doc["supported_nips"]  # the EOSE completeness hint
    for header in ("access-control-allow-origin", "access-control-allow-headers", "access-control-allow-methods"):
        assert header in headers  # NIP-11: MUST, on the document itself


async def test_paid_relay_publishes_payments_url_fees_and_restrictions(relay_factory: RelayFactory) -> None:
    doc, _ = await _document(relay_factory, payments=PAID)
    _check_against_spec(doc)
    assert doc["limitation"]["payment_required"] is True and doc["limitation"]["restricted_writes"] is True
    assert doc["payments_url"].endswith("/join")
    assert set(doc["fees"]) <= set(SPEC["fees"]) and set(doc["fees"]) == {"admission", "subscription", "publication"}
    for entries in doc["fees"].values():
        for entry in entries:
            assert entry["unit"] == "msats" and isinstance(entry["amount"], int)
    assert all(isinstance(e["period"], int) for e in doc["fees"]["subscription"])
    assert {"kinds": [4], "amount": 100, "unit": "msats"} in doc["fees"]["publication"]


async def test_retention_is_stated_on_the_html_page(relay_factory: RelayFactory) -> None:
    async with relay_factory(retention={"kinds": {"1": "30d", "7": "1d"}}) as relay, httpx.AsyncClient() as http:
        page = (await http.get(f"http://127.0.0.1:{relay.port}/", headers={"Accept": "text/html"})).text
    assert "kind 7: kept 1 day" in page and "kind 1: kept 30 days" in page
