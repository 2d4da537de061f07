"""NIP-11 relay information document and the plain HTML page for browsers.

Built once at start-up from Settings (plus the extension's fields): every limit the relay
enforces is published, and only NIPs the relay actually implements are listed.
"""

from __future__ import annotations

import html
from typing import Any

from relay import __version__
from relay.config import Settings
from relay.retention import nip11_retention

SUPPORTED_NIPS = [1, 9, 11, 13, 22, 40, 42, 45, 62, 70]


def supported_nips(settings: Settings) -> list[int]:
    nips = list(SUPPORTED_NIPS)
    if settings.search.indexed_kinds():
        nips.append(50)
    if settings.negentropy.enabled:
        nips.append(77)
    return sorted(nips)


def build_info(settings: Settings, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    info = settings.relay
    limits = settings.limits
    doc: dict[str, Any] = {
        "name": info.name,
        "description": info.description,
        "supported_nips": supported_nips(settings),
        "version": __version__,
    }
    for key in ("pubkey", "contact", "icon", "banner", "terms_of_service"):
        value = getattr(info, key)
        if value:
            doc[key] = value
    limitation: dict[str, Any] = {
        "max_message_length": limits.max_message_length,
        "max_subscriptions": limits.max_subscriptions,
        "max_filters": limits.max_filters,
        "max_limit": limits.max_limit,
        "default_limit": limits.default_limit,
        "max_subid_length": 64,
        "max_event_tags": limits.max_event_tags,
        "max_content_length": limits.max_content_length,
        "min_pow_difficulty": limits.min_pow_difficulty,
        "auth_required": settings.auth.required_to_read,
        "payment_required": False,
        "restricted_writes": settings.auth.required_to_write,
    }
    if settings.negentropy.enabled:
        # NIP-77 limits (no standard NIP-11 names exist): reconciliations open at once per
        # connection, and events in one (past it: NEG-ERR "blocked:").
        limitation["max_negentropy_sessions"] = settings.negentropy.max_sessions
        limitation["max_negentropy_items"] = settings.negentropy.max_items
    if limits.created_at_lower_limit is not None:
        limitation["created_at_lower_limit"] = limits.created_at_lower_limit
    if limits.created_at_upper_limit is not None:
        limitation["created_at_upper_limit"] = limits.created_at_upper_limit
    if settings.retention.kinds:
        doc["retention"] = nip11_retention(settings.retention.max_age())
    extra = dict(extra or {})
    limitation.update(extra.pop("limitation", {}))
    doc["supported_nips"] = sorted(set(doc["supported_nips"]) | set(extra.pop("supported_nips", [])))
    doc["limitation"] = limitation
    doc.update(extra)
    return doc


def render_html(doc: dict[str, Any]) -> str:
    """A small self-contained page: what this relay is and what it allows."""
    esc = html.escape
    limits = "".join(
        f"<tr><th>{esc(str(k))}</th><td>{esc(str(v))}</td></tr>" for k, v in doc.get("limitation", {}).items()
    )
    pubkey = f"<p>Operator pubkey: <code>{esc(doc['pubkey'])}</code></p>" if doc.get("pubkey") else ""
    nips = ", ".join(str(n) for n in doc.get("supported_nips", []))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>{esc(doc.get("name", "satsrelay"))}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:40rem;margin:2rem auto;padding:0 1rem}}
th{{text-align:left;padding-right:1rem;font-weight:500}}code{{word-break:break-all}}</style></head>
<body><h1>{esc(doc.get("name", "satsrelay"))}</h1><p>{esc(doc.get("description", ""))}</p>{pubkey}
<p>This is a Nostr relay: add its address to your Nostr client. Supported NIPs: {esc(nips)}.</p>
<h2>Limits</h2><table>{limits}</table></body></html>
"""
