"""An in-process wallet for development, demos and tests: nobody can pay it for real.

Its invoices are genuine BOLT11 strings (regtest prefix ``lnbcrt``, so a real wallet
refuses them) signed by a fixed fake node key, so the amount and payment hash decode
exactly like a real wallet's. State lives in a small SQLite file so that a separate
process (``satsrelay pay-fake <hash>``) can mark an invoice paid; the relay notices
through ``settlements`` (the file is watched) or through the watcher's polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import sqlite3
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import bolt11
from bolt11.models.tags import TagChar

from lightning.backend import BackendError, CreatedInvoice, InvoiceStatus, PaymentState, description_hash

log = logging.getLogger(__name__)

FAKE_NODE_KEY = hashlib.sha256(b"satsrelay fake wallet node key").hexdigest()
_SCHEMA = """
CREATE TABLE IF NOT EXISTS fake_invoices (
    payment_hash TEXT PRIMARY KEY,
    preimage TEXT NOT NULL,
    bolt11 TEXT NOT NULL,
    amount_msat INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    paid_at INTEGER,
    paid_msat INTEGER,
    announced INTEGER NOT NULL DEFAULT 0
)
"""


@dataclass(frozen=True, slots=True)
class FakeConfig:
    state_file: Path
    auto_settle_seconds: float | None = None
    push: bool = True
    watch_interval_seconds: float = 0.2


def make_bolt11(
    payment_hash: str,
    amount_msat: int,
    memo: str,
    created_at: int,
    expiry_seconds: int,
    *,
    hashed_description: str | None = None,
    description_hash_hex: str | None = None,
) -> str:
    """A signed regtest BOLT11 invoice for ``payment_hash`` (also used by tests to forge).

    With ``hashed_description`` the invoice carries the ``h`` tag (sha256 of it) instead of
    the ``d`` memo, as a real node does for a description-hash invoice (BOLT 11: one or
    the other); ``description_hash_hex`` gives that tag's value directly."""
    if hashed_description is not None:
        description_hash_hex = description_hash(hashed_description).hex()
    tags = bolt11.Tags()
    tags.add(TagChar.payment_hash, payment_hash)
    tags.add(TagChar.payment_secret, os.urandom(32).hex())
    if description_hash_hex is None:
        tags.add(TagChar.description, memo)
    else:
        tags.add(TagChar.description_hash, description_hash_hex)
    tags.add(TagChar.expire_time, expiry_seconds)
    invoice = bolt11.Bolt11(currency="bcrt", date=created_at, tags=tags, amount_msat=bolt11.MilliSatoshi(amount_msat))
    return str(bolt11.encode(invoice, private_key=FAKE_NODE_KEY))


def _connect(path: Path) -> sqlite3.Connection:
    # Created on first use, not when the relay is built: a relay that cannot open its own
    # database must leave no wallet file (or data/ directory) behind.
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=10, isolation_level=None)
    # Turning a new file to WAL needs the file alone and SQLite does not wait for it (no
    # busy handler): two first uses at once (an invoice and the watcher's round) got
    # "database is locked" in a test run. Retry briefly; on a WAL file it is a no-op.
    for attempt in range(100):
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError:
            if attempt == 99:
                conn.close()
                raise
            time.sleep(0.02)
    conn.execute(_SCHEMA)
    return conn


def mark_paid(state_file: Path, payment_hash: str, amount_msat: int | None = None, now: int | None = None) -> bool:
    """Pay a fake invoice (what ``satsrelay pay-fake`` does, from any process).

    ``amount_msat`` other than the invoice's amount simulates an underpayment. True when
    the invoice existed and was unpaid.
    """
    paid_at = int(time.time()) if now is None else now
    conn = _connect(state_file)
    try:
        cur = conn.execute(
            "UPDATE fake_invoices SET paid_at = ?, paid_msat = COALESCE(?, amount_msat)"
            " WHERE payment_hash = ? AND paid_at IS NULL",
            (paid_at, amount_msat, payment_hash),
        )
        return cur.rowcount == 1
    finally:
        conn.close()


class FakeBackend:
    """The ``fake`` wallet. ``set_outage`` and ``drop_streams`` let tests and demos act out
    a wallet that is down or a push stream that breaks."""

    name = "fake"

    def __init__(self, config: FakeConfig) -> None:
        self._config = config
        self._outage = False
        self._stream_generation = 0
        self._wake = asyncio.Event()

    # --- test and demo controls ------------------------------------------------

    def set_outage(self, down: bool) -> None:
        """While down, every call raises BackendError and streams break."""
        self._outage = down
        if down:
            self.drop_streams()

    def drop_streams(self) -> None:
        """Break every open ``settlements`` iterator (they raise BackendError)."""
        self._stream_generation += 1
        self._wake.set()

    async def pay(self, payment_hash: str, amount_msat: int | None = None) -> bool:
        """Settle an invoice from inside the relay (the join page's "simulate payment")."""
        self._check_up()
        paid = await asyncio.to_thread(mark_paid, self._config.state_file, payment_hash, amount_msat)
        self._wake.set()
        return paid

    # --- WalletBackend ----------------------------------------------------------

    async def create_invoice(
        self, amount_msat: int, memo: str, expiry_seconds: int, *, hashed_description: str | None = None
    ) -> CreatedInvoice:
        self._check_up()
        preimage = os.urandom(32)
        payment_hash = hashlib.sha256(preimage).hexdigest()
        now = int(time.time())
        expires_at = now + expiry_seconds
        # Signing a bolt11 in Python takes ~1.1 ms: on a thread with the insert, not on the
        # event loop every client shares (an invoice burst stalled REQs for ~0.5 s).
        request = ""

        def insert() -> None:
            nonlocal request
            request = make_bolt11(
                payment_hash, amount_msat, memo, now, expiry_seconds, hashed_description=hashed_description
            )
            conn = _connect(self._config.state_file)
            try:
                conn.execute(
                    "INSERT INTO fake_invoices (payment_hash, preimage, bolt11, amount_msat, created_at, expires_at)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (payment_hash, preimage.hex(), request, amount_msat, now, expires_at),
                )
            finally:
                conn.close()

        await asyncio.to_thread(insert)
        return CreatedInvoice(payment_hash=payment_hash, bolt11=request, amount_msat=amount_msat, expires_at=expires_at)

    async def lookup_invoice(self, payment_hash: str) -> InvoiceStatus:
        self._check_up()
        await asyncio.to_thread(self._auto_settle)
        row = await asyncio.to_thread(self._row, payment_hash)
        if row is None:
            return InvoiceStatus(payment_hash, PaymentState.UNKNOWN)
        expires_at, paid_msat, preimage, paid_at = row
        if paid_msat is not None:
            return InvoiceStatus(
                payment_hash, PaymentState.PAID, amount_received_msat=paid_msat, preimage=preimage, paid_at=paid_at
            )
        if expires_at <= time.time():
            return InvoiceStatus(payment_hash, PaymentState.FAILED)
        return InvoiceStatus(payment_hash, PaymentState.PENDING)

    async def check(self) -> None:
        self._check_up()

    async def settlements(self) -> AsyncIterator[str]:
        self._check_up()
        generation = self._stream_generation
        while True:
            if generation != self._stream_generation or self._outage:
                raise BackendError("fake wallet stream dropped")
            if self._config.push:
                await asyncio.to_thread(self._auto_settle)
                for payment_hash in await asyncio.to_thread(self._unannounced):
                    yield payment_hash
            self._wake.clear()
            # Another process (pay-fake) cannot wake us: the short timeout watches the file.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._config.watch_interval_seconds)

    def notifications_live(self) -> bool:
        """The demo wallet's file watch is a hint for speed; polling stays its safety net."""
        return False

    async def close(self) -> None:
        self.drop_streams()

    # --- internals ----------------------------------------------------------------

    def _check_up(self) -> None:
        if self._outage:
            raise BackendError("fake wallet unreachable (simulated outage)")

    def _row(self, payment_hash: str) -> tuple[int, int | None, str, int | None] | None:
        conn = _connect(self._config.state_file)
        try:
            row = conn.execute(
                "SELECT expires_at, paid_msat, preimage, paid_at FROM fake_invoices WHERE payment_hash = ?",
                (payment_hash,),
            ).fetchone()
        finally:
            conn.close()
        if row is None:
            return None
        paid_msat, paid_at = (None if v is None else int(v) for v in (row[1], row[3]))
        return int(row[0]), paid_msat, str(row[2]), paid_at

    def _auto_settle(self) -> None:
        delay = self._config.auto_settle_seconds
        if delay is None:
            return
        now = time.time()
        conn = _connect(self._config.state_file)
        try:
            conn.execute(
                "UPDATE fake_invoices SET paid_at = ?, paid_msat = amount_msat"
                " WHERE paid_at IS NULL AND created_at + ? <= ? AND expires_at > ?",
                (int(now), delay, now, now),
            )
        finally:
            conn.close()

    def _unannounced(self) -> list[str]:
        conn = _connect(self._config.state_file)
        try:
            conn.execute("BEGIN IMMEDIATE")
            rows = conn.execute(
                "SELECT payment_hash FROM fake_invoices WHERE paid_at IS NOT NULL AND announced = 0"
            ).fetchall()
            conn.execute("UPDATE fake_invoices SET announced = 1 WHERE paid_at IS NOT NULL AND announced = 0")
            conn.execute("COMMIT")
        finally:
            conn.close()
        return [str(row[0]) for row in rows]
