"""NIP-11 relay information document and the plain HTML page for browsers.

Built once at start-up from Settings (plus the extension's fields): the limits NIP-11 names
are published as the relay enforces them, and only NIPs the relay actually implements are
listed. The fields follow NIP-11 as of 2026-03-02 (nostr-protocol/nips 1a4e0988; the
2026-06-13 commit only reformatted it): ``max_filters`` (dropped 2025-04) and ``retention``
(dropped 2026-02 with ``relay_countries``, ``language_tags``, ``tags``, ``posting_policy``
and ``privacy_policy``) are no longer published; the relay still enforces both, says the
filter cap in its ``CLOSED`` reply and the retention on the HTML page.
tests/nip11_fields.json keeps the spec's field list with that date.
"""

from __future__ import annotations

import html
from typing import Any

from relay import __version__
from relay.config import Settings

SUPPORTED_NIPS = [1, 9, 11, 13, 22, 40, 42, 45, 59, 62, 67, 70]


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
    extra = dict(extra or {})
    limitation.update(extra.pop("limitation", {}))
    doc["supported_nips"] = sorted(set(doc["supported_nips"]) | set(extra.pop("supported_nips", [])))
    doc["limitation"] = limitation
    doc.update(extra)
    return doc


def retention_lines(max_age: dict[int, int]) -> list[str]:
    """The ``[retention] kinds`` policy in words, for the HTML page (NIP-11 no longer has a
    field for it): one line per distinct age."""
    by_age: dict[int, list[int]] = {}
    for kind, age in max_age.items():
        by_age.setdefault(age, []).append(kind)
    lines = []
    for age, kinds in sorted(by_age.items()):
        days = f"{age} seconds"
        if age % 86400 == 0:
            days = f"{age // 86400} day{'s' if age != 86400 else ''}"
        lines.append(f"kind{'s' if len(kinds) > 1 else ''} {', '.join(map(str, sorted(kinds)))}: kept {days}")
    return lines


def render_html(doc: dict[str, Any], retention: list[str] | None = None) -> str:
    """A small self-contained page: what this relay is and what it allows."""
    esc = html.escape
    limits = "".join(
        f"<tr><th>{esc(str(k))}</th><td>{esc(str(v))}</td></tr>" for k, v in doc.get("limitation", {}).items()
    )
    kept = ""
    if retention:
        kept = "<h2>Retention</h2><ul>" + "".join(f"<li>{esc(line)}</li>" for line in retention) + "</ul>"
    pubkey = f"<p>Operator pubkey: <code>{esc(doc['pubkey'])}</code></p>" if doc.get("pubkey") else ""
    nips = ", ".join(str(n) for n in doc.get("supported_nips", []))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>{esc(doc.get("name", "satsrelay"))}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:40rem;margin:2rem auto;padding:0 1rem}}
th{{text-align:left;padding-right:1rem;font-weight:500}}code{{word-break:break-all}}</style></head>
<body><h1>{esc(doc.get("name", "satsrelay"))}</h1><p>{esc(doc.get("description", ""))}</p>{pubkey}
<p>This is a Nostr relay: add its address to your Nostr client. Supported NIPs: {esc(nips)}.</p>
<h2>Limits</h2><table>{limits}</table>{kept}</body></html>
"""
