"""What the browser tests share: Debian's Chromium (browser downloads do not work here), where
their screenshots go, and a stand-in for a NIP-07 extension."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from relay.nostr import crypto
from relay.nostr.event import sign_event

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
DOCS_IMG = Path(__file__).resolve().parents[1] / "docs" / "img"


async def stand_in_signer(page: Any, secret: bytes | Callable[[], bytes]) -> None:
    """``window.nostr`` as a NIP-07 extension offers it, backed by ``secret`` (or by whichever
    key ``secret()`` names at each call: a user switching accounts in the extension)."""

    def current() -> bytes:
        return secret() if callable(secret) else secret

    def sign(template: dict[str, Any]) -> dict[str, Any]:
        kind, content, tags, at = template["kind"], template["content"], template["tags"], template["created_at"]
        return sign_event(current(), kind, content, tags, at).to_dict()

    async def get_public_key() -> str:
        return crypto.public_key(current()).hex()

    await page.expose_function("standInSign", sign)
    await page.expose_function("standInKey", get_public_key)
    await page.add_init_script(
        "window.nostr = { signEvent: (t) => window.standInSign(t), getPublicKey: () => window.standInKey() };"
    )
