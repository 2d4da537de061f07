"""BIP-340 Schnorr signatures through libsecp256k1, called directly via cffi.

The ``secp256k1`` package's high-level classes round-trip keys through 33-byte
compressed form; Nostr keys are 32-byte x-only keys, which ``xonly_pubkey_parse``
takes as they are. cffi releases the GIL during each call, so verifying in a small
thread pool uses a second core (measured: ~32k/s on one thread, ~64k/s on two).
"""

from __future__ import annotations

import hashlib
import os

from secp256k1 import ffi, lib

_CTX = lib.secp256k1_context_create(lib.SECP256K1_CONTEXT_VERIFY | lib.SECP256K1_CONTEXT_SIGN)


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


# Parsed x-only keys by their 32 bytes. Parsing lifts x to a curve point (a field square
# root): ~5 of a verify's ~45 µs, and one more cffi call, each of which gives up the GIL
# and waits to take it back from the event loop on the verifier thread. Authors repeat, so
# most events skip it. Full means cleared: a stream of new keys (each costs what it did
# without the memo) evicts the rest at once, and a clear is one step, safe while the loop
# and the verifier threads read.
_PARSED_KEYS_MAX = 4096
_parsed_keys: dict[bytes, object] = {}


def _parse_key(pubkey32: bytes) -> object | None:
    """The curve point of an x-only key, or None when it has none (or is not 32 bytes:
    libsecp256k1 would read past a shorter buffer)."""
    if len(pubkey32) != 32:
        return None
    xonly = ffi.new("secp256k1_xonly_pubkey *")
    return xonly if lib.secp256k1_xonly_pubkey_parse(_CTX, xonly, pubkey32) else None


def _parsed_key(pubkey32: bytes) -> object | None:
    xonly = _parsed_keys.get(pubkey32)
    if xonly is None:
        xonly = _parse_key(pubkey32)
        if xonly is None:
            return None
        if len(_parsed_keys) >= _PARSED_KEYS_MAX:
            _parsed_keys.clear()
        _parsed_keys[pubkey32] = xonly
    return xonly


def verify_schnorr(msg32: bytes, pubkey32: bytes, sig64: bytes) -> bool:
    """True when ``sig64`` is a valid BIP-340 signature of ``msg32`` by ``pubkey32``.

    An x-only key that is not on the curve is simply an invalid signature.
    """
    xonly = _parsed_key(pubkey32)
    return xonly is not None and bool(lib.secp256k1_schnorrsig_verify(_CTX, sig64, msg32, len(msg32), xonly))


def verify_schnorr_fresh(msg32: bytes, pubkey32: bytes, sig64: bytes) -> bool:
    """``verify_schnorr`` without the parsed-key memo: libsecp256k1's whole cost of one
    signature, the ceiling the benchmark states ingest against."""
    xonly = _parse_key(pubkey32)
    return xonly is not None and bool(lib.secp256k1_schnorrsig_verify(_CTX, sig64, msg32, len(msg32), xonly))


def public_key(secret32: bytes) -> bytes:
    """The 32-byte x-only public key of a secret key (used by clients, tests, plug-ins)."""
    keypair = ffi.new("secp256k1_keypair *")
    if not lib.secp256k1_keypair_create(_CTX, keypair, secret32):
        raise ValueError("invalid secret key")
    xonly = ffi.new("secp256k1_xonly_pubkey *")
    lib.secp256k1_keypair_xonly_pub(_CTX, xonly, ffi.NULL, keypair)
    out = ffi.new("unsigned char[32]")
    lib.secp256k1_xonly_pubkey_serialize(_CTX, out, xonly)
    return bytes(ffi.buffer(out, 32))


def sign_schnorr(msg32: bytes, secret32: bytes) -> bytes:
    """A BIP-340 signature with fresh auxiliary randomness."""
    keypair = ffi.new("secp256k1_keypair *")
    if not lib.secp256k1_keypair_create(_CTX, keypair, secret32):
        raise ValueError("invalid secret key")
    sig = ffi.new("unsigned char[64]")
    if not lib.secp256k1_schnorrsig_sign(_CTX, sig, msg32, keypair, os.urandom(32)):
        raise ValueError("signing failed")
    return bytes(ffi.buffer(sig, 64))


def generate_secret() -> bytes:
    """A random valid secret key."""
    while True:
        candidate = os.urandom(32)
        if lib.secp256k1_ec_seckey_verify(_CTX, candidate):
            return candidate
