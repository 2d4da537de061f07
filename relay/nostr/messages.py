"""Client message parsing and relay message encoding (NIP-01, NIP-42, NIP-45, NIP-77).

Pure. Relay messages are built as bytes so a stored event's raw JSON is spliced into the
frame without being decoded and re-encoded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from relay.nostr.errors import Rejection
from relay.nostr.filters import Filter, parse_filter
from relay.nostr.search import DEFAULT_SEARCH_KINDS

MAX_SUBID_LENGTH = 64  # NIP-01


@dataclass(frozen=True, slots=True)
class EventMessage:
    event: Any  # the decoded event object; ``event.parse_event`` validates it


@dataclass(frozen=True, slots=True)
class ReqMessage:
    sub_id: str
    filters: tuple[Filter, ...]


@dataclass(frozen=True, slots=True)
class CountMessage:
    sub_id: str
    filters: tuple[Filter, ...]


@dataclass(frozen=True, slots=True)
class CloseMessage:
    sub_id: str


@dataclass(frozen=True, slots=True)
class AuthMessage:
    event: Any


@dataclass(frozen=True, slots=True)
class NegOpenMessage:
    """NIP-77 ``["NEG-OPEN", id, filter, hex]``; ids are a namespace apart from REQ's."""

    sub_id: str
    filter: Filter
    message: bytes  # the negentropy message, hex-decoded


@dataclass(frozen=True, slots=True)
class NegMsgMessage:
    sub_id: str
    message: bytes


@dataclass(frozen=True, slots=True)
class NegCloseMessage:
    sub_id: str


ClientMessage = (
    EventMessage
    | ReqMessage
    | CountMessage
    | CloseMessage
    | AuthMessage
    | NegOpenMessage
    | NegMsgMessage
    | NegCloseMessage
)


class BadMessage(Exception):
    """A message that cannot be acted on; ``reply`` is the frame to send back."""

    def __init__(self, reply: bytes) -> None:
        super().__init__(reply.decode())
        self.reply = reply


@dataclass(frozen=True, slots=True)
class FilterLimits:
    max_filters: int
    max_limit: int
    default_limit: int | None
    search_kinds: frozenset[int] = DEFAULT_SEARCH_KINDS  # NIP-50 indexed kinds; empty: search off
    neg_max_items: int = 500_000  # NIP-77: clamp for a NEG-OPEN filter's explicit limit


def _sub_id(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise BadMessage(notice("invalid: subscription id must be a non-empty string"))
    if len(value) > MAX_SUBID_LENGTH:
        raise BadMessage(notice(f"invalid: subscription id longer than {MAX_SUBID_LENGTH} characters"))
    return value


def _filters(verb: str, sub_id: str, raw: list[Any], limits: FilterLimits) -> tuple[Filter, ...]:
    if not raw:
        raise BadMessage(closed(sub_id, f"invalid: {verb} needs at least one filter"))
    if len(raw) > limits.max_filters:
        raise BadMessage(closed(sub_id, f"invalid: at most {limits.max_filters} filters per {verb}"))
    try:
        return tuple(parse_filter(f, limits.max_limit, limits.default_limit, limits.search_kinds) for f in raw)
    except Rejection as exc:
        raise BadMessage(closed(sub_id, str(exc))) from None


def _event_id_of(obj: object) -> str | None:
    if isinstance(obj, dict):
        value = obj.get("id")
        if isinstance(value, str) and len(value) <= 64:
            return value
    return None


def parse_client_message(data: bytes | str, limits: FilterLimits) -> ClientMessage:
    """Decode one frame. Raise ``BadMessage`` carrying the NOTICE/CLOSED/OK to answer."""
    try:
        msg = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise BadMessage(notice("invalid: message is not valid JSON")) from None
    if not isinstance(msg, list) or not msg or not isinstance(msg[0], str):
        raise BadMessage(notice("invalid: message must be a JSON array starting with a verb"))
    verb = msg[0]
    if verb == "EVENT":
        if len(msg) != 2:
            event_id = _event_id_of(msg[1]) if len(msg) > 1 else None
            text = "invalid: EVENT takes exactly one event"
            raise BadMessage(ok(event_id, False, text) if event_id else notice(text))
        if not isinstance(msg[1], dict):
            raise BadMessage(notice("invalid: event must be a JSON object"))
        return EventMessage(msg[1])
    if verb == "REQ" or verb == "COUNT":
        if len(msg) < 2:
            raise BadMessage(notice(f"invalid: {verb} needs a subscription id"))
        sub_id = _sub_id(msg[1])
        filters = _filters(verb, sub_id, msg[2:], limits)
        return ReqMessage(sub_id, filters) if verb == "REQ" else CountMessage(sub_id, filters)
    if verb == "CLOSE":
        if len(msg) != 2:
            raise BadMessage(notice("invalid: CLOSE takes exactly one subscription id"))
        return CloseMessage(_sub_id(msg[1]))
    if verb == "AUTH":
        if len(msg) != 2 or not isinstance(msg[1], dict):
            raise BadMessage(notice("invalid: AUTH takes exactly one signed event"))
        return AuthMessage(msg[1])
    if verb.startswith("NEG-"):
        return _neg_message(verb, msg, limits)
    raise BadMessage(notice(f"invalid: unknown message type {verb[:32]!r}"))


def _neg_message(verb: str, msg: list[Any], limits: FilterLimits) -> ClientMessage:
    """NIP-77 messages; errors about a known subscription id are a NEG-ERR for it."""
    if len(msg) < 2:
        raise BadMessage(notice(f"invalid: {verb} needs a subscription id"))
    sub_id = _sub_id(msg[1])
    if verb == "NEG-CLOSE":
        if len(msg) != 2:
            raise BadMessage(neg_err(sub_id, "invalid: NEG-CLOSE takes exactly one subscription id"))
        return NegCloseMessage(sub_id)
    if verb == "NEG-OPEN":
        if len(msg) != 4:
            raise BadMessage(neg_err(sub_id, "invalid: NEG-OPEN takes a subscription id, a filter and a message"))
        try:
            # No default limit: the whole matching set is reconciled (bounded by the relay's
            # item cap); an explicit limit keeps its newest events.
            f = parse_filter(msg[2], limits.neg_max_items, None, limits.search_kinds)
        except Rejection as exc:
            raise BadMessage(neg_err(sub_id, str(exc))) from None
        return NegOpenMessage(sub_id, f, _hex_payload(sub_id, msg[3]))
    if verb == "NEG-MSG":
        if len(msg) != 3:
            raise BadMessage(neg_err(sub_id, "invalid: NEG-MSG takes a subscription id and a message"))
        return NegMsgMessage(sub_id, _hex_payload(sub_id, msg[2]))
    raise BadMessage(notice(f"invalid: unknown message type {verb[:32]!r}"))


def _hex_payload(sub_id: str, value: object) -> bytes:
    if isinstance(value, str):
        try:
            return bytes.fromhex(value)
        except ValueError:
            pass
    raise BadMessage(neg_err(sub_id, "invalid: negentropy message must be a hex string"))


def event_id_hint(event_obj: object) -> str | None:
    """The id to echo in an OK for a malformed event, when it has a plausible one."""
    return _event_id_of(event_obj)


# --- relay -> client -------------------------------------------------------------

def event(sub_id: str, raw: bytes) -> bytes:
    return b'["EVENT",' + orjson.dumps(sub_id) + b"," + raw + b"]"


def ok(event_id: str | None, accepted: bool, message: str = "") -> bytes:
    return orjson.dumps(["OK", event_id or "", accepted, message])


def eose(sub_id: str, hints: Sequence[str] = ()) -> bytes:
    """``["EOSE", id]``, or with NIP-67 hints ``["EOSE", id, ["finish"]]``."""
    return orjson.dumps(["EOSE", sub_id, list(hints)] if hints else ["EOSE", sub_id])


def closed(sub_id: str, message: str) -> bytes:
    return orjson.dumps(["CLOSED", sub_id, message])


def notice(message: str) -> bytes:
    return orjson.dumps(["NOTICE", message])


def notify(message: str) -> bytes:
    """``["NOTIFY", <message>]`` (nips PR #901, drafted as NIP-88 "NOTIFY Request"): a
    message a client shows its user as is, e.g. a renewal prompt; unlike NOTICE it is meant
    for the person, not the developer. Relays should send it rarely and keep its text stable."""
    return orjson.dumps(["NOTIFY", message])


def auth_challenge(challenge: str) -> bytes:
    return orjson.dumps(["AUTH", challenge])


def count(sub_id: str, n: int, hll: bytes | None = None) -> bytes:
    """NIP-45 ``["COUNT", id, {"count": n}]``, with ``"hll"`` (256 registers, hex) when given."""
    body: dict[str, Any] = {"count": n}
    if hll is not None:
        body["hll"] = hll.hex()
    return orjson.dumps(["COUNT", sub_id, body])


def neg_msg(sub_id: str, message: bytes) -> bytes:
    """NIP-77 ``["NEG-MSG", id, hex]``."""
    return b'["NEG-MSG",' + orjson.dumps(sub_id) + b',"' + message.hex().encode() + b'"]'


def neg_err(sub_id: str, reason: str) -> bytes:
    return orjson.dumps(["NEG-ERR", sub_id, reason])
