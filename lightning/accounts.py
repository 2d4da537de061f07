"""Operator changes to payment accounts and the views of them, written once for both front
ends: the CLI (``satsrelay accounts grant/revoke/unlink/show``, ``invoices list``,
lightning/cli.py) and the NIP-86 methods (``payments.grant`` ..., lightning/management.py).

Every rule an operator can break raises ``ValueError`` with a message naming it; the CLI
prints it, NIP-86 answers it as the ``error``. Changes go through ``LedgerStore.update_account``
(``unlink_key`` for links), which bumps the store's account change counter: every relay process sharing the database
drops its cached account state within ``gate.CHANGES_POLL_SECONDS``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from lightning.store.base import FOREVER, Account, Invoice, LedgerStore
from lightning.web import account_json, invoice_json

# Every bitcoin there will ever be, in msat (2.1e18): below int64's 9.2e18, the column type of
# credit_msat in both stores, so no sum of grants past it is ever attempted.
MAX_CREDIT_MSAT = 21_000_000 * 100_000_000 * 1000
DAY = 86400


@dataclass(frozen=True, slots=True)
class Grant:
    """What ``grant`` adds: ``days`` of admission (or ``forever``), prepaid credit, and/or
    the allow-list flag (writes always free)."""

    days: float | None = None
    forever: bool = False
    credit_sats: int = 0
    allow: bool = False


async def grant(store: LedgerStore, pubkey: str, what: Grant, now: int) -> Account:
    """Apply ``what`` to ``pubkey``'s account (created when missing); the account after it.
    Days extend from the later of now and the current end, so a grant never shortens a
    paid period nor wastes days already past."""
    days = what.days
    if days is None and not what.forever and not what.credit_sats and not what.allow:
        raise ValueError("nothing to grant: give days, forever, credit sats or allow")
    if days is not None and what.forever:
        raise ValueError("days and forever exclude each other")
    if days is not None and not math.isfinite(days):
        raise ValueError("days must be a finite number")
    if what.credit_sats < 0 or (days is not None and days <= 0):
        raise ValueError("grants must be positive (use revoke to take away)")
    current = await store.get_account(pubkey) if days is not None or what.credit_sats else None
    credit_msat = what.credit_sats * 1000
    held = current.credit_msat if current is not None else 0
    if held + credit_msat > MAX_CREDIT_MSAT:
        raise ValueError(f"credit too large: an account holds at most {MAX_CREDIT_MSAT // 1000} sats")
    until: int | None = None
    if what.forever:
        until = FOREVER
    elif days is not None:
        start = max(now, current.admitted_until if current is not None else 0)
        seconds = days * DAY  # a float: compared before rounding, so 1e308 days cannot overflow
        until = FOREVER if seconds >= FOREVER - start else min(FOREVER, start + round(seconds))
    return await store.update_account(
        pubkey, now, admitted_until=until, credit_delta_msat=credit_msat, allowed=True if what.allow else None
    )


async def revoke(store: LedgerStore, pubkey: str, now: int, *, credit: bool = False) -> Account:
    """End admission and allow-listing; with ``credit``, also set the credit to zero (it
    stays otherwise: the member paid for it)."""
    current = await store.get_account(pubkey)
    delta = -current.credit_msat if (credit and current is not None) else 0
    return await store.update_account(pubkey, now, admitted_until=0, allowed=False, credit_delta_msat=delta)


async def unlink(store: LedgerStore, key: str, now: int) -> dict[str, Any]:
    """End ``key``'s link to the plan it is linked to (README "One plan, several keys"):
    the operator's side of what either key may do with a signed ``DELETE``, for a member
    who lost a key or a key the operator wants off a plan without banning it. The key
    writes under its own account again; the plan keeps its other keys. What is left:
    ``{"pubkey", "unlinked_from", "linked_keys"}`` (the plan's keys still linked)."""
    _, owner = await store.account_and_owner(key)
    if owner is None:
        own_links = [k.pubkey for k in await store.linked_keys(key)]
        if own_links:
            raise ValueError(
                f"{key} is the key of a plan, not a linked key: unlink its linked keys instead "
                f"({', '.join(own_links)})"
            )
        raise ValueError(f"{key} is not linked to any plan")
    if not await store.unlink_key(owner, key, now):
        raise ValueError(f"{key} is no longer linked to {owner}'s plan (unlinked meanwhile)")
    remaining = [k.pubkey for k in await store.linked_keys(owner)]
    return {"pubkey": key, "unlinked_from": owner, "linked_keys": remaining}


def unlink_summary(doc: dict[str, Any]) -> str:
    """``unlink``'s answer in the operator's words."""
    left = len(doc["linked_keys"])
    return (
        f"unlinked {doc['pubkey']} from the plan of {doc['unlinked_from']}; "
        f"{left} other key{'' if left == 1 else 's'} still linked to it"
    )


def revoke_summary(account: Account, *, credit_pays: bool) -> str:
    """What a revoke left, in the operator's words: above all whether the key can still
    write (issue 17: "Revoke" on a credit-only member said "done" and the member wrote on,
    paying from the credit the revoke had kept). ``credit_pays``: the credit plan is on, so
    credit pays for events."""
    ended = "admission and allow-listing ended"
    credit = account.credit_msat
    if credit > 0:
        held = f"{credit // 1000:,} sats" if credit % 1000 == 0 else f"{credit:,} msat"
        if credit_pays and not account.banned:
            return f"{ended}; {held} of credit kept: this key can still write until it is spent (zero it to stop that)"
        return f"{ended}; {held} of credit kept (it pays for nothing here now): this key can no longer write"
    return f"{ended}, no credit left: this key can no longer write (only what is free for everyone)"


def invoice_view(invoice: Invoice) -> dict[str, Any]:
    """An invoice as an operator sees it: the public view plus the wallet's fee, without
    the QR link (that is for the payer's page)."""
    doc = {**invoice_json(invoice), "fee_msat": invoice.fee_msat}
    doc.pop("qr")
    return doc


async def invoices(
    store: LedgerStore, now: int, *, pubkey: str | None = None, pending: bool = False, limit: int | None = None
) -> list[Invoice]:
    """Newest first, at most ``limit``; ``pending``: unpaid and not yet expired (an invoice
    past its expiry is still ``pending`` in the store until the watcher's next expiry sweep)."""
    return await store.list_invoices(
        pending_only=pending, pubkey=pubkey, valid_after=now if pending else None, limit=limit
    )


async def account_view(store: LedgerStore, pubkey: str, now: int) -> dict[str, Any]:
    """The account (``account_json``, with the keys linked to its plan and the plan it is
    linked to) with its invoices, newest first."""
    own, linked_to = await store.account_and_owner(pubkey)
    links = [k.pubkey for k in await store.linked_keys(pubkey)]
    doc = account_json(pubkey, own, now, linked_keys=links, linked_to=linked_to)
    return {**doc, "invoices": [invoice_view(i) for i in await invoices(store, now, pubkey=pubkey)]}
