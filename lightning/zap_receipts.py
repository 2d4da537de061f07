"""Is a kind-9735 zap receipt genuine enough to store for free? (NIP-57 Appendices E and F)

A zap receipt is free on a paid relay because someone paid a Lightning invoice for it; an
unchecked "receipt" is only a free write (issue 8: 64 KB fakes with no bolt11 were stored
by the thousand). NIP-57 says a receipt proves nothing by itself: it is as good as the
zapper (the recipient's LNURL server) that signed it, so besides the structural checks the
signer must be a zapper this relay trusts (``[payments] trusted_zappers``, plus keys the
relay adds itself, e.g. its own for "zap the relay").

Pure: no I/O, no clock. ``receipt_problem`` returns why a receipt is not free, or None.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection

import bolt11
import orjson

from relay.nostr.errors import Invalid
from relay.nostr.event import Event, is_hex64, parse_event, verify_signature

ZAP_REQUEST_KIND = 9734
ZAP_RECEIPT_KIND = 9735
DEFAULT_MAX_RECEIPT_BYTES = 8192


def _single(event: Event, name: str) -> str | None:
    """The value of the only ``name`` tag, or None when there is none or more than one."""
    values = event.tag_values(name)
    return values[0] if len(values) == 1 else None


def _bolt11_fields(request: str) -> tuple[int | None, str | None]:
    """(amount in msat or None, description hash hex or None); ValueError if undecodable."""
    try:
        decoded = bolt11.decode(request)
    except Exception as exc:  # the library raises many unrelated types for bad input
        raise ValueError(type(exc).__name__) from None
    amount = decoded.amount_msat
    description_hash = decoded.description_hash
    return (None if amount is None else int(amount)), (None if description_hash is None else str(description_hash))


def receipt_problem(
    receipt: Event, trusted_zappers: Collection[str], *, max_bytes: int = DEFAULT_MAX_RECEIPT_BYTES
) -> str | None:
    """Why ``receipt`` is not a free zap receipt, or None when it is.

    Checks (NIP-57 E/F): signed by a trusted zapper; at most ``max_bytes`` of JSON; exactly
    one ``p`` (the recipient), one ``bolt11`` and one ``description`` tag; the bolt11
    decodes and carries an amount; the description is a validly signed kind-9734 zap
    request with exactly one ``p``, equal to the receipt's; the request's ``amount`` tag,
    when present, equals the invoice amount; the invoice's description hash, when present,
    is SHA-256 of the description (what binds the request to the paid invoice); a ``P`` tag
    on the receipt names the request's author and an ``e`` tag the request's ``e``.
    """
    if receipt.kind != ZAP_RECEIPT_KIND:
        return "not a zap receipt"
    if receipt.pubkey not in trusted_zappers:
        return "not signed by a zapper this relay trusts"
    if len(receipt.raw) > max_bytes:
        return f"larger than {max_bytes} bytes"
    recipient = _single(receipt, "p")
    if recipient is None or not is_hex64(recipient):
        return "needs exactly one p tag"
    invoice = _single(receipt, "bolt11")
    if invoice is None:
        return "needs exactly one bolt11 tag"
    description = _single(receipt, "description")
    if description is None:
        return "needs exactly one description tag"
    try:
        amount_msat, description_hash = _bolt11_fields(invoice)
    except ValueError as exc:
        return f"bolt11 does not decode ({exc})"
    if amount_msat is None:
        return "bolt11 has no amount"
    if description_hash is not None and description_hash != hashlib.sha256(description.encode()).hexdigest():
        return "bolt11 description hash is not the hash of the description"
    try:
        request = parse_event(orjson.loads(description))
    except (orjson.JSONDecodeError, Invalid):
        return "description is not a nostr event"
    if request.kind != ZAP_REQUEST_KIND:
        return "description is not a kind-9734 zap request"
    if not verify_signature(request):
        return "zap request signature is invalid"
    if request.tag_values("p") != [recipient]:
        return "zap request's p tag differs from the receipt's"
    request_amounts = request.tag_values("amount")
    if len(request_amounts) > 1:
        return "zap request has several amount tags"
    if request_amounts and request_amounts[0] != str(amount_msat):
        return "bolt11 amount differs from the zap request's amount"
    senders = receipt.tag_values("P")
    if senders and senders != [request.pubkey]:
        return "receipt's P tag is not the zap request's author"
    request_events = request.tag_values("e")
    if len(request_events) > 1:
        return "zap request has several e tags"
    if receipt.tag_values("e") and receipt.tag_values("e") != request_events:
        return "receipt's e tag differs from the zap request's"
    return None
