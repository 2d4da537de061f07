"""LNURL-pay documents (LUD-06, LUD-16 lightning addresses, NIP-57's additions).

Pure: builds the JSON a wallet reads; the routes live in ``lightning.zapper``.

- ``GET /.well-known/lnurlp/<name>`` answers the pay-request document: ``callback``,
  ``minSendable``/``maxSendable`` (msat), ``metadata`` (a JSON *string*), ``tag:
  payRequest``, and for NIP-57 ``allowsNostr: true`` with ``nostrPubkey`` (the key that
  signs receipts).
- The callback answers ``{"pr": <bolt11>, "routes": []}``; every refusal is
  ``{"status": "ERROR", "reason": ...}`` (LUD-06). Wallets read that body whatever the
  HTTP status; the status still says whose fault it was (400 the request, 429 too many,
  503 the wallet).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import orjson


def http_base(public_url: str) -> str:
    """``wss://host/path`` -> ``https://host/path`` (the relay serves HTTP on the same port)."""
    url = public_url.rstrip("/")
    if url.startswith("wss://"):
        return "https://" + url[len("wss://") :]
    if url.startswith("ws://"):
        return "http://" + url[len("ws://") :]
    return url


def lightning_address(name: str, public_url: str) -> str:
    """LUD-16 ``<name>@<host>`` (with the port when the relay has one: tests, LANs)."""
    return f"{name}@{urlsplit(http_base(public_url)).netloc}"


def metadata(relay_name: str, address: str) -> str:
    """LUD-06 metadata: a JSON array serialised to a string, kept short (wallets show it)."""
    text = f"Zap {relay_name[:100]} to write there"
    return orjson.dumps([["text/plain", text], ["text/identifier", address]]).decode()


def pay_request(callback: str, min_msat: int, max_msat: int, metadata_text: str, nostr_pubkey: str) -> dict[str, Any]:
    return {
        "tag": "payRequest",
        "callback": callback,
        "minSendable": min_msat,
        "maxSendable": max_msat,
        "metadata": metadata_text,
        "allowsNostr": True,
        "nostrPubkey": nostr_pubkey,
        "commentAllowed": 0,
    }


def invoice_answer(bolt11: str) -> dict[str, Any]:
    return {"pr": bolt11, "routes": []}


def error(reason: str) -> dict[str, Any]:
    return {"status": "ERROR", "reason": reason}
