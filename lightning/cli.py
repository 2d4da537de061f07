"""Operator commands: ``satsrelay accounts ...`` (list, show, grant, revoke, unlink, ban),
``invoices list``, ``pay-fake``.

``relay.cli`` calls ``add_commands`` with its sub-parser set, the shared ``--config``
parent parser and its settings loader. Every command prints a readable table, or JSON
with ``--json`` (for scripts). They talk to the same database as the running relay; the
relay's gate sees a change within about half a second (it polls the ledger's change
counter, ``LedgerStore.account_changes``), on every node.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson

from lightning import accounts
from lightning.extension import payment_settings
from lightning.pubkeys import parse_pubkey
from lightning.store import open_ledger
from lightning.store.base import Account, Invite, LedgerStore
from lightning.web import account_json
from relay.config import Settings
from relay.store import open_store

SettingsLoader = Callable[[argparse.Namespace], Settings]


def add_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
    load: SettingsLoader,
) -> None:
    output = argparse.ArgumentParser(add_help=False)
    output.add_argument("--json", action="store_true", help="print JSON instead of a table")

    accounts = sub.add_parser("accounts", help="list and change payment accounts", parents=[common])
    acc = accounts.add_subparsers(dest="accounts_command", required=True)
    p = acc.add_parser("list", help="every account", parents=[common, output])
    p.set_defaults(func=_runner(load, _accounts_list))
    p = acc.add_parser("show", help="one account and its invoices", parents=[common, output])
    p.add_argument("pubkey", help="hex or npub")
    p.set_defaults(func=_runner(load, _accounts_show))
    p = acc.add_parser("grant", help="admit and/or add credit, free of charge", parents=[common, output])
    p.add_argument("pubkey", help="hex or npub")
    term = p.add_mutually_exclusive_group()
    term.add_argument("--days", type=float, help="admit for N more days (from the later of now and the current end)")
    term.add_argument("--forever", action="store_true", help="admit for good")
    p.add_argument("--credit-sats", type=int, default=0, help="add prepaid credit")
    p.add_argument("--allow", action="store_true", help="put on the allow-list (writes always free)")
    p.set_defaults(func=_runner(load, _accounts_grant))
    p = acc.add_parser(
        "revoke", help="end admission and allow-listing (credit stays unless --credit)", parents=[common, output]
    )
    p.add_argument("pubkey", help="hex or npub")
    p.add_argument("--credit", action="store_true", help="also set the credit to zero")
    p.set_defaults(func=_runner(load, _accounts_revoke))
    p = acc.add_parser(
        "unlink", help="take a linked key off the plan it is linked to (it writes as itself again)",
        parents=[common, output],
    )
    p.add_argument("pubkey", help="the linked key, hex or npub")
    p.set_defaults(func=_runner(load, _accounts_unlink))
    p = acc.add_parser("ban", help="refuse every write from a pubkey", parents=[common, output])
    p.add_argument("pubkey", help="hex or npub")
    p.add_argument("--undo", action="store_true", help="lift the ban")
    p.set_defaults(func=_runner(load, _accounts_ban))

    invoices = sub.add_parser("invoices", help="list invoices", parents=[common])
    inv = invoices.add_subparsers(dest="invoices_command", required=True)
    p = inv.add_parser("list", help="newest first", parents=[common, output])
    p.add_argument("--pending", action="store_true", help="only unpaid, unexpired ones")
    p.add_argument("--pubkey", help="only this pubkey's (hex or npub)")
    p.set_defaults(func=_runner(load, _invoices_list))

    _add_invite_commands(sub, common, output, load)

    p = sub.add_parser("pay-fake", help="settle an invoice of the demo (fake) wallet", parents=[common, output])
    p.add_argument("invoice", metavar="payment_hash_or_bolt11", help="the invoice's payment hash or its BOLT11 text")
    p.add_argument("--amount-msat", type=int, help="pay this much instead (an underpayment is never credited)")
    p.set_defaults(func=_pay_fake_runner(load))


Command = Callable[[argparse.Namespace, Settings, LedgerStore], Awaitable[int]]


def _runner(load: SettingsLoader, command: Command) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        settings = load(args)

        async def main() -> int:
            store = open_store(settings.storage)
            await store.open()
            try:
                ledger = open_ledger(store)
                await ledger.open()  # a database the relay never ran payments on gets its tables
                return await command(args, settings, ledger)
            finally:
                await store.close()

        return asyncio.run(main())

    return run


class _Abort(Exception):
    pass


def _pubkey(text: str) -> str:
    pubkey = parse_pubkey(text)
    if pubkey is None:
        raise _Abort(f"not a hex pubkey or npub: {text!r}")
    return pubkey


def _fail(message: str) -> int:
    print(f"satsrelay: {message}", file=sys.stderr)
    return 1


def _when(value: Any) -> str:
    if value is None:
        return "-"
    if value == "forever":
        return "forever"
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(int(value)))


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def _emit(args: argparse.Namespace, doc: Any, text: str) -> None:
    if args.json:
        sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(text)


def _account_rows(docs: Sequence[dict[str, Any]]) -> str:
    rows = []
    for d in docs:
        flags = ",".join(f for f in ("banned", "allowed") if d[f]) or "-"
        admitted = _when(d["admitted_until"]) + ("" if d["admitted"] or d["admitted_until"] is None else " (ended)")
        rows.append([d["pubkey"], admitted, f"{d['credit_msat'] / 1000:g}", flags])
    return _table(["pubkey", "admitted until (UTC)", "credit sats", "flags"], rows)


def _invoice_rows(docs: Sequence[dict[str, Any]]) -> str:
    rows = [
        [
            d["payment_hash"],
            d["pubkey"][:16] + "…",
            d["plan"],
            f"{d['amount_msat'] / 1000:g}",
            d["state"],
            _when(d["created_at"]),
            _when(d["paid_at"]),
            "" if d.get("fee_msat") is None else f"{d['fee_msat'] / 1000:g}",
        ]
        for d in docs
    ]
    headers = ["payment hash", "pubkey", "plan", "sats", "state", "created (UTC)", "paid (UTC)", "wallet fee (sats)"]
    return _table(headers, rows)


async def _accounts_list(args: argparse.Namespace, settings: Settings, store: LedgerStore) -> int:
    now = int(time.time())
    docs = [account_json(a.pubkey, a, now) for a in await store.list_accounts()]
    _emit(args, docs, _account_rows(docs) if docs else "no accounts yet")
    return 0


async def _accounts_show(args: argparse.Namespace, settings: Settings, store: LedgerStore) -> int:
    try:
        pubkey = _pubkey(args.pubkey)
    except _Abort as exc:
        return _fail(str(exc))
    doc = await accounts.account_view(store, pubkey, int(time.time()))
    invoices = doc["invoices"]
    text = _account_rows([doc]) + "\n\n" + (_invoice_rows(invoices) if invoices else "no invoices")
    _emit(args, doc, text)
    return 0


async def _accounts_grant(args: argparse.Namespace, settings: Settings, store: LedgerStore) -> int:
    try:
        pubkey = _pubkey(args.pubkey)
    except _Abort as exc:
        return _fail(str(exc))
    now = int(time.time())
    what = accounts.Grant(days=args.days, forever=args.forever, credit_sats=args.credit_sats, allow=args.allow)
    try:
        account = await accounts.grant(store, pubkey, what, now)
    except ValueError as exc:
        return _fail(str(exc))
    return _show_account(args, pubkey, account, now)


def _show_account(args: argparse.Namespace, pubkey: str, account: Account | None, now: int) -> int:
    """What grant, revoke and ban print: the account as it is after the change."""
    doc = account_json(pubkey, account, now)
    _emit(args, doc, _account_rows([doc]))
    return 0


async def _accounts_revoke(args: argparse.Namespace, settings: Settings, store: LedgerStore) -> int:
    try:
        pubkey = _pubkey(args.pubkey)
    except _Abort as exc:
        return _fail(str(exc))
    now = int(time.time())
    account = await accounts.revoke(store, pubkey, now, credit=args.credit)
    # What is left, on stderr (stdout stays the table or JSON): kept credit still pays.
    credit_pays = payment_settings(settings).credit.enabled
    print(f"satsrelay: {accounts.revoke_summary(account, credit_pays=credit_pays)}", file=sys.stderr)
    return _show_account(args, pubkey, account, now)


async def _accounts_unlink(args: argparse.Namespace, settings: Settings, store: LedgerStore) -> int:
    try:
        pubkey = _pubkey(args.pubkey)
        doc = await accounts.unlink(store, pubkey, int(time.time()))
    except (_Abort, ValueError) as exc:
        return _fail(str(exc))
    _emit(args, doc, accounts.unlink_summary(doc))
    return 0


async def _accounts_ban(args: argparse.Namespace, settings: Settings, store: LedgerStore) -> int:
    try:
        pubkey = _pubkey(args.pubkey)
    except _Abort as exc:
        return _fail(str(exc))
    now = int(time.time())
    account = await store.update_account(pubkey, now, banned=not args.undo)
    return _show_account(args, pubkey, account, now)


async def _invoices_list(args: argparse.Namespace, settings: Settings, store: LedgerStore) -> int:
    pubkey = None
    if args.pubkey:
        try:
            pubkey = _pubkey(args.pubkey)
        except _Abort as exc:
            return _fail(str(exc))
    found = await accounts.invoices(store, int(time.time()), pubkey=pubkey, pending=args.pending)
    docs = [accounts.invoice_view(i) for i in found]
    _emit(args, docs, _invoice_rows(docs) if docs else "no invoices")
    return 0


def _pay_fake_runner(load: SettingsLoader) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        from lightning.backends.fake import mark_paid
        from lightning.extension import fake_state_file

        settings = load(args)
        backend = payment_settings(settings).backend
        if backend != "fake":
            return _fail(
                f"pay-fake works only with payments.backend = 'fake' (this relay uses {backend!r})"
            )
        payment_hash = fake_payment_hash(args.invoice)
        if payment_hash is None:
            return _fail(f"not a payment hash (64 hex) or a BOLT11 invoice: {args.invoice[:80]!r}")
        path = fake_state_file(settings)
        if not path.exists():
            return _fail(f"no fake wallet state at {path}: has the relay issued an invoice yet?")
        paid = mark_paid(path, payment_hash, args.amount_msat)
        doc = {"payment_hash": payment_hash, "paid": paid}
        text = (
            f"paid {payment_hash}; the relay credits it within seconds"
            if paid
            else f"{payment_hash}: no such unpaid invoice in the fake wallet"
        )
        _emit(args, doc, text)
        return 0 if paid else 1

    return run


def fake_payment_hash(text: str) -> str | None:
    """The payment hash ``pay-fake`` was given, or the one in the BOLT11 invoice it was given
    (what a client holds; ``lightning:`` URIs too); None for anything else."""
    text = text.strip()
    if len(text) == 64 and all(c in "0123456789abcdefABCDEF" for c in text):
        return text.lower()
    invoice = text.removeprefix("lightning:").removeprefix("LIGHTNING:")
    if not invoice.lower().startswith("ln"):
        return None
    import bolt11  # only this command decodes invoices

    try:
        decoded = bolt11.decode(invoice.lower())
    except Exception:  # the library raises many unrelated types for bad input
        return None
    return str(decoded.payment_hash).lower()


# --- NIP-43 invite codes ------------------------------------------------------------------

_DURATION_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def parse_duration(text: str) -> int:
    """``30d``, ``12h``, ``90m``, ``3600s`` or a bare number of days -> seconds."""
    text = text.strip().lower()
    unit = _DURATION_UNITS.get(text[-1:]) if text else None
    number = text[:-1] if unit is not None else text
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"not a duration: {text!r} (e.g. 30d, 12h)") from None
    seconds = round(value * (unit or 86400))
    if seconds <= 0:
        raise ValueError(f"a duration must be positive: {text!r}")
    return seconds


def _add_invite_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
    output: argparse.ArgumentParser,
    load: SettingsLoader,
) -> None:
    invites = sub.add_parser("invites", help="NIP-43 invite codes (single use)", parents=[common])
    inv = invites.add_subparsers(dest="invites_command", required=True)
    p = inv.add_parser("create", help="make codes; printed once, stored only hashed", parents=[common, output])
    p.add_argument("--plan", required=True, help="what a code grants: admission, subscription or credit")
    p.add_argument("--count", type=int, default=1, help="how many codes (1-10000)")
    p.add_argument("--expires", help="codes expire after this (30d, 12h); default never")
    p.add_argument("--credit-sats", type=int, help="with --plan credit: the credit each code grants")
    p.set_defaults(func=_runner(load, _invites_create))
    p = inv.add_parser("list", help="every code, newest first (its hash, not the code)", parents=[common, output])
    p.set_defaults(func=_runner(load, _invites_list))
    p = inv.add_parser("revoke", help="make an unused code invalid", parents=[common, output])
    p.add_argument("code", help="the code (or its 64-hex hash, as `invites list` shows)")
    p.set_defaults(func=_runner(load, _invites_revoke))

    renewal = sub.add_parser("renewal", help="renewal from a member's wallet (Nostr Wallet Connect)", parents=[common])
    ren = renewal.add_subparsers(dest="renewal_command", required=True)
    p = ren.add_parser(
        "connect", help="keep a member's NWC URI (sealed with the relay's key)", parents=[common, output]
    )
    p.add_argument("pubkey", help="hex or npub")
    p.add_argument("--uri", required=True, help="nostr+walletconnect://... limited to pay_invoice")
    p.add_argument("--budget-sats", type=int, required=True, help="the most one renewal may cost")
    p.set_defaults(func=_runner(load, _renewal_connect))
    p = ren.add_parser("forget", help="delete a member's wallet connection", parents=[common, output])
    p.add_argument("pubkey", help="hex or npub")
    p.set_defaults(func=_runner(load, _renewal_forget))
    p = ren.add_parser("show", help="a member's renewal attempts, newest first", parents=[common, output])
    p.add_argument("pubkey", help="hex or npub")
    p.set_defaults(func=_runner(load, _renewal_show))

    p = sub.add_parser("reminders", help="turn a member's reminders by Nostr DM on or off", parents=[common, output])
    p.add_argument("setting", choices=["on", "off"])
    p.add_argument("pubkey", help="hex or npub (only with the member's consent: reminders are opt-in)")
    p.set_defaults(func=_runner(load, _reminders_set))


async def _invites_create(args: argparse.Namespace, settings: Settings, store: LedgerStore) -> int:
    from lightning.membership import make_invites
    from lightning.plans import Plans, UnknownPlan

    if not 1 <= args.count <= 10_000:
        return _fail("--count must be 1 to 10000")
    now = int(time.time())
    expires_at = None
    if args.expires:
        try:
            expires_at = now + parse_duration(args.expires)
        except ValueError as exc:
            return _fail(f"--expires: {exc}")
    try:
        codes, invites = make_invites(
            Plans.from_settings(payment_settings(settings)),
            args.plan,
            args.count,
            now,
            expires_at=expires_at,
            amount_sats=args.credit_sats,
        )
    except UnknownPlan as exc:
        return _fail(f"--plan: {exc}")
    await store.add_invites(invites)
    docs = [{"code": c, "plan": i.plan, "expires_at": i.expires_at} for c, i in zip(codes, invites, strict=True)]
    until = _when(expires_at) + " UTC" if expires_at else "never"
    text = "\n".join(codes) + f"\n({len(codes)} single-use {invites[0].plan} codes; expire: {until}; shown only now)"
    _emit(args, docs, text)
    return 0


def _invite_doc(invite: Invite) -> dict[str, Any]:
    return {
        "code_hash": invite.code_hash,
        "plan": invite.plan,
        "created_at": invite.created_at,
        "expires_at": invite.expires_at,
        "created_by": invite.created_by,
        "redeemed_by": invite.redeemed_by,
        "redeemed_at": invite.redeemed_at,
    }


async def _invites_list(args: argparse.Namespace, settings: Settings, store: LedgerStore) -> int:
    now = int(time.time())
    docs = [_invite_doc(i) for i in await store.list_invites()]
    rows = []
    for d in docs:
        if d["redeemed_by"]:
            state = f"used by {d['redeemed_by'][:16]}… {_when(d['redeemed_at'])}"
        elif d["expires_at"] is not None and d["expires_at"] <= now:
            state = "expired"
        else:
            state = "open"
        maker = d["created_by"] if d["created_by"] == "operator" else d["created_by"][:16] + "…"
        rows.append([d["code_hash"], d["plan"], _when(d["created_at"]), _when(d["expires_at"]), maker, state])
    headers = ["code hash", "plan", "created (UTC)", "expires (UTC)", "made by", "state"]
    _emit(args, docs, _table(headers, rows) if rows else "no invite codes")
    return 0


async def _invites_revoke(args: argparse.Namespace, settings: Settings, store: LedgerStore) -> int:
    from lightning.membership import code_hash

    text = args.code.strip().lower()
    digest = text if len(text) == 64 and all(c in "0123456789abcdef" for c in text) else code_hash(text)
    revoked = await store.revoke_invite(digest)
    _emit(args, {"code_hash": digest, "revoked": revoked}, "revoked" if revoked else "no such unused code")
    return 0 if revoked else 1


async def _reminders_set(args: argparse.Namespace, settings: Settings, store: LedgerStore) -> int:
    try:
        pubkey = _pubkey(args.pubkey)
    except _Abort as exc:
        return _fail(str(exc))
    await store.set_reminders(pubkey, args.setting == "on", int(time.time()))
    on = await store.reminders_on(pubkey)
    _emit(args, {"pubkey": pubkey, "reminders": on}, f"reminders {'on' if on else 'off'} for {pubkey}")
    return 0


async def _renewal_connect(args: argparse.Namespace, settings: Settings, store: LedgerStore) -> int:
    from lightning.backend import BackendError
    from lightning.renewal import UriSeal, check_uri
    from relay.store.identity import load_identity

    try:
        pubkey = _pubkey(args.pubkey)
        check_uri(args.uri)
    except (_Abort, BackendError) as exc:
        return _fail(str(exc))
    if args.budget_sats <= 0:
        return _fail("--budget-sats must be positive")
    from lightning.store.base import NwcLink

    now = int(time.time())
    sealed = UriSeal(load_identity(settings)).seal(args.uri.strip(), pubkey)
    await store.set_nwc_link(NwcLink(pubkey, sealed, args.budget_sats * 1000, now))
    _emit(args, {"pubkey": pubkey, "budget_sats": args.budget_sats}, f"wallet connection kept for {pubkey}")
    return 0


async def _renewal_forget(args: argparse.Namespace, settings: Settings, store: LedgerStore) -> int:
    try:
        pubkey = _pubkey(args.pubkey)
    except _Abort as exc:
        return _fail(str(exc))
    forgot = await store.forget_nwc_link(pubkey)
    _emit(args, {"pubkey": pubkey, "forgotten": forgot}, "forgotten" if forgot else "no wallet connection")
    return 0


async def _renewal_show(args: argparse.Namespace, settings: Settings, store: LedgerStore) -> int:
    try:
        pubkey = _pubkey(args.pubkey)
    except _Abort as exc:
        return _fail(str(exc))
    attempts = await store.list_renewals(pubkey)
    docs = [
        {
            "period_end": a.period_end,
            "payment_hash": a.payment_hash,
            "state": a.state,
            "tries": a.tries,
            "detail": a.detail,
            "updated_at": a.updated_at,
        }
        for a in attempts
    ]
    rows = [[_when(a.period_end), a.state, str(a.tries), a.detail, _when(a.updated_at)] for a in attempts]
    headers = ["period end (UTC)", "state", "tries", "detail", "updated (UTC)"]
    _emit(args, docs, _table(headers, rows) if rows else "no renewals")
    return 0
