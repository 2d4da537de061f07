"""Prometheus counters for payments, registered on the relay's own registry.

The relay keeps one ``CollectorRegistry`` per instance (``relay.metrics``), so several
relays (and their payment extensions) can live in one test process; these counters go on
the same ``/metrics`` page.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter


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
