"""An independent NIP-57 client for the tests: nostr-tools (Node) drives ``tests/node/zap.mjs``.

It makes and signs the zap request, finds the callback from the relay's kind-0 profile the
way clients do (``getZapEndpoint``), and checks a receipt against what its own
``makeZapReceipt`` would produce. ``make test-deps`` installs it (``npm ci``); the fixture
does it on first use when Node is present, and skips when it is not.
"""

from __future__ import annotations

from typing import Any

from tests.node_tools import run_script


async def run(command: dict[str, Any]) -> dict[str, Any]:
    return await run_script("zap.mjs", command)


async def zap_request(secret: bytes, profile: str, amount_msat: int, relays: list[str]) -> str:
    answer = await run(
        {"op": "request", "secret": secret.hex(), "profile": profile, "amount": amount_msat, "relays": relays}
    )
    assert answer["valid"] is None, answer
    return str(answer["request"])


async def zap_endpoint(profile_event: dict[str, Any]) -> str | None:
    answer = await run({"op": "endpoint", "profile": profile_event})
    return answer["callback"]


async def receipt_problems(receipt: dict[str, Any], nostr_pubkey: str, request: str, amount_msat: int) -> list[str]:
    answer = await run(
        {
            "op": "check-receipt",
            "receipt": receipt,
            "nostrPubkey": nostr_pubkey,
            "request": request,
            "amount": amount_msat,
        }
    )
    return list(answer["problems"])
