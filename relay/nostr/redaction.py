"""Secrets kept out of what the relay shows: its log, its console, its error messages.

One masking rule for every place that prints a URL or a setting (the start-up line, the
console's settings page, a store that cannot connect): a URL's password and any query
parameter named like a secret become ``MASK``; a setting whose name says secret is masked
whole. Pure: no I/O.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, unquote_plus, urlsplit, urlunsplit

MASK = "••••"
SECRET_WORDS = frozenset({"key", "secret", "password", "passwd", "token", "rune", "macaroon", "uri", "credentials"})


def redact_url(url: str) -> str:
    """A URL with its password, and any query parameter named like a secret, masked."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return MASK
    netloc = parts.netloc
    if password is None and not any(is_secret_name(k) for k, _ in parse_qsl(parts.query)):
        return url  # nothing to mask: as written (urlunsplit would turn sqlite:/// into sqlite:/)
    if password is not None:
        userinfo, _, host = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:{MASK}@{host}"
    query = "&".join(_masked_pair(pair) for pair in parts.query.split("&")) if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _masked_pair(pair: str) -> str:
    """One ``name=value`` of a query string, the value masked when the name is a secret's
    (the rest kept as written, percent-encoding included)."""
    name, eq, value = pair.partition("=")
    return f"{name}={MASK}" if eq and value and is_secret_name(unquote_plus(name)) else pair


def is_secret_name(name: str) -> bool:
    words = name.lower().replace("-", "_").split("_")
    if words[-1] in ("file", "path"):
        return False
    return any(word in SECRET_WORDS for word in words)
