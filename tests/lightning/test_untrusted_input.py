"""Client-controlled input to the payment side never raises: a zap receipt's tags and a
NIP-98 Authorization header are checked by pure functions that answer, whatever they get."""

from __future__ import annotations

import base64
import contextlib

from hypothesis import given, settings
from hypothesis import strategies as st

from lightning.zap_receipts import receipt_problem
from relay.nostr import crypto, nip98
from tests.nostr_client import signed

ZAPPER = crypto.generate_secret()
ZAPPER_PK = crypto.public_key(ZAPPER).hex()
tag_names = st.sampled_from(["p", "P", "e", "bolt11", "description", "amount", "x"])
tag_values = st.one_of(
    st.text(max_size=80),
    st.sampled_from(["lnbc1", "lnbcrt10u1", "{}", "[]", '{"kind":9734}', "null", "1e999", "a" * 64]),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(st.one_of(tag_names, tag_values), min_size=1, max_size=4), max_size=8))
def test_receipt_checks_answer_for_any_tags(tags: list[list[str]]) -> None:
    receipt = signed(ZAPPER, kind=9735, tags=tags)
    problem = receipt_problem(receipt, {ZAPPER_PK})
    assert problem is None or isinstance(problem, str)
    assert problem is not None  # nothing random is a valid receipt


@settings(max_examples=150, deadline=None)
@given(tag_values, tag_values)
def test_receipt_checks_answer_for_any_bolt11_and_description(bolt11: str, description: str) -> None:
    tags = [["p", "ab" * 32], ["bolt11", bolt11], ["description", description]]
    problem = receipt_problem(signed(ZAPPER, kind=9735, tags=tags), {ZAPPER_PK})
    assert isinstance(problem, str)


@settings(max_examples=150, deadline=None)
@given(st.one_of(st.text(max_size=200), st.binary(max_size=200).map(lambda b: f"Nostr {base64.b64encode(b).decode()}")))
def test_nip98_header_decoding_answers_for_any_header(header: str) -> None:
    with contextlib.suppress(nip98.Nip98Error):
        nip98.authorised_pubkey(header, url="https://relay.example.com/account/x", method="GET", now=0)
