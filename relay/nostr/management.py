"""NIP-86 relay management: JSON-RPC-like requests (``{"method", "params"}``) answered with
``{"result", "error"}``, over a small state the store keeps (issue 11 item 1).

Pure: ``dispatch`` takes the current ``ManagementState`` and a request body and returns the
response and the ``Change`` rows to persist; it never touches a socket, a file or a clock.
The HTTP route (NIP-98 authorisation from ``[admin] pubkeys``, relay/nostr/nip98.py with the body's
``payload`` hash) and the store (``Store.apply_management``: one transaction, then the
``management`` change counter so every node reloads) are the shells around it.

State and its effects (applied by the relay on every node):
- banned pubkeys: their writes refused (``blocked:``) and their stored events hidden;
- allowed pubkeys: the operator's allow list (free writes where payments are on);
- banned events: hidden from queries and refused if sent again;
- allowed kinds: when non-empty, only these kinds are accepted; disallowed kinds refused;
- blocked IPs: connections and writes from them refused;
- relay name / description / icon: override ``[relay]`` in NIP-11.
Per NIP-86, banning removes from the allow list and allowing removes from the ban list.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from relay.nostr.event import is_hex64
from relay.nostr.policy import ReadScope

MAX_REASON = 1000  # characters kept of an operator's reason
MAX_TEXT = 4000  # relay name / description / icon URL


@dataclass(frozen=True, slots=True)
class Change:
    """One row of the store's ``management`` table: (topic, key) -> value, or deleted."""

    topic: str  # ban_pubkey, allow_pubkey, ban_event, allow_event, allow_kind, disallow_kind, block_ip, relay
    key: str
    value: str | None  # None deletes the row


@dataclass(frozen=True, slots=True)
class ManagementState:
    banned_pubkeys: Mapping[str, str] = field(default_factory=dict)
    allowed_pubkeys: Mapping[str, str] = field(default_factory=dict)
    banned_events: Mapping[str, str] = field(default_factory=dict)
    allowed_events: Mapping[str, str] = field(default_factory=dict)
    allowed_kinds: frozenset[int] = frozenset()
    disallowed_kinds: frozenset[int] = frozenset()
    blocked_ips: Mapping[str, str] = field(default_factory=dict)
    relay: Mapping[str, str] = field(default_factory=dict)  # name, description, icon overrides

    @classmethod
    def from_rows(cls, rows: list[tuple[str, str, str]]) -> ManagementState:
        """The state from the store's (topic, key, value) rows."""
        tables: dict[str, dict[str, str]] = {}
        for topic, key, value in rows:
            tables.setdefault(topic, {})[key] = value
        return cls(
            banned_pubkeys=tables.get("ban_pubkey", {}),
            allowed_pubkeys=tables.get("allow_pubkey", {}),
            banned_events=tables.get("ban_event", {}),
            allowed_events=tables.get("allow_event", {}),
            allowed_kinds=frozenset(int(k) for k in tables.get("allow_kind", {})),
            disallowed_kinds=frozenset(int(k) for k in tables.get("disallow_kind", {})),
            blocked_ips=tables.get("block_ip", {}),
            relay=tables.get("relay", {}),
        )

    def apply(self, changes: list[Change]) -> ManagementState:
        """The state after ``changes`` (what the store will hold once they commit)."""
        rows = {(t, k): v for t, table in self._tables().items() for k, v in table.items()}
        for change in changes:
            if change.value is None:
                rows.pop((change.topic, change.key), None)
            else:
                rows[(change.topic, change.key)] = change.value
        return ManagementState.from_rows([(t, k, v) for (t, k), v in rows.items()])

    def _tables(self) -> dict[str, Mapping[str, str]]:
        return {
            "ban_pubkey": self.banned_pubkeys,
            "allow_pubkey": self.allowed_pubkeys,
            "ban_event": self.banned_events,
            "allow_event": self.allowed_events,
            "allow_kind": {str(k): "" for k in self.allowed_kinds},
            "disallow_kind": {str(k): "" for k in self.disallowed_kinds},
            "block_ip": self.blocked_ips,
            "relay": self.relay,
        }

    def ban_scope(self) -> ReadScope:
        """What the operator's own copies (``satsrelay export``, ``sync`` uploads) read:
        every stored event but the banned ones and their authors' (issue 17 item 8: an
        export or upload used to carry what the operator had banned); private kinds
        included, since the copy is the operator's."""
        return ReadScope(frozenset(), frozenset(), frozenset(self.banned_pubkeys), frozenset(self.banned_events))

    def kind_allowed(self, kind: int) -> bool:
        if kind in self.disallowed_kinds:
            return False
        return not self.allowed_kinds or kind in self.allowed_kinds


@dataclass(frozen=True, slots=True)
class Outcome:
    response: dict[str, Any]
    changes: list[Change] = field(default_factory=list)
    # An extension's method changed its own state (no rows here): logged like ``changes``.
    changed_elsewhere: bool = False

    @property
    def changed(self) -> bool:
        return bool(self.changes) or self.changed_elsewhere


class _BadParams(ValueError):
    pass


def _reason(params: list[Any], index: int) -> str:
    if len(params) > index:
        value = params[index]
        if not isinstance(value, str):
            raise _BadParams("reason must be a string")
        return value[:MAX_REASON]
    return ""


def _hex(params: list[Any], what: str) -> str:
    if not params or not isinstance(params[0], str) or not is_hex64(params[0].lower()):
        raise _BadParams(f"first param must be a 32-byte hex {what}")
    return params[0].lower()


def _kind(params: list[Any]) -> int:
    if not params or type(params[0]) is not int or not 0 <= params[0] <= 65535:
        raise _BadParams("first param must be a kind number 0..65535")
    return int(params[0])


def _ip(params: list[Any]) -> str:
    if not params or not isinstance(params[0], str):
        raise _BadParams("first param must be an IP address")
    try:
        return str(ipaddress.ip_address(params[0].strip()))
    except ValueError:
        raise _BadParams(f"{params[0]!r} is not an IP address") from None


def _text(params: list[Any], what: str) -> str:
    if not params or not isinstance(params[0], str) or len(params[0]) > MAX_TEXT or "\x00" in params[0]:
        raise _BadParams(f"first param must be the new {what} (a string of at most {MAX_TEXT} characters)")
    return params[0]


def _listing(table: Mapping[str, str], key: str) -> list[dict[str, str]]:
    return [{key: k, "reason": v} for k, v in sorted(table.items())]


Method = Callable[[ManagementState, list[Any]], Outcome]


def _ok(*changes: Change) -> Outcome:
    return Outcome({"result": True}, list(changes))


def _result(value: Any) -> Outcome:
    return Outcome({"result": value})


METHODS: dict[str, Method] = {
    "banpubkey": lambda s, p: _ok(
        Change("ban_pubkey", _hex(p, "pubkey"), _reason(p, 1)), Change("allow_pubkey", _hex(p, "pubkey"), None)
    ),
    "unbanpubkey": lambda s, p: _ok(Change("ban_pubkey", _hex(p, "pubkey"), None)),
    "listbannedpubkeys": lambda s, p: _result(_listing(s.banned_pubkeys, "pubkey")),
    "allowpubkey": lambda s, p: _ok(
        Change("allow_pubkey", _hex(p, "pubkey"), _reason(p, 1)), Change("ban_pubkey", _hex(p, "pubkey"), None)
    ),
    "unallowpubkey": lambda s, p: _ok(Change("allow_pubkey", _hex(p, "pubkey"), None)),
    "listallowedpubkeys": lambda s, p: _result(_listing(s.allowed_pubkeys, "pubkey")),
    "banevent": lambda s, p: _ok(
        Change("ban_event", _hex(p, "event id"), _reason(p, 1)), Change("allow_event", _hex(p, "event id"), None)
    ),
    "unbanevent": lambda s, p: _ok(Change("ban_event", _hex(p, "event id"), None)),
    "allowevent": lambda s, p: _ok(
        Change("allow_event", _hex(p, "event id"), _reason(p, 1)), Change("ban_event", _hex(p, "event id"), None)
    ),
    "unallowevent": lambda s, p: _ok(Change("allow_event", _hex(p, "event id"), None)),
    "listbannedevents": lambda s, p: _result(_listing(s.banned_events, "id")),
    "listallowedevents": lambda s, p: _result(_listing(s.allowed_events, "id")),
    "allowkind": lambda s, p: _ok(
        Change("allow_kind", str(_kind(p)), ""), Change("disallow_kind", str(_kind(p)), None)
    ),
    "disallowkind": lambda s, p: _ok(
        Change("disallow_kind", str(_kind(p)), ""), Change("allow_kind", str(_kind(p)), None)
    ),
    "listallowedkinds": lambda s, p: _result(sorted(s.allowed_kinds)),
    "listdisallowedkinds": lambda s, p: _result(sorted(s.disallowed_kinds)),
    "blockip": lambda s, p: _ok(Change("block_ip", _ip(p), _reason(p, 1))),
    "unblockip": lambda s, p: _ok(Change("block_ip", _ip(p), None)),
    "listblockedips": lambda s, p: _result(_listing(s.blocked_ips, "ip")),
    "changerelayname": lambda s, p: _ok(Change("relay", "name", _text(p, "name"))),
    "changerelaydescription": lambda s, p: _ok(Change("relay", "description", _text(p, "description"))),
    "changerelayicon": lambda s, p: _ok(Change("relay", "icon", _text(p, "icon URL"))),
}


# NIP-86 methods the NIP names whose state belongs to a plug-in (NIP-43 roles: a
# membership plug-in's), so the core answers none of them: a plug-in may provide these by
# their NIP names; every other plug-in method is namespaced ``<section>.<verb>``.
PLUGIN_NIP_METHODS = frozenset({"createrole", "editrole", "deleterole", "assignrole", "unassignrole"})

# Answered by the shell (it needs the store's reports), listed here so supportedmethods does.
QUEUE_METHOD = "listeventsneedingmoderation"
REPORT_KIND = 1984  # NIP-56
MAX_REASONS = 5  # distinct reasons shown per reported event


def supported_methods(extra: Collection[str] = ()) -> list[str]:
    """The NIP's methods answered here plus ``extra``, an extension's namespaced ones."""
    return sorted(["supportedmethods", QUEUE_METHOD, *METHODS, *extra])


def moderation_queue(state: ManagementState, reports: list[dict[str, Any]], stored: set[str]) -> list[dict[str, Any]]:
    """NIP-56 reports grouped by the reported event (issue 11 item 2): events stored here,
    not yet banned or allowed by an operator, most reported first. Each entry has NIP-86's
    ``id`` and ``reason`` (the reasons joined) plus ``count`` (distinct reporters) and
    ``reasons`` (report types and notes, at most ``MAX_REASONS``)."""
    reporters: dict[str, set[str]] = {}
    reasons: dict[str, list[str]] = {}
    for report in reports:
        if report.get("kind") != REPORT_KIND:
            continue
        note = str(report.get("content", "")).strip()[:200]
        for tag in report.get("tags", []):
            if len(tag) < 2 or tag[0] != "e" or tag[1] not in stored:
                continue
            target = tag[1]
            if target in state.banned_events or target in state.allowed_events:
                continue
            reporters.setdefault(target, set()).add(str(report.get("pubkey")))
            why = " ".join(part for part in (tag[2] if len(tag) > 2 else "", note) if part)
            listed = reasons.setdefault(target, [])
            if why and why not in listed and len(listed) < MAX_REASONS:
                listed.append(why)
    ordered = sorted(reporters, key=lambda t: (-len(reporters[t]), t))
    return [
        {"id": t, "reason": "; ".join(reasons.get(t, [])), "count": len(reporters[t]), "reasons": reasons.get(t, [])}
        for t in ordered
    ]


def parse_request(body: bytes) -> tuple[str, list[Any]]:
    """``(method, params)`` of a NIP-86 request body; ``ValueError`` saying what is wrong."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ValueError("the body is not JSON") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("method"), str):
        raise ValueError('the body must be {"method": "<name>", "params": [...]}')
    params = doc.get("params", [])
    if not isinstance(params, list):
        raise ValueError("params must be an array")
    return doc["method"], params


def dispatch(state: ManagementState, body: bytes, extra: Collection[str] = ()) -> Outcome:
    """Answer one NIP-86 request. Errors are answers (``{"error": ...}``), never exceptions:
    the HTTP shell sends them with status 200 as NIP-86 shows, or 400 for a malformed body.
    ``extra``: an extension's method names, listed by ``supportedmethods`` (the shell calls them)."""
    try:
        method, params = parse_request(body)
    except ValueError as exc:
        return Outcome({"result": None, "error": str(exc)})
    if method == "supportedmethods":
        return _result(supported_methods(extra))
    handler = METHODS.get(method)
    if handler is None:
        return Outcome({"result": None, "error": f"unsupported method {method[:64]!r}"})
    try:
        return handler(state, params)
    except _BadParams as exc:
        return Outcome({"result": None, "error": f"{method}: {exc}"})

