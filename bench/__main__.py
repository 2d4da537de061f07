"""``python -m bench [scenario ...] [flags]``: start a relay (or use ``--url``), run the
chosen scenarios, print one JSON document on stdout (progress goes to stderr): the full
report, or with ``--json`` the figures document (``bench.figures``: per suite its named
figures with units and what the relay served, the verify ceiling, the git commit).

Scenarios: verify_ceiling subindex ingest query fanout idle (the default); workers (issue 5,
19: --workers 1 against 2, alternating, SQLite or --store-url); for PostgreSQL (issue 5, need
--store-url): stores crossnode; issue 12: reconcile (NIP-77) and search
(NIP-50), on SQLite or, with --store-url, PostgreSQL.
``soak`` (issue 8; never by default): honest and abusive clients against the relay's real
limits for ``--minutes``. ``bystander`` (issue 17; never by default): each free, expensive
request a stranger can send, while a bystander on another address reads and writes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson

from bench.bystander import ATTACKS, run_bystander
from bench.ceiling import measure_ceiling
from bench.events import EventSetSpec, author_pubkeys, ensure_event_set, p_target_pubkeys
from bench.fanout import run_fanout
from bench.figures import figures_document
from bench.idle import run_idle
from bench.idle_alloc import run_idle_alloc
from bench.ingest import run_ingest
from bench.profile import summarise_profile
from bench.query import filter_shapes, run_query
from bench.relayproc import PROFILE_RATE, REPO, RelayOptions, RelayProcess
from bench.soak import SOAK_LIMITS, SOAK_SECTIONS, run_soak
from bench.subindex import SIZES, run_subindex
from bench.sync_search import run_reconcile, run_search

DEFAULT_SCENARIOS = ["verify_ceiling", "subindex", "ingest", "query", "fanout", "idle", "idle_alloc"]
ALL_SCENARIOS = [*DEFAULT_SCENARIOS, "workers", "stores", "crossnode", "reconcile", "search", "soak", "bystander"]


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scenarios", nargs="*", choices=[[], *ALL_SCENARIOS], metavar="scenario",
                   help=f"any of {', '.join(ALL_SCENARIOS)} (default: {' '.join(DEFAULT_SCENARIOS)})")
    p.add_argument("--url", help="use a running relay at this ws:// URL instead of starting one")
    p.add_argument("--pid", type=int, help="with --url: the relay's pid, for CPU and RSS figures")
    p.add_argument("--store-url", help="storage.url for started relays, e.g. postgresql://postgres@127.0.0.1:5432/test "
                   "(a fresh database is created next to it per scenario and dropped after)")
    p.add_argument("--workers", type=int, default=1, help="serve --workers N for started relays")
    p.add_argument("--seed", type=int, default=1, help="event-set seed (a new seed gives events a relay has not seen)")
    p.add_argument("--profile", type=Path, metavar="DIR",
                   help="py-spy record each started relay into DIR/<scenario>.txt and add its top functions")
    p.add_argument("--profile-gil", action="store_true", help="with --profile: sample only the GIL holder")
    p.add_argument("--relay-uvloop", action="store_true",
                   help="start relays on uvloop (experiment: pip install uvloop into the venv first)")
    p.add_argument("--relay-env", action="append", default=[], metavar="KEY=VALUE",
                   help="environment for started relays, e.g. SATSRELAY_STORAGE__SYNCHRONOUS=NORMAL (repeatable)")
    p.add_argument("--quick", action="store_true", help="small sizes: the default scenarios in under two minutes")
    p.add_argument("--json", action="store_true",
                   help="print the figures document (per suite: named figures with units, what the relay served; "
                   "the verify ceiling, always measured; the git commit) instead of the full report")
    p.add_argument("--report", type=Path, metavar="FILE", help="also write the full report to FILE")
    g = p.add_argument_group("subindex")
    g.add_argument("--subindex-sizes", type=int, nargs="+", default=list(SIZES), metavar="N",
                   help="live subscriptions to match against (default: %(default)s)")
    g = p.add_argument_group("ingest")
    g.add_argument("--ingest-events", type=int, default=60_000)
    g.add_argument("--ingest-processes", type=int, default=2)
    g.add_argument("--ingest-connections", type=int, default=4, help="per process")
    g.add_argument("--ingest-window", type=int, default=32, help="in-flight EVENTs per connection")
    g = p.add_argument_group("verify_ceiling")
    g.add_argument("--ceiling-signatures", type=int, default=20_000)
    g = p.add_argument_group("query")
    g.add_argument("--query-events", type=int, default=100_000, help="stored dataset size")
    g.add_argument("--query-seconds", type=float, default=5.0, help="per filter, loaded phase")
    g.add_argument("--query-serial", type=int, default=300, help="REQs per filter, one at a time, for latency")
    g.add_argument("--query-processes", type=int, default=2)
    g.add_argument("--query-connections", type=int, default=4, help="per process, one REQ in flight each")
    g = p.add_argument_group("fanout")
    g.add_argument("--fanout-subscribers", type=int, default=1000)
    g.add_argument("--fanout-processes", type=int, default=4)
    g.add_argument("--fanout-rate", type=float, default=20.0, help="events published per second")
    g.add_argument("--fanout-seconds", type=float, default=5.0)
    g = p.add_argument_group("reconcile / search")
    g.add_argument("--reconcile-events", type=int, default=100_000)
    g.add_argument("--reconcile-difference", type=float, default=0.01, help="fraction of events on one side only")
    g.add_argument("--search-events", type=int, default=1_000_000)
    g.add_argument("--search-serial", type=int, default=200, help="REQs per word, one at a time")
    g = p.add_argument_group("soak (bench/soak.py)")
    g.add_argument("--minutes", type=float, default=10.0, help="soak duration")
    g.add_argument("--store", choices=["sqlite", "postgres"], default="sqlite",
                   help="soak store; postgres uses --store-url (default postgresql://postgres@127.0.0.1:5432/test)")
    g.add_argument("--soak-preload", type=int, default=20_000, help="events imported before the soak (huge REQs)")
    g.add_argument("--soak-honest-rate", type=float, default=20.0, help="honest events per second, all publishers")
    g.add_argument("--soak-attack-scale", type=float, default=1.0, help="attackers' send rates times this")
    g.add_argument("--soak-sample-seconds", type=float, default=10.0, help="relay RSS sampling interval")
    g = p.add_argument_group("bystander (bench/bystander.py)")
    g.add_argument("--bystander-seconds", type=float, default=15.0, help="per attack")
    g.add_argument("--bystander-preload", type=int, default=50_000, help="events imported before the attacks")
    g.add_argument("--attacks", nargs="+", choices=ATTACKS, default=ATTACKS, metavar="ATTACK",
                   help=f"any of {', '.join(ATTACKS)} (default: all)")
    g = p.add_argument_group("idle")
    g.add_argument("--idle-connections", type=int, default=2000)
    g.add_argument("--idle-processes", type=int, default=4)
    return p


def apply_quick(args: argparse.Namespace) -> None:
    args.ingest_events = min(args.ingest_events, 30_000)
    args.ceiling_signatures = min(args.ceiling_signatures, 10_000)
    args.query_events = min(args.query_events, 20_000)
    args.query_seconds = min(args.query_seconds, 2.0)
    args.query_serial = min(args.query_serial, 100)
    args.fanout_seconds = min(args.fanout_seconds, 3.0)
    args.reconcile_events = min(args.reconcile_events, 20_000)
    args.search_events = min(args.search_events, 50_000)
    args.search_serial = min(args.search_serial, 50)
    args.bystander_seconds = min(args.bystander_seconds, 5.0)
    args.bystander_preload = min(args.bystander_preload, 5_000)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.report: dict[str, Any] = {}
        self.profiles: dict[str, Any] = {}

    def relay_options(self, **overrides: Any) -> RelayOptions:
        base: dict[str, Any] = {"store_url": self.args.store_url, "workers": self.args.workers,
                                "profile_dir": self.args.profile, "profile_gil": self.args.profile_gil,
                                "uvloop": self.args.relay_uvloop,
                                "extra_env": dict(kv.split("=", 1) for kv in self.args.relay_env)}
        base.update(overrides)
        return RelayOptions(**base)

    async def with_relay(
        self, label: str, body: Callable[[str, int | None, RelayProcess | None], Awaitable[dict[str, Any]]],
        options: RelayOptions | None = None, before_start: Callable[[RelayProcess], None] | None = None,
    ) -> dict[str, Any]:
        """Run ``body(url, pid, relay)`` against ``--url`` or a relay started for it."""
        if self.args.url:
            return await body(self.args.url, self.args.pid, None)
        relay = RelayProcess(options or self.relay_options(), label)
        try:
            await relay.prepare_store()
            if before_start is not None:
                before_start(relay)
            await relay.start()
            result = await body(relay.url, relay.pid, relay)
            result["relay_store"] = "postgresql" if relay.pg else "sqlite"
            result["relay_workers"] = relay.options.workers
            return result
        except BaseException:
            if relay.proc is not None:
                log(f"relay log tail:\n{relay.log_tail()}")
            raise
        finally:
            await relay.cleanup()
            if relay.options.profile_dir is not None:
                self.profiles[label] = summarise_profile(relay.options.profile_dir / f"{label}.txt",
                                                         seconds=relay.profile_seconds, rate=PROFILE_RATE)

    # --- scenarios ---------------------------------------------------------------------

    def ingest_set(self) -> EventSetSpec:
        return EventSetSpec("ingest", self.args.ingest_events, self.args.seed, authors=500, p_targets=100)

    async def verify_ceiling(self) -> dict[str, Any]:
        spec = self.ingest_set()
        path, _ = ensure_event_set(spec)
        return measure_ceiling(path, min(self.args.ceiling_signatures, spec.count))

    async def subindex(self) -> dict[str, Any]:
        return run_subindex(tuple(sorted(self.args.subindex_sizes)))

    async def ingest(self, options: RelayOptions | None = None, label: str = "ingest") -> dict[str, Any]:
        a = self.args
        spec = self.ingest_set()
        path, signed = ensure_event_set(spec)
        if signed:
            log(f"signed {spec.count} events in {signed:.1f} s (cached in {path})")

        async def body(url: str, pid: int | None, relay: RelayProcess | None) -> dict[str, Any]:
            return await run_ingest(url, path, spec.count, processes=a.ingest_processes,
                                    connections=a.ingest_connections, window=a.ingest_window, relay_pid=pid)

        result = await self.with_relay(label, body, options)
        ceiling = self.report.get("verify_ceiling", {}).get("verifications_per_second")
        if ceiling:
            result["fraction_of_verify_ceiling"] = round(result["events_per_second"] / ceiling, 3)
        result["verdict"] = self.client_verdict(result)
        return result

    def query_set(self) -> EventSetSpec:
        n = self.args.query_events
        return EventSetSpec("query", n, self.args.seed, authors=max(1, n // 100), p_targets=max(1, n // 500))

    async def query(self, options: RelayOptions | None = None, label: str = "query") -> dict[str, Any]:
        a = self.args
        spec = self.query_set()
        path, signed = ensure_event_set(spec)
        if signed:
            log(f"signed {spec.count} events in {signed:.1f} s (cached in {path})")
        shapes = filter_shapes(author_pubkeys(spec), p_target_pubkeys(spec), 1000, a.seed)
        loaded: dict[str, Any] = {}

        def import_dataset(relay: RelayProcess) -> None:
            summary, seconds = relay.import_events(path)
            loaded.update({"method": "satsrelay import", "summary": summary, "seconds": round(seconds, 1)})
            log(f"imported dataset: {summary} in {seconds:.1f} s")

        async def body(url: str, pid: int | None, relay: RelayProcess | None) -> dict[str, Any]:
            if relay is None:  # a running relay: load the dataset over the wire
                ingest = await run_ingest(url, path, spec.count, processes=a.ingest_processes,
                                          connections=a.ingest_connections, window=a.ingest_window, relay_pid=pid)
                loaded.update({"method": "EVENT over WebSocket", "ok_true": ingest["ok_true"],
                               "ok_true_duplicate": ingest["ok_true_duplicate"]})
            result = await run_query(url, shapes, serial_count=a.query_serial, processes=a.query_processes,
                                     connections=a.query_connections, seconds=a.query_seconds, relay_pid=pid)
            return {"dataset": {"events": spec.count, "authors": spec.authors, "p_targets": spec.p_targets,
                                "load": loaded}, **result}

        return await self.with_relay(label, body, options, before_start=import_dataset)

    async def fanout(self) -> dict[str, Any]:
        a = self.args
        spec = EventSetSpec("fanout", max(1, int(a.fanout_rate * a.fanout_seconds)), a.seed, authors=20, p_targets=5)
        path, _ = ensure_event_set(spec)

        async def body(url: str, pid: int | None, relay: RelayProcess | None) -> dict[str, Any]:
            return await run_fanout(url, path, subscribers=a.fanout_subscribers, processes=a.fanout_processes,
                                    rate=a.fanout_rate, seconds=a.fanout_seconds, relay_pid=pid)

        return await self.with_relay("fanout", body)

    async def crossnode(self) -> dict[str, Any]:
        """issue 5: fan-out across two relay processes on one PostgreSQL: subscribers on
        node B, the publisher on node A (PostgreSQL LISTEN/NOTIFY in between)."""
        a = self.args
        if not a.store_url:
            return {"skipped": "cross-node fan-out needs PostgreSQL: give --store-url postgresql://..."}
        spec = EventSetSpec("fanout", max(1, int(a.fanout_rate * a.fanout_seconds)), a.seed + 1000, authors=20,
                            p_targets=5)
        path, _ = ensure_event_set(spec)
        node_a = RelayProcess(self.relay_options(workers=1), "crossnode-a")
        node_b: RelayProcess | None = None
        try:
            await node_a.prepare_store()
            await node_a.start()
            node_b = RelayProcess(self.relay_options(workers=1, store_url=node_a.store_url, shared_store=True),
                                  "crossnode-b")
            await node_b.start()
            result = await run_fanout(node_b.url, path, subscribers=a.fanout_subscribers,
                                      processes=a.fanout_processes, rate=a.fanout_rate, seconds=a.fanout_seconds,
                                      relay_pid=node_b.pid, publish_url=node_a.url)
            result["relay_cpu_cores_used_is"] = "node B (the subscribers' node)"
            return result
        except BaseException:
            for node in (node_a, node_b):
                if node is not None and node.proc is not None:
                    log(f"{node.label} log tail:\n{node.log_tail()}")
            raise
        finally:
            if node_b is not None:
                await node_b.cleanup()
            await node_a.cleanup()

    async def idle(self) -> dict[str, Any]:
        a = self.args
        out: dict[str, Any] = {}
        # A running relay has one compression setting: offer deflate as browsers do and report
        # whether it was negotiated. A started relay is measured both ways.
        for compression in ((True,) if a.url else (False, True)):
            async def body(url: str, pid: int | None, relay: RelayProcess | None, c: bool = compression
                           ) -> dict[str, Any]:
                if pid is None:
                    return {"skipped": "give --pid with --url to read the relay's RSS"}
                return await run_idle(url, pid, connections=a.idle_connections, processes=a.idle_processes,
                                      compression=c)

            key = "as_configured" if a.url else "compression_on" if compression else "compression_off"
            out[key] = await self.with_relay(f"idle-{key}", body, self.relay_options(compression=compression))
        return out

    async def idle_alloc(self) -> dict[str, Any]:
        """Bytes and blocks each idle connection keeps allocated (tracemalloc), by the line
        that allocated them: a figure the machine's load does not move."""
        a = self.args
        if a.url:
            return {"skipped": "tracemalloc needs the relay in the bench's own process (no --url)"}
        return await run_idle_alloc(connections=a.idle_connections, processes=a.idle_processes)

    async def reconcile(self) -> dict[str, Any]:
        a = self.args
        return await run_reconcile(a.store_url, a.reconcile_events, a.reconcile_difference, a.seed, log)

    async def search(self) -> dict[str, Any]:
        a = self.args
        return await run_search(a.store_url, a.search_events, a.search_serial, a.seed, log)

    async def workers(self) -> dict[str, Any]:
        """issue 5 / 19: ingest with serve --workers 1 and --workers 2, alternating, three
        rounds each (a shared machine's noise moves runs in a row together), on SQLite (the
        writer process of relay.workers) or on --store-url."""
        runs: dict[str, list[dict[str, Any]]] = {"workers_1": [], "workers_2": []}
        for round_ in range(3):
            for n in (1, 2):
                runs[f"workers_{n}"].append(await self.ingest(self.relay_options(workers=n), f"workers{n}-{round_}"))

        def median(key: str, pick: Callable[[dict[str, Any]], float]) -> float:
            values = sorted(pick(r) for r in runs[key])
            return values[len(values) // 2]

        out: dict[str, Any] = {"store": self.args.store_url or "sqlite", **runs}
        for key in runs:
            out[f"{key}_median"] = {
                "events_per_second": median(key, lambda r: float(r["events_per_second"])),
                "p99_ms": median(key, lambda r: float(r["ok_latency"]["p99_ms"])),
            }
            if all("fraction_of_verify_ceiling" in r for r in runs[key]):  # with verify_ceiling run first
                out[f"{key}_median"]["fraction_of_verify_ceiling"] = median(
                    key, lambda r: float(r["fraction_of_verify_ceiling"])
                )
        out["ratio_2_to_1"] = round(
            out["workers_2_median"]["events_per_second"] / max(1.0, out["workers_1_median"]["events_per_second"]), 2
        )
        return out

    async def stores(self) -> dict[str, Any]:
        """issue 5: ingest and query on SQLite and on PostgreSQL (--store-url), same load."""
        if not self.args.store_url:
            return {"skipped": "give --store-url postgresql://... to compare with SQLite"}
        out: dict[str, Any] = {}
        for name, url in (("sqlite", None), ("postgresql", self.args.store_url)):
            options = self.relay_options(store_url=url, workers=1)
            out[name] = {"ingest": await self.ingest(options, f"stores-{name}-ingest"),
                         "query": await self.query(options, f"stores-{name}-query")}
        s, p = out["sqlite"], out["postgresql"]
        out["postgresql_to_sqlite"] = {
            "ingest_ratio": round(p["ingest"]["events_per_second"] / max(1, s["ingest"]["events_per_second"]), 2),
            **{f"{shape}_eose_p50_ms": [s["query"][shape]["serial"]["eose"]["p50_ms"],
                                        p["query"][shape]["serial"]["eose"]["p50_ms"]]
               for shape in ("authors_limit50", "kinds1_limit50", "tag_p_limit50")},
        }
        return out

    async def soak(self) -> dict[str, Any]:
        """issue 8: a mixed honest + abusive load for ``--minutes`` against the relay's real
        limits (bench/soak.py); never part of the default run."""
        a = self.args
        store_url = None
        if a.store == "postgres":
            store_url = a.store_url or "postgresql://postgres@127.0.0.1:5432/test"
        options = self.relay_options(store_url=store_url, workers=1, limits=SOAK_LIMITS, sections=SOAK_SECTIONS)
        return await run_soak(options, seconds=a.minutes * 60, seed=a.seed, preload=a.soak_preload,
                              sample_every=a.soak_sample_seconds, honest_rate=a.soak_honest_rate,
                              attack_scale=a.soak_attack_scale, log=log)

    async def bystander(self) -> dict[str, Any]:
        """issue 17: each free, expensive request a stranger can send, at the rate the relay
        allows, while a bystander on another address reads and writes (bench/bystander.py);
        never part of the default run. SQLite, or PostgreSQL with --store-url; --workers."""
        a = self.args
        return await run_bystander(self.relay_options(), attacks=a.attacks, seconds=a.bystander_seconds,
                                   seed=a.seed, preload=a.bystander_preload, log=log)

    @staticmethod
    def client_verdict(result: dict[str, Any]) -> str:
        cores = os.cpu_count() or 1
        client = result["client"]["cpu_cores_used"]
        relay = result.get("relay", {}).get("cpu_cores_used")
        if relay is None:
            return f"client used {client} cores; relay CPU unknown (give --pid)"
        busy = result["machine_busy_cores"]
        other = result.get("other_processes_cores", 0.0)
        pg = result.get("postgres_processes_cores", 0.0)
        head = (f"client used {client} cores ({result['client']['cpu_us_per_event']} us/event), relay {relay} "
                f"cores ({result['relay']['cpu_us_per_event']} us/event), postgres {pg}, other processes {other}, "
                f"of {cores}: ")
        if busy < 0.9 * cores:
            return head + "CPU to spare, so the relay's own pipeline (not the client, not the machine) set the pace"
        if other > 0.25:
            return head + "the machine was saturated and other processes took a share: figures are pessimistic"
        if pg > 0.25:
            return head + "the machine was saturated, PostgreSQL sharing the cores with the relay"
        if client >= relay:
            return head + "the machine was saturated and the client used as much as the relay: client-bound"
        return head + "the machine was saturated, mostly by the relay: relay-bound, client not the limit"

    async def run(self) -> dict[str, Any]:
        scenarios = self.args.scenarios or DEFAULT_SCENARIOS
        self.report["machine"] = {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        }
        self.report["relay"] = {"url": self.args.url or "started per scenario",
                                "store": self.args.store_url or "sqlite (temp file)", "workers": self.args.workers,
                                "env": self.args.relay_env, "uvloop": self.args.relay_uvloop}
        for name in ALL_SCENARIOS:
            if name not in scenarios:
                continue
            log(f"scenario {name} ...")
            started = time.perf_counter()
            load_before = os.getloadavg()[0]
            self.report[name] = await getattr(self, name)()
            # Other work on the machine steals the cores being measured; keep the evidence.
            self.report[name]["machine_load_1min"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
            log(f"scenario {name} done in {time.perf_counter() - started:.1f} s")
        if self.profiles:
            self.report["profiles"] = self.profiles
        return self.report


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    if args.quick:
        apply_quick(args)
    if args.json and args.scenarios and "verify_ceiling" not in args.scenarios:
        args.scenarios.insert(0, "verify_ceiling")  # every figures document carries the machine's yardstick
    report = asyncio.run(Bench(args).run())
    report["commit"] = git_commit()
    if args.report is not None:
        args.report.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
    out = report
    if args.json:
        out = figures_document(report, commit=report["commit"], command=shlex.join(["python", "-m", "bench", *argv]))
    sys.stdout.buffer.write(orjson.dumps(out, option=orjson.OPT_INDENT_2) + b"\n")
    return 0


def git_commit() -> dict[str, Any]:
    """The commit the measured code is at, and whether the tree had changes on top of it."""
    def git(*cmd: str) -> str:
        return subprocess.run(["git", "-C", str(REPO), *cmd], capture_output=True, text=True, check=True).stdout

    try:
        return {"sha": git("rev-parse", "HEAD").strip(),
                "dirty": bool(git("status", "--porcelain", "--untracked-files=no").strip())}
    except (OSError, subprocess.CalledProcessError):
        return {"sha": "unknown", "dirty": None}


if __name__ == "__main__":
    sys.exit(main())
