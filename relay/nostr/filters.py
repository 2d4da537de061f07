"""NIP-01 subscription filters: parse, validate, clamp, and match one event.

Pure. The store turns a ``Filter`` into an index search; ``matches`` is the single
definition of what a filter means, used for live events and by the property test that
checks the store against it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from relay.nostr.errors import Invalid, Unsupported
from relay.nostr.event import INT64_MAX, MAX_KIND, Event, is_hex64, unstorable_text
from relay.nostr.search import DEFAULT_SEARCH_KINDS, RANK_CANDIDATES, SearchQuery, parse_search

_HEX_TAGS = frozenset("ep")  # NIP-01: #e and #p values MUST be 64-char lowercase hex
# Most values (ids + authors + kinds + tag values) one filter may list. SQLite binds each
# as a parameter and refuses a statement with more than 32,766 of them, while PostgreSQL
# takes each list as one array: without this cap a 130 KB filter of 30,000 "#t" values
# answered on PostgreSQL and failed on SQLite. 20,000 leaves room for the other parameters
# and is four times a large follow list.
MAX_FILTER_VALUES = 20_000


@dataclass(frozen=True, slots=True)
class Filter:
    """One filter; ``None`` means the condition is absent, an empty set matches nothing."""

    ids: frozenset[str] | None = None
    authors: frozenset[str] | None = None
    kinds: frozenset[int] | None = None
    tags: tuple[tuple[str, frozenset[str]], ...] = ()
    since: int | None = None
    until: int | None = None
    limit: int | None = None
    search: SearchQuery | None = None  # NIP-50

    def matches(self, event: Event) -> bool:
        """True when every present condition holds (limit is ignored: NIP-01)."""
        if self.ids is not None and event.id not in self.ids:
            return False
        if self.authors is not None and event.pubkey not in self.authors:
            return False
        if self.kinds is not None and event.kind not in self.kinds:
            return False
        if self.since is not None and event.created_at < self.since:
            return False
        if self.until is not None and event.created_at > self.until:
            return False
        for name, values in self.tags:
            if not any(len(t) > 1 and t[0] == name and t[1] in values for t in event.tags):
                return False
        return self.search is None or self.search.matches(event.kind, event.content, event.tags)

    def is_empty(self) -> bool:
        """True when no event can match, so the store need not be asked (``limit`` is
        not considered: COUNT ignores it)."""
        if any(s is not None and not s for s in (self.ids, self.authors, self.kinds)):
            return True
        if any(not values for _, values in self.tags):
            return True
        if self.search is not None and (not self.search.terms or not self._search_kinds()):
            return True  # NIP-50: no word to look for, or no indexed kind wanted: nothing
        return self.since is not None and self.until is not None and self.since > self.until

    def _search_kinds(self) -> frozenset[int]:
        assert self.search is not None
        return self.search.kinds if self.kinds is None else self.search.kinds & self.kinds

    def to_json(self) -> dict[str, Any]:
        """The filter as NIP-01 JSON (``satsrelay sync`` sends it to another relay)."""
        out: dict[str, Any] = {}
        if self.ids is not None:
            out["ids"] = sorted(self.ids)
        if self.authors is not None:
            out["authors"] = sorted(self.authors)
        if self.kinds is not None:
            out["kinds"] = sorted(self.kinds)
        for name, values in self.tags:
            out["#" + name] = sorted(values)
        for key in ("since", "until", "limit"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        if self.search is not None:
            out["search"] = self.search.text
        return out



def answer_is_whole(filters: Sequence[Filter], distinct_sent: int) -> bool:
    """NIP-67: True when a REQ's stored answer of ``distinct_sent`` events is known to hold
    every stored event its ``filters`` match, so its EOSE may carry ``["finish"]``.

    Each filter gives at most its ``limit`` events (a NIP-50 search at most
    ``RANK_CANDIDATES`` ranked matches) and the answer is their union, so an answer smaller
    than the smallest of those caps means no filter reached its cap: each gave all it
    matched. Deliberately conservative (the NIP: the hint's presence is definitive, its
    absence is not): an answer exactly at the smallest cap is not called whole, though the
    filter may have matched exactly that many, and neither is an answer at or above it,
    though another filter may have given the rest. A non-empty filter with ``limit: 0``
    asked for no stored events, so whatever it matches was not sent: never whole."""
    caps: list[int] = []
    for f in filters:
        if f.is_empty():
            continue  # matches nothing: nothing left unsent
        cap = f.limit
        if f.search is not None:
            cap = RANK_CANDIDATES if cap is None else min(cap, RANK_CANDIDATES)
        if cap is not None:
            caps.append(cap)
    return not caps or distinct_sent < min(caps)


def _int(value: object, key: str, maximum: int = INT64_MAX) -> int:
    """A non-negative JSON integer no store column or parameter overflows on: since,
    until and limit are compared with signed 64-bit columns (a ``since`` of 2**63 failed
    the query with ``error:``, issue 8), kinds with NIP-01's 0..65535."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise Invalid(f"{key} must be a non-negative integer")
    if value > maximum:
        raise Invalid(f"{key} must be at most {maximum}")
    return value


def _hex_set(value: object, key: str) -> frozenset[str]:
    if not isinstance(value, list):
        raise Invalid(f"{key} must be an array")
    for item in value:
        if not is_hex64(item):
            raise Invalid(f"{key} must hold 64-character lowercase hex values")
    return frozenset(value)


def parse_filter(
    obj: object,
    max_limit: int,
    default_limit: int | None = None,
    search_kinds: frozenset[int] = DEFAULT_SEARCH_KINDS,
) -> Filter:
    """Validate one filter object; ``limit`` is clamped to ``max_limit`` (NIP-11) and
    defaults to ``default_limit`` when absent. ``search_kinds`` are the kinds the relay
    indexes for NIP-50 (empty: search disabled, a ``search`` filter matches nothing)."""
    if not isinstance(obj, dict):
        raise Invalid("filter must be a JSON object")
    ids = authors = None
    kinds: frozenset[int] | None = None
    since = until = None
    limit = default_limit
    tags: list[tuple[str, frozenset[str]]] = []
    search: SearchQuery | None = None
    for key, value in obj.items():
        if key == "ids":
            ids = _hex_set(value, key)
        elif key == "authors":
            authors = _hex_set(value, key)
        elif key == "kinds":
            if not isinstance(value, list):
                raise Invalid("kinds must be an array")
            kinds = frozenset(_int(k, "kinds", MAX_KIND) for k in value)
        elif key == "since":
            since = _int(value, key)
        elif key == "until":
            until = _int(value, key)
        elif key == "limit":
            limit = _int(value, key)
        elif key == "search":
            search = parse_search(value, search_kinds)
        elif isinstance(key, str) and len(key) == 2 and key[0] == "#" and key[1].isascii() and key[1].isalpha():
            name = key[1]
            if name in _HEX_TAGS:
                values = _hex_set(value, key)
            else:
                if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                    raise Invalid(f"{key} must be an array of strings")
                for v in value:
                    # Same rule as event tags (event.unstorable_text): no stored value can
                    # hold it, and PostgreSQL cannot even take it as a query parameter.
                    fault = unstorable_text(v)
                    if fault is not None:
                        raise Invalid(f"{key} values {fault}")
                values = frozenset(value)
            tags.append((name, values))
        else:
            raise Unsupported(f"filter field {key!r} is not supported")
    if limit is not None and limit > max_limit:
        limit = max_limit
    listed = sum(len(s) for s in (ids, authors, kinds) if s is not None) + sum(len(v) for _, v in tags)
    if listed > MAX_FILTER_VALUES:
        raise Invalid(f"a filter may list at most {MAX_FILTER_VALUES} values")
    tags.sort()
    return Filter(ids, authors, kinds, tuple(tags), since, until, limit, search)
