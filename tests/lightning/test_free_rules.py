"""README "Free rules" over real WebSockets: no free path around the payment wall (issue 8, item 4).

- kind 9735 is free only as a NIP-57 zap receipt signed by a trusted zapper;
- the members' inbox is bounded per sender (surviving reconnects), by size and by kind;
- a kind priced 0 is free for accounts that paid, not for everyone.
"""

from __future__ import annotations

import hashlib
import os
import time
from typing import Any

import bolt11
import orjson
from bolt11.models.tags import TagChar

from lightning.backends.fake import FAKE_NODE_KEY
from relay.nostr import crypto
from relay.nostr.event import Event
from relay.session.server import Relay
from tests.conftest import RelayFactory
from tests.lightning.payment_stack import ledger_of
from tests.nostr_client import NostrClient, signed

ZAPPER = crypto.generate_secret()
ZAPPER_PK = crypto.public_key(ZAPPER).hex()
PAID: dict[str, Any] = {
    "enabled": True,
    "backend": "fake",
    "account_cache_seconds": 0,
    "trusted_zappers": [ZAPPER_PK],
}


def pk(secret: bytes) -> str:
    return crypto.public_key(secret).hex()


def invoice_for(description: str | None, amount_msat: int | None) -> str:
    tags = bolt11.Tags()
    tags.add(TagChar.payment_hash, os.urandom(32).hex())
    tags.add(TagChar.payment_secret, os.urandom(32).hex())
    if description is None:
        tags.add(TagChar.description, "not a zap")
    else:
        tags.add(TagChar.description_hash, hashlib.sha256(description.encode()).hexdigest())
    amount = None if amount_msat is None else bolt11.MilliSatoshi(amount_msat)
    invoice = bolt11.Bolt11(currency="bcrt", date=int(time.time()), tags=tags, amount_msat=amount)
    return str(bolt11.encode(invoice, private_key=FAKE_NODE_KEY))


def zap_receipt(
    recipient: str,
    *,
    zapper: bytes = ZAPPER,
    request_amount: int | None = 21_000,
    invoice_amount: int | None = 21_000,
    request_p: str | None = None,
    hashed_description: str | None = None,
    padding: int = 0,
) -> Event:
    """A NIP-57 receipt: a zap request by a random sender, embedded and hashed into the bolt11."""
    sender = crypto.generate_secret()
    tags = [["p", request_p or recipient], ["relays", "wss://relay.example.com"]]
    if request_amount is not None:
        tags.append(["amount", str(request_amount)])
    request = signed(sender, kind=9734, tags=tags)
    description = orjson.dumps(request.to_dict()).decode()
    bolt = invoice_for(description if hashed_description is None else hashed_description, invoice_amount)
    receipt_tags = [["p", recipient], ["P", request.pubkey], ["bolt11", bolt], ["description", description]]
    if padding:
        receipt_tags.append(["padding", "x" * padding])
    return signed(zapper, kind=9735, tags=receipt_tags)


async def grant(relay: Relay, secret: bytes, **change: Any) -> None:
    await ledger_of(relay).update_account(pk(secret), int(time.time()), **change)


async def test_fake_zap_receipts_from_unpaid_keys_are_refused(relay_factory: RelayFactory, alice: bytes) -> None:
    async with relay_factory(payments=PAID) as relay, NostrClient(relay.url) as client:
        bare = signed(alice, kind=9735, content="x" * 60_000)
        ok, message = await client.publish(bare)
        assert not ok and message.startswith("restricted: ")
        # a well-formed receipt is not enough: it must come from a zapper the relay trusts
        ok, message = await client.publish(zap_receipt(pk(alice), zapper=alice))
        assert not ok and message.startswith("restricted: ")


async def test_valid_receipt_from_trusted_zapper_is_free(relay_factory: RelayFactory, bob: bytes) -> None:
    async with relay_factory(payments=PAID) as relay, NostrClient(relay.url) as client:
        ok, message = await client.publish(zap_receipt(pk(bob)))
        assert ok, message
        ok, message = await client.publish(zap_receipt(pk(bob), request_amount=None))
        assert ok, message  # the request's amount tag is optional
        assert await ledger_of(relay).get_account(ZAPPER_PK) is None  # nothing charged, no account made


async def test_receipts_failing_nip57_checks_are_priced(relay_factory: RelayFactory, bob: bytes) -> None:
    bad = {
        "amount differs": zap_receipt(pk(bob), request_amount=21_000, invoice_amount=1_000),
        "no amount in bolt11": zap_receipt(pk(bob), request_amount=None, invoice_amount=None),
        "request p differs": zap_receipt(pk(bob), request_p="ab" * 32),
        "description hash differs": zap_receipt(pk(bob), hashed_description="something else"),
        "too large": zap_receipt(pk(bob), padding=9000),
        "no description": signed(ZAPPER, kind=9735, tags=[["p", pk(bob)], ["bolt11", invoice_for(None, 1000)]]),
    }
    async with relay_factory(payments=PAID) as relay, NostrClient(relay.url) as client:
        for why, receipt in bad.items():
            ok, message = await client.publish(receipt)
            assert not ok and message.startswith("restricted: "), why


async def test_inbox_is_bounded_per_sender_across_reconnects(
    relay_factory: RelayFactory, alice: bytes, bob: bytes
) -> None:
    async with relay_factory(payments={**PAID, "inbox_events_per_hour": 5}) as relay:
        await grant(relay, alice, admitted_until=int(time.time()) + 3600)
        accepted = 0
        for _ in range(3):  # reconnecting does not refill the allowance
            async with NostrClient(relay.url) as client:
                for _ in range(4):
                    ok, message = await client.publish(signed(bob, tags=[["p", pk(alice)]], content="hi"))
                    accepted += ok
                    if not ok:
                        assert message.startswith("rate-limited: "), message
        assert accepted == 5
        # another stranger still has its own allowance
        async with NostrClient(relay.url) as client:
            ok, message = await client.publish(signed(crypto.generate_secret(), tags=[["p", pk(alice)]]))
            assert ok, message


async def test_inbox_takes_only_small_events_of_inbox_kinds(relay_factory: RelayFactory, alice: bytes) -> None:
    async with relay_factory(payments=PAID) as relay, NostrClient(relay.url) as client:
        await grant(relay, alice, admitted_until=int(time.time()) + 3600)
        to_alice = [["p", pk(alice)]]
        for kind in (1, 4, 7, 1059, 1111):
            ok, message = await client.publish(signed(crypto.generate_secret(), kind=kind, tags=to_alice))
            assert ok, (kind, message)
        for event in (
            signed(crypto.generate_secret(), kind=30023, tags=[*to_alice, ["d", "x"]]),
            signed(crypto.generate_secret(), kind=9735, tags=to_alice),
            signed(crypto.generate_secret(), kind=1, tags=to_alice, content="x" * 4097),
        ):
            ok, message = await client.publish(event)
            assert not ok and message.startswith("restricted: "), (event.kind, message)
        ok, message = await client.publish(signed(crypto.generate_secret(), kind=1, tags=to_alice, content="é" * 2048))
        assert ok, message  # 4096 UTF-8 bytes is the limit, inclusive


async def test_token_credit_does_not_open_an_inbox(relay_factory: RelayFactory, alice: bytes, bob: bytes) -> None:
    credit = {"enabled": True, "min_topup_sats": 100}
    async with relay_factory(payments={**PAID, "credit": credit}) as relay, NostrClient(relay.url) as client:
        await grant(relay, alice, credit_delta_msat=1)
        ok, message = await client.publish(signed(bob, tags=[["p", pk(alice)]]))
        assert not ok and message.startswith("restricted: "), message
        await grant(relay, alice, credit_delta_msat=100_000)  # what one real top-up buys
        ok, message = await client.publish(signed(bob, tags=[["p", pk(alice)]]))
        assert ok, message


async def test_kind_priced_zero_is_free_only_for_accounts_that_paid(
    relay_factory: RelayFactory, alice: bytes, bob: bytes
) -> None:
    credit = {"enabled": True, "default_price_msat": 1000, "kind_prices_msat": {0: 0, 3: 0}}
    async with relay_factory(payments={**PAID, "credit": credit}) as relay, NostrClient(relay.url) as client:
        for kind in (0, 3):
            ok, message = await client.publish(signed(bob, kind=kind))
            assert not ok and message.startswith("restricted: "), message
        await grant(relay, alice, credit_delta_msat=5_000)
        for kind in (0, 3):
            ok, message = await client.publish(signed(alice, kind=kind))
            assert ok, message
        account = await ledger_of(relay).get_account(pk(alice))
        assert account is not None and account.credit_msat == 5_000


def padded_tags(count: int, value_bytes: int = 64) -> list[list[str]]:
    """``count`` filler tags (``t`` hashtags) of ``value_bytes`` each: what a free message
    carried in bulk (issue 17 item 4: 1,700 of them, ~120 KB)."""
    return [["t", f"{i:06d}" + "x" * (value_bytes - 6)] for i in range(count)]


async def test_free_inbox_messages_and_reports_are_bounded_whole_tags_included(
    relay_factory: RelayFactory, alice: bytes
) -> None:
    """The free paths measure the whole event and its number of tags, not only the content:
    short content with 1,700 tags was accepted free, 40/40, inbox messages and reports alike."""
    async with relay_factory(payments=PAID) as relay, NostrClient(relay.url) as client:
        await grant(relay, alice, admitted_until=int(time.time()) + 3600)
        target = signed(alice, kind=1, content="a note by a member")
        assert (await client.publish(target))[0]
        to_alice = [["p", pk(alice)]]
        report = [["e", target.id, "spam"], ["p", pk(alice)]]
        for base in (to_alice, report):
            kind = 1984 if base is report else 1
            refused = (
                signed(crypto.generate_secret(), kind=kind, tags=[*base, *padded_tags(1_700)], content="hi"),
                # few tags, each large: the whole event is past inbox_max_event_bytes (8192)
                signed(crypto.generate_secret(), kind=kind, tags=[*base, *padded_tags(9, 1_000)], content="hi"),
                # small, but one tag past inbox_max_tags (40)
                signed(crypto.generate_secret(), kind=kind, tags=[*base, *padded_tags(41 - len(base), 8)]),
            )
            for event in refused:
                ok, message = await client.publish(event)
                assert not ok and message.startswith("restricted: "), (kind, len(event.raw), message)
            within = signed(crypto.generate_secret(), kind=kind, tags=[*base, *padded_tags(40 - len(base), 100)])
            assert len(within.raw) <= 8192
            ok, message = await client.publish(within)
            assert ok, (kind, message)
        queue = await relay.management.handle(orjson.dumps({"method": "listeventsneedingmoderation"}))
        assert [entry["count"] for entry in queue.response["result"]] == [1]  # only the bounded report


async def test_the_inbox_allowance_holds_across_relays_on_one_store_and_restarts(
    relay_factory: RelayFactory, storage: dict[str, str], alice: bytes, bob: bytes
) -> None:
    """Two relays on one database (two PostgreSQL nodes, or two processes on one SQLite file
    as ``--workers`` runs them) share one allowance per sender, and a restart does not refill
    it: the count lives in the store (issue 17 item 9: each process kept its own)."""
    payments = {**PAID, "inbox_events_per_hour": 3, "inbox_events_per_hour_per_ip": 5}
    to_alice = [["p", pk(alice)]]
    async with relay_factory(storage=storage, payments=payments) as node_a:
        await grant(node_a, alice, admitted_until=int(time.time()) + 3600)
        async with (
            relay_factory(storage=storage, payments=payments) as node_b,
            NostrClient(node_a.url) as on_a,
            NostrClient(node_b.url) as on_b,
        ):
            outcomes = [
                await client.publish(signed(bob, tags=to_alice, content=f"hello {i}"))
                for i, client in enumerate((on_a, on_b, on_a, on_b))
            ]
            assert [ok for ok, _ in outcomes] == [True, True, True, False], outcomes
            assert outcomes[-1][1].startswith("rate-limited: ")
            # the address's allowance (5) is shared too: two more senders, then none
            for expected in (True, True, False):
                ok, message = await on_b.publish(signed(crypto.generate_secret(), tags=to_alice))
                assert ok is expected, message
    async with relay_factory(storage=storage, payments=payments) as restarted, NostrClient(restarted.url) as client:
        ok, message = await client.publish(signed(bob, tags=to_alice, content="after a restart"))
        assert not ok and message.startswith("rate-limited: "), message


async def test_a_paying_members_reports_are_free_and_outside_the_strangers_allowance(
    relay_factory: RelayFactory, alice: bytes, bob: bytes
) -> None:
    """NIP-56 reports: strangers file them free within their hourly allowance; a member who
    pays per event (credit plan) was charged for each. Now a member's report is free, and
    does not use up an allowance meant for strangers; other events are charged as before."""
    payments = {
        **PAID,
        "inbox_events_per_hour": 2,
        "credit": {"enabled": True, "default_price_msat": 1000},
    }
    async with relay_factory(payments=payments) as relay, NostrClient(relay.url) as client:
        await grant(relay, alice, credit_delta_msat=5000)
        target = signed(alice, kind=1, content="a note to report")
        assert (await client.publish(target))[0]  # charged: 1000 msat
        for i in range(3):  # past the strangers' allowance of 2
            report = signed(alice, kind=1984, content=f"spam {i}", tags=[["e", target.id, "spam"], ["p", pk(alice)]])
            assert await client.publish(report) == (True, "")
        account = await ledger_of(relay).get_account(pk(alice))
        assert account is not None and account.credit_msat == 4000  # the note only
        # A stranger still has the allowance: two free reports, then a refusal.
        results = [
            await client.publish(signed(bob, kind=1984, content=f"r{i}", tags=[["e", target.id, "spam"]]))
            for i in range(3)
        ]
        assert [ok for ok, _ in results] == [True, True, False]
        assert results[2][1].startswith("rate-limited: free reports are used up")
