"""HTTP on the relay's port: NIP-11 document (Accept header, CORS, preflight, honest
limits), the HTML page for browsers, Prometheus /metrics, 404."""

from __future__ import annotations

import httpx
import pytest

from relay.session.server import Relay
from tests.conftest import RelayFactory
from tests.nostr_client import NostrClient, signed

NIP11 = {"Accept": "application/nostr+json"}


def http_url(relay: Relay, path: str = "/") -> str:
    return f"http://127.0.0.1:{relay.port}{path}"


async def test_nip11_document_is_served_for_nostr_json_accept(relay: Relay) -> None:
    async with httpx.AsyncClient() as http:
        resp = await http.get(http_url(relay), headers=NIP11)
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "application/nostr+json"
    assert resp.headers["access-control-allow-origin"] == "*"
    doc = resp.json()
    assert doc["name"] == "satsrelay"
    assert doc["supported_nips"] == [1, 9, 11, 13, 22, 40, 42, 45, 50, 59, 62, 67, 70, 77, 86]
    assert isinstance(doc["version"], str)


async def test_nip11_limitation_tells_the_configured_limits(relay_factory: RelayFactory) -> None:
    limits = {"max_message_length": 20000, "max_subscriptions": 7, "max_filters": 3, "max_limit": 42,
              "default_limit": 21, "max_event_tags": 11, "max_content_length": 99, "min_pow_difficulty": 5,
              "created_at_lower_limit": 86400, "created_at_upper_limit": 120}
    auth = {"required_to_read": True, "required_to_write": True}
    info = {"name": "test relay", "pubkey": "ab" * 32, "contact": "mailto:x@y"}
    async with relay_factory(limits=limits, auth=auth, relay=info) as relay, httpx.AsyncClient() as http:
        doc = (await http.get(http_url(relay), headers=NIP11)).json()
    assert doc["name"] == "test relay" and doc["pubkey"] == "ab" * 32 and doc["contact"] == "mailto:x@y"
    # max_filters is enforced (tests/test_limits.py) but NIP-11 no longer has the field (2025-04).
    assert doc["limitation"] == {k: v for k, v in limits.items() if k != "max_filters"} | {
        "max_subid_length": 64, "auth_required": True, "restricted_writes": True, "payment_required": False,
        "max_negentropy_sessions": 4, "max_negentropy_items": 500_000}


async def test_nip11_accept_header_with_several_types(relay: Relay) -> None:
    async with httpx.AsyncClient() as http:
        resp = await http.get(http_url(relay), headers={"Accept": "text/html, application/nostr+json;q=0.9"})
    assert resp.headers["content-type"] == "application/nostr+json"


async def test_cors_preflight_is_answered(relay: Relay) -> None:
    headers = {"Origin": "https://client.example", "Access-Control-Request-Method": "GET",
               "Access-Control-Request-Headers": "accept"}
    async with httpx.AsyncClient() as http:
        resp = await http.options(http_url(relay), headers=headers)
    assert resp.status_code in (200, 204)
    assert resp.headers["access-control-allow-origin"] == "*"
    assert "GET" in resp.headers["access-control-allow-methods"]
    assert resp.headers["access-control-allow-headers"] in ("*", "accept")


async def test_browser_gets_an_html_page_with_name_and_limits(relay_factory: RelayFactory) -> None:
    async with relay_factory(relay={"name": "Sats <Relay>", "description": "paid & fast", "pubkey": "cd" * 32},
                             limits={"max_subscriptions": 17}) as relay, httpx.AsyncClient() as http:
        resp = await http.get(http_url(relay), headers={"Accept": "text/html"})
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/html")
    page = resp.text
    assert "Sats &lt;Relay&gt;" in page and "paid &amp; fast" in page and "cd" * 32 in page
    assert "max_subscriptions" in page and "17" in page
    assert "<Relay>" not in page


async def test_metrics_are_prometheus_text_and_count_events(relay: Relay, client: NostrClient, alice: bytes) -> None:
    await client.publish(signed(alice, 1, "counted"))
    await client.publish(signed(alice, 1, "bad") .to_dict() | {"content": "tampered"})
    await client.req("s", {"kinds": [1]})
    async with httpx.AsyncClient() as http:
        resp = await http.get(f"http://127.0.0.1:{relay.metrics_port}/metrics")  # [server] metrics_listen
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    text = resp.text
    assert 'satsrelay_events_accepted_total{kind_class="regular"} 1.0' in text
    assert 'satsrelay_events_rejected_total{reason="invalid"} 1.0' in text
    assert "satsrelay_connections 1.0" in text
    assert "satsrelay_reqs_total 1.0" in text
    assert "satsrelay_writer_batches_total" in text
    assert "satsrelay_query_seconds_bucket" in text


@pytest.mark.parametrize("path", ["/nope", "/favicon.ico"])
async def test_unknown_path_is_404(relay: Relay, path: str) -> None:
    async with httpx.AsyncClient() as http:
        resp = await http.get(http_url(relay, path))
    assert resp.status_code == 404


async def test_http_requests_do_not_disturb_websocket_clients(relay: Relay, client: NostrClient, alice: bytes) -> None:
    async with httpx.AsyncClient() as http:
        for _ in range(5):
            assert (await http.get(http_url(relay), headers=NIP11)).status_code == 200
    assert await client.publish(signed(alice, 1, "still here")) == (True, "")
