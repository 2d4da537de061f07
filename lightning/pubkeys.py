"""Pubkeys as people type them: 64 hex characters or a NIP-19 ``npub``.

Bech32 (BIP-173) is about thirty lines; writing it here avoids depending on a package
that ships no type information for one decode and one encode.
"""

from __future__ import annotations

_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_GENERATORS = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)


def _polymod(values: list[int]) -> int:
    chk = 1
    for value in values:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ value
        for i, gen in enumerate(_GENERATORS):
            if (top >> i) & 1:
                chk ^= gen
    return chk


def _hrp_expand(hrp: str) -> list[int]:
    return [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]


def _convert_bits(data: list[int], from_bits: int, to_bits: int, pad: bool) -> list[int] | None:
    acc = bits = 0
    out = []
    maxv = (1 << to_bits) - 1
    for value in data:
        acc = (acc << from_bits) | value
        bits += from_bits
        while bits >= to_bits:
            bits -= to_bits
            out.append((acc >> bits) & maxv)
    if pad and bits:
        out.append((acc << (to_bits - bits)) & maxv)
    elif not pad and (bits >= from_bits or (acc << (to_bits - bits)) & maxv):
        return None
    return out


def bech32_encode(hrp: str, payload: bytes) -> str:
    """NIP-19 bech32 of ``payload`` under ``hrp`` (npub, nsec, ...)."""
    data = _convert_bits(list(payload), 8, 5, pad=True) or []
    check = _polymod([*_hrp_expand(hrp), *data, 0, 0, 0, 0, 0, 0]) ^ 1
    checksum = [(check >> 5 * (5 - i)) & 31 for i in range(6)]
    return hrp + "1" + "".join(_CHARSET[d] for d in data + checksum)


def npub_encode(pubkey_hex: str) -> str:
    return bech32_encode("npub", bytes.fromhex(pubkey_hex))


def parse_pubkey(text: str) -> str | None:
    """Lower-case hex pubkey from hex or ``npub1...``; None when it is neither."""
    text = text.strip()
    lowered = text.lower()
    if len(lowered) == 64 and all(c in "0123456789abcdef" for c in lowered):
        return lowered
    if text != lowered and text != text.upper():
        return None  # BIP-173: mixed case is invalid
    if not lowered.startswith("npub1") or len(lowered) != 63:
        return None
    try:
        data = [_CHARSET.index(c) for c in lowered[5:]]
    except ValueError:
        return None
    if _polymod([*_hrp_expand("npub"), *data]) != 1:
        return None
    decoded = _convert_bits(data[:-6], 5, 8, pad=False)
    if decoded is None or len(decoded) != 32:
        return None
    return bytes(decoded).hex()
