"""The Nostr event: shape validation, canonical id, kind classes (NIP-01).

Pure: no I/O, no clock. Signature verification lives in ``crypto`` and is called by the
ingest path after the cheap checks here, because it costs ~50x more than all of them.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Any

import orjson

from relay.nostr import crypto
from relay.nostr.errors import Invalid

_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX128 = re.compile(r"[0-9a-f]{128}")

# --- what every store can hold ------------------------------------------------------------
# Both stores keep integers in signed 64-bit columns (SQLite INTEGER, PostgreSQL bigint) and
# index strings as text. A value one of them cannot hold used to fail the whole group
# commit it rode in (issue 8), and SQLite and PostgreSQL disagreed about which values those
# were. So the parser refuses, with ``invalid:``, everything that is not storable the same
# way everywhere; past parsing, a store never sees such a value.
INT64_MAX = 2**63 - 1
MAX_TIMESTAMP = 2**62  # created_at and NIP-40 expiration: fits int64 with room for arithmetic
MAX_KIND = 65535  # NIP-01: kinds are integers between 0 and 65535
# Longest first value of a single-letter tag, in UTF-8 bytes. Those values are indexed (the
# ``d`` tag is part of the addressable key), and a PostgreSQL btree entry holds at most
# ~2,700 bytes, so a random 3,000-byte ``t`` value was storable in SQLite and refused by
# PostgreSQL. 1,024 is strfry's ``maxTagValSize`` default; real e/p/a/d/t/r values are far
# shorter. Longer values in other positions are not indexed and stay allowed.
MAX_INDEXED_VALUE_BYTES = 1024


class KindClass(enum.Enum):
    REGULAR = "regular"
    REPLACEABLE = "replaceable"
    EPHEMERAL = "ephemeral"
    ADDRESSABLE = "addressable"


def kind_class(kind: int) -> KindClass:
    """NIP-01 kind ranges. Everything not named otherwise is stored as regular."""
    if kind in (0, 3) or 10000 <= kind < 20000:
        return KindClass.REPLACEABLE
    if 20000 <= kind < 30000:
        return KindClass.EPHEMERAL
    if 30000 <= kind < 40000:
        return KindClass.ADDRESSABLE
    return KindClass.REGULAR


def is_hex64(value: object) -> bool:
    return isinstance(value, str) and len(value) == 64 and _HEX64.fullmatch(value) is not None


@dataclass(frozen=True, slots=True)
class Event:
    """A structurally valid event whose id matches its content.

    ``raw`` is the compact JSON of exactly the seven NIP-01 fields; it is what the store
    keeps and what REQ answers send, so a stored event is never serialized twice.
    ``tags`` is the list decoded from the wire and must not be mutated.
    """

    id: str
    pubkey: str
    created_at: int
    kind: int
    tags: list[list[str]]
    content: str
    sig: str
    raw: bytes

    @property
    def kind_class(self) -> KindClass:
        return kind_class(self.kind)

    @property
    def d_tag(self) -> str:
        """The addressable identifier: first ``d`` tag's value, "" when absent (NIP-01)."""
        for tag in self.tags:
            if tag[0] == "d":
                return tag[1] if len(tag) > 1 else ""
        return ""

    @property
    def expiration(self) -> int | None:
        """NIP-40 expiration timestamp (the first ``expiration`` tag with a value), None
        when absent. ``parse_event`` refuses a malformed one; for an event built here
        without parsing (``sign_event``) a malformed one reads as None, never as an integer
        a store could not hold."""
        for tag in self.tags:
            if tag[0] == "expiration" and len(tag) > 1:
                try:
                    return parse_expiration(tag[1])
                except Invalid:
                    return None
        return None

    @property
    def is_protected(self) -> bool:
        """NIP-70: a ``["-"]`` tag means only the author may publish it."""
        return any(tag == ["-"] for tag in self.tags)

    def index_tags(self) -> list[tuple[str, str]]:
        """(name, value) of single-letter tags: NIP-01 indexes only the first value."""
        return index_tags(self.tags)

    def tag_values(self, name: str) -> list[str]:
        return [t[1] for t in self.tags if len(t) > 1 and t[0] == name]

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "pubkey": self.pubkey,
            "created_at": self.created_at,
            "kind": self.kind,
            "tags": self.tags,
            "content": self.content,
            "sig": self.sig,
        }


def is_index_name(name: str) -> bool:
    """NIP-01: tags whose name is a single letter (a-z, A-Z) are indexed."""
    return len(name) == 1 and name.isascii() and name.isalpha()


def index_tags(tags: list[list[str]]) -> list[tuple[str, str]]:
    """(name, first value) of each single-letter tag, for any tag list (also a stored
    event's, read back without re-validating it)."""
    return [(t[0], t[1]) for t in tags if len(t) > 1 and is_index_name(t[0])]


def parse_expiration(value: str) -> int:
    """A NIP-40 ``expiration`` value: a unix timestamp in ASCII decimal digits, at most
    ``MAX_TIMESTAMP``. ``int()`` alone would also take "+5", " 5", "5_0", non-ASCII digits
    and 99999999999999999999 (which no store can hold)."""
    if not (0 < len(value) <= 19 and value.isascii() and value.isdigit()) or int(value) > MAX_TIMESTAMP:
        raise Invalid(f"expiration tag must be a unix timestamp between 0 and {MAX_TIMESTAMP}")
    return int(value)


def parse_address(value: str) -> tuple[int, str, str] | None:
    """An ``a`` tag value ``<kind>:<pubkey>:<d>`` (NIP-01) as (kind, pubkey, d), or None
    when it is not one. The kind must be ASCII digits within 0..65535: ``str.isdigit``
    accepts "²" (``int`` then raises) and a 5,000-digit string (``int`` refuses past 4,300
    digits), either of which used to fail a NIP-09 deletion's whole batch."""
    parts = value.split(":", 2)
    if len(parts) != 3:
        return None
    kind, pubkey, d = parts
    if not (0 < len(kind) <= 10 and kind.isascii() and kind.isdigit()) or int(kind) > MAX_KIND:
        return None
    if not is_hex64(pubkey):
        return None
    return int(kind), pubkey, d


def unstorable_text(value: str) -> str | None:
    """Why a client string that a store would keep or search as text cannot be held the
    same way by every store, or None when it can.

    - U+0000: PostgreSQL ``text`` cannot contain it (SQLite can), so such a tag value or
      filter value failed only on PostgreSQL.
    - a lone surrogate (U+D800..U+DFFF): not encodable as UTF-8, so neither store nor
      orjson can take it. orjson never decodes one from the wire, but ``parse_event`` and
      ``parse_filter`` also take Python objects (plug-ins' clients, the CLI, tests).
    """
    if "\x00" in value:
        return "must not contain U+0000"
    if not value.isascii():
        try:
            value.encode()
        except UnicodeEncodeError:
            return "must be valid Unicode (no lone surrogates)"
    return None


def serialize_for_id(pubkey: str, created_at: int, kind: int, tags: list[list[str]], content: str) -> bytes:
    """NIP-01 canonical form. orjson writes compact UTF-8, escapes exactly ``"``, ``\\``
    and control characters (``\\n \\r \\t \\b \\f`` short, the rest ``\\u00XX``) and
    leaves every other character verbatim, which is the rule NIP-01 states and what
    JavaScript's JSON.stringify produces."""
    return orjson.dumps([0, pubkey, created_at, kind, tags, content])


def compute_id(pubkey: str, created_at: int, kind: int, tags: list[list[str]], content: str) -> str:
    return crypto.sha256(serialize_for_id(pubkey, created_at, kind, tags, content)).hex()


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_event(obj: object) -> Event:
    """Check an EVENT payload's shape and id; raise ``Invalid`` naming the first fault.

    The signature is checked for form only; call ``verify_signature`` after the cheaper
    policies have had their chance to refuse.
    """
    if not isinstance(obj, dict):
        raise Invalid("event must be a JSON object")
    try:
        id_, pubkey, created_at = obj["id"], obj["pubkey"], obj["created_at"]
        kind, tags, content, sig = obj["kind"], obj["tags"], obj["content"], obj["sig"]
    except KeyError as exc:
        raise Invalid(f"missing field {exc.args[0]}") from None
    if not is_hex64(id_):
        raise Invalid("id must be 64 lowercase hex characters")
    if not is_hex64(pubkey):
        raise Invalid("pubkey must be 64 lowercase hex characters")
    if not (isinstance(sig, str) and len(sig) == 128 and _HEX128.fullmatch(sig)):
        raise Invalid("sig must be 128 lowercase hex characters")
    if not _is_int(created_at) or created_at < 0:
        raise Invalid("created_at must be a non-negative integer")
    if created_at > MAX_TIMESTAMP:
        raise Invalid(f"created_at must be at most {MAX_TIMESTAMP}")
    if not _is_int(kind) or not 0 <= kind <= MAX_KIND:
        raise Invalid(f"kind must be an integer between 0 and {MAX_KIND}")
    if not isinstance(content, str):
        raise Invalid("content must be a string")
    if not isinstance(tags, list):
        raise Invalid("tags must be an array")
    _check_tags(tags)
    try:
        computed = compute_id(pubkey, created_at, kind, tags, content)
    except TypeError:  # orjson: a lone surrogate in content or a tag (see unstorable_text)
        raise Invalid("content and tags must be valid Unicode (no lone surrogates)") from None
    if computed != id_:
        raise Invalid("event id does not match its content")
    return _build(id_, pubkey, created_at, kind, tags, content, sig)


def _check_tags(tags: list[Any]) -> None:
    """Shape and storability of the tags (see ``unstorable_text`` and the limits at the top).

    U+0000 is refused in every tag element, not only in indexed ones, so the rule is one
    sentence a client author can follow; no tag NIP needs it. Content, by contrast, may
    hold U+0000: it is valid JSON and a valid string for NIP-01, and content is stored only
    inside the event's raw JSON (bytes, where orjson writes it as ``\\u0000``), never in a
    text column, so both stores keep it losslessly and serve it byte for byte.
    """
    expiration_read = False
    for tag in tags:
        if not isinstance(tag, list) or not tag:
            raise Invalid("each tag must be a non-empty array of strings")
        for item in tag:
            if not isinstance(item, str):
                raise Invalid("each tag must be a non-empty array of strings")
            if "\x00" in item:
                raise Invalid("tags must not contain U+0000")
        if len(tag) < 2:
            continue
        name, value = tag[0], tag[1]
        if is_index_name(name) and len(value) > MAX_INDEXED_VALUE_BYTES // 4:
            if len(value.encode(errors="surrogatepass")) > MAX_INDEXED_VALUE_BYTES:
                raise Invalid(f"the first value of a single-letter tag must be at most {MAX_INDEXED_VALUE_BYTES} bytes")
        elif name == "expiration" and not expiration_read:
            parse_expiration(value)  # the one ``Event.expiration`` reads (NIP-40)
            expiration_read = True


def _build(id_: str, pubkey: str, created_at: int, kind: int, tags: list[list[str]], content: str, sig: str) -> Event:
    fields = {"id": id_, "pubkey": pubkey, "created_at": created_at, "kind": kind}
    raw = orjson.dumps(fields | {"tags": tags, "content": content, "sig": sig})
    return Event(id_, pubkey, created_at, kind, tags, content, sig, raw)


def event_from_own_raw(raw: bytes) -> Event:
    """The ``Event`` whose ``raw`` this relay made itself (``_build``, after
    ``parse_event`` and the signature check), handed between the relay's own processes
    (``--workers`` on SQLite: a worker to the writer process, the writer's commit stream back
    to every worker). Nothing is checked again and ``raw`` is kept as it is: rebuilding it
    (``parse_event``) costs a hash and two serialisations per event on every process. Never
    for bytes from outside the relay."""
    obj = orjson.loads(raw)
    return Event(obj["id"], obj["pubkey"], obj["created_at"], obj["kind"], obj["tags"], obj["content"], obj["sig"], raw)


def verify_signature(event: Event) -> bool:
    return crypto.verify_schnorr(bytes.fromhex(event.id), bytes.fromhex(event.pubkey), bytes.fromhex(event.sig))


def sign_event(
    secret: bytes, kind: int, content: str = "", tags: list[list[str]] | None = None, created_at: int = 0
) -> Event:
    """Build and sign an event: for tests, benchmarks, and the relay's own messages."""
    tags = tags if tags is not None else []
    pubkey = crypto.public_key(secret).hex()
    id_ = compute_id(pubkey, created_at, kind, tags, content)
    sig = crypto.sign_schnorr(bytes.fromhex(id_), secret).hex()
    return _build(id_, pubkey, created_at, kind, tags, content, sig)
