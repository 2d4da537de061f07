"""NIP-44 v2 against the official vectors (paulmillr/nip44, sha256 checked below) and
NIP-04 against an independent implementation (nostr-sdk, rust-nostr)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import nostr_sdk
import pytest

from lightning import nip04, nip44
from relay.nostr import crypto

VECTORS_FILE = Path(__file__).with_name("nip44_vectors.json")
# The checksum NIP-44 publishes for the vector file.
VECTORS_SHA256 = "269ed0f69e4c192512cc779e78c555090cebc7c785b609e338a62afc3ce25040"


def _vectors() -> Any:
    return json.loads(VECTORS_FILE.read_bytes())["v2"]


V = _vectors()


def test_vector_file_is_the_published_one() -> None:
    assert hashlib.sha256(VECTORS_FILE.read_bytes()).hexdigest() == VECTORS_SHA256


@pytest.mark.parametrize("v", V["valid"]["get_conversation_key"])
def test_conversation_key_matches_vector(v: dict[str, str]) -> None:
    key = nip44.conversation_key(bytes.fromhex(v["sec1"]), bytes.fromhex(v["pub2"]))
    assert key.hex() == v["conversation_key"]


def test_message_keys_match_vectors() -> None:
    mk = V["valid"]["get_message_keys"]
    conv = bytes.fromhex(mk["conversation_key"])
    for v in mk["keys"]:
        chacha_key, chacha_nonce, hmac_key = nip44.message_keys(conv, bytes.fromhex(v["nonce"]))
        assert (chacha_key.hex(), chacha_nonce.hex(), hmac_key.hex()) == (
            v["chacha_key"],
            v["chacha_nonce"],
            v["hmac_key"],
        )


@pytest.mark.parametrize(("unpadded", "padded"), V["valid"]["calc_padded_len"])
def test_padded_length_matches_vector(unpadded: int, padded: int) -> None:
    assert nip44.calc_padded_len(unpadded) == padded


@pytest.mark.parametrize("v", V["valid"]["encrypt_decrypt"])
def test_encrypt_decrypt_matches_vector_from_both_sides(v: dict[str, str]) -> None:
    sec1, sec2 = bytes.fromhex(v["sec1"]), bytes.fromhex(v["sec2"])
    pub1, pub2 = crypto.public_key(sec1), crypto.public_key(sec2)
    key_a = nip44.conversation_key(sec1, pub2)
    assert key_a.hex() == v["conversation_key"]
    payload = nip44.encrypt(v["plaintext"], key_a, bytes.fromhex(v["nonce"]))
    assert payload == v["payload"]
    key_b = nip44.conversation_key(sec2, pub1)
    assert key_b == key_a
    assert nip44.decrypt(payload, key_b) == v["plaintext"]


@pytest.mark.parametrize("v", V["valid"]["encrypt_decrypt_long_msg"])
def test_long_messages_match_vector_checksums(v: dict[str, Any]) -> None:
    plaintext = v["pattern"] * v["repeat"]
    assert hashlib.sha256(plaintext.encode()).hexdigest() == v["plaintext_sha256"]
    conv = bytes.fromhex(v["conversation_key"])
    payload = nip44.encrypt(plaintext, conv, bytes.fromhex(v["nonce"]))
    assert hashlib.sha256(payload.encode()).hexdigest() == v["payload_sha256"]
    assert nip44.decrypt(payload, conv) == plaintext


def test_empty_plaintext_is_refused() -> None:
    with pytest.raises(nip44.Nip44Error):
        nip44.encrypt("", bytes(range(32)), bytes(32))


# The extended-length table in the NIP text itself (the vector file predates the 6-byte
# prefix and still lists 65536 as too long; the NIP now accepts up to 2**32 - 1).
EXTENDED = [
    (65535, "6e1bebca6a8229364a162a72ef064826c4cd7457bf54f190ef782bd9deff3e42",
     "6d8c2810d1e870fbaa1f0a0937126cca837a15f9260e27060c331d70a3c0bc84"),
    (65536, "bf718b6f653bebc184e1479f1935b8da974d701b893afcf49e701f3e2f9f9c5a",
     "b7b4edb36ba92e267d322d56d9aebc22e7fa96ff52e3c12adc07f07a43cbc616"),
    (65537, "008ffc88d3c96a9f307524eb361e47c5222a887fc45fa0c1fb8d429c5c23b430",
     "eeb7c7c5373894ea2c1547cfd3ccb15d5a0b2d619da852e5c79df792dcc9e435"),
]


@pytest.mark.parametrize(("length", "plain_sha", "payload_sha"), EXTENDED)
def test_extended_length_prefix_matches_nip_table(length: int, plain_sha: str, payload_sha: str) -> None:
    conv = bytes.fromhex("c41c775356fd92eadc63ff5a0dc1da211b268cbea22316767095b2871ea1412d")
    nonce = bytes.fromhex("0000000000000000000000000000000000000000000000000000000000000001")
    plaintext = "a" * length
    assert hashlib.sha256(plaintext.encode()).hexdigest() == plain_sha
    payload = nip44.encrypt(plaintext, conv, nonce)
    assert hashlib.sha256(payload.encode()).hexdigest() == payload_sha
    assert nip44.decrypt(payload, conv) == plaintext


@pytest.mark.parametrize("v", V["invalid"]["get_conversation_key"])
def test_invalid_keys_are_refused(v: dict[str, str]) -> None:
    with pytest.raises(nip44.Nip44Error):
        nip44.conversation_key(bytes.fromhex(v["sec1"]), bytes.fromhex(v["pub2"]))


@pytest.mark.parametrize("v", V["invalid"]["decrypt"], ids=lambda v: v["note"])
def test_invalid_payloads_are_refused(v: dict[str, str]) -> None:
    with pytest.raises(nip44.Nip44Error):
        nip44.decrypt(v["payload"], bytes.fromhex(v["conversation_key"]))


def test_random_nonce_differs_each_time() -> None:
    conv = nip44.conversation_key(crypto.generate_secret(), crypto.public_key(crypto.generate_secret()))
    assert nip44.encrypt("same", conv) != nip44.encrypt("same", conv)


def test_nip44_interoperates_with_nostr_sdk() -> None:
    a, b = crypto.generate_secret(), crypto.generate_secret()
    sdk_payload = nostr_sdk.nip44_encrypt(
        nostr_sdk.SecretKey.parse(a.hex()),
        nostr_sdk.PublicKey.parse(crypto.public_key(b).hex()),
        "from rust",
        nostr_sdk.Nip44Version.V2,
    )
    assert nip44.decrypt(sdk_payload, nip44.conversation_key(b, crypto.public_key(a))) == "from rust"


def test_nip04_round_trip_between_two_keys() -> None:
    a, b = crypto.generate_secret(), crypto.generate_secret()
    payload = nip04.encrypt('{"method":"get_info"}', a, crypto.public_key(b))
    assert "?iv=" in payload
    assert nip04.decrypt(payload, b, crypto.public_key(a)) == '{"method":"get_info"}'


def test_nip04_interoperates_with_nostr_sdk_both_ways() -> None:
    a, b = crypto.generate_secret(), crypto.generate_secret()
    sk_a = nostr_sdk.SecretKey.parse(a.hex())
    pk_b = nostr_sdk.PublicKey.parse(crypto.public_key(b).hex())
    sdk_payload = nostr_sdk.nip04_encrypt(sk_a, pk_b, "héllo ⚡")
    assert nip04.decrypt(sdk_payload, b, crypto.public_key(a)) == "héllo ⚡"
    ours = nip04.encrypt("back at you", b, crypto.public_key(a))
    assert nostr_sdk.nip04_decrypt(sk_a, pk_b, ours) == "back at you"


def test_nip04_wrong_key_is_refused() -> None:
    # Fixed keys and iv: a wrong key garbles the last block, so PKCS7 unpadding fails.
    a, b, c = (bytes([n]) * 32 for n in (1, 2, 3))
    payload = nip04.encrypt("secret words here", a, crypto.public_key(b), iv=bytes(16))
    with pytest.raises(nip04.Nip04Error):
        nip04.decrypt(payload, c, crypto.public_key(a))
