"""Prometheus metrics (``GET /metrics``), one registry per relay instance.

A registry per instance (not the process-wide default) lets tests run several relays in
one process and lets the lightning extension add its own metrics to the same page.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from relay.store.writer import WriterStats


class RelayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        # process_resident_memory_bytes, process_open_fds / process_max_fds (the unit's
        # LimitNOFILE: one descriptor per connection), CPU seconds: read from /proc at scrape.
        ProcessCollector(registry=r)
        self.connections = Gauge("satsrelay_connections", "Open WebSocket connections", registry=r)
        self.connections_rejected = Counter(
            "satsrelay_connections_rejected_total", "Connections refused", ["reason"], registry=r
        )
        self.connections_evicted = Counter(
            "satsrelay_connections_evicted_total",
            "Connections closed when the relay was full, to make room for an address group holding fewer",
            registry=r,
        )
        self.slow_clients_dropped = Counter(
            "satsrelay_slow_clients_dropped_total", "Connections dropped for not reading", registry=r
        )
        self.events_accepted = Counter(
            "satsrelay_events_accepted_total", "Events accepted (OK true)", ["kind_class"], registry=r
        )
        self.events_rejected = Counter(
            "satsrelay_events_rejected_total", "Events refused, by NIP-01 prefix", ["reason"], registry=r
        )
        self.reqs = Counter("satsrelay_reqs_total", "REQ messages served", registry=r)
        self.counts = Counter("satsrelay_counts_total", "COUNT messages served", registry=r)
        self.subscriptions = Gauge("satsrelay_subscriptions", "Live subscriptions", registry=r)
        self.query_seconds = Histogram(
            "satsrelay_query_seconds",
            "Time from REQ to EOSE",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=r,
        )

    def watch_writer(self, stats: Callable[[], WriterStats]) -> None:
        """Expose the writer's own counters, read at scrape time (no work per batch)."""
        self.registry.register(_WriterCollector(stats))

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def events_accepted_total(self) -> float:
        """Events accepted since start, every kind class together (the console's events/s
        is this counter sampled over time)."""
        return _total(self.events_accepted)

    def open_connections(self) -> int:
        return int(_total(self.connections))

    def live_subscriptions(self) -> int:
        return int(_total(self.subscriptions))


def _total(metric: Counter | Gauge) -> float:
    """The sum of a metric's values over its labels (a counter's ``_total`` samples only)."""
    return sum(
        sample.value
        for family in metric.collect()
        for sample in family.samples
        if not sample.name.endswith("_created")
    )


class _WriterCollector(Collector):
    """Group-commit figures: mean batch size is rate(events) / rate(batches)."""

    def __init__(self, stats: Callable[[], WriterStats]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        s = self._stats()
        yield CounterMetricFamily("satsrelay_writer_batches", "Group commits", value=s.batches)
        yield CounterMetricFamily("satsrelay_writer_events", "Events written in group commits", value=s.events)
        yield CounterMetricFamily("satsrelay_writer_failed_batches", "Failed group commits", value=s.failed_batches)
        yield CounterMetricFamily(
            "satsrelay_writer_commit_seconds", "Time spent committing batches", value=s.commit_seconds
        )
        yield GaugeMetricFamily("satsrelay_writer_last_batch_size", "Events in the last batch", value=s.last_batch_size)
        yield GaugeMetricFamily("satsrelay_writer_queued", "Events waiting for the writer", value=s.queued)
