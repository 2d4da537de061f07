"""The payments plug-in's NIP-86 methods (payments.grant/revoke/account/invoices) as an
operator's tool calls them: HTTP POSTs signed with NIP-98 by an ``[admin]`` pubkey, to a
real relay with payments on, and their effect seen by clients over WebSocket."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from lightning.pubkeys import npub_encode
from lightning.store.base import FOREVER
from relay.discovery import PluginError
from relay.nostr import crypto
from relay.ops.management_view import ManagementView
from relay.plugins.hooks import Changed, ManagementMethod
from relay.session.server import Relay
from relay.store.sqlite import SqliteStore
from tests.conftest import RelayFactory
from tests.lightning.payment_stack import ledger_of, nip98_header
from tests.nostr_client import NostrClient, signed

PAID: dict[str, Any] = {"enabled": True, "backend": "fake", "poll_interval_seconds": 0.2, "account_cache_seconds": 60}
METHODS = ("payments.grant", "payments.revoke", "payments.account", "payments.invoices")


class Admin:
    """An operator's NIP-86 client: every request signed (NIP-98, with the body's payload hash)."""

    def __init__(self, relay: Relay, http: httpx.AsyncClient, secret: bytes) -> None:
        self.relay = relay
        self.url = f"http://127.0.0.1:{relay.port}"
        self.http = http
        self.secret = secret

    async def post(self, method: str, params: list[Any], *, signer: bytes | None = None,
                   unsigned: bool = False) -> httpx.Response:
        # stdlib json: it writes integers past 64 bits, as a careless client may send them
        body = json.dumps({"method": method, "params": params}).encode()
        headers = {"Content-Type": "application/nostr+json+rpc"}
        if not unsigned:
            headers["Authorization"] = nip98_header(signer or self.secret, self.url, "POST", body=body)
        return await self.http.post(self.url, content=body, headers=headers)

    async def call(self, method: str, *params: Any) -> Any:
        res = await self.post(method, list(params))
        assert res.status_code == 200, res.text
        answer = res.json()
        assert answer.get("error") is None, answer
        return answer["result"]

    async def error(self, method: str, *params: Any) -> str:
        res = await self.post(method, list(params))
        assert res.status_code == 200, res.text
        answer = res.json()
        assert answer["result"] is None, answer
        return str(answer["error"])


@pytest.fixture
def operator() -> bytes:
    return crypto.generate_secret()


def pubkey_of(secret: bytes) -> str:
    return crypto.public_key(secret).hex()


def note(secret: bytes, text: str = "") -> Any:
    return signed(secret, 1, f"{text} {time.monotonic_ns()}")


@contextlib.asynccontextmanager
async def paid_relay(
    relay_factory: RelayFactory, operator: bytes, storage: dict[str, str] | None = None
) -> AsyncIterator[Admin]:
    sections: dict[str, Any] = {"payments": PAID, "admin": {"pubkeys": [pubkey_of(operator)]}}
    if storage:
        sections["storage"] = storage
    async with relay_factory(**sections) as relay, httpx.AsyncClient(timeout=10) as http:
        yield Admin(relay, http, operator)


async def test_supportedmethods_lists_the_payment_methods_and_only_admins_may_call_them(
    relay_factory: RelayFactory, operator: bytes, alice: bytes
) -> None:
    async with paid_relay(relay_factory, operator) as admin:
        methods = await admin.call("supportedmethods")
        assert set(METHODS) <= set(methods) and "banpubkey" in methods
        target = pubkey_of(alice)
        for refused in (
            await admin.post("payments.grant", [target, {"forever": True}], signer=alice),  # not an admin
            await admin.post("payments.grant", [target, {"forever": True}], unsigned=True),
            await admin.post("payments.invoices", [], signer=alice),
        ):
            assert refused.status_code == 401, refused.text
            assert refused.json()["result"] is None and refused.json()["error"].startswith("unauthorized:")
        assert await ledger_of(admin.relay).get_account(target) is None  # nothing was granted


async def test_grant_lets_a_refused_pubkey_publish_at_once_and_revoke_refuses_it_again(
    relay_factory: RelayFactory, storage: dict[str, str], operator: bytes, alice: bytes
) -> None:
    member = pubkey_of(alice)
    async with (
        paid_relay(relay_factory, operator, storage) as admin,
        NostrClient(admin.url.replace("http://", "ws://")) as client,
    ):
        ok, message = await client.publish(note(alice, "before"))
        assert not ok and message.startswith("restricted:"), message
        # The refusal above cached "no account" for a minute (account_cache_seconds=60):
        # the grant must replace it, not wait for it to expire.
        granted = await admin.call("payments.grant", npub_encode(member), {"days": 1})
        assert granted["pubkey"] == member and granted["admitted"] is True
        assert granted["admitted_until"] >= int(time.time()) + 86400 - 5
        ok, message = await client.publish(note(alice, "granted"))
        assert ok, message
        again = await admin.call("payments.grant", member, {"days": 1, "credit_sats": 21})
        assert again["admitted_until"] - granted["admitted_until"] == 86400  # extends from the end
        assert again["credit_msat"] == 21_000

        revoked = await admin.call("payments.revoke", member)
        assert revoked["admitted"] is False and revoked["admitted_until"] is None
        assert revoked["credit_msat"] == 21_000  # credit stays without {"credit": true}
        revoked = await admin.call("payments.revoke", member, {"credit": True})
        assert revoked["credit_msat"] == 0 and revoked["allowed"] is False
        ok, message = await client.publish(note(alice, "revoked"))
        assert not ok and message.startswith("restricted:"), message

        allowed = await admin.call("payments.grant", member, {"allow": True})
        assert allowed["allowed"] is True and allowed["admitted"] is False
        assert (await client.publish(note(alice, "allowed")))[0]
        forever = await admin.call("payments.grant", member, {"forever": True})
        assert forever["admitted_until"] == "forever"


async def test_revoke_says_whether_the_key_can_still_write(
    relay_factory: RelayFactory, storage: dict[str, str], operator: bytes, alice: bytes
) -> None:
    """Issue 17: revoking a credit-only member answered like any revoke and the member wrote
    on, paying from the credit the revoke kept. The answer now says so; zeroing the credit
    stops the writing."""
    member = pubkey_of(alice)
    sections: dict[str, Any] = {
        "payments": {**PAID, "credit": {"enabled": True}},
        "admin": {"pubkeys": [pubkey_of(operator)]},
        **({"storage": storage} if storage else {}),
    }
    async with (
        relay_factory(**sections) as relay,
        httpx.AsyncClient(timeout=10) as http,
        NostrClient(relay.url) as client,
    ):
        admin = Admin(relay, http, operator)
        await admin.call("payments.grant", member, {"credit_sats": 21})
        assert (await client.publish(note(alice, "on credit")))[0]
        kept = await admin.call("payments.revoke", member)
        assert kept["credit_msat"] == 20_000
        assert kept["summary"] == (
            "admission and allow-listing ended; 20 sats of credit kept: this key can still write until it is spent"
            " (zero it to stop that)"
        )
        assert (await client.publish(note(alice, "still on credit")))[0]  # as the summary says
        zeroed = await admin.call("payments.revoke", member, {"credit": True})
        assert zeroed["credit_msat"] == 0
        assert zeroed["summary"] == (
            "admission and allow-listing ended, no credit left: this key can no longer write"
            " (only what is free for everyone)"
        )
        ok, message = await client.publish(note(alice, "revoked"))
        assert not ok and message.startswith("restricted:"), message


async def test_a_grant_on_one_node_admits_on_the_other(
    relay_factory: RelayFactory, storage: dict[str, str], operator: bytes, alice: bytes
) -> None:
    """Two relays on one database (the SQLite file, or a PostgreSQL schema): the other node
    learns of the grant and the revoke from the store's account change counter, as it does
    of the CLI's, although it cached the refusal for a minute."""
    admins = {"pubkeys": [pubkey_of(operator)]}
    sections: dict[str, Any] = {"payments": PAID, "admin": admins, **({"storage": storage} if storage else {})}
    async with (
        relay_factory(**sections) as node_a,
        relay_factory(**sections) as node_b,
        httpx.AsyncClient(timeout=10) as http,
        NostrClient(node_b.url) as on_b,
    ):
        admin = Admin(node_a, http, operator)
        assert not (await on_b.publish(note(alice)))[0]

        async def published_on_b(want: bool) -> None:
            deadline = time.monotonic() + 3
            while (await on_b.publish(note(alice)))[0] is not want:
                assert time.monotonic() < deadline, f"node B still answers {not want}"
                await asyncio.sleep(0.1)

        await admin.call("payments.grant", pubkey_of(alice), {"days": 30})
        await published_on_b(True)
        await admin.call("payments.revoke", pubkey_of(alice))
        await published_on_b(False)


async def test_account_and_invoices_show_a_paid_invoice(
    relay_factory: RelayFactory, storage: dict[str, str], operator: bytes, alice: bytes, bob: bytes
) -> None:
    payer, other = pubkey_of(alice), pubkey_of(bob)
    async with paid_relay(relay_factory, operator, storage) as admin:
        issued = []
        for pubkey in (payer, other):
            res = await admin.http.post(f"{admin.url}/api/invoice", json={"pubkey": pubkey, "plan": "admission"})
            assert res.status_code == 200, res.text
            issued.append(res.json())
        paid_hash, pending_hash = issued[0]["payment_hash"], issued[1]["payment_hash"]
        assert (await admin.http.post(f"{admin.url}/api/fake/pay/{paid_hash}")).json()["simulated"] is True

        account = await admin.call("payments.account", npub_encode(payer))
        assert account["pubkey"] == payer and account["admitted_until"] == "forever"
        [invoice] = account["invoices"]
        assert invoice["payment_hash"] == paid_hash and invoice["state"] == "paid" and invoice["paid"] is True
        assert invoice["amount_msat"] == 1_000_000 and invoice["paid_at"] is not None
        assert "fee_msat" in invoice and "qr" not in invoice

        everything = await admin.call("payments.invoices")
        newest_first = sorted(everything, key=lambda i: (-i["created_at"], i["payment_hash"]))
        assert everything == newest_first
        assert {i["payment_hash"]: i["state"] for i in everything} == {paid_hash: "paid", pending_hash: "pending"}
        assert all("qr" not in i and "fee_msat" in i for i in everything)
        pending = await admin.call("payments.invoices", {"pending": True})
        assert [i["payment_hash"] for i in pending] == [pending_hash]
        mine = await admin.call("payments.invoices", {"pubkey": npub_encode(payer)})
        assert [i["payment_hash"] for i in mine] == [paid_hash]
        assert await admin.call("payments.invoices", {"limit": 1}) == everything[:1]
        assert await admin.call("payments.account", "f" * 64) == {
            "pubkey": "f" * 64, "npub": npub_encode("f" * 64), "admitted": False, "admitted_until": None,
            "credit_msat": 0, "banned": False, "allowed": False, "tier": None, "comped": False, "linked_keys": [],
            "invoices": [],
        }


BAD_PARAMS: list[tuple[str, list[Any], str]] = [
    ("payments.grant", [], "first param must be a pubkey"),
    ("payments.grant", ["xyz", {"days": 1}], "first param must be a pubkey"),
    ("payments.grant", [7, {"days": 1}], "first param must be a pubkey"),
    ("payments.grant", ["PK"], "nothing to grant"),
    ("payments.grant", ["PK", {}], "nothing to grant"),
    ("payments.grant", ["PK", {"days": 0}], "grants must be positive"),
    ("payments.grant", ["PK", {"days": -3}], "grants must be positive"),
    ("payments.grant", ["PK", {"days": "30"}], "days must be a number"),
    ("payments.grant", ["PK", {"days": True}], "days must be a number"),
    ("payments.grant", ["PK", {"days": 1, "forever": True}], "days and forever exclude each other"),
    ("payments.grant", ["PK", {"forever": 1}], "forever must be true or false"),
    ("payments.grant", ["PK", {"allow": "yes"}], "allow must be true or false"),
    ("payments.grant", ["PK", {"credit_sats": -5}], "grants must be positive"),
    ("payments.grant", ["PK", {"credit_sats": True}], "credit_sats must be a whole number"),
    ("payments.grant", ["PK", {"credit_sats": 1.5}], "credit_sats must be a whole number"),
    ("payments.grant", ["PK", {"credit_sats": 2**64 + 1}], "credit_sats must be a whole number"),  # a float in JSON
    ("payments.grant", ["PK", {"credit_sats": -(2**63) - 1}], "credit_sats must be a whole number"),
    ("payments.grant", ["PK", {"credit_sats": 2**64 - 1}], "credit too large"),
    ("payments.grant", ["PK", {"credit_sats": 2**63 - 1}], "credit too large"),
    ("payments.grant", ["PK", {"credit_sats": 2_100_000_000_000_000 - 9}], "credit too large"),  # 10 sats held
    ("payments.grant", ["PK", {"credits": 5}], "unknown option 'credits'"),
    ("payments.grant", ["PK", 30], "params must be [pubkey, {"),
    ("payments.grant", ["PK", {"days": 1}, "extra"], "params must be [pubkey, {"),
    ("payments.revoke", ["PK", {"credit": "yes"}], "credit must be true or false"),
    ("payments.revoke", ["PK", {"days": 1}], "unknown option 'days'"),
    ("payments.revoke", ["npub1notakey"], "first param must be a pubkey"),
    ("payments.account", [], "first param must be a pubkey"),
    ("payments.account", ["PK", "PK"], "params must be [pubkey]"),
    ("payments.invoices", [{"limit": 0}], "limit must be 1..1000"),
    ("payments.invoices", [{"limit": 1001}], "limit must be 1..1000"),
    ("payments.invoices", [{"limit": True}], "limit must be a whole number"),
    ("payments.invoices", [{"limit": "10"}], "limit must be a whole number"),
    ("payments.invoices", [{"pending": 1}], "pending must be true or false"),
    ("payments.invoices", [{"pubkey": "abc"}], "pubkey must be a pubkey"),
    ("payments.invoices", ["PK"], "params must be [] or [{"),
    ("payments.invoices", [{}, {}], "params must be [] or [{"),
]


async def test_bad_params_are_answered_with_a_clear_error_and_change_nothing(
    relay_factory: RelayFactory, operator: bytes, alice: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    member = pubkey_of(alice)
    async with paid_relay(relay_factory, operator) as admin:
        await admin.call("payments.grant", member, {"credit_sats": 10})
        before = await ledger_of(admin.relay).get_account(member)
        caplog.clear()
        with caplog.at_level(logging.INFO):
            for method, params, expected in BAD_PARAMS:
                params = [member if p == "PK" else p for p in params]
                error = await admin.error(method, *params)
                assert error.startswith(f"{method}: ") and expected in error, (method, params, error)
        assert await ledger_of(admin.relay).get_account(member) == before
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
        # A number of days past anything a clock can show is admission for good, not an overflow.
        huge = await admin.call("payments.grant", member, {"days": 1.5e308})
        assert huge["admitted_until"] == "forever"
        assert (await ledger_of(admin.relay).get_account(member)).admitted_until == FOREVER  # type: ignore[union-attr]


async def test_a_failing_extension_method_is_logged_once_and_answered_as_an_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The core's side of the seam: a handler's ValueError is the admin's error, anything
    else is logged once (with its traceback, for the operator) and answered without it."""

    async def broken(params: list[Any]) -> Any:
        raise RuntimeError("database on fire")

    async def picky(params: list[Any]) -> Any:
        raise ValueError("no such thing")

    async def changing(params: list[Any]) -> Any:
        return Changed({"done": params})

    async def reading(params: list[Any]) -> Any:
        return {"read": params}

    extra: dict[str, ManagementMethod] = {"x.broken": broken, "x.picky": picky, "x.change": changing,
                                          "x.read": reading}
    store = SqliteStore(tmp_path / "m.db")
    await store.open()
    try:
        view = ManagementView(store, extra)

        async def ask(method: str, params: list[Any]) -> dict[str, Any]:
            outcome = await view.handle(orjson.dumps({"method": method, "params": params}))
            return outcome.response

        with caplog.at_level(logging.INFO, logger="relay.ops.management_view"):
            answer = await ask("x.broken", [])
            assert answer == {"result": None, "error": "x.broken: internal error (the relay's log has the details)"}
            failures = [r for r in caplog.records if r.levelno >= logging.ERROR]
            assert len(failures) == 1 and failures[0].exc_info is not None
            assert "database on fire" not in orjson.dumps(answer).decode()
            assert await ask("x.picky", [1]) == {"result": None, "error": "x.picky: no such thing"}
            assert await ask("x.change", [1]) == {"result": {"done": [1]}}
            assert await ask("x.read", [2]) == {"result": {"read": [2]}}
            methods = (await ask("supportedmethods", []))["result"]
            assert set(extra) <= set(methods) and "banpubkey" in methods
            assert len([r for r in caplog.records if r.levelno >= logging.ERROR]) == 1
        with pytest.raises(PluginError):
            ManagementView(store, {"grant": reading})  # un-namespaced: could shadow a future NIP method
        with pytest.raises(PluginError):
            ManagementView(store, {"supportedmethods": reading})
    finally:
        await store.close()


async def test_changes_are_logged_with_the_admins_pubkey_and_reads_are_not(
    relay_factory: RelayFactory, operator: bytes, alice: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    async with paid_relay(relay_factory, operator) as admin:
        with caplog.at_level(logging.INFO, logger="relay.ops.management_view"):
            await admin.call("payments.grant", pubkey_of(alice), {"days": 2})
            await admin.call("payments.account", pubkey_of(alice))
            await admin.call("payments.invoices")
        lines = [r.getMessage() for r in caplog.records if r.name == "relay.ops.management_view"]
        assert len(lines) == 1 and "payments.grant" in lines[0] and pubkey_of(operator) in lines[0], lines
