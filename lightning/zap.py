"""Zaps to the relay (NIP-57): the zap request's checks, what a zap buys, the receipt.

Pure: no I/O, no clock (``now`` is passed in). The HTTP side is ``lightning.zapper``.

A zap request (kind 9734) reaches the relay as the ``nostr`` query parameter of the
LNURL-pay callback; Appendix D says what the recipient's server must check before it
issues an invoice whose description hash commits to the request. When that invoice is
paid the relay signs a zap receipt (kind 9735, Appendix E) with its own key.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

import orjson

from lightning.plans import Grant, Plans
from relay.nostr.errors import Invalid
from relay.nostr.event import Event, is_hex64, parse_event, sign_event, verify_signature

ZAP_REQUEST_KIND = 9734
ZAP_RECEIPT_KIND = 9735
ZAP_PLAN = "zap"
# The receipt carries the request verbatim plus a bolt11; lightning.zap_receipts caps a
# receipt at 8 KiB by default, so a request must leave room for the rest.
MAX_REQUEST_BYTES = 4096
MAX_RELAYS_TAGGED = 20


class ZapRequestError(ValueError):
    """Why a zap request is refused; the text goes back to the wallet in an LNURL error."""


@dataclass(frozen=True, slots=True)
class ZapRequest:
    event: Event
    raw: str  # exactly as received: its sha256 is what the invoice commits to
    relays: tuple[str, ...]


def parse_zap_request(raw: str, *, relay_pubkey: str, amount_msat: int) -> ZapRequest:
    """The request after NIP-57 Appendix D's checks, or ``ZapRequestError``.

    Valid signed event of kind 9734; tags present; exactly one ``p`` and it is the relay's
    own key (a zap to anyone else is not a payment to this relay); at most one ``e`` and
    one ``a`` (a valid coordinate); an ``amount`` tag, when present, equal to the
    callback's ``amount``; at most one ``P`` and it is the request's author.
    """
    if len(raw.encode()) > MAX_REQUEST_BYTES:
        raise ZapRequestError(f"zap request larger than {MAX_REQUEST_BYTES} bytes")
    try:
        event = parse_event(orjson.loads(raw))
    except (orjson.JSONDecodeError, Invalid) as exc:
        raise ZapRequestError(f"zap request is not a valid nostr event ({exc})") from None
    if event.kind != ZAP_REQUEST_KIND:
        raise ZapRequestError("zap request must be kind 9734")
    if not verify_signature(event):
        raise ZapRequestError("zap request signature is invalid")
    if not event.tags:
        raise ZapRequestError("zap request has no tags")
    recipients = event.tag_values("p")
    if len(recipients) != 1:
        raise ZapRequestError("zap request needs exactly one p tag")
    if recipients[0] != relay_pubkey:
        raise ZapRequestError("zap request's p tag is not this relay's key")
    events = event.tag_values("e")
    if len(events) > 1 or (events and not is_hex64(events[0])):
        raise ZapRequestError("zap request may have at most one e tag, a 64-hex event id")
    addresses = event.tag_values("a")
    if len(addresses) > 1 or (addresses and not _coordinate(addresses[0])):
        raise ZapRequestError("zap request may have at most one a tag, a valid event coordinate")
    amounts = event.tag_values("amount")
    if len(amounts) > 1 or (amounts and amounts[0] != str(amount_msat)):
        raise ZapRequestError("zap request's amount tag differs from the amount asked")
    senders = event.tag_values("P")
    if len(senders) > 1 or (senders and senders[0] != event.pubkey):
        raise ZapRequestError("zap request's P tag must be its author")
    relays: list[str] = []
    for tag in event.tags:
        if tag and tag[0] == "relays":
            relays.extend(url for url in tag[1:] if isinstance(url, str))
    return ZapRequest(event, raw, tuple(dict.fromkeys(relays))[:MAX_RELAYS_TAGGED])


def _coordinate(value: str) -> bool:
    kind, _, rest = value.partition(":")
    pubkey, _, _d = rest.partition(":")
    return kind.isascii() and kind.isdigit() and is_hex64(pubkey)


def zap_grant(plans: Plans, amount_msat: int) -> Grant:
    """What a zap of ``amount_msat`` buys (README "Zap to join"), fixed on the invoice:

    - with the subscription plan, each whole subscription fee buys one period;
    - else, at least the admission fee admits (for good, or for the admission term);
    - whatever is left becomes credit (spent per event with the credit plan; kept on the
      account otherwise).
    """
    rest = amount_msat
    admit_seconds, forever = 0, False
    if plans.subscription_msat is not None and rest >= plans.subscription_msat:
        periods = rest // plans.subscription_msat
        admit_seconds = periods * plans.subscription_period_seconds
        rest -= periods * plans.subscription_msat
    elif plans.admission_msat is not None and rest >= plans.admission_msat:
        admit_seconds = plans.admission_term_seconds
        forever = admit_seconds == 0
        rest -= plans.admission_msat
    return Grant(ZAP_PLAN, amount_msat, admit_seconds=admit_seconds, admit_forever=forever, credit_msat=rest)


def min_zap_msat(plans: Plans) -> int:
    """The smallest zap that buys something: LNURL ``minSendable``, and the amount the
    "restricted" reply names."""
    prices = [p for p in (plans.admission_msat, plans.subscription_msat) if p is not None]
    if plans.credit_enabled:
        prices.append(plans.credit_min_msat)
    return min(prices) if prices else 1000


def receipt_event(secret: bytes, request: ZapRequest, bolt11: str, preimage: str | None, paid_at: int) -> Event:
    """The kind-9735 receipt (Appendix E): the request's ``p`` (and ``e``/``a``), ``P`` =
    the zapper, the paid ``bolt11``, the request verbatim as ``description``, and the
    ``preimage`` when the wallet disclosed it. Dated when the invoice was paid."""
    tags = [list(tag[:2]) for tag in request.event.tags if tag and tag[0] in ("p", "e", "a") and len(tag) > 1]
    tags += [["P", request.event.pubkey], ["bolt11", bolt11], ["description", request.raw]]
    if preimage:
        tags.append(["preimage", preimage])
    return sign_event(secret, ZAP_RECEIPT_KIND, "", tags, created_at=paid_at)


def receipt_time(wallet_paid_at: int | None, issued_at: int, now: int) -> int:
    """NIP-57: a receipt's ``created_at`` SHOULD be the invoice's ``paid_at`` (the same
    receipt, however late it is signed: after a restart, the relay notices a payment made
    while it was down only then). The wallet's time is kept between the invoice's issue
    and now, so a wallet clock that is off never dates a receipt in the future or before
    the invoice existed; without one, now."""
    if wallet_paid_at is None:
        return now
    return max(issued_at, min(wallet_paid_at, now))


def publish_targets(relays: tuple[str, ...], own_urls: tuple[str, ...], limit: int) -> list[str]:
    """The request's relays the receipt is sent to: ws(s):// only, not this relay itself
    (it already stored the receipt), at most ``limit``."""
    own = {url.rstrip("/") for url in own_urls}
    out = []
    for url in relays:
        if url.startswith(("ws://", "wss://")) and url.rstrip("/") not in own and len(url) <= 512:
            out.append(url)
        if len(out) >= limit:
            break
    return out


# IPv6 prefixes whose addresses carry an IPv4 address that a gateway or the host itself may
# deliver to: IPv4-compatible (::a.b.c.d), NAT64 (64:ff9b::/96, RFC 6052; local-use
# 64:ff9b:1::/48, RFC 8215), 6to4 (2002::/16, RFC 3056) and SIIT (::ffff:0:a.b.c.d, RFC 7915).
# Python's ``is_global`` judges the IPv6 prefix, not the IPv4 address inside, and calls
# "64:ff9b::10.0.0.1" global (issue 17): such addresses are refused outright.
IPV4_EMBEDDING_NETWORKS = tuple(
    ipaddress.IPv6Network(network)
    for network in ("::/96", "64:ff9b::/96", "64:ff9b:1::/48", "2002::/16", "::ffff:0:0:0/96")
)


def is_public(address: str) -> bool:
    """Whether the relay may dial ``address`` (a literal IP, perhaps with a ``%zone``) on a
    stranger's word: globally routable, and no IPv4 address tucked into an IPv6 one except
    an IPv4-mapped address, which is judged by its IPv4 address."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped.is_global
        if any(ip in network for network in IPV4_EMBEDDING_NETWORKS):
            return False
    return ip.is_global


def public_address(url: str) -> str | None:
    """The address to dial for ``url`` when every address its host resolves to is public
    (``is_public``), else None: a zapper must not make the relay connect into its own
    network (SSRF). The caller connects to this very address (no second lookup a rebinding
    DNS server could answer differently). Blocking DNS: call it off the event loop."""
    host = urlsplit(url).hostname
    if not host:
        return None
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return None
    addresses = [str(info[4][0]) for info in infos]
    if not addresses or not all(is_public(address) for address in addresses):
        return None
    return addresses[0]
