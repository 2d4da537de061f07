"""NIP-44 version 2 encrypted payloads, used by the NWC backend (NIP-47).

Built from the NIP's own primitives: secp256k1 ECDH (the *unhashed* x coordinate of
``a * B``), HKDF-SHA256, ChaCha20 (RFC 8439, counter 0) and HMAC-SHA256 over
``nonce || ciphertext``. libsecp256k1's ``secp256k1_ecdh`` hashes its output by default,
so the shared point is computed with ``ec_pubkey_tweak_mul`` instead, which the NIP names
as the unhashed equivalent. Pure: no I/O; the nonce is an argument so the official test
vectors can be replayed (``encrypt`` draws a fresh one when it is not given).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
import struct
from hashlib import sha256

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand
from secp256k1 import ffi, lib

_CTX = lib.secp256k1_context_create(lib.SECP256K1_CONTEXT_VERIFY | lib.SECP256K1_CONTEXT_SIGN)
_SALT = b"nip44-v2"
_MIN_PLAINTEXT = 1
_MAX_PLAINTEXT = 0xFFFFFFFF
_EXTENDED_PREFIX_THRESHOLD = 65536
# A relay-borne NWC message is small; refuse giant payloads before base64-decoding them
# (the NIP asks implementations to pick their own ceiling). 1 MiB of base64 is plenty.
MAX_PAYLOAD_CHARS = 1 << 20


class Nip44Error(ValueError):
    """A key or payload that NIP-44 v2 refuses (bad key, unknown version, MAC, padding)."""


def shared_x(secret: bytes, pubkey_x: bytes) -> bytes:
    """The unhashed x coordinate of ``secret * P`` where P is the even-y point with x ``pubkey_x``.

    Nostr keys are x-only (BIP-340), so the peer's point is lifted with the ``02`` prefix;
    x of ``a*P`` and ``a*(-P)`` are equal, so the choice of y does not change the result.
    Shared by NIP-04 and NIP-44, which both use this raw x.
    """
    if len(secret) != 32 or not lib.secp256k1_ec_seckey_verify(_CTX, secret):
        raise Nip44Error("invalid secret key")
    if len(pubkey_x) != 32:
        raise Nip44Error("invalid public key")
    point = ffi.new("secp256k1_pubkey *")
    if not lib.secp256k1_ec_pubkey_parse(_CTX, point, b"\x02" + pubkey_x, 33):
        raise Nip44Error("invalid public key")
    if not lib.secp256k1_ec_pubkey_tweak_mul(_CTX, point, secret):
        raise Nip44Error("invalid secret key")
    out = ffi.new("unsigned char[33]")
    out_len = ffi.new("size_t *", 33)
    lib.secp256k1_ec_pubkey_serialize(_CTX, out, out_len, point, lib.SECP256K1_EC_COMPRESSED)
    return bytes(ffi.buffer(out, 33))[1:]


def conversation_key(secret: bytes, pubkey_x: bytes) -> bytes:
    """HKDF-extract(salt="nip44-v2", IKM=shared_x): the same from either side of the pair."""
    return hmac.new(_SALT, shared_x(secret, pubkey_x), sha256).digest()


def message_keys(conv_key: bytes, nonce: bytes) -> tuple[bytes, bytes, bytes]:
    """(chacha_key, chacha_nonce, hmac_key) from HKDF-expand(conv_key, info=nonce, L=76)."""
    if len(conv_key) != 32:
        raise Nip44Error("invalid conversation key length")
    if len(nonce) != 32:
        raise Nip44Error("invalid nonce length")
    keys = HKDFExpand(algorithm=hashes.SHA256(), length=76, info=nonce).derive(conv_key)
    return keys[0:32], keys[32:44], keys[44:76]


def calc_padded_len(unpadded_len: int) -> int:
    """Powers-of-two buckets, 32 bytes minimum, chunks of 1/8 of the next power above 256."""
    if unpadded_len <= 32:
        return 32
    next_power = 1 << ((unpadded_len - 1).bit_length())
    chunk = 32 if next_power <= 256 else next_power // 8
    return chunk * ((unpadded_len - 1) // chunk + 1)


def _pad(plaintext: str) -> bytes:
    unpadded = plaintext.encode("utf-8")
    n = len(unpadded)
    if not _MIN_PLAINTEXT <= n <= _MAX_PLAINTEXT:
        raise Nip44Error("invalid plaintext length")
    prefix = struct.pack(">HI", 0, n) if n >= _EXTENDED_PREFIX_THRESHOLD else struct.pack(">H", n)
    return prefix + unpadded + bytes(calc_padded_len(n) - n)


def _unpad(padded: bytes) -> str:
    if len(padded) < 2:
        raise Nip44Error("invalid padding")
    (n,) = struct.unpack(">H", padded[:2])
    prefix_len = 2
    if n == 0:
        if len(padded) < 6:
            raise Nip44Error("invalid padding")
        (n,) = struct.unpack(">I", padded[2:6])
        if n < _EXTENDED_PREFIX_THRESHOLD:
            raise Nip44Error("invalid padding")
        prefix_len = 6
    unpadded = padded[prefix_len : prefix_len + n]
    if n == 0 or len(unpadded) != n or len(padded) != prefix_len + calc_padded_len(n):
        raise Nip44Error("invalid padding")
    try:
        return unpadded.decode("utf-8")
    except UnicodeDecodeError:
        raise Nip44Error("plaintext is not UTF-8") from None


def _chacha20(key: bytes, nonce12: bytes, data: bytes) -> bytes:
    # cryptography's ChaCha20 takes a 16-byte nonce: 4-byte little-endian counter + RFC 8439 nonce.
    cipher = Cipher(algorithms.ChaCha20(key, b"\x00\x00\x00\x00" + nonce12), mode=None)
    encryptor = cipher.encryptor()
    return encryptor.update(data) + encryptor.finalize()


def _mac(hmac_key: bytes, nonce: bytes, ciphertext: bytes) -> bytes:
    return hmac.new(hmac_key, nonce + ciphertext, sha256).digest()


def encrypt(plaintext: str, conv_key: bytes, nonce: bytes | None = None) -> str:
    """The base64 payload ``version(2) || nonce || ciphertext || mac``."""
    nonce = os.urandom(32) if nonce is None else nonce
    chacha_key, chacha_nonce, hmac_key = message_keys(conv_key, nonce)
    ciphertext = _chacha20(chacha_key, chacha_nonce, _pad(plaintext))
    return base64.b64encode(b"\x02" + nonce + ciphertext + _mac(hmac_key, nonce, ciphertext)).decode("ascii")


def decrypt(payload: str, conv_key: bytes) -> str:
    """Check the MAC (constant time) before touching the ciphertext, then unpad."""
    if not payload or payload[0] == "#":
        raise Nip44Error("unknown encryption version")
    if not 132 <= len(payload) <= MAX_PAYLOAD_CHARS:
        raise Nip44Error("invalid payload size")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise Nip44Error("invalid base64") from None
    if len(data) < 99:
        raise Nip44Error("invalid data size")
    if data[0] != 2:
        raise Nip44Error(f"unknown encryption version {data[0]}")
    nonce, ciphertext, mac = data[1:33], data[33:-32], data[-32:]
    chacha_key, chacha_nonce, hmac_key = message_keys(conv_key, nonce)
    if not hmac.compare_digest(_mac(hmac_key, nonce, ciphertext), mac):
        raise Nip44Error("invalid MAC")
    return _unpad(_chacha20(chacha_key, chacha_nonce, ciphertext))
