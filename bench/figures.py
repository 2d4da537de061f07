"""The headline figures of a bench report, named and with units (``python -m bench --json``).

The full report (``python -m bench`` without ``--json``) keeps everything a run measured:
client and machine CPU, verdicts, per-phase details. The figures document keeps what a
table compares: per suite, each figure as ``{"value": number, "unit": "..."}``, next to a
``served`` block that says whether the relay answered the load it was given (every EVENT
OK'd, every REQ's EOSE received, every delivery made), the machine's one-core verify
ceiling, the git commit and the command line. A figure a run could not measure (a relay
given by ``--url`` without ``--pid`` has no CPU figures) is left out rather than zero.

``python -m bench.figures RUN.json`` prints such a document as the rows of a Markdown
table (the one bench/README.md keeps).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

Figures = dict[str, dict[str, Any]]


def _put(out: Figures, name: str, value: Any, unit: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return
    out[name] = {"value": value, "unit": unit}


def _dig(report: dict[str, Any], *path: str) -> Any:
    node: Any = report
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def verify_ceiling(r: dict[str, Any]) -> tuple[Figures, dict[str, Any]]:
    f: Figures = {}
    _put(f, "verifications_per_second", r.get("verifications_per_second"), "verifications/s")
    _put(f, "us_per_verification", r.get("microseconds_per_verification"), "us")
    return f, {"signatures": r.get("signatures")}


def subindex(r: dict[str, Any]) -> tuple[Figures, dict[str, Any]]:
    f: Figures = {}
    sizes = sorted(int(k) for k in r if k.isdigit())
    for n in sizes:
        _put(f, f"indexed_us_per_event_{n}_subscriptions", r[str(n)]["indexed_us_per_event"], "us/event")
    if sizes:
        _put(f, f"full_scan_us_per_event_{sizes[-1]}_subscriptions", r[str(sizes[-1])]["full_scan_us_per_event"],
             "us/event")
    _put(f, "indexed_growth", r.get("indexed_growth"), "ratio")
    return f, {"matches_per_event": {str(n): r[str(n)]["matches_per_event"] for n in sizes}}


def _ingest_figures(r: dict[str, Any], prefix: str = "") -> Figures:
    f: Figures = {}
    _put(f, prefix + "events_per_second", r.get("events_per_second"), "events/s")
    _put(f, prefix + "fraction_of_verify_ceiling", r.get("fraction_of_verify_ceiling"), "ratio")
    _put(f, prefix + "ok_latency_p50_ms", _dig(r, "ok_latency", "p50_ms"), "ms")
    _put(f, prefix + "ok_latency_p99_ms", _dig(r, "ok_latency", "p99_ms"), "ms")
    _put(f, prefix + "relay_cpu_us_per_event", _dig(r, "relay", "cpu_us_per_event"), "us/event")
    _put(f, prefix + "relay_cpu_cores", _dig(r, "relay", "cpu_cores_used"), "cores")
    _put(f, prefix + "client_cpu_us_per_event", _dig(r, "client", "cpu_us_per_event"), "us/event")
    _put(f, prefix + "group_commit_mean_batch_events", _dig(r, "group_commit", "mean_batch_events"), "events")
    _put(f, prefix + "group_commit_mean_ms", _dig(r, "group_commit", "mean_commit_ms"), "ms")
    return f


def _ingest_served(r: dict[str, Any]) -> dict[str, Any]:
    return {
        "events_sent": r.get("events_sent"),
        "ok_true": r.get("ok_true"),
        "ok_true_duplicate": r.get("ok_true_duplicate"),
        "ok_false": sum((r.get("ok_false") or {}).values()),
        "unanswered": r.get("unanswered"),
    }


def ingest(r: dict[str, Any]) -> tuple[Figures, dict[str, Any]]:
    return _ingest_figures(r), _ingest_served(r)


SHAPES = ("authors_limit50", "kinds1_limit50", "tag_p_limit50")


def _query_figures(r: dict[str, Any], prefix: str = "") -> tuple[Figures, dict[str, Any]]:
    f: Figures = {}
    served: dict[str, Any] = {}
    for shape in SHAPES:
        s = r.get(shape)
        if not isinstance(s, dict):
            continue
        _put(f, f"{prefix}{shape}_eose_p50_ms", _dig(s, "serial", "eose", "p50_ms"), "ms")
        _put(f, f"{prefix}{shape}_eose_p99_ms", _dig(s, "serial", "eose", "p99_ms"), "ms")
        _put(f, f"{prefix}{shape}_loaded_reqs_per_second", _dig(s, "loaded", "reqs_per_second"), "REQs/s")
        _put(f, f"{prefix}{shape}_loaded_eose_p50_ms", _dig(s, "loaded", "eose", "p50_ms"), "ms")
        served[prefix + shape] = {
            "serial_eose": _dig(s, "serial", "eose", "count"),
            "events_per_req_mean": _dig(s, "serial", "events_per_req_mean"),
            "loaded_eose": _dig(s, "loaded", "eose", "count"),
            "errors": len(_dig(s, "serial", "errors") or []) + len(_dig(s, "loaded", "errors") or []),
        }
    return f, served


def query(r: dict[str, Any]) -> tuple[Figures, dict[str, Any]]:
    f, served = _query_figures(r)
    served["dataset_events"] = _dig(r, "dataset", "events")
    return f, served


def _fanout_figures(r: dict[str, Any]) -> Figures:
    f: Figures = {}
    _put(f, "delivery_p50_ms", _dig(r, "delivery_latency", "p50_ms"), "ms")
    _put(f, "delivery_p99_ms", _dig(r, "delivery_latency", "p99_ms"), "ms")
    _put(f, "first_delivery_p50_ms", _dig(r, "per_event_first_delivery", "p50_ms"), "ms")
    _put(f, "first_to_last_delivery_p50_ms", _dig(r, "per_event_first_to_last_delivery", "p50_ms"), "ms")
    _put(f, "deliveries_per_second", r.get("deliveries_per_second"), "deliveries/s")
    _put(f, "relay_cpu_cores", r.get("relay_cpu_cores_used"), "cores")
    return f


def fanout(r: dict[str, Any]) -> tuple[Figures, dict[str, Any]]:
    served = {k: r.get(k) for k in ("subscribers", "events_published", "publisher_ok_true", "deliveries",
                                    "deliveries_expected")}
    return _fanout_figures(r), served


def idle(r: dict[str, Any]) -> tuple[Figures, dict[str, Any]]:
    f: Figures = {}
    served: dict[str, Any] = {}
    for key, run in r.items():
        if isinstance(run, dict) and "kib_per_connection" in run:
            _put(f, f"kib_per_connection_{key}", run["kib_per_connection"], "KiB")
            served[key] = {k: run.get(k) for k in ("connections", "eose_received", "compression_negotiated")}
    return f, served


def idle_alloc(r: dict[str, Any]) -> tuple[Figures, dict[str, Any]]:
    f: Figures = {}
    _put(f, "bytes_per_connection", r.get("bytes_per_connection"), "bytes")
    _put(f, "blocks_per_connection", r.get("blocks_per_connection"), "blocks")
    return f, {k: r.get(k) for k in ("connections", "connections_open_in_relay", "eose_received")}


def workers(r: dict[str, Any]) -> tuple[Figures, dict[str, Any]]:
    f: Figures = {}
    served: dict[str, Any] = {}
    for key in ("workers_1", "workers_2"):
        median = r.get(f"{key}_median") or {}
        _put(f, f"{key}_events_per_second_median", median.get("events_per_second"), "events/s")
        _put(f, f"{key}_ok_latency_p99_ms_median", median.get("p99_ms"), "ms")
        _put(f, f"{key}_fraction_of_verify_ceiling_median", median.get("fraction_of_verify_ceiling"), "ratio")
        runs = r.get(key) or []
        served[key] = {k: sum(int(_ingest_served(run)[k] or 0) for run in runs)
                       for k in ("events_sent", "ok_true", "ok_false", "unanswered")}
    _put(f, "ratio_2_to_1", r.get("ratio_2_to_1"), "ratio")
    return f, served


def stores(r: dict[str, Any]) -> tuple[Figures, dict[str, Any]]:
    f: Figures = {}
    served: dict[str, Any] = {}
    for store in ("sqlite", "postgresql"):
        s = r.get(store)
        if not isinstance(s, dict):
            continue
        f.update(_ingest_figures(s.get("ingest") or {}, f"{store}_ingest_"))
        qf, qs = _query_figures(s.get("query") or {}, f"{store}_")
        f.update(qf)
        served[store] = {"ingest": _ingest_served(s.get("ingest") or {}), **qs}
    return f, served


def crossnode(r: dict[str, Any]) -> tuple[Figures, dict[str, Any]]:
    return fanout(r)


def reconcile(r: dict[str, Any]) -> tuple[Figures, dict[str, Any]]:
    f: Figures = {}
    _put(f, "wall_ms_best", r.get("wall_ms_best"), "ms")
    _put(f, "rounds", r.get("rounds"), "round trips")
    _put(f, "bytes_exchanged", r.get("bytes_exchanged"), "bytes")
    _put(f, "fraction_of_all_ids", r.get("fraction_of_all_ids"), "ratio")
    return f, {k: r.get(k) for k in ("events", "difference", "difference_found_exactly")}


def search(r: dict[str, Any]) -> tuple[Figures, dict[str, Any]]:
    f: Figures = {}
    served: dict[str, Any] = {"events": r.get("events")}
    for word, w in (r.get("words") or {}).items():
        _put(f, f"{word}_eose_p50_ms", _dig(w, "eose_ms", "p50_ms"), "ms")
        _put(f, f"{word}_eose_p90_ms", _dig(w, "eose_ms", "p90_ms"), "ms")
        served[word] = {"eose": _dig(w, "eose_ms", "count"), "events_returned": w.get("events_returned")}
    return f, served


def soak(r: dict[str, Any]) -> tuple[Figures, dict[str, Any]]:
    f: Figures = {}
    _put(f, "honest_ok_latency_p99_ms", _dig(r, "honest", "ok_latency", "p99_ms"), "ms")
    _put(f, "honest_eose_p99_ms", _dig(r, "honest", "eose_latency", "p99_ms"), "ms")
    _put(f, "relay_rss_max_mib", _dig(r, "relay_rss_mib", "max"), "MiB")
    _put(f, "relay_cpu_cores", r.get("relay_cpu_cores_used"), "cores")
    served = {
        "notes_accepted": _dig(r, "honest", "notes_accepted"),
        "live_deliveries": _dig(r, "honest", "live_deliveries"),
        "live_deliveries_expected": _dig(r, "honest", "live_deliveries_expected"),
        "relay_log_tracebacks": _dig(r, "relay_log", "traceback"),
    }
    return f, served


def bystander(r: dict[str, Any]) -> tuple[Figures, dict[str, Any]]:
    f: Figures = {}
    served: dict[str, Any] = {"relay_log_tracebacks": r.get("relay_log_tracebacks")}
    for row in r.get("rows") or []:
        attack, b = row["attack"], row["bystander"]
        _put(f, f"{attack}_bystander_req_p99_ms", _dig(b, "req", "p99_ms"), "ms")
        _put(f, f"{attack}_bystander_event_ok_p99_ms", _dig(b, "event", "p99_ms"), "ms")
        _put(f, f"{attack}_relay_cpu_cores", row.get("relay_cpu_cores"), "cores")
        out = b.get("outcome") or {}
        served[attack] = {
            "req_ok": out.get("req_ok", 0), "req_total": sum(v for k, v in out.items() if k.startswith("req")),
            "event_ok": out.get("event_ok", 0), "event_total": sum(v for k, v in out.items() if k.startswith("event")),
        }
    return f, served


EXTRACTORS: dict[str, Callable[[dict[str, Any]], tuple[Figures, dict[str, Any]]]] = {
    "verify_ceiling": verify_ceiling, "subindex": subindex, "ingest": ingest, "query": query, "fanout": fanout,
    "idle": idle, "idle_alloc": idle_alloc, "workers": workers, "stores": stores, "crossnode": crossnode,
    "reconcile": reconcile, "search": search, "soak": soak, "bystander": bystander,
}


def figures_document(report: dict[str, Any], *, commit: dict[str, Any], command: str) -> dict[str, Any]:
    """The figures of every suite ``report`` holds (see the module docstring)."""
    suites: dict[str, Any] = {}
    for name, extract in EXTRACTORS.items():
        r = report.get(name)
        if not isinstance(r, dict):
            continue
        if "skipped" in r:
            suites[name] = {"skipped": r["skipped"]}
            continue
        figures, served = extract(r)
        suites[name] = {"figures": figures, "served": served, "machine_load_1min": r.get("machine_load_1min")}
    ceiling = _dig(report, "verify_ceiling", "verifications_per_second")
    return {
        "commit": commit,
        "command": command,
        "machine": report.get("machine"),
        "relay": report.get("relay"),
        "verify_ceiling": {"value": ceiling, "unit": "verifications/s"} if ceiling else None,
        "suites": suites,
    }


def markdown_rows(doc: dict[str, Any]) -> list[str]:
    """``| suite | figure | value | unit |`` for each figure of a figures document."""
    rows = ["| suite | figure | value | unit |", "|---|---|---|---|"]
    for suite, s in doc["suites"].items():
        for name, fig in (s.get("figures") or {}).items():
            rows.append(f"| {suite} | {name} | {fig['value']:,} | {fig['unit']} |")
    return rows


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m bench.figures RUN.json   (the output of python -m bench --json)", file=sys.stderr)
        return 2
    doc = orjson.loads(Path(argv[0]).read_bytes())
    print(f"commit {doc['commit'].get('sha', '?')[:12]}, `{doc['command']}`")
    print("\n".join(markdown_rows(doc)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
