"""NIP-50 full-text search: what text an event offers, how it is cut into words, and what a
``search`` string asks for. Pure: both stores and live fan-out use these functions, so a
stored query, a COUNT and a live subscription agree on what matches.

Semantics (the one definition; ``tests/store/test_query_property.py`` checks both stores
against a brute-force matcher of it):

- a *word* is a maximal run of letters and digits (``str.isalnum``), case-folded
  (``str.casefold``); everything else separates words. Words longer than
  ``MAX_WORD_CHARS`` are not indexed (base64 blobs, hashes) and a query word that long
  matches nothing;
- an event's searchable text is its ``content``; for kind 0 the profile's name, display
  name, about and NIP-05 fields when the content is a JSON object (NIP-50: relays MAY
  match other fields where that makes sense); for long-form kinds 30023/30024 also the
  ``title`` and ``summary`` tags (NIP-23);
- a ``search`` string's words must ALL occur in the event (no phrase or prefix matching);
  ``key:value`` words are extensions (NIP-50) and are ignored, ``include:spam`` included
  (this relay filters no spam, so including it changes nothing);
- only events of the relay's indexed kinds (``[search] kinds``) can match; a ``search`` on
  any other kind returns nothing rather than an error.

Results are ranked by relevance (the store's own measure: SQLite FTS5 ``bm25``,
PostgreSQL ``ts_rank``; both grow with how often the words occur), then newest first,
then lowest id; ``limit`` applies after ranking (NIP-50). Ranking costs about 2 us per
matching event on SQLite (bm25 plus the row lookup), so a common word in 100,000 events
would cost ~200 ms per REQ: the stores rank the ``RANK_CANDIDATES`` most recently stored
events that match the whole filter and return the best ``limit`` of those. A search that
matches fewer events (most real queries) is ranked over all of them.

The stores never re-tokenize: SQLite receives the words joined by single spaces (FTS5's
``unicode61`` tokenizer, diacritics kept, splits them back at the spaces), PostgreSQL a
``tsvector`` literal whose lexemes are the words themselves (no dictionary, no stemming).
Known limit: scripts written without spaces (Japanese, Chinese, Thai) are one word per
run, so only whole runs match.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import orjson

from relay.nostr.errors import Invalid

DEFAULT_SEARCH_KINDS = frozenset((0, 1, 30023, 30024))
MAX_WORD_CHARS = 64
MAX_SEARCH_CHARS = 512  # a longer search string is refused (invalid:)
MAX_SEARCH_WORDS = 16  # words that must all match; more is refused (invalid:)
# Matches ranked per search filter (the most recently stored ones; see the module docstring).
# bench/README.md: 2,000 keeps a one-word search over 1M events near 5-10 ms on SQLite.
RANK_CANDIDATES = 2000
# tsvector positions stop at 16383 and keep at most 256 per lexeme (PostgreSQL limits);
# past them the counts stop growing, which only flattens ranking of very long texts.
_PG_MAX_POSITION = 16383
_PG_MAX_POSITIONS_PER_WORD = 256

_WORD = re.compile(r"[^\W_]+")  # \w minus "_" is exactly str.isalnum's characters
_EXTENSION = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*:\S+$")
_PROFILE_FIELDS = ("name", "display_name", "displayName", "about", "nip05")
_LONG_FORM_TAGS = frozenset(("title", "summary"))


def words(text: str) -> list[str]:
    """The words of ``text`` in order (repeats kept: they weigh in ranking)."""
    return [w for w in _WORD.findall(text.casefold()) if len(w) <= MAX_WORD_CHARS]


def searchable_text(kind: int, content: str, tags: list[list[str]]) -> str:
    """What a search looks at in an event (see the module docstring)."""
    if kind == 0:
        try:
            profile: Any = orjson.loads(content)
        except orjson.JSONDecodeError:
            return content
        if not isinstance(profile, dict):
            return content
        return "\n".join(v for k in _PROFILE_FIELDS if isinstance(v := profile.get(k), str))
    if kind in (30023, 30024):
        extra = [t[1] for t in tags if len(t) > 1 and t[0] in _LONG_FORM_TAGS and isinstance(t[1], str)]
        return "\n".join([*extra, content])
    return content


@lru_cache(maxsize=1024)
def _word_set(text: str) -> frozenset[str]:
    # Live fan-out asks the same event once per matching search subscription; the cache
    # makes that one tokenization per event.
    return frozenset(words(text))


def document_words(kind: int, content: str, tags: list[list[str]], indexed_kinds: frozenset[int]) -> list[str] | None:
    """The words a store indexes for an event, or None when its kind is not indexed."""
    if kind not in indexed_kinds:
        return None
    return words(searchable_text(kind, content, tags))


def fts5_body(doc_words: list[str]) -> str:
    """The text SQLite's FTS5 stores for an event: its words, space-separated."""
    return " ".join(doc_words)


def tsvector_literal(doc_words: list[str]) -> str:
    """A PostgreSQL ``tsvector`` literal of the words with their positions (the lexemes
    are quoted, so PostgreSQL takes them verbatim; words hold no quote characters)."""
    positions: dict[str, list[str]] = {}
    for i, w in enumerate(doc_words, start=1):
        seen = positions.setdefault(w, [])
        if len(seen) < _PG_MAX_POSITIONS_PER_WORD:
            seen.append(str(min(i, _PG_MAX_POSITION)))
    return " ".join(f"'{w}':{','.join(dict.fromkeys(p))}" for w, p in positions.items())


@dataclass(frozen=True, slots=True)
class SearchQuery:
    """A parsed NIP-50 ``search``: words that must all occur, and the kinds the relay
    indexes (fixed at parse time from settings, so matching needs no other input)."""

    text: str  # as the client sent it, for to_json
    terms: tuple[str, ...]  # distinct, sorted; empty: matches nothing
    kinds: frozenset[int]

    def matches(self, kind: int, content: str, tags: list[list[str]]) -> bool:
        if not self.terms or kind not in self.kinds:
            return False
        have = _word_set(searchable_text(kind, content, tags))
        return all(t in have for t in self.terms)

    def fts5_match(self) -> str:
        """FTS5 MATCH expression: each word a quoted string, implicitly ANDed."""
        return " ".join(f'"{t}"' for t in self.terms)

    def tsquery_literal(self) -> str:
        """PostgreSQL ``tsquery`` literal: each word a quoted lexeme, ANDed."""
        return " & ".join(f"'{t}'" for t in self.terms)


def parse_search(value: object, indexed_kinds: frozenset[int]) -> SearchQuery:
    """Validate a filter's ``search`` value (NIP-50)."""
    if not isinstance(value, str):
        raise Invalid("search must be a string")
    if len(value) > MAX_SEARCH_CHARS:
        raise Invalid(f"search longer than {MAX_SEARCH_CHARS} characters")
    terms: set[str] = set()
    unmatchable = False
    for token in value.split():
        if _EXTENSION.match(token):
            continue  # NIP-50 extension (include:spam, language:en, ...): none changes results here
        for w in _WORD.findall(token.casefold()):
            if len(w) > MAX_WORD_CHARS:
                unmatchable = True  # never indexed, so no event can have it
            terms.add(w)
    if len(terms) > MAX_SEARCH_WORDS:
        raise Invalid(f"search has more than {MAX_SEARCH_WORDS} words")
    return SearchQuery(value, () if unmatchable else tuple(sorted(terms)), indexed_kinds)
