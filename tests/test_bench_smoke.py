"""``python -m bench --json`` at tiny sizes (issue 19 item 5): every suite of the default run
prints each of its figures as a finite positive number with a unit, the document names
the commit and the machine's verify ceiling, and the relay served the load it was given
(every EVENT answered OK true, every REQ its EOSE, every live delivery made). No timing is
asserted: the machine running the tests is shared, and only ``bench/README.md``'s quiet
runs are figures."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parent.parent

TINY = [
    "--ingest-events", "200", "--ingest-processes", "1", "--ingest-connections", "2", "--ingest-window", "8",
    "--ceiling-signatures", "200", "--subindex-sizes", "100", "1000",
    "--query-events", "500", "--query-serial", "20", "--query-seconds", "0.5", "--query-processes", "1",
    "--query-connections", "2",
    "--fanout-subscribers", "20", "--fanout-processes", "1", "--fanout-rate", "20", "--fanout-seconds", "1",
    "--idle-connections", "200", "--idle-processes", "1",
]
SHAPES = ("authors_limit50", "kinds1_limit50", "tag_p_limit50")
FIGURES = {
    "verify_ceiling": ["verifications_per_second", "us_per_verification"],
    "subindex": ["indexed_us_per_event_100_subscriptions", "indexed_us_per_event_1000_subscriptions",
                 "full_scan_us_per_event_1000_subscriptions", "indexed_growth"],
    "ingest": ["events_per_second", "fraction_of_verify_ceiling", "ok_latency_p50_ms", "ok_latency_p99_ms",
               "relay_cpu_us_per_event", "relay_cpu_cores", "client_cpu_us_per_event",
               "group_commit_mean_batch_events", "group_commit_mean_ms"],
    "query": [f"{shape}_{name}" for shape in SHAPES
              for name in ("eose_p50_ms", "eose_p99_ms", "loaded_reqs_per_second", "loaded_eose_p50_ms")],
    "fanout": ["delivery_p50_ms", "delivery_p99_ms", "first_delivery_p50_ms", "first_to_last_delivery_p50_ms",
               "deliveries_per_second", "relay_cpu_cores"],
    "idle": ["kib_per_connection_compression_off", "kib_per_connection_compression_on"],
    "idle_alloc": ["bytes_per_connection", "blocks_per_connection"],
}


def run_bench(tmp_path: Path) -> dict[str, Any]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p),
        "SATSRELAY_BENCH_CACHE": str(tmp_path / "cache"),  # the signed sets, out of the checkout
    }
    done = subprocess.run([sys.executable, "-m", "bench", "--json", *TINY], cwd=tmp_path, env=env,
                          capture_output=True, timeout=240, check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-4000:]
    doc: dict[str, Any] = orjson.loads(done.stdout)
    return doc


def test_bench_json_names_every_figure_and_the_relay_served_every_suite(tmp_path: Path) -> None:
    doc = run_bench(tmp_path)

    assert re.fullmatch(r"[0-9a-f]{40}", doc["commit"]["sha"]), doc["commit"]
    assert doc["command"].startswith("python -m bench --json")
    ceiling = doc["verify_ceiling"]
    assert ceiling["unit"] == "verifications/s" and ceiling["value"] > 0
    suites = doc["suites"]
    assert set(suites) == set(FIGURES)
    for suite, names in FIGURES.items():
        figures = suites[suite]["figures"]
        for name in names:
            assert name in figures, f"{suite}.{name} missing from {sorted(figures)}"
            value, unit = figures[name]["value"], figures[name]["unit"]
            assert isinstance(value, int | float) and math.isfinite(value) and value > 0, (suite, name, value)
            assert isinstance(unit, str) and unit, (suite, name)

    ingest = suites["ingest"]["served"]
    assert ingest == {"events_sent": 200, "ok_true": 200, "ok_true_duplicate": 0, "ok_false": 0, "unanswered": 0}
    query = suites["query"]["served"]
    assert query["dataset_events"] == 500
    for shape in SHAPES:
        assert query[shape]["serial_eose"] == 20, query[shape]
        assert query[shape]["events_per_req_mean"] == 50, query[shape]
        assert query[shape]["loaded_eose"] > 0 and query[shape]["errors"] == 0, query[shape]
    fanout = suites["fanout"]["served"]
    assert fanout["publisher_ok_true"] == fanout["events_published"] == 20
    assert fanout["deliveries"] == fanout["deliveries_expected"] == 20 * 20
    idle = suites["idle"]["served"]
    assert idle["compression_off"] == {"connections": 200, "eose_received": 200, "compression_negotiated": 0}
    assert idle["compression_on"] == {"connections": 200, "eose_received": 200, "compression_negotiated": 200}
    assert suites["idle_alloc"]["served"] == {"connections": 200, "connections_open_in_relay": 200,
                                              "eose_received": 200}
