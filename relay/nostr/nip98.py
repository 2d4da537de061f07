"""NIP-98 HTTP Auth: a signed kind-27235 event in ``Authorization: Nostr <base64>``.

Pure (the clock and the request's facts are arguments), so any HTTP route can use it: the
account page shows balances to their owner only, and NIP-86 management requests need the
same check with a body hash. ``verify`` returns why the event does not authorise the
request, or None; ``decode_header`` turns the header into an event. A failed check should
be answered 401 (NIP-98).
"""

from __future__ import annotations

import base64
import binascii

import orjson

from relay.nostr.errors import Invalid
from relay.nostr.event import Event, parse_event, verify_signature

HTTP_AUTH_KIND = 27235
DEFAULT_WINDOW_SECONDS = 60  # NIP-98's suggested created_at window
MAX_HEADER_BYTES = 16384  # a 27235 event is a few hundred bytes; refuse to decode a flood


class Nip98Error(ValueError):
    """The Authorization header is missing, malformed or does not authorise the request."""


def decode_header(header: str | None) -> Event:
    """The event in ``Authorization: Nostr <base64 JSON>``; ``Nip98Error`` if there is none."""
    if not header:
        raise Nip98Error("no Authorization header")
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "nostr" or not token:
        raise Nip98Error("Authorization scheme must be Nostr")
    if len(token) > MAX_HEADER_BYTES:
        raise Nip98Error("Authorization header too long")
    try:
        return parse_event(orjson.loads(base64.b64decode(token.strip(), validate=True)))
    except (binascii.Error, ValueError, orjson.JSONDecodeError, Invalid) as exc:
        raise Nip98Error(f"Authorization is not a base64 nostr event ({exc})") from None


def verify(
    event: Event,
    *,
    url: str,
    method: str,
    now: int,
    body_sha256: str | None = None,
    window: int = DEFAULT_WINDOW_SECONDS,
) -> str | None:
    """Why ``event`` does not authorise ``method url`` at ``now``, or None when it does.

    NIP-98's checks in its order: kind 27235; ``created_at`` within ``window`` seconds of
    ``now`` (either side); the ``u`` tag exactly the absolute request URL, query included;
    the ``method`` tag the request's method. ``body_sha256`` (hex) is given when the
    request has a body: the ``payload`` tag must then be present and equal (NIP-98 lets a
    server require it; we do, so a signed header cannot be reused with another body).
    Finally the signature, the most expensive check.
    """
    if event.kind != HTTP_AUTH_KIND:
        return f"kind must be {HTTP_AUTH_KIND}"
    if abs(now - event.created_at) > window:
        return f"created_at must be within {window} seconds of now"
    if event.tag_values("u") != [url]:
        return "u tag must be the request URL"
    if [m.upper() for m in event.tag_values("method")] != [method.upper()]:
        return "method tag must be the request method"
    if body_sha256 is not None and event.tag_values("payload") != [body_sha256.lower()]:
        return "payload tag must be the SHA-256 of the request body"
    if not verify_signature(event):
        return "signature is invalid"
    return None


def authorised_pubkey(
    header: str | None,
    *,
    url: str,
    method: str,
    now: int,
    body_sha256: str | None = None,
    window: int = DEFAULT_WINDOW_SECONDS,
) -> str:
    """The pubkey that signed a valid NIP-98 header for this request; ``Nip98Error`` otherwise."""
    event = decode_header(header)
    problem = verify(event, url=url, method=method, now=now, body_sha256=body_sha256, window=window)
    if problem is not None:
        raise Nip98Error(problem)
    return event.pubkey


# How long a header's single use is remembered after its created_at: ``verify`` lets it
# through until created_at + window by the clock of the node checking it, which may run
# behind the clock of the node that recorded the use; the margin covers that skew.
CLOCK_SKEW_MARGIN = 300


def single_use(event: Event, window: int = DEFAULT_WINDOW_SECONDS) -> tuple[str, int]:
    """(key, keep until) of the record that lets ``event`` authorise one request only.

    NIP-98 binds a header to one URL, method and body for a minute but not to one use: a
    captured NIP-86 ``payments.grant`` replayed within that minute would grant twice. The
    record must be relay-wide (the store's ``take_uses``, inserted before acting): a guard
    in one process's memory forgot the header on a restart and never saw another worker's
    or node's use (issue 17 item 3). Callers record only headers that passed every check
    (an admin's own), so the record grows with the operators' activity, not an attacker's.
    """
    return f"nip98:{event.id}", event.created_at + window + CLOCK_SKEW_MARGIN
