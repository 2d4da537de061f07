"""NIP-86 and the operator console's API called by an independent NIP-98 client: nostr-tools
(``tests/node/nip98.mjs``) signs the Authorization header, payload hash included, and Node's
fetch sends the request, as a management tool built on it would."""

from __future__ import annotations

from typing import Any

import pytest

from relay.nostr import crypto
from tests import node_tools
from tests.conftest import RelayFactory

B = "b" * 64
PAID = {"enabled": True, "backend": "fake"}


@pytest.fixture(scope="module", autouse=True)
def nostr_tools() -> None:
    why = node_tools.ensure_installed()
    if why is not None:
        pytest.skip(why)


async def nip98_call(
    secret: bytes, url: str, method: str, payload: dict[str, Any] | None = None, signed_url: str | None = None
) -> dict[str, Any]:
    command = {"secret": secret.hex(), "url": url, "method": method, "payload": payload, "signedUrl": signed_url}
    return await node_tools.run_script("nip98.mjs", command)


async def test_nostr_tools_signed_requests_manage_the_relay_and_read_the_console(
    relay_factory: RelayFactory, alice: bytes, bob: bytes
) -> None:
    admin = crypto.public_key(alice).hex()
    async with relay_factory(admin={"pubkeys": [admin]}, payments=PAID) as relay:
        http = relay.url.replace("ws://", "http://")

        answer = await nip98_call(alice, http, "POST", {"method": "supportedmethods", "params": []})
        assert answer["status"] == 200, answer
        assert {"banpubkey", "payments.grant", "listeventsneedingmoderation"} <= set(answer["json"]["result"])

        # NIP-86 tools sign the relay's ws:// URL as `u` and send to its http:// form.
        ban = {"method": "banpubkey", "params": [B, "spam"]}
        answer = await nip98_call(alice, http, "POST", ban, signed_url=relay.url)
        assert (answer["status"], answer["json"]) == (200, {"result": True})
        assert dict(relay.management.state.banned_pubkeys) == {B: "spam"}

        grant = {"method": "payments.grant", "params": [B, {"days": 30}]}
        answer = await nip98_call(alice, http, "POST", grant)
        assert answer["status"] == 200 and answer["json"]["result"]["admitted"] is True, answer

        answer = await nip98_call(bob, http, "POST", {"method": "unbanpubkey", "params": [B]})
        assert answer["status"] == 401 and answer["json"]["error"].startswith("unauthorized:"), answer
        assert B in relay.management.state.banned_pubkeys

        answer = await nip98_call(alice, f"{http}/admin/api/panels", "GET")
        assert answer["status"] == 200, answer
        names = [panel["name"] for panel in answer["json"]]
        assert names[:3] == ["overview", "moderation", "settings"] and "revenue" in names
        answer = await nip98_call(alice, f"{http}/admin/api/panel/members?q={B}", "GET")
        assert answer["status"] == 200, answer
        assert B in str(answer["json"]["blocks"])
        answer = await nip98_call(bob, f"{http}/admin/api/panels", "GET")
        assert answer["status"] == 403, answer
