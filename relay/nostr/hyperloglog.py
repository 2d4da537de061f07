"""NIP-45 HyperLogLog: the ``hll`` a COUNT reply carries for the NIP's common filters.

Pure. A relay's part (NIP-45 "Algorithm") is small: 256 one-byte registers; for each
counted event, the byte of its ``pubkey`` at ``offset`` picks a register, and the register
keeps the largest "leading zero bits after it, plus one". ``offset`` comes from the filter
(``offset_for``), so every relay computes the same registers for the same filter and a
client can merge them (register by register, the largest) across relays.

Leading zeros are counted over the 7 bytes (56 bits) after the register byte, as the
NIP's reference implementations do (go-nostr ``nip45/hyperloglog``, nostr-tools
``nip45``): a register is at most 57. The NIP's text says "starting at position
offset+1" without an end; the two differ only for a pubkey with 56 zero bits there.

The store hands over, per register, the smallest of those 7-byte strings among the
counted events (``Store.count_registers``): the fewest bytes to move, and the smallest
big-endian value has the most leading zeros, so it decides the register.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from relay.nostr.event import is_hex64, parse_address
from relay.nostr.filters import Filter

REGISTERS = 256
SUFFIX_BYTES = 7  # bytes after the register byte whose leading zeros are counted
# NIP-45 "Common filters": one tag attribute with one value, these kinds, nothing else.
COMMON_FILTERS = frozenset(
    {
        ("e", frozenset({7})),  # reaction count
        ("e", frozenset({6})),  # repost count
        ("q", frozenset({1, 1111})),  # quote count
        ("e", frozenset({1})),  # reply count
        ("E", frozenset({1111})),  # comment count
        ("p", frozenset({3})),  # follower count
    }
)


def target_hex(value: str) -> str:
    """NIP-45 ``offset`` steps 3: the 64-character hex string a tag value stands for: an
    event id or pubkey as it is, an address's pubkey, anything else's sha256."""
    if is_hex64(value):
        return value
    address = parse_address(value)
    if address is not None:
        return address[1]
    return hashlib.sha256(value.encode()).hexdigest()


def offset_of(value: str) -> int:
    """NIP-45 ``offset`` steps 4-6: the hex digit at position 32, plus 8 (8..23)."""
    return int(target_hex(value)[32], 16) + 8


def offset_for(filters: tuple[Filter, ...]) -> int | None:
    """The ``offset`` of a COUNT whose one filter is one of the NIP's common filters, or
    None: no ``hll`` for anything else (the NIP leaves other filters undefined, and a
    union of several filters has no one offset)."""
    if len(filters) != 1:
        return None
    f = filters[0]
    if f.ids is not None or f.authors is not None or f.since is not None or f.until is not None:
        return None
    if f.search is not None or f.kinds is None or len(f.tags) != 1:
        return None
    name, values = f.tags[0]
    if len(values) != 1 or (name, f.kinds) not in COMMON_FILTERS:
        return None
    (value,) = values
    return offset_of(value)


def rho(suffix: bytes) -> int:
    """Leading zero bits of the 56-bit big-endian ``suffix``, plus one (1..57)."""
    value = int.from_bytes(suffix[:SUFFIX_BYTES].ljust(SUFFIX_BYTES, b"\0"), "big")
    return SUFFIX_BYTES * 8 - value.bit_length() + 1


def registers(minima: Iterable[tuple[int, bytes]]) -> bytes:
    """The 256 registers from (register, smallest 7-byte suffix seen for it) pairs."""
    out = bytearray(REGISTERS)
    for index, suffix in minima:
        out[index] = max(out[index], rho(suffix))
    return bytes(out)


def feed(regs: bytearray, pubkey: bytes, offset: int) -> None:
    """Add one event's 32-byte ``pubkey`` to ``regs`` (the algorithm event by event)."""
    index = pubkey[offset]
    regs[index] = max(regs[index], rho(pubkey[offset + 1 : offset + 1 + SUFFIX_BYTES]))
