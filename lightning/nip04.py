"""NIP-04 payloads (AES-256-CBC keyed by the raw ECDH x), kept only for NWC wallets that
have not moved to NIP-44: NIP-47 says a wallet whose info event lacks the ``encryption``
tag speaks NIP-04 alone. Deprecated; never chosen when the wallet offers ``nip44_v2``.
"""

from __future__ import annotations

import base64
import binascii
import os

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from lightning.nip44 import MAX_PAYLOAD_CHARS, Nip44Error, shared_x


class Nip04Error(ValueError):
    """A payload that is not ``<base64 ciphertext>?iv=<base64 iv>`` or does not decrypt."""


def encrypt(plaintext: str, secret: bytes, pubkey_x: bytes, iv: bytes | None = None) -> str:
    iv = os.urandom(16) if iv is None else iv
    key = _key(secret, pubkey_x)
    padder = padding.PKCS7(128).padder()
    padded = padder.update(plaintext.encode("utf-8")) + padder.finalize()
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    ciphertext = encryptor.update(padded) + encryptor.finalize()
    return f"{base64.b64encode(ciphertext).decode('ascii')}?iv={base64.b64encode(iv).decode('ascii')}"


def decrypt(payload: str, secret: bytes, pubkey_x: bytes) -> str:
    if len(payload) > MAX_PAYLOAD_CHARS:
        raise Nip04Error("payload too large")
    body, sep, iv_b64 = payload.partition("?iv=")
    if not sep:
        raise Nip04Error("missing iv")
    try:
        ciphertext = base64.b64decode(body, validate=True)
        iv = base64.b64decode(iv_b64, validate=True)
    except (binascii.Error, ValueError):
        raise Nip04Error("invalid base64") from None
    if len(iv) != 16 or not ciphertext or len(ciphertext) % 16:
        raise Nip04Error("invalid ciphertext or iv length")
    decryptor = Cipher(algorithms.AES(_key(secret, pubkey_x)), modes.CBC(iv)).decryptor()
    padded = decryptor.update(ciphertext) + decryptor.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    try:
        plain = unpadder.update(padded) + unpadder.finalize()
        return plain.decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        raise Nip04Error("bad padding or not UTF-8 (wrong key?)") from None


def _key(secret: bytes, pubkey_x: bytes) -> bytes:
    try:
        return shared_x(secret, pubkey_x)
    except Nip44Error as exc:
        raise Nip04Error(str(exc)) from None
