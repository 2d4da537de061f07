"""Prometheus counters for payments, registered on the relay's own registry.

The relay keeps one ``CollectorRegistry`` per instance (``relay.ops.metrics``), so several
relays (and their payment extensions) can live in one test process; these counters go on
the same ``/metrics`` page.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from lightning.backend import BackendError, CreatedInvoice, InvoiceStatus, WalletBackend

# Seconds from an invoice's issue to its credit: the payer's own time plus the relay's
# notice (push: about a second; polling: poll_interval_seconds; after an outage, the next
# reconciliation). Past the invoice's expiry (900 s by default) only a reconciliation can
# have credited it.
SETTLEMENT_BUCKETS = (2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0, 86400.0)


class PaymentMetrics:
    def __init__(self, registry: CollectorRegistry | None) -> None:
        # None: a private registry nobody scrapes (CLI, unit tests).
        r = registry if registry is not None else CollectorRegistry()
        self.invoices_created = Counter(
            "satsrelay_invoices_created_total", "Invoices issued, by plan", ["plan"], registry=r
        )
        self.invoices_settled = Counter(
            "satsrelay_invoices_settled_total", "Invoices credited (exactly once each), by plan", ["plan"], registry=r
        )
        self.sats_received = Counter("satsrelay_sats_received_total", "Sats credited from settled invoices", registry=r)
        self.wallet_fees_msat = Counter(
            "satsrelay_wallet_fees_msat_total",
            "What the wallet kept of settled payments (e.g. phoenixd's liquidity fees), in msat: the operator's cost",
            registry=r,
        )
        self.settlements_rejected = Counter(
            "satsrelay_settlements_rejected_total", "Paid answers refused (amount or hash mismatch)", registry=r
        )
        self.wallet_errors = Counter(
            "satsrelay_wallet_errors_total",
            "Wallet calls that failed (unreachable, refused, timed out, bad answer), by operation",
            ["operation"],
            registry=r,
        )
        self.invoices_pending = Gauge(
            "satsrelay_invoices_pending", "Unpaid invoices the watcher follows, as of its last round", registry=r
        )
        self.settlement_lag = Histogram(
            "satsrelay_settlement_lag_seconds",
            "Seconds from an invoice's issue to its credit (payer's time plus the relay's notice)",
            buckets=SETTLEMENT_BUCKETS,
            registry=r,
        )
        self.wallet_up = Gauge(
            "satsrelay_wallet_up", "1 while the wallet answers the relay's check, 0 while it does not", registry=r
        )

    def watch_wallet(self, answers: Callable[[], bool]) -> None:
        """``satsrelay_wallet_up`` read at scrape time from the wallet check's last result."""
        self.wallet_up.set_function(lambda: 1.0 if answers() else 0.0)


class MeteredWallet:
    """The wallet as the ledger and watcher use it, counting its failures by operation
    (``satsrelay_wallet_errors_total``): a wallet that refuses or times out shows on the
    dashboard before members complain. Everything else passes through unchanged."""

    def __init__(self, inner: WalletBackend, errors: Counter) -> None:
        self.inner = inner
        self.name = inner.name
        self._errors = errors

    async def create_invoice(
        self, amount_msat: int, memo: str, expiry_seconds: int, *, hashed_description: str | None = None
    ) -> CreatedInvoice:
        try:
            return await self.inner.create_invoice(
                amount_msat, memo, expiry_seconds, hashed_description=hashed_description
            )
        except BackendError:
            self._errors.labels("create_invoice").inc()
            raise

    async def lookup_invoice(self, payment_hash: str) -> InvoiceStatus:
        try:
            return await self.inner.lookup_invoice(payment_hash)
        except BackendError:
            self._errors.labels("lookup_invoice").inc()
            raise

    async def check(self) -> None:
        try:
            await self.inner.check()
        except BackendError:
            self._errors.labels("check").inc()
            raise

    def notifications_live(self) -> bool:
        return self.inner.notifications_live()

    async def settlements(self) -> AsyncIterator[str]:
        try:
            async for payment_hash in self.inner.settlements():
                yield payment_hash
        except BackendError:
            self._errors.labels("stream").inc()
            raise

    async def close(self) -> None:
        await self.inner.close()
