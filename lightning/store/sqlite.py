"""The ledger on the relay's SQLite file (``LedgerStore`` over ``relay.store.database``).

Every write is one plain function run as one transaction on the store's single writer
thread (``SqliteDatabase.write``): queued with the event batches, so the ledger never
fights them for the file's lock, and one thread hop however many statements it takes.
Reads go to the store's readers. Exactly-once rules (a settlement, an invite's redemption,
a reminder or a renewal claimed once) rest on that writer holding the write lock
(``BEGIN IMMEDIATE``), which also serialises other processes on the same file.

The per-event charge is the write hook ``_charge_hook``: it runs on the writer thread,
inside the event batch's transaction, for each event about to be stored that carries a
``Charge``, and debits the author's credit there or refuses the event.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from lightning.billing import NO_TERMS, Holding, Terms, after_payment
from lightning.store.base import (
    ACCOUNT_COLUMNS,
    ACCOUNT_WIDTH,
    COMPONENT,
    DAY_SECONDS,
    FOREVER,
    INVITE_COLUMNS,
    INVOICE_COLUMNS,
    LINKED_COLUMNS,
    RENEWAL_COLUMNS,
    ROLE_COLUMNS,
    Account,
    ChargeRefusal,
    Invite,
    InviteOutcome,
    Invoice,
    InvoiceFunnel,
    LinkedKey,
    LinkOutcome,
    MemberStatus,
    NwcLink,
    RenewalAttempt,
    RevenueRow,
    RoleDefinition,
    TierCount,
    account_from_row,
    charge_of,
    grace_sql,
    hex_prefix_range,
    in_grace_sql,
    invite_from_row,
    invite_refusal,
    invoice_from_row,
    member_status_conditions,
    payer_of,
    tier_counts_from_rows,
    tier_counts_sql,
)
from lightning.store.migrations import SQLITE_STEPS, sqlite_adopt
from relay.nostr.errors import Rejection
from relay.store.base import WriteRequest
from relay.store.database import SqliteDatabase


def _grace_params(graces: Mapping[str, int]) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """Named parameters for ``grace_sql``: the tiers with a grace."""
    params: dict[str, Any] = {}
    pairs = []
    for i, (role, seconds) in enumerate(sorted(graces.items())):
        if seconds > 0:
            params[f"r{i}"], params[f"g{i}"] = role, seconds
            pairs.append((f":r{i}", f":g{i}"))
    return params, pairs


def _marks(n: int) -> str:
    return ",".join("?" * n)


class SqliteLedger:
    """``LedgerStore`` on a SQLite store's database."""

    def __init__(self, db: SqliteDatabase) -> None:
        self._db = db
        self._loop: asyncio.AbstractEventLoop | None = None

    async def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self._db.migrate(COMPONENT, SQLITE_STEPS, sqlite_adopt)

    def charge_events(self, refusal: ChargeRefusal, refused: Callable[[str], None]) -> None:
        def charge_hook(conn: sqlite3.Connection, req: WriteRequest, now: int) -> Rejection | None:
            # On the writer thread, inside the batch's transaction: the debit commits with
            # the event or not at all (issue 8: a charge and its event, one transaction).
            price = charge_of(req.attachments)
            payer = payer_of(req.attachments, req.event.pubkey)  # a linked key's plan pays
            if price <= 0 or _charge_credit(conn, payer, price, now):
                return None
            if self._loop is not None:  # the cache lives on the event loop, not this thread
                for pubkey in {req.event.pubkey, payer}:
                    self._loop.call_soon_threadsafe(refused, pubkey)
            return refusal(req.event)

        self._db.add_write_hook(COMPONENT, charge_hook)

    async def add_invoice(
        self,
        invoice: Invoice,
        *,
        max_pending: int | None = None,
        max_pending_per_pubkey: int | None = None,
        max_pending_per_source: int | None = None,
        evict: bool = False,
    ) -> bool:
        added: bool = await self._db.write(
            _insert_invoice_capped, invoice, max_pending, max_pending_per_pubkey, max_pending_per_source, evict
        )
        return added

    async def find_pending_invoice(self, pubkey: str, plan: str, amount_msat: int, valid_after: int) -> Invoice | None:
        rows = await self._db.read(
            f"SELECT {INVOICE_COLUMNS} FROM invoices WHERE pubkey = ? AND state = 'pending' AND plan = ?"
            " AND amount_msat = ? AND expires_at > ? ORDER BY created_at DESC LIMIT 1",
            (pubkey, plan, amount_msat, valid_after),
        )
        return invoice_from_row(rows[0]) if rows else None

    async def pending_invoice_counts(self, pubkey: str, now: int, source: str = "") -> tuple[int, int, int]:
        rows = await self._db.read(
            "SELECT count(*) FILTER (WHERE pubkey = ?), count(*) FILTER (WHERE source = ? AND source <> ''),"
            " count(*) FROM invoices WHERE state = 'pending' AND expires_at > ?",
            (pubkey, source, now),
        )
        return int(rows[0][0]), int(rows[0][1]), int(rows[0][2])

    async def delete_unpaid_invoices(self, expired_before: int) -> int:
        deleted: int = await self._db.write(_delete_unpaid_invoices, expired_before)
        return deleted

    async def charge_credit(self, pubkey: str, amount_msat: int, now: int) -> bool:
        charged: bool = await self._db.write(_charge_credit, pubkey, amount_msat, now)
        return charged

    async def get_invoice(self, payment_hash: str) -> Invoice | None:
        rows = await self._db.read(f"SELECT {INVOICE_COLUMNS} FROM invoices WHERE payment_hash = ?", (payment_hash,))
        return invoice_from_row(rows[0]) if rows else None

    async def list_invoices(
        self,
        *,
        pending_only: bool = False,
        pubkey: str | None = None,
        valid_after: int | None = None,
        paid_after: int | None = None,
        limit: int | None = None,
    ) -> list[Invoice]:
        where: list[str] = []
        params: list[Any] = []
        if pending_only:
            where.append("state = 'pending'")
        if pubkey is not None:
            where.append("pubkey = ?")
            params.append(pubkey)
        if valid_after is not None:
            where.append("expires_at > ?")
            params.append(valid_after)
        if paid_after is not None:
            where.append("state = 'paid' AND paid_at > ?")
            params.append(paid_after)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        cut = ""
        if limit is not None:
            cut = " LIMIT ?"
            params.append(limit)
        rows = await self._db.read(
            f"SELECT {INVOICE_COLUMNS} FROM invoices {clause} ORDER BY created_at DESC, payment_hash{cut}", params
        )
        return [invoice_from_row(row) for row in rows]

    async def settle_invoice(
        self, payment_hash: str, paid_msat: int, now: int, fee_msat: int = 0, *, terms: Terms = NO_TERMS
    ) -> bool:
        settled: bool = await self._db.write(_settle_invoice, payment_hash, paid_msat, now, fee_msat, terms)
        return settled

    async def expire_invoices(self, now: int) -> int:
        expired: int = await self._db.write(_expire_invoices, now)
        return expired

    async def get_account(self, pubkey: str) -> Account | None:
        rows = await self._db.read(f"SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE pubkey = ?", (pubkey,))
        return account_from_row(rows[0]) if rows else None

    async def account_and_owner(self, pubkey: str) -> tuple[Account | None, str | None]:
        rows = await self._db.read(
            f"SELECT (SELECT owner FROM linked_keys WHERE pubkey = :pk), {ACCOUNT_COLUMNS}"
            " FROM (SELECT 1) LEFT JOIN accounts ON pubkey = :pk",
            {"pk": pubkey},
        )
        owner, *columns = rows[0]
        return (account_from_row(columns) if columns[0] is not None else None), owner

    async def link_key(self, owner: str, pubkey: str, limit: int, now: int) -> LinkOutcome:
        outcome: LinkOutcome = await self._db.write(_link_key, owner, pubkey, limit, now)
        return outcome

    async def unlink_key(self, owner: str, pubkey: str, now: int) -> bool:
        unlinked: int = await self._db.write(_unlink, "pubkey = ? AND owner = ?", (pubkey, owner))
        return unlinked > 0

    async def unlink_all(self, pubkey: str, now: int) -> int:
        unlinked: int = await self._db.write(_unlink, "pubkey = ? OR owner = ?", (pubkey, pubkey))
        return unlinked

    async def linked_keys(self, owner: str) -> list[LinkedKey]:
        rows = await self._db.read(
            f"SELECT {LINKED_COLUMNS} FROM linked_keys WHERE owner = ? ORDER BY linked_at, pubkey", (owner,)
        )
        return [LinkedKey(*row) for row in rows]

    async def account_changes(self) -> int:
        rows = await self._db.read("SELECT counter FROM account_changes WHERE id = 1", ())
        return int(rows[0][0]) if rows else 0

    async def list_accounts(self) -> list[Account]:
        rows = await self._db.read(f"SELECT {ACCOUNT_COLUMNS} FROM accounts ORDER BY pubkey", ())
        return [account_from_row(row) for row in rows]

    async def revenue_by_day(self, since: int) -> list[RevenueRow]:
        rows = await self._db.read(
            f"SELECT paid_at / {DAY_SECONDS}, plan, sum(paid_msat), coalesce(sum(fee_msat), 0), count(*)"
            " FROM invoices WHERE state = 'paid' AND paid_at >= ? GROUP BY 1, 2 ORDER BY 1, 2",
            (since,),
        )
        return [RevenueRow(int(r[0]), str(r[1]), int(r[2] or 0), int(r[3]), int(r[4])) for r in rows]

    async def invoice_funnel(self, since: int, now: int) -> InvoiceFunnel:
        rows = await self._db.read(
            "SELECT count(*), count(*) FILTER (WHERE state = 'paid'),"
            " count(*) FILTER (WHERE state = 'expired' OR (state = 'pending' AND expires_at <= ?)),"
            " (SELECT coalesce(sum(count), 0) FROM pruned_invoices"
            f"  WHERE day >= (? + {DAY_SECONDS - 1}) / {DAY_SECONDS})"
            " FROM invoices WHERE created_at >= ?",
            (now, since, since),
        )
        created, paid, expired, pruned = (int(v) for v in rows[0])
        return InvoiceFunnel(created + pruned, paid, expired + pruned)

    async def recurring_msat(self, now: int, per_seconds: int) -> int:
        rows = await self._db.read(
            "SELECT coalesce(sum((i.amount_msat - i.credit_msat) * ? / i.admit_seconds), 0)"
            " FROM accounts a JOIN invoices i ON i.payment_hash = ("
            "  SELECT j.payment_hash FROM invoices j WHERE j.pubkey = a.pubkey AND j.state = 'paid'"
            "  AND j.admit_seconds > 0 AND j.admit_forever = 0 ORDER BY j.paid_at DESC, j.payment_hash DESC LIMIT 1)"
            " WHERE a.admitted_until > ? AND a.admitted_until < ? AND a.banned = 0",
            (per_seconds, now, FOREVER),
        )
        return int(rows[0][0])

    async def member_counts(self, now: int, soon: int) -> dict[MemberStatus, int]:
        conditions = member_status_conditions(":now", ":soon")
        columns = ", ".join(f"count(*) FILTER (WHERE {c})" for c in conditions.values())
        rows = await self._db.read(f"SELECT {columns} FROM accounts", {"now": now, "soon": soon})
        return {status: int(n) for status, n in zip(conditions, rows[0], strict=True)}

    async def find_accounts(
        self, now: int, soon: int, *, status: MemberStatus | None = None, pubkey_prefix: str = "", limit: int = 100
    ) -> list[Account]:
        where = ["1"]
        params: dict[str, Any] = {"now": now, "soon": soon, "limit": limit}
        if status is not None:
            where.append(member_status_conditions(":now", ":soon")[status])
        if pubkey_prefix:
            params["low"], params["high"] = hex_prefix_range(pubkey_prefix)
            where.append("pubkey >= :low AND pubkey < :high")
        order = "ASC" if status is MemberStatus.EXPIRING else "DESC"
        rows = await self._db.read(
            f"SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE {' AND '.join(where)}"
            f" ORDER BY admitted_until {order}, pubkey {order} LIMIT :limit",
            params,
        )
        return [account_from_row(row) for row in rows]

    async def tier_counts(self, now: int, soon: int, graces: Mapping[str, int]) -> list[TierCount]:
        params, pairs = _grace_params(graces)
        rows = await self._db.read(tier_counts_sql(":now", ":soon", pairs), {**params, "now": now, "soon": soon})
        return tier_counts_from_rows(rows)

    async def find_in_grace(self, now: int, graces: Mapping[str, int], limit: int = 100) -> list[Account]:
        params, pairs = _grace_params(graces)
        rows = await self._db.read(
            f"SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE {in_grace_sql(':now', pairs)}"
            f" ORDER BY admitted_until + {grace_sql(pairs)}, pubkey LIMIT :limit",
            {**params, "now": now, "limit": limit},
        )
        return [account_from_row(row) for row in rows]

    async def find_invoices(self, *, pubkey_prefix: str = "", hash_prefix: str = "", limit: int = 100) -> list[Invoice]:
        either: list[str] = []
        params: list[Any] = []
        for column, prefix in (("pubkey", pubkey_prefix), ("payment_hash", hash_prefix)):
            if prefix:
                either.append(f"({column} >= ? AND {column} < ?)")
                params.extend(hex_prefix_range(prefix))
        where = f"WHERE {' OR '.join(either)}" if either else ""
        rows = await self._db.read(
            f"SELECT {INVOICE_COLUMNS} FROM invoices {where} ORDER BY created_at DESC, payment_hash DESC LIMIT ?",
            [*params, limit],
        )
        return [invoice_from_row(row) for row in rows]

    async def update_account(
        self,
        pubkey: str,
        now: int,
        *,
        admitted_until: int | None = None,
        credit_delta_msat: int = 0,
        banned: bool | None = None,
        allowed: bool | None = None,
        role: str | None = None,
        comped: bool | None = None,
    ) -> Account:
        account: Account = await self._db.write(
            _update_account, pubkey, now, admitted_until, credit_delta_msat, banned, allowed, role, comped
        )
        return account

    async def list_roles(self) -> list[RoleDefinition]:
        rows = await self._db.read(f"SELECT {ROLE_COLUMNS} FROM roles ORDER BY id", ())
        return [RoleDefinition(*row) for row in rows]

    async def save_role(self, role: RoleDefinition, *, create: bool, now: int) -> bool:
        saved: bool = await self._db.write(_save_role, role, create, now)
        return saved

    async def delete_role(self, role_id: str, now: int) -> bool:
        deleted: bool = await self._db.write(_delete_role, role_id, now)
        return deleted

    async def add_invites(self, invites: Sequence[Invite]) -> None:
        await self._db.write(_insert_invites, list(invites))

    async def redeem_invite(self, code_hash: str, pubkey: str, now: int, *, terms: Terms = NO_TERMS) -> InviteOutcome:
        outcome: InviteOutcome = await self._db.write(_redeem_invite, code_hash, pubkey, now, terms)
        return outcome

    async def list_invites(self) -> list[Invite]:
        rows = await self._db.read(f"SELECT {INVITE_COLUMNS} FROM invites ORDER BY created_at DESC, code_hash", ())
        return [invite_from_row(row) for row in rows]

    async def open_invite_count(self, created_by: str, now: int) -> int:
        rows = await self._db.read(
            "SELECT count(*) FROM invites WHERE created_by = ? AND redeemed_by IS NULL"
            " AND (expires_at IS NULL OR expires_at > ?)",
            (created_by, now),
        )
        return int(rows[0][0])

    async def revoke_invite(self, code_hash: str) -> bool:
        revoked: bool = await self._db.write(_revoke_invite, code_hash)
        return revoked

    async def end_membership(self, pubkey: str, now: int) -> bool:
        ended: bool = await self._db.write(_end_membership, pubkey, now)
        return ended

    async def set_reminders(self, pubkey: str, on: bool, now: int) -> None:
        await self._db.write(_set_reminders, pubkey, on, now)

    async def reminders_on(self, pubkey: str) -> bool:
        return bool(await self._db.read("SELECT 1 FROM reminder_optins WHERE pubkey = ?", (pubkey,)))

    async def reminder_targets(self) -> list[tuple[Account, bool]]:
        columns = ", ".join(f"a.{c.strip()}" for c in ACCOUNT_COLUMNS.split(","))
        rows = await self._db.read(
            f"SELECT {columns}, EXISTS (SELECT 1 FROM reminders_sent s WHERE s.pubkey = a.pubkey"
            " AND s.reason = 'credit') FROM reminder_optins o JOIN accounts a ON a.pubkey = o.pubkey ORDER BY a.pubkey",
            (),
        )
        return [(account_from_row(row[:ACCOUNT_WIDTH]), bool(row[ACCOUNT_WIDTH])) for row in rows]

    async def claim_reminder(self, pubkey: str, reason: str, term_end: int, now: int) -> bool:
        claimed: bool = await self._db.write(_claim_reminder, pubkey, reason, term_end, now)
        return claimed

    async def rearm_reminder(self, pubkey: str, reason: str) -> None:
        await self._db.write(_rearm_reminder, pubkey, reason)

    async def set_nwc_link(self, link: NwcLink) -> None:
        await self._db.write(_set_nwc_link, link)

    async def forget_nwc_link(self, pubkey: str) -> bool:
        forgot: bool = await self._db.write(_forget_nwc_link, pubkey)
        return forgot

    async def nwc_links(self) -> list[NwcLink]:
        rows = await self._db.read(
            "SELECT pubkey, sealed_uri, budget_msat, created_at FROM nwc_links ORDER BY pubkey", ()
        )
        return [NwcLink(*row) for row in rows]

    async def claim_renewal(self, pubkey: str, period_end: int, payment_hash: str, now: int) -> bool:
        claimed: bool = await self._db.write(_claim_renewal, pubkey, period_end, payment_hash, now)
        return claimed

    async def get_renewal(self, pubkey: str, period_end: int) -> RenewalAttempt | None:
        rows = await self._db.read(
            f"SELECT {RENEWAL_COLUMNS} FROM renewal_attempts WHERE pubkey = ? AND period_end = ?", (pubkey, period_end)
        )
        return RenewalAttempt(*rows[0]) if rows else None

    async def record_renewal(
        self, pubkey: str, period_end: int, state: str, detail: str, now: int, *, tried: bool
    ) -> None:
        await self._db.write(_record_renewal, pubkey, period_end, state, detail, now, tried)

    async def rebind_renewal(
        self, pubkey: str, period_end: int, old_hash: str, new_hash: str, state: str, detail: str, now: int
    ) -> bool:
        rebound: bool = await self._db.write(
            _rebind_renewal, pubkey, period_end, old_hash, new_hash, state, detail, now
        )
        return rebound

    async def list_renewals(self, pubkey: str) -> list[RenewalAttempt]:
        rows = await self._db.read(
            f"SELECT {RENEWAL_COLUMNS} FROM renewal_attempts WHERE pubkey = ? ORDER BY period_end DESC", (pubkey,)
        )
        return [RenewalAttempt(*row) for row in rows]


# --- synchronous bodies run on the store's writer thread inside one transaction ----------


def _bump_account_changes(conn: sqlite3.Connection) -> None:
    conn.execute("UPDATE account_changes SET counter = counter + 1 WHERE id = 1")


def _insert_invoice(conn: sqlite3.Connection, inv: Invoice) -> None:
    conn.execute(
        f"INSERT INTO invoices ({INVOICE_COLUMNS}) VALUES ({_marks(17)})",
        (
            inv.payment_hash,
            inv.pubkey,
            inv.plan,
            inv.amount_msat,
            inv.bolt11,
            inv.created_at,
            inv.expires_at,
            inv.admit_seconds,
            int(inv.admit_forever),
            inv.credit_msat,
            inv.state.value,
            inv.paid_at,
            inv.paid_msat,
            inv.fee_msat,
            inv.description,
            inv.source,
            inv.role,
        ),
    )


def _insert_invoice_capped(
    conn: sqlite3.Connection,
    inv: Invoice,
    max_pending: int | None,
    max_pending_per_pubkey: int | None,
    max_pending_per_source: int | None,
    evict: bool,
) -> bool:
    """Count and insert under the write lock (BEGIN IMMEDIATE), so the caps hold across
    concurrent requests and processes. Pending rows past their expiry do not count; with
    ``evict`` a full pool makes room (``LedgerStore.add_invoice``).

    "Now" is never earlier than the newest invoice's ``created_at``: concurrent requests
    read the clock before their wallet call and commit in another order, and a request
    whose clock reading is a second behind an earlier eviction would otherwise count that
    evicted invoice (``expires_at`` = the later second) as pending, "evict" it again and
    overshoot the pool by one."""
    (newest,) = conn.execute("SELECT coalesce(max(created_at), 0) FROM invoices").fetchone()
    now = max(inv.created_at, newest)
    if max_pending_per_pubkey is not None:
        (mine,) = conn.execute(
            "SELECT count(*) FROM invoices WHERE pubkey = ? AND state = 'pending' AND expires_at > ?",
            (inv.pubkey, now),
        ).fetchone()
        if mine >= max_pending_per_pubkey:
            return False
    held = 0
    if inv.source:
        (held,) = conn.execute(
            "SELECT count(*) FROM invoices WHERE source = ? AND state = 'pending' AND expires_at > ?",
            (inv.source, now),
        ).fetchone()
        if max_pending_per_source is not None and held >= max_pending_per_source:
            return False
    if max_pending is not None:
        (total,) = conn.execute(
            "SELECT count(*) FROM invoices WHERE state = 'pending' AND expires_at > ?", (now,)
        ).fetchone()
        if total >= max_pending and not (evict and _evict_one(conn, inv.source, held, now)):
            return False
    _insert_invoice(conn, inv)
    return True


def _evict_one(conn: sqlite3.Connection, source: str, held: int, now: int) -> bool:
    """Make room in a full pool: the oldest unexpired pending invoice of the source holding
    the most (ties: the one whose oldest invoice is oldest), or of ``source`` itself when it
    already holds as many, expires now. False when no source may give one up."""
    biggest = conn.execute(
        "SELECT source, count(*) FROM invoices WHERE state = 'pending' AND expires_at > ? AND source <> ''"
        " GROUP BY source ORDER BY count(*) DESC, min(created_at), source LIMIT 1",
        (now,),
    ).fetchone()
    if biggest is None:
        return False
    victim = source if source and held >= biggest[1] else biggest[0]
    return bool(
        conn.execute(
            "UPDATE invoices SET expires_at = ? WHERE payment_hash = (SELECT payment_hash FROM invoices"
            " WHERE source = ? AND state = 'pending' AND expires_at > ? ORDER BY created_at, payment_hash LIMIT 1)",
            (now, victim, now),
        ).rowcount
    )


def _delete_unpaid_invoices(conn: sqlite3.Connection, expired_before: int) -> int:
    conn.execute(
        f"INSERT INTO pruned_invoices (day, count) SELECT created_at / {DAY_SECONDS}, count(*) FROM invoices"
        " WHERE state = 'expired' AND expires_at < ? GROUP BY 1"
        " ON CONFLICT (day) DO UPDATE SET count = count + excluded.count",
        (expired_before,),
    )
    return conn.execute("DELETE FROM invoices WHERE state = 'expired' AND expires_at < ?", (expired_before,)).rowcount


def _charge_credit(conn: sqlite3.Connection, pubkey: str, amount_msat: int, now: int) -> bool:
    cursor = conn.execute(
        "UPDATE accounts SET credit_msat = credit_msat - ?, updated_at = ? WHERE pubkey = ? AND credit_msat >= ?",
        (amount_msat, now, pubkey, amount_msat),
    )
    return cursor.rowcount == 1


def _apply_grant(
    conn: sqlite3.Connection,
    pubkey: str,
    now: int,
    admit_seconds: int,
    admit_forever: bool,
    credit_msat: int,
    terms: Terms,
    role: str = "",
) -> None:
    """An invoice's or invite's grant, applied to the account (created when missing); its
    time follows the shared rule (``lightning.billing.after_payment``), a tier's invoice
    naming its ``role`` ("" for the single plans)."""
    conn.execute("INSERT OR IGNORE INTO accounts (pubkey, updated_at) VALUES (?, ?)", (pubkey, now))
    current = conn.execute(
        "SELECT role, admitted_until, next_role, switch_at, comped FROM accounts WHERE pubkey = ?", (pubkey,)
    ).fetchone()
    before = Holding(current[0], current[1], current[2], current[3], bool(current[4]))
    held = after_payment(before, role, admit_seconds, admit_forever, now, terms)
    conn.execute(
        "UPDATE accounts SET admitted_until = ?, credit_msat = credit_msat + ?, updated_at = ?,"
        " role = ?, next_role = ?, switch_at = ?, comped = ? WHERE pubkey = ?",
        (held.until, credit_msat, now, held.role, held.next_role, held.switch_at, int(held.comped), pubkey),
    )
    _bump_account_changes(conn)


def _settle_invoice(
    conn: sqlite3.Connection, payment_hash: str, paid_msat: int, now: int, fee_msat: int, terms: Terms
) -> bool:
    """Exactly once: the conditional UPDATE changes a row for one caller only (the write lock
    serialises callers, across processes too), and only that caller applies the grant."""
    row = conn.execute(
        "UPDATE invoices SET state = 'paid', paid_at = ?, paid_msat = ?, fee_msat = ?, source = ''"
        " WHERE payment_hash = ? AND state != 'paid' RETURNING pubkey, admit_seconds, admit_forever, credit_msat, role",
        (now, paid_msat, fee_msat, payment_hash),
    ).fetchone()
    if row is None:
        return False
    pubkey, admit_seconds, admit_forever, credit_msat, role = row
    _apply_grant(conn, pubkey, now, admit_seconds, bool(admit_forever), credit_msat, terms, role)
    return True


def _expire_invoices(conn: sqlite3.Connection, now: int) -> int:
    return conn.execute(
        "UPDATE invoices SET state = 'expired', source = '' WHERE state = 'pending' AND expires_at <= ?", (now,)
    ).rowcount


def _update_account(
    conn: sqlite3.Connection,
    pubkey: str,
    now: int,
    admitted_until: int | None,
    credit_delta_msat: int,
    banned: bool | None,
    allowed: bool | None,
    role: str | None = None,
    comped: bool | None = None,
) -> Account:
    conn.execute("INSERT OR IGNORE INTO accounts (pubkey, updated_at) VALUES (?, ?)", (pubkey, now))
    sets = ["credit_msat = credit_msat + ?", "updated_at = ?"]
    params: list[Any] = [credit_delta_msat, now]
    for column, value in (
        ("admitted_until", admitted_until),
        ("banned", banned),
        ("allowed", allowed),
        ("comped", comped),
    ):
        if value is not None:
            sets.append(f"{column} = ?")
            params.append(int(value))
    if role is not None:
        sets.append("role = ?")
        params.append(role)
    if role is not None or admitted_until is not None:
        sets.append("next_role = '', switch_at = 0")  # the operator's word is the whole new state
    params.append(pubkey)
    conn.execute(f"UPDATE accounts SET {', '.join(sets)} WHERE pubkey = ?", params)
    _bump_account_changes(conn)
    row = conn.execute(f"SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE pubkey = ?", (pubkey,)).fetchone()
    return account_from_row(row)


def _insert_invites(conn: sqlite3.Connection, invites: list[Invite]) -> None:
    conn.executemany(
        f"INSERT INTO invites ({INVITE_COLUMNS}) VALUES ({_marks(10)})",
        [
            (
                i.code_hash,
                i.plan,
                i.created_at,
                i.expires_at,
                i.created_by,
                i.admit_seconds,
                int(i.admit_forever),
                i.credit_msat,
                i.redeemed_by,
                i.redeemed_at,
            )
            for i in invites
        ],
    )


def _redeem_invite(conn: sqlite3.Connection, code_hash: str, pubkey: str, now: int, terms: Terms) -> InviteOutcome:
    """Exactly once: the conditional UPDATE matches for one caller only (the write lock
    serialises callers), and only that caller applies the grant."""
    row = conn.execute(
        "UPDATE invites SET redeemed_by = ?, redeemed_at = ? WHERE code_hash = ? AND redeemed_by IS NULL"
        " AND (expires_at IS NULL OR expires_at > ?) RETURNING admit_seconds, admit_forever, credit_msat",
        (pubkey, now, code_hash, now),
    ).fetchone()
    if row is None:
        found = conn.execute("SELECT expires_at, redeemed_by FROM invites WHERE code_hash = ?", (code_hash,)).fetchone()
        return invite_refusal(found, pubkey, now)
    _apply_grant(conn, pubkey, now, row[0], bool(row[1]), row[2], terms)
    return InviteOutcome.REDEEMED


def _revoke_invite(conn: sqlite3.Connection, code_hash: str) -> bool:
    return conn.execute("DELETE FROM invites WHERE code_hash = ? AND redeemed_by IS NULL", (code_hash,)).rowcount > 0


def _end_membership(conn: sqlite3.Connection, pubkey: str, now: int) -> bool:
    return (
        conn.execute(
            "UPDATE accounts SET admitted_until = 0, credit_msat = 0, allowed = 0, updated_at = ?, next_role = '',"
            " switch_at = 0 WHERE pubkey = ? AND (admitted_until > ? OR credit_msat > 0 OR allowed = 1)",
            (now, pubkey, now),
        ).rowcount
        > 0
    )


def _set_reminders(conn: sqlite3.Connection, pubkey: str, on: bool, now: int) -> None:
    if on:
        conn.execute("INSERT OR IGNORE INTO reminder_optins (pubkey, opted_in_at) VALUES (?, ?)", (pubkey, now))
    else:
        conn.execute("DELETE FROM reminder_optins WHERE pubkey = ?", (pubkey,))


def _claim_reminder(conn: sqlite3.Connection, pubkey: str, reason: str, term_end: int, now: int) -> bool:
    return (
        conn.execute(
            "INSERT OR IGNORE INTO reminders_sent (pubkey, reason, term_end, sent_at) VALUES (?, ?, ?, ?)",
            (pubkey, reason, term_end, now),
        ).rowcount
        == 1
    )


def _rearm_reminder(conn: sqlite3.Connection, pubkey: str, reason: str) -> None:
    conn.execute("DELETE FROM reminders_sent WHERE pubkey = ? AND reason = ?", (pubkey, reason))


def _set_nwc_link(conn: sqlite3.Connection, link: NwcLink) -> None:
    conn.execute(
        "INSERT INTO nwc_links (pubkey, sealed_uri, budget_msat, created_at) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (pubkey) DO UPDATE SET sealed_uri = excluded.sealed_uri, budget_msat = excluded.budget_msat,"
        " created_at = excluded.created_at",
        (link.pubkey, link.sealed_uri, link.budget_msat, link.created_at),
    )


def _forget_nwc_link(conn: sqlite3.Connection, pubkey: str) -> bool:
    return conn.execute("DELETE FROM nwc_links WHERE pubkey = ?", (pubkey,)).rowcount > 0


def _claim_renewal(conn: sqlite3.Connection, pubkey: str, period_end: int, payment_hash: str, now: int) -> bool:
    return (
        conn.execute(
            f"INSERT OR IGNORE INTO renewal_attempts ({RENEWAL_COLUMNS}) VALUES (?, ?, ?, 'paying', 0, '', ?, ?)",
            (pubkey, period_end, payment_hash, now, now),
        ).rowcount
        == 1
    )


def _record_renewal(
    conn: sqlite3.Connection, pubkey: str, period_end: int, state: str, detail: str, now: int, tried: bool
) -> None:
    conn.execute(
        "UPDATE renewal_attempts SET state = ?, detail = ?, updated_at = ?, tries = tries + ?"
        " WHERE pubkey = ? AND period_end = ?",
        (state, detail, now, int(tried), pubkey, period_end),
    )


def _rebind_renewal(
    conn: sqlite3.Connection,
    pubkey: str,
    period_end: int,
    old_hash: str,
    new_hash: str,
    state: str,
    detail: str,
    now: int,
) -> bool:
    return (
        conn.execute(
            "UPDATE renewal_attempts SET payment_hash = ?, state = ?, detail = ?, updated_at = ?"
            " WHERE pubkey = ? AND period_end = ? AND payment_hash = ?",
            (new_hash, state, detail, now, pubkey, period_end, old_hash),
        ).rowcount
        == 1
    )


def _save_role(conn: sqlite3.Connection, role: RoleDefinition, create: bool, now: int) -> bool:
    values = (role.label, role.description, role.color, role.order, now, role.id)
    if create:
        return (
            conn.execute(
                "INSERT OR IGNORE INTO roles (label, description, color, ord, updated_at, id)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                values,
            ).rowcount
            == 1
        )
    return (
        conn.execute(
            "UPDATE roles SET label = ?, description = ?, color = ?, ord = ?, updated_at = ? WHERE id = ?", values
        ).rowcount
        == 1
    )


def _delete_role(conn: sqlite3.Connection, role_id: str, now: int) -> bool:
    if conn.execute("DELETE FROM roles WHERE id = ?", (role_id,)).rowcount != 1:
        return False
    conn.execute("UPDATE accounts SET role = '', comped = 0, updated_at = ? WHERE role = ?", (now, role_id))
    _bump_account_changes(conn)
    return True


def _link_key(conn: sqlite3.Connection, owner: str, pubkey: str, limit: int, now: int) -> LinkOutcome:
    """Checked and inserted under the write lock (BEGIN IMMEDIATE): two links racing for the
    plan's last place, on any process of this file, cannot both get it."""
    mine = conn.execute("SELECT owner FROM linked_keys WHERE pubkey = ?", (pubkey,)).fetchone()
    if mine is not None:
        return LinkOutcome.ALREADY if mine[0] == owner else LinkOutcome.TAKEN
    if conn.execute("SELECT 1 FROM linked_keys WHERE pubkey = ?", (owner,)).fetchone() is not None:
        return LinkOutcome.OWNER_IS_LINKED
    if conn.execute("SELECT 1 FROM linked_keys WHERE owner = ? LIMIT 1", (pubkey,)).fetchone() is not None:
        return LinkOutcome.KEY_HAS_LINKS
    (count,) = conn.execute("SELECT count(*) FROM linked_keys WHERE owner = ?", (owner,)).fetchone()
    if count >= limit:
        return LinkOutcome.FULL
    conn.execute(f"INSERT INTO linked_keys ({LINKED_COLUMNS}) VALUES (?, ?, ?)", (pubkey, owner, now))
    conn.execute("INSERT OR IGNORE INTO accounts (pubkey, updated_at) VALUES (?, ?)", (owner, now))
    _bump_account_changes(conn)
    return LinkOutcome.LINKED


def _unlink(conn: sqlite3.Connection, where: str, params: tuple[str, ...]) -> int:
    gone = conn.execute(f"DELETE FROM linked_keys WHERE {where}", params).rowcount
    if gone:
        _bump_account_changes(conn)
    return int(gone)
