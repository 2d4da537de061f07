"""The ledger on the relay's PostgreSQL schema (``LedgerStore`` over ``relay.store.database``).

Several relay nodes share the database, so every rule that reads before it writes is
made safe across them, as in the event store: settlement and an invite's redemption are
conditional UPDATEs (one caller changes the row, a concurrent one waits for its commit
and matches nothing), the caps on unpaid invoices count and insert under one advisory
lock, a grant locks the account row before it computes the new term.

The per-event charge is the write hook ``_ChargeBatch``: once per event batch, inside the
batch's transaction and after the store's author locks, it locks the charged authors'
account rows (in pubkey order: two nodes cannot deadlock), decides each event's charge
in memory while the store decides the batch, and writes the debits before the commit.
"""

from __future__ import annotations

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
from lightning.store.migrations import POSTGRES_STEPS, postgres_adopt
from relay.nostr.errors import Rejection
from relay.store.base import WriteRequest
from relay.store.database import BatchHook, PostgresDatabase

# pg_advisory_xact_lock(classid, objid) for "count pending invoices, then insert" (caps).
LOCK_CLASS_INVOICES = 0x53520003
# ... and for "check a key's links and count the plan's, then link" (one plan, several keys).
LOCK_CLASS_LINKS = 0x53520004

_BUMP_ACCOUNT_CHANGES = "UPDATE account_changes SET counter = counter + 1 WHERE id = 1"


class _Params:
    """Numbered asyncpg placeholders for a statement assembled from parts."""

    def __init__(self) -> None:
        self.values: list[Any] = []

    def add(self, value: Any, cast: str = "") -> str:
        self.values.append(value)
        return f"${len(self.values)}{cast}"


def _grace_params(p: _Params, graces: Mapping[str, int]) -> list[tuple[str, str]]:
    """Placeholders for ``grace_sql``: the tiers with a grace."""
    return [
        (p.add(role, "::text"), p.add(seconds, "::bigint")) for role, seconds in sorted(graces.items()) if seconds > 0
    ]


class _ChargeBatch:
    """The charge hook's part in one event batch (``relay.store.database.BatchHook``)."""

    def __init__(self, credits: dict[str, int], refusal: ChargeRefusal, refused: Callable[[str], None]) -> None:
        self._credits = credits  # pubkey -> balance, for charged authors with an account
        self._refusal = refusal
        self._refused = refused
        self._charged: dict[str, tuple[str, int]] = {}  # event id -> (pubkey, price)

    def admit(self, request: WriteRequest) -> Rejection | None:
        price = charge_of(request.attachments)
        if price <= 0:
            return None
        pubkey = payer_of(request.attachments, request.event.pubkey)  # a linked key's plan pays
        balance = self._credits.get(pubkey)
        if balance is None or balance < price:  # no account is no credit
            for stale in {request.event.pubkey, pubkey}:
                self._refused(stale)
            return self._refusal(request.event)
        self._credits[pubkey] = balance - price
        self._charged[request.event.id] = (pubkey, price)
        return None

    def retract(self, request: WriteRequest) -> None:
        charged = self._charged.pop(request.event.id, None)
        if charged is not None:
            self._credits[charged[0]] += charged[1]

    async def write(self, conn: Any, now: int) -> None:
        totals: dict[str, int] = {}
        for pubkey, price in self._charged.values():
            totals[pubkey] = totals.get(pubkey, 0) + price
        charges = sorted(totals.items())
        if charges:
            await conn.execute(
                "UPDATE accounts a SET credit_msat = a.credit_msat - c.amount, updated_at = $3"
                " FROM unnest($1::text[], $2::int8[]) c(pubkey, amount) WHERE a.pubkey = c.pubkey",
                [c[0] for c in charges],
                [c[1] for c in charges],
                now,
            )


class PostgresLedger:
    """``LedgerStore`` on a PostgreSQL store's database."""

    def __init__(self, db: PostgresDatabase) -> None:
        self._db = db

    async def open(self) -> None:
        await self._db.migrate(COMPONENT, POSTGRES_STEPS, postgres_adopt)

    def charge_events(self, refusal: ChargeRefusal, refused: Callable[[str], None]) -> None:
        async def charge_hook(conn: Any, requests: Sequence[WriteRequest], now: int) -> BatchHook:
            credits: dict[str, int] = {}
            charged = sorted(
                {payer_of(r.attachments, r.event.pubkey) for r in requests if charge_of(r.attachments) > 0}
            )
            if charged:
                # Row locks in pubkey order: two nodes charging the same authors cannot deadlock.
                for row in await conn.fetch(
                    "SELECT pubkey, credit_msat FROM accounts WHERE pubkey = ANY($1::text[])"
                    " ORDER BY pubkey FOR UPDATE",
                    charged,
                ):
                    credits[row[0]] = row[1]
            return _ChargeBatch(credits, refusal, refused)

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
        inv = invoice
        async with self._db.transaction() as conn:
            if max_pending is not None or max_pending_per_pubkey is not None or max_pending_per_source is not None:
                # One transaction-scoped lock for every node: count and insert cannot interleave.
                await conn.execute("SELECT pg_advisory_xact_lock($1, 0)", LOCK_CLASS_INVOICES)
                # Never earlier than the newest invoice: see SQLite's _insert_invoice_capped.
                newest = await conn.fetchval("SELECT coalesce(max(created_at), 0) FROM invoices")
                now = max(inv.created_at, int(newest))
                if max_pending_per_pubkey is not None:
                    mine = await conn.fetchval(
                        "SELECT count(*) FROM invoices WHERE pubkey = $1 AND state = 'pending' AND expires_at > $2",
                        inv.pubkey,
                        now,
                    )
                    if mine >= max_pending_per_pubkey:
                        return False
                held = 0
                if inv.source:
                    held = await conn.fetchval(
                        "SELECT count(*) FROM invoices WHERE source = $1 AND state = 'pending' AND expires_at > $2",
                        inv.source,
                        now,
                    )
                    if max_pending_per_source is not None and held >= max_pending_per_source:
                        return False
                if max_pending is not None:
                    total = await conn.fetchval(
                        "SELECT count(*) FROM invoices WHERE state = 'pending' AND expires_at > $1", now
                    )
                    if total >= max_pending and not (evict and await _evict_one(conn, inv.source, held, now)):
                        return False
            await conn.execute(
                f"INSERT INTO invoices ({INVOICE_COLUMNS})"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)",
                inv.payment_hash,
                inv.pubkey,
                inv.plan,
                inv.amount_msat,
                inv.bolt11,
                inv.created_at,
                inv.expires_at,
                inv.admit_seconds,
                inv.admit_forever,
                inv.credit_msat,
                inv.state.value,
                inv.paid_at,
                inv.paid_msat,
                inv.fee_msat,
                inv.description,
                inv.source,
                inv.role,
            )
        return True

    async def find_pending_invoice(self, pubkey: str, plan: str, amount_msat: int, valid_after: int) -> Invoice | None:
        rows = await self._db.fetch(
            f"SELECT {INVOICE_COLUMNS} FROM invoices WHERE pubkey = $1 AND state = 'pending' AND plan = $2"
            " AND amount_msat = $3 AND expires_at > $4 ORDER BY created_at DESC LIMIT 1",
            pubkey,
            plan,
            amount_msat,
            valid_after,
        )
        return invoice_from_row(rows[0]) if rows else None

    async def pending_invoice_counts(self, pubkey: str, now: int, source: str = "") -> tuple[int, int, int]:
        rows = await self._db.fetch(
            "SELECT count(*) FILTER (WHERE pubkey = $1), count(*) FILTER (WHERE source = $3 AND source <> ''),"
            " count(*) FROM invoices WHERE state = 'pending' AND expires_at > $2",
            pubkey,
            now,
            source,
        )
        return int(rows[0][0]), int(rows[0][1]), int(rows[0][2])

    async def delete_unpaid_invoices(self, expired_before: int) -> int:
        # One statement: the deleted rows feed the tally (data-modifying CTEs run to the end
        # whether read or not). A row two nodes race for is deleted, and tallied, by one.
        deleted = await self._db.fetchval(
            "WITH gone AS (DELETE FROM invoices WHERE state = 'expired' AND expires_at < $1 RETURNING created_at),"
            f" tallied AS (INSERT INTO pruned_invoices (day, count) SELECT created_at / {DAY_SECONDS}, count(*)"
            "  FROM gone GROUP BY 1 ON CONFLICT (day) DO UPDATE SET count = pruned_invoices.count + excluded.count)"
            " SELECT count(*) FROM gone",
            expired_before,
        )
        return int(deleted)

    async def charge_credit(self, pubkey: str, amount_msat: int, now: int) -> bool:
        async with self._db.acquire() as conn:
            status: str = await conn.execute(
                "UPDATE accounts SET credit_msat = credit_msat - $1, updated_at = $2"
                " WHERE pubkey = $3 AND credit_msat >= $1",
                amount_msat,
                now,
                pubkey,
            )
        return status == "UPDATE 1"

    async def get_invoice(self, payment_hash: str) -> Invoice | None:
        rows = await self._db.fetch(f"SELECT {INVOICE_COLUMNS} FROM invoices WHERE payment_hash = $1", payment_hash)
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
        p = _Params()
        if pending_only:
            where.append("state = 'pending'")
        if pubkey is not None:
            where.append(f"pubkey = {p.add(pubkey)}")
        if valid_after is not None:
            where.append(f"expires_at > {p.add(valid_after, '::int8')}")
        if paid_after is not None:
            where.append(f"state = 'paid' AND paid_at > {p.add(paid_after, '::int8')}")
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        cut = f" LIMIT {p.add(limit, '::int8')}" if limit is not None else ""
        rows = await self._db.fetch(
            f"SELECT {INVOICE_COLUMNS} FROM invoices {clause} ORDER BY created_at DESC, payment_hash{cut}", *p.values
        )
        return [invoice_from_row(row) for row in rows]

    async def settle_invoice(
        self, payment_hash: str, paid_msat: int, now: int, fee_msat: int = 0, *, terms: Terms = NO_TERMS
    ) -> bool:
        """Exactly once across nodes: the conditional UPDATE changes the row for one caller
        only (a concurrent one waits for its commit, re-checks ``state`` and matches
        nothing), and only that caller applies the grant, in the same transaction."""
        async with self._db.transaction() as conn:
            row = await conn.fetchrow(
                "UPDATE invoices SET state = 'paid', paid_at = $1, paid_msat = $2, fee_msat = $4, source = ''"
                " WHERE payment_hash = $3 AND state <> 'paid'"
                " RETURNING pubkey, admit_seconds, admit_forever, credit_msat, role",
                now,
                paid_msat,
                payment_hash,
                fee_msat,
            )
            if row is None:
                return False
            pubkey, admit_seconds, admit_forever, credit_msat, role = row
            await _apply_grant(conn, pubkey, now, admit_seconds, admit_forever, credit_msat, terms, role)
            return True

    async def expire_invoices(self, now: int) -> int:
        async with self._db.acquire() as conn:
            status: str = await conn.execute(
                "UPDATE invoices SET state = 'expired', source = '' WHERE state = 'pending' AND expires_at <= $1", now
            )
        return int(status.split()[-1])

    async def get_account(self, pubkey: str) -> Account | None:
        rows = await self._db.fetch(f"SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE pubkey = $1", pubkey)
        return account_from_row(rows[0]) if rows else None

    async def account_and_owner(self, pubkey: str) -> tuple[Account | None, str | None]:
        rows = await self._db.fetch(
            f"SELECT (SELECT owner FROM linked_keys WHERE pubkey = $1), {ACCOUNT_COLUMNS}"
            " FROM (SELECT 1) one LEFT JOIN accounts ON pubkey = $1",
            pubkey,
        )
        owner, *columns = tuple(rows[0])
        return (account_from_row(columns) if columns[0] is not None else None), owner

    async def link_key(self, owner: str, pubkey: str, limit: int, now: int) -> LinkOutcome:
        """One advisory lock for every node around the checks and the insert (per schema):
        two links racing for a plan's last place (or to chain two plans) are taken in turn."""
        async with self._db.transaction() as conn:
            await conn.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", LOCK_CLASS_LINKS, self._db.scope)
            mine = await conn.fetchval("SELECT owner FROM linked_keys WHERE pubkey = $1", pubkey)
            if mine is not None:
                return LinkOutcome.ALREADY if mine == owner else LinkOutcome.TAKEN
            if await conn.fetchval("SELECT 1 FROM linked_keys WHERE pubkey = $1", owner):
                return LinkOutcome.OWNER_IS_LINKED
            if await conn.fetchval("SELECT 1 FROM linked_keys WHERE owner = $1 LIMIT 1", pubkey):
                return LinkOutcome.KEY_HAS_LINKS
            if await conn.fetchval("SELECT count(*) FROM linked_keys WHERE owner = $1", owner) >= limit:
                return LinkOutcome.FULL
            await conn.execute(
                f"INSERT INTO linked_keys ({LINKED_COLUMNS}) VALUES ($1, $2, $3)", pubkey, owner, now
            )
            await conn.execute(
                "INSERT INTO accounts (pubkey, updated_at) VALUES ($1, $2) ON CONFLICT (pubkey) DO NOTHING", owner, now
            )
            await conn.execute(_BUMP_ACCOUNT_CHANGES)
        return LinkOutcome.LINKED

    async def unlink_key(self, owner: str, pubkey: str, now: int) -> bool:
        return await self._unlink("pubkey = $1 AND owner = $2", pubkey, owner) > 0

    async def unlink_all(self, pubkey: str, now: int) -> int:
        return await self._unlink("pubkey = $1 OR owner = $1", pubkey)

    async def _unlink(self, where: str, *params: str) -> int:
        async with self._db.transaction() as conn:
            status: str = await conn.execute(f"DELETE FROM linked_keys WHERE {where}", *params)
            gone = int(status.split()[-1])
            if gone:
                await conn.execute(_BUMP_ACCOUNT_CHANGES)
        return gone

    async def linked_keys(self, owner: str) -> list[LinkedKey]:
        rows = await self._db.fetch(
            f"SELECT {LINKED_COLUMNS} FROM linked_keys WHERE owner = $1 ORDER BY linked_at, pubkey", owner
        )
        return [LinkedKey(*tuple(row)) for row in rows]

    async def list_accounts(self) -> list[Account]:
        rows = await self._db.fetch(f"SELECT {ACCOUNT_COLUMNS} FROM accounts ORDER BY pubkey")
        return [account_from_row(row) for row in rows]

    async def revenue_by_day(self, since: int) -> list[RevenueRow]:
        rows = await self._db.fetch(
            f"SELECT paid_at / {DAY_SECONDS}, plan, sum(paid_msat), coalesce(sum(fee_msat), 0), count(*)"
            " FROM invoices WHERE state = 'paid' AND paid_at >= $1 GROUP BY 1, 2 ORDER BY 1, 2",
            since,
        )
        return [RevenueRow(int(r[0]), str(r[1]), int(r[2] or 0), int(r[3]), int(r[4])) for r in rows]

    async def invoice_funnel(self, since: int, now: int) -> InvoiceFunnel:
        row = (
            await self._db.fetch(
                "SELECT count(*), count(*) FILTER (WHERE state = 'paid'),"
                " count(*) FILTER (WHERE state = 'expired' OR (state = 'pending' AND expires_at <= $1)),"
                " (SELECT coalesce(sum(count), 0) FROM pruned_invoices"
                f"  WHERE day >= ($2::bigint + {DAY_SECONDS - 1}) / {DAY_SECONDS})"
                " FROM invoices WHERE created_at >= $2",
                now,
                since,
            )
        )[0]
        created, paid, expired, pruned = (int(v) for v in row)
        return InvoiceFunnel(created + pruned, paid, expired + pruned)

    async def recurring_msat(self, now: int, per_seconds: int) -> int:
        # numeric: price x seconds can pass bigint; div() truncates as SQLite's integer division.
        total = await self._db.fetchval(
            "SELECT coalesce(sum(div((i.amount_msat - i.credit_msat)::numeric * $1, i.admit_seconds)), 0)"
            " FROM accounts a JOIN invoices i ON i.payment_hash = ("
            "  SELECT j.payment_hash FROM invoices j WHERE j.pubkey = a.pubkey AND j.state = 'paid'"
            "  AND j.admit_seconds > 0 AND NOT j.admit_forever ORDER BY j.paid_at DESC, j.payment_hash DESC LIMIT 1)"
            " WHERE a.admitted_until > $2 AND a.admitted_until < $3 AND NOT a.banned",
            per_seconds,
            now,
            FOREVER,
        )
        return int(total)

    async def member_counts(self, now: int, soon: int) -> dict[MemberStatus, int]:
        conditions = member_status_conditions("$1::bigint", "$2::bigint")
        columns = ", ".join(f"count(*) FILTER (WHERE {c})" for c in conditions.values())
        row = (await self._db.fetch(f"SELECT {columns} FROM accounts", now, soon))[0]
        return {status: int(n) for status, n in zip(conditions, row, strict=True)}

    async def find_accounts(
        self, now: int, soon: int, *, status: MemberStatus | None = None, pubkey_prefix: str = "", limit: int = 100
    ) -> list[Account]:
        p = _Params()
        where = ["true"]
        if status is not None:
            condition = member_status_conditions("{now}", "{soon}")[status]
            for name, value in (("{now}", now), ("{soon}", soon)):
                if name in condition:  # a placeholder no text names has no type: add only those used
                    condition = condition.replace(name, p.add(value))
            where.append(condition)
        if pubkey_prefix:
            low, high = hex_prefix_range(pubkey_prefix)
            where.append(f"pubkey >= {p.add(low)} AND pubkey < {p.add(high)}")
        order = "ASC" if status is MemberStatus.EXPIRING else "DESC"
        rows = await self._db.fetch(
            f"SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE {' AND '.join(where)}"
            f" ORDER BY admitted_until {order}, pubkey {order} LIMIT {p.add(limit)}",
            *p.values,
        )
        return [account_from_row(row) for row in rows]

    async def tier_counts(self, now: int, soon: int, graces: Mapping[str, int]) -> list[TierCount]:
        p = _Params()
        now_mark, soon_mark = p.add(now, "::bigint"), p.add(soon, "::bigint")
        rows = await self._db.fetch(tier_counts_sql(now_mark, soon_mark, _grace_params(p, graces)), *p.values)
        return tier_counts_from_rows([tuple(row) for row in rows])

    async def find_in_grace(self, now: int, graces: Mapping[str, int], limit: int = 100) -> list[Account]:
        p = _Params()
        now_mark = p.add(now, "::bigint")
        pairs = _grace_params(p, graces)
        rows = await self._db.fetch(
            f"SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE {in_grace_sql(now_mark, pairs)}"
            f" ORDER BY admitted_until + {grace_sql(pairs)}, pubkey LIMIT {p.add(limit)}",
            *p.values,
        )
        return [account_from_row(row) for row in rows]

    async def find_invoices(self, *, pubkey_prefix: str = "", hash_prefix: str = "", limit: int = 100) -> list[Invoice]:
        p = _Params()
        either: list[str] = []
        for column, prefix in (("pubkey", pubkey_prefix), ("payment_hash", hash_prefix)):
            if prefix:
                low, high = hex_prefix_range(prefix)
                either.append(f"({column} >= {p.add(low)} AND {column} < {p.add(high)})")
        where = f"WHERE {' OR '.join(either)}" if either else ""
        rows = await self._db.fetch(
            f"SELECT {INVOICE_COLUMNS} FROM invoices {where}"
            f" ORDER BY created_at DESC, payment_hash DESC LIMIT {p.add(limit)}",
            *p.values,
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
        async with self._db.transaction() as conn:
            row = await conn.fetchrow(
                f"INSERT INTO accounts AS a"
                f" (pubkey, admitted_until, credit_msat, banned, allowed, updated_at, role, comped)"
                f" VALUES ($1, coalesce($2::bigint, 0), $3::bigint, coalesce($4, false), coalesce($5, false), $6,"
                f" coalesce($7::text, ''), coalesce($8, false))"
                f" ON CONFLICT (pubkey) DO UPDATE SET"
                f" admitted_until = coalesce($2, a.admitted_until), credit_msat = a.credit_msat + $3,"
                f" banned = coalesce($4, a.banned), allowed = coalesce($5, a.allowed), updated_at = $6,"
                f" role = coalesce($7::text, a.role), comped = coalesce($8, a.comped),"
                # the operator's word is the whole new state: a scheduled change is dropped
                f" next_role = CASE WHEN $2::bigint IS NULL AND $7::text IS NULL THEN a.next_role ELSE '' END,"
                f" switch_at = CASE WHEN $2::bigint IS NULL AND $7::text IS NULL THEN a.switch_at ELSE 0 END"
                f" RETURNING {ACCOUNT_COLUMNS}",
                pubkey,
                admitted_until,
                credit_delta_msat,
                banned,
                allowed,
                now,
                role,
                comped,
            )
            await conn.execute(_BUMP_ACCOUNT_CHANGES)
        return account_from_row(row)

    async def list_roles(self) -> list[RoleDefinition]:
        rows = await self._db.fetch(f"SELECT {ROLE_COLUMNS} FROM roles ORDER BY id")
        return [RoleDefinition(*row) for row in rows]

    async def save_role(self, role: RoleDefinition, *, create: bool, now: int) -> bool:
        values = (role.id, role.label, role.description, role.color, role.order, now)
        async with self._db.transaction() as conn:
            if create:
                status: str = await conn.execute(
                    "INSERT INTO roles (id, label, description, color, ord, updated_at)"
                    " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO NOTHING",
                    *values,
                )
            else:
                status = await conn.execute(
                    "UPDATE roles SET label = $2, description = $3, color = $4, ord = $5, updated_at = $6"
                    " WHERE id = $1",
                    *values,
                )
        return status.split()[-1] == "1"

    async def delete_role(self, role_id: str, now: int) -> bool:
        async with self._db.transaction() as conn:
            status: str = await conn.execute("DELETE FROM roles WHERE id = $1", role_id)
            if status.split()[-1] != "1":
                return False
            await conn.execute(
                "UPDATE accounts SET role = '', comped = false, updated_at = $1 WHERE role = $2", now, role_id
            )
            await conn.execute(_BUMP_ACCOUNT_CHANGES)
        return True

    async def account_changes(self) -> int:
        value = await self._db.fetchval("SELECT counter FROM account_changes WHERE id = 1")
        return int(value or 0)

    async def add_invites(self, invites: Sequence[Invite]) -> None:
        async with self._db.transaction() as conn:
            await conn.executemany(
                f"INSERT INTO invites ({INVITE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                [
                    (
                        i.code_hash,
                        i.plan,
                        i.created_at,
                        i.expires_at,
                        i.created_by,
                        i.admit_seconds,
                        i.admit_forever,
                        i.credit_msat,
                        i.redeemed_by,
                        i.redeemed_at,
                    )
                    for i in invites
                ],
            )

    async def redeem_invite(self, code_hash: str, pubkey: str, now: int, *, terms: Terms = NO_TERMS) -> InviteOutcome:
        """Exactly once across nodes: a concurrent claim of the same code waits for this
        transaction, re-checks ``redeemed_by`` and matches nothing."""
        async with self._db.transaction() as conn:
            row = await conn.fetchrow(
                "UPDATE invites SET redeemed_by = $2, redeemed_at = $3 WHERE code_hash = $1"
                " AND redeemed_by IS NULL AND (expires_at IS NULL OR expires_at > $3)"
                " RETURNING admit_seconds, admit_forever, credit_msat",
                code_hash,
                pubkey,
                now,
            )
            if row is None:
                found = await conn.fetchrow(
                    "SELECT expires_at, redeemed_by FROM invites WHERE code_hash = $1", code_hash
                )
                return invite_refusal(None if found is None else tuple(found), pubkey, now)
            await _apply_grant(conn, pubkey, now, row[0], row[1], row[2], terms)
            return InviteOutcome.REDEEMED

    async def list_invites(self) -> list[Invite]:
        rows = await self._db.fetch(f"SELECT {INVITE_COLUMNS} FROM invites ORDER BY created_at DESC, code_hash")
        return [invite_from_row(row) for row in rows]

    async def open_invite_count(self, created_by: str, now: int) -> int:
        async with self._db.acquire() as conn:
            count = await conn.fetchval(
                "SELECT count(*) FROM invites WHERE created_by = $1 AND redeemed_by IS NULL"
                " AND (expires_at IS NULL OR expires_at > $2)",
                created_by,
                now,
            )
        return int(count)

    async def revoke_invite(self, code_hash: str) -> bool:
        async with self._db.acquire() as conn:
            status: str = await conn.execute(
                "DELETE FROM invites WHERE code_hash = $1 AND redeemed_by IS NULL", code_hash
            )
        return status != "DELETE 0"

    async def end_membership(self, pubkey: str, now: int) -> bool:
        async with self._db.acquire() as conn:
            status: str = await conn.execute(
                "UPDATE accounts SET admitted_until = 0, credit_msat = 0, allowed = false, updated_at = $2,"
                " next_role = '', switch_at = 0"
                " WHERE pubkey = $1 AND (admitted_until > $2 OR credit_msat > 0 OR allowed)",
                pubkey,
                now,
            )
        return status != "UPDATE 0"

    async def set_reminders(self, pubkey: str, on: bool, now: int) -> None:
        async with self._db.acquire() as conn:
            if on:
                await conn.execute(
                    "INSERT INTO reminder_optins (pubkey, opted_in_at) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                    pubkey,
                    now,
                )
            else:
                await conn.execute("DELETE FROM reminder_optins WHERE pubkey = $1", pubkey)

    async def reminders_on(self, pubkey: str) -> bool:
        return bool(await self._db.fetchval("SELECT 1 FROM reminder_optins WHERE pubkey = $1", pubkey))

    async def reminder_targets(self) -> list[tuple[Account, bool]]:
        columns = ", ".join(f"a.{c.strip()}" for c in ACCOUNT_COLUMNS.split(","))
        rows = await self._db.fetch(
            f"SELECT {columns}, EXISTS (SELECT 1 FROM reminders_sent s WHERE s.pubkey = a.pubkey"
            " AND s.reason = 'credit') FROM reminder_optins o JOIN accounts a ON a.pubkey = o.pubkey ORDER BY a.pubkey"
        )
        return [(account_from_row(tuple(row)[:ACCOUNT_WIDTH]), bool(row[ACCOUNT_WIDTH])) for row in rows]

    async def claim_reminder(self, pubkey: str, reason: str, term_end: int, now: int) -> bool:
        async with self._db.acquire() as conn:
            status: str = await conn.execute(
                "INSERT INTO reminders_sent (pubkey, reason, term_end, sent_at) VALUES ($1, $2, $3, $4)"
                " ON CONFLICT DO NOTHING",
                pubkey,
                reason,
                term_end,
                now,
            )
        return status == "INSERT 0 1"

    async def rearm_reminder(self, pubkey: str, reason: str) -> None:
        async with self._db.acquire() as conn:
            await conn.execute("DELETE FROM reminders_sent WHERE pubkey = $1 AND reason = $2", pubkey, reason)

    async def set_nwc_link(self, link: NwcLink) -> None:
        async with self._db.acquire() as conn:
            await conn.execute(
                "INSERT INTO nwc_links (pubkey, sealed_uri, budget_msat, created_at) VALUES ($1, $2, $3, $4)"
                " ON CONFLICT (pubkey) DO UPDATE SET sealed_uri = excluded.sealed_uri,"
                " budget_msat = excluded.budget_msat, created_at = excluded.created_at",
                link.pubkey,
                link.sealed_uri,
                link.budget_msat,
                link.created_at,
            )

    async def forget_nwc_link(self, pubkey: str) -> bool:
        async with self._db.acquire() as conn:
            status: str = await conn.execute("DELETE FROM nwc_links WHERE pubkey = $1", pubkey)
        return status != "DELETE 0"

    async def nwc_links(self) -> list[NwcLink]:
        rows = await self._db.fetch("SELECT pubkey, sealed_uri, budget_msat, created_at FROM nwc_links ORDER BY pubkey")
        return [NwcLink(*tuple(row)) for row in rows]

    async def claim_renewal(self, pubkey: str, period_end: int, payment_hash: str, now: int) -> bool:
        async with self._db.acquire() as conn:
            status: str = await conn.execute(
                f"INSERT INTO renewal_attempts ({RENEWAL_COLUMNS}) VALUES ($1, $2, $3, 'paying', 0, '', $4, $4)"
                " ON CONFLICT DO NOTHING",
                pubkey,
                period_end,
                payment_hash,
                now,
            )
        return status == "INSERT 0 1"

    async def get_renewal(self, pubkey: str, period_end: int) -> RenewalAttempt | None:
        rows = await self._db.fetch(
            f"SELECT {RENEWAL_COLUMNS} FROM renewal_attempts WHERE pubkey = $1 AND period_end = $2", pubkey, period_end
        )
        return RenewalAttempt(*tuple(rows[0])) if rows else None

    async def record_renewal(
        self, pubkey: str, period_end: int, state: str, detail: str, now: int, *, tried: bool
    ) -> None:
        async with self._db.acquire() as conn:
            await conn.execute(
                "UPDATE renewal_attempts SET state = $3, detail = $4, updated_at = $5, tries = tries + $6"
                " WHERE pubkey = $1 AND period_end = $2",
                pubkey,
                period_end,
                state,
                detail,
                now,
                int(tried),
            )

    async def rebind_renewal(
        self, pubkey: str, period_end: int, old_hash: str, new_hash: str, state: str, detail: str, now: int
    ) -> bool:
        async with self._db.acquire() as conn:
            status: str = await conn.execute(
                "UPDATE renewal_attempts SET payment_hash = $4, state = $5, detail = $6, updated_at = $7"
                " WHERE pubkey = $1 AND period_end = $2 AND payment_hash = $3",
                pubkey,
                period_end,
                old_hash,
                new_hash,
                state,
                detail,
                now,
            )
        return status != "UPDATE 0"

    async def list_renewals(self, pubkey: str) -> list[RenewalAttempt]:
        rows = await self._db.fetch(
            f"SELECT {RENEWAL_COLUMNS} FROM renewal_attempts WHERE pubkey = $1 ORDER BY period_end DESC", pubkey
        )
        return [RenewalAttempt(*tuple(row)) for row in rows]


async def _evict_one(conn: Any, source: str, held: int, now: int) -> bool:
    """Make room in a full pool (``LedgerStore.add_invoice``; the caller holds the invoices
    lock): the oldest unexpired pending invoice of the source holding the most (ties: the
    one whose oldest invoice is oldest), or of ``source`` itself when it already holds as
    many, expires now. False when no source may give one up."""
    biggest = await conn.fetchrow(
        "SELECT source, count(*) FROM invoices WHERE state = 'pending' AND expires_at > $1 AND source <> ''"
        " GROUP BY source ORDER BY count(*) DESC, min(created_at), source LIMIT 1",
        now,
    )
    if biggest is None:
        return False
    victim = source if source and held >= biggest[1] else biggest[0]
    status: str = await conn.execute(
        "UPDATE invoices SET expires_at = $1 WHERE payment_hash = (SELECT payment_hash FROM invoices"
        " WHERE source = $2 AND state = 'pending' AND expires_at > $1 ORDER BY created_at, payment_hash LIMIT 1)",
        now,
        victim,
    )
    return status.split()[-1] != "0"


async def _apply_grant(
    conn: Any,
    pubkey: str,
    now: int,
    admit_seconds: int,
    admit_forever: bool,
    credit_msat: int,
    terms: Terms,
    role: str = "",
) -> None:
    """An invoice's or invite's grant. The account row is locked first (created if new),
    then its time computed by the shared rule (``lightning.billing.after_payment``): a
    concurrent charge or operator change of this account waits for us."""
    current = await conn.fetchrow(
        "INSERT INTO accounts AS a (pubkey, updated_at) VALUES ($1, $2)"
        " ON CONFLICT (pubkey) DO UPDATE SET updated_at = a.updated_at"
        " RETURNING role, admitted_until, next_role, switch_at, comped",
        pubkey,
        now,
    )
    before = Holding(current[0], current[1], current[2], current[3], current[4])
    held = after_payment(before, role, admit_seconds, admit_forever, now, terms)
    await conn.execute(
        "UPDATE accounts SET admitted_until = $2, credit_msat = credit_msat + $3, updated_at = $4,"
        " role = $5, next_role = $6, switch_at = $7, comped = $8 WHERE pubkey = $1",
        pubkey,
        held.until,
        credit_msat,
        now,
        held.role,
        held.next_role,
        held.switch_at,
        held.comped,
    )
    await conn.execute(_BUMP_ACCOUNT_CHANGES)
