"""BIP-340 verification with the memo of parsed keys (``relay.nostr.crypto``): a key seen
before must never make a bad signature pass, a key off the curve is never remembered, and
the memo stays bounded however many keys strangers send."""

from __future__ import annotations

import hashlib
import os

import pytest

from relay.nostr import crypto


def _signed(secret: bytes, text: bytes) -> tuple[bytes, bytes, bytes]:
    msg = hashlib.sha256(text).digest()
    return msg, crypto.public_key(secret), crypto.sign_schnorr(msg, secret)


def test_a_remembered_key_still_checks_every_signature() -> None:
    secret = os.urandom(32)
    msg, pub, sig = _signed(secret, b"first")
    assert crypto.verify_schnorr(msg, pub, sig)
    assert pub in crypto._parsed_keys
    assert crypto.verify_schnorr(msg, pub, sig)  # from the memo
    other = hashlib.sha256(b"second").digest()
    assert not crypto.verify_schnorr(other, pub, sig)  # the signature is of another message
    forged = bytes([sig[0] ^ 1]) + sig[1:]
    assert not crypto.verify_schnorr(msg, pub, forged)
    _, stranger_pub, _ = _signed(os.urandom(32), b"first")
    assert not crypto.verify_schnorr(msg, stranger_pub, sig)  # another key's claim on it


def test_a_key_off_the_curve_is_refused_and_not_remembered() -> None:
    # x = 5 has no point on secp256k1 (5**3 + 7 = 132 is not a square mod p).
    off_curve = (5).to_bytes(32, "big")
    msg, _, sig = _signed(os.urandom(32), b"x")
    assert not crypto.verify_schnorr(msg, off_curve, sig)
    assert not crypto.verify_schnorr_fresh(msg, off_curve, sig)
    assert off_curve not in crypto._parsed_keys


@pytest.mark.parametrize("length", [0, 31, 33])
def test_a_key_of_the_wrong_length_is_refused(length: int) -> None:
    msg, pub, sig = _signed(os.urandom(32), b"x")
    assert not crypto.verify_schnorr(msg, (pub * 2)[:length], sig)


def test_the_memo_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(crypto, "_PARSED_KEYS_MAX", 8)
    monkeypatch.setattr(crypto, "_parsed_keys", {})
    for i in range(30):
        msg, pub, sig = _signed(os.urandom(32), str(i).encode())
        assert crypto.verify_schnorr(msg, pub, sig)
        assert len(crypto._parsed_keys) <= 8


def test_with_and_without_the_memo_agree() -> None:
    secrets = [os.urandom(32) for _ in range(5)]
    cases = []
    for i, secret in enumerate(secrets):
        msg, pub, sig = _signed(secret, str(i).encode())
        cases += [(msg, pub, sig, True), (msg, pub, sig[:-1] + bytes([sig[-1] ^ 0x80]), False)]
    for msg, pub, sig, valid in cases * 2:  # the second round reads the memo
        assert crypto.verify_schnorr(msg, pub, sig) is valid
        assert crypto.verify_schnorr_fresh(msg, pub, sig) is valid
