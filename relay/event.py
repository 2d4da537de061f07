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

from relay import crypto
from relay.errors import Invalid

_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX128 = re.compile(r"[0-9a-f]{128}")
MAX_TIMESTAMP = 2**62  # fits SQLite's and PostgreSQL's signed 64-bit integers with room


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
        """NIP-40 expiration timestamp, None when absent or not an integer."""
        for tag in self.tags:
            if tag[0] == "expiration" and len(tag) > 1:
                try:
                    return int(tag[1])
                except ValueError:
                    return None
        return None

    @property
    def is_protected(self) -> bool:
        """NIP-70: a ``["-"]`` tag means only the author may publish it."""
        return any(tag == ["-"] for tag in self.tags)

    def index_tags(self) -> list[tuple[str, str]]:
        """(name, value) of single-letter tags: NIP-01 indexes only the first value."""
        return [(t[0], t[1]) for t in self.tags if len(t) > 1 and len(t[0]) == 1 and t[0].isascii() and t[0].isalpha()]

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
    if not _is_int(created_at) or not 0 <= created_at <= MAX_TIMESTAMP:
        raise Invalid("created_at must be a non-negative integer")
    if not _is_int(kind) or not 0 <= kind <= 65535:
        raise Invalid("kind must be an integer between 0 and 65535")
    if not isinstance(content, str):
        raise Invalid("content must be a string")
    if not isinstance(tags, list):
        raise Invalid("tags must be an array")
    for tag in tags:
        if not isinstance(tag, list) or not tag:
            raise Invalid("each tag must be a non-empty array of strings")
        for item in tag:
            if not isinstance(item, str):
                raise Invalid("each tag must be a non-empty array of strings")
    if compute_id(pubkey, created_at, kind, tags, content) != id_:
        raise Invalid("event id does not match its content")
    return _build(id_, pubkey, created_at, kind, tags, content, sig)


def _build(id_: str, pubkey: str, created_at: int, kind: int, tags: list[list[str]], content: str, sig: str) -> Event:
    fields = {"id": id_, "pubkey": pubkey, "created_at": created_at, "kind": kind}
    raw = orjson.dumps(fields | {"tags": tags, "content": content, "sig": sig})
    return Event(id_, pubkey, created_at, kind, tags, content, sig, raw)


def verify_signature(event: Event) -> bool:
    return crypto.verify_schnorr(bytes.fromhex(event.id), bytes.fromhex(event.pubkey), bytes.fromhex(event.sig))


def check_signature(event: Event) -> None:
    if not verify_signature(event):
        raise Invalid("signature is invalid")


def sign_event(
    secret: bytes, kind: int, content: str = "", tags: list[list[str]] | None = None, created_at: int = 0
) -> Event:
    """Build and sign an event: for tests, benchmarks, and the relay's own messages (NWC)."""
    tags = tags if tags is not None else []
    pubkey = crypto.public_key(secret).hex()
    id_ = compute_id(pubkey, created_at, kind, tags, content)
    sig = crypto.sign_schnorr(bytes.fromhex(id_), secret).hex()
    return _build(id_, pubkey, created_at, kind, tags, content, sig)
