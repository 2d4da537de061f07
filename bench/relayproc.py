"""The relay under test: a ``satsrelay serve`` subprocess on a free port with its own
temporary store, or a relay already running elsewhere (``--url``).

CPU and memory are read from /proc so the figures are the kernel's, not the relay's own
account: CPU sums the whole process tree (``--workers`` children included), RSS is VmRSS.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

REPO = Path(__file__).resolve().parent.parent
SATSRELAY = [sys.executable, "-m", "relay.cli"]
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PROFILE_RATE = 250  # py-spy samples per second

# Rate limits protect a public relay from one client; the load client is one client by design.
UNLIMITED = {
    "events_per_second": 1e9,
    "events_burst": 1_000_000_000,
    "ip_events_per_second": 1e9,
    "ip_events_burst": 1_000_000_000,
    "max_connections_per_ip": 1_000_000,
    "max_connections": 1_000_000,
    "pubkey_events_per_second": 1e9,
    "pubkey_events_burst": 1_000_000_000,
    "max_subscriptions": 1000,
}


@dataclass(frozen=True, slots=True)
class RelayOptions:
    store_url: str | None = None  # None: a fresh SQLite file in a temp dir
    compression: bool = False
    workers: int = 1
    log_level: str = "WARNING"
    profile_dir: Path | None = None  # py-spy record the relay into <dir>/<label>.txt (collapsed stacks)
    profile_gil: bool = False  # sample only the thread holding the GIL
    uvloop: bool = False  # run the unchanged relay on uvloop's event loop (an experiment; needs uvloop installed)
    shared_store: bool = False  # store_url names a database another started relay already owns (cross-node)
    extra_env: dict[str, str] = field(default_factory=dict)
    limits: dict[str, object] | None = None  # [limits] as given (None: UNLIMITED, the load client is one client)
    sections: dict[str, dict[str, object]] = field(default_factory=dict)  # more config sections, e.g. payments


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_config(path: Path, sections: dict[str, dict[str, object]], top: dict[str, object]) -> None:
    lines = [f"{k} = {_toml_value(v)}" for k, v in top.items()]
    for name, values in sections.items():
        lines.append(f"\n[{name}]")
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in values.items())
    path.write_text("\n".join(lines) + "\n")


def tree_pids(pid: int) -> list[int]:
    """``pid`` and all its descendants (from /proc/<pid>/task/*/children)."""
    found = [pid]
    i = 0
    while i < len(found):
        p = found[i]
        i += 1
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{p}/task"):
                with contextlib.suppress(OSError), open(f"/proc/{p}/task/{task}/children") as f:
                    found.extend(int(c) for c in f.read().split())
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU of the process tree rooted at ``pid``, all threads."""
    total = 0
    for p in tree_pids(pid):
        with contextlib.suppress(OSError), open(f"/proc/{p}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of stat)
    return total / CLOCK_TICKS


def rss_kib(pid: int) -> int:
    """VmRSS of the process tree rooted at ``pid``, KiB."""
    total = 0
    for p in tree_pids(pid):
        with contextlib.suppress(OSError), open(f"/proc/{p}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


class PostgresDatabase:
    """A fresh database per run on the server ``base_url`` names, dropped afterwards, so
    runs never see each other's events."""

    def __init__(self, base_url: str, name: str) -> None:
        self.base_url = base_url
        self.name = name
        scheme, rest = base_url.split("://", 1)
        server = rest.split("/", 1)[0].split("?", 1)[0]
        self.url = f"{scheme}://{server}/{name}"

    async def create(self) -> None:
        conn = await asyncpg.connect(self.base_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{self.name}"')
            await conn.execute(f'CREATE DATABASE "{self.name}"')
        finally:
            await conn.close()

    async def drop(self) -> None:
        conn = await asyncpg.connect(self.base_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        finally:
            await conn.close()


class RelayProcess:
    """A relay started for one scenario and stopped after it."""

    def __init__(self, options: RelayOptions, label: str) -> None:
        self.options = options
        self.label = label
        self.tmp = Path(tempfile.mkdtemp(prefix=f"satsrelay-bench-{label}-"))
        self.port = free_port()
        self.url = f"ws://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.profiler: subprocess.Popen[bytes] | None = None
        self.profile_started = 0.0
        self.profile_seconds = 0.0
        self.pg: PostgresDatabase | None = None
        if options.store_url is None:
            self.store_url = f"sqlite:///{self.tmp / 'relay.db'}"
        elif options.shared_store:
            self.store_url = options.store_url
        else:
            self.pg = PostgresDatabase(options.store_url, f"bench_{label}_{os.getpid()}".replace("-", "_"))
            self.store_url = self.pg.url
        self.config = self.tmp / "relay.toml"
        self._top: dict[str, object] = {"log_level": options.log_level}
        self._sections: dict[str, dict[str, object]] = {
            "server": {
                "host": "127.0.0.1",
                "port": self.port,
                "compression": options.compression,
                "workers": options.workers,
                # /metrics on the relay's own port, to this token (no shared loopback listener)
                "metrics_listen": "",
                "metrics_token": BENCH_METRICS_TOKEN,
            },
            # AUTH (NIP-42) checks the relay URL a client signs against this one.
            "relay": {"public_url": self.url},
            "storage": {"url": self.store_url},
            "limits": dict(UNLIMITED) if options.limits is None else dict(options.limits),
            **{name: dict(values) for name, values in options.sections.items()},
        }
        write_config(self.config, self._sections, self._top)

    def configure(self, section: str, **values: object) -> None:
        """Set config keys before start, e.g. paths inside ``self.tmp``."""
        self._sections.setdefault(section, {}).update(values)
        write_config(self.config, self._sections, self._top)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def prepare_store(self) -> None:
        if self.pg is not None:
            await self.pg.create()

    def import_events(self, jsonl: Path) -> tuple[str, float]:
        """``satsrelay import`` into the stopped relay's store; the CLI's summary line and seconds."""
        started = time.perf_counter()
        done = subprocess.run(
            [*SATSRELAY, "--config", str(self.config), "import", str(jsonl)],
            cwd=REPO,
            capture_output=True,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"satsrelay import failed: {done.stderr.decode()[-2000:]}")
        return done.stdout.decode().strip(), time.perf_counter() - started

    def _spawn(self) -> subprocess.Popen[bytes]:
        self.log = (self.tmp / "relay.log").open("wb")
        # uvloop.install() swaps the loop policy, so the relay's own asyncio.run() gets uvloop
        # without a line of relay code changing: what an adoption would gain, measured first.
        launcher = ([sys.executable, "-c", "import sys, uvloop; uvloop.install(); from relay.cli import main; "
                     "sys.exit(main(sys.argv[1:]))"] if self.options.uvloop else SATSRELAY)
        return subprocess.Popen(
            [*launcher, "serve", "--config", str(self.config)],
            cwd=REPO,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **self.options.extra_env},
        )

    def _spawn_profiler(self, pid: int) -> subprocess.Popen[bytes]:
        """py-spy samples the running relay from outside (no relay code change); ``raw`` is
        the collapsed-stack format ``bench.profile`` summarises. ``--nonblocking`` keeps it
        from pausing the relay at each sample, which would inflate the latencies measured."""
        assert self.options.profile_dir is not None
        self.options.profile_dir.mkdir(parents=True, exist_ok=True)
        out = self.options.profile_dir / f"{self.label}.txt"
        cmd = [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(pid), "--format", "raw",
               "--rate", str(PROFILE_RATE), "--nonblocking", "-o", str(out)]
        if self.options.profile_gil:
            cmd.append("--gil")
        self.profile_started = time.monotonic()
        if self.options.workers > 1:
            cmd.append("--subprocesses")
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    async def start(self) -> None:
        self.proc = self._spawn()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"relay exited at start-up:\n{self.log_tail()}")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                await asyncio.sleep(0.1)
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            # Every worker listening before the load starts: the first one to bind answers the
            # probe, and a fixed 0.3 s was not enough for SQLite's (they start once the writer
            # process has opened the file): the kernel then gave all 8 load connections to one
            # worker, and --workers 2 measured below --workers 1.
            while time.monotonic() < deadline and self.proc.poll() is None:
                if listening_sockets(self.port) >= self.options.workers:
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.05)
            if self.options.profile_dir is not None:
                self.profiler = self._spawn_profiler(self.proc.pid)
            return
        raise RuntimeError(f"relay did not listen within 30 s:\n{self.log_tail()}")

    def log_tail(self, n: int = 3000) -> str:
        path = self.tmp / "relay.log"
        return path.read_bytes()[-n:].decode(errors="replace") if path.exists() else ""

    async def stop(self) -> None:
        if self.profiler is not None:
            self.profile_seconds = time.monotonic() - self.profile_started
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                await asyncio.to_thread(self.proc.wait, 30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None:
            self.log.close()
        self.proc = None
        if self.profiler is not None:  # py-spy writes its file when the relay exits
            try:
                await asyncio.to_thread(self.profiler.wait, 30)
            except subprocess.TimeoutExpired:
                self.profiler.kill()
            self.profiler = None

    async def cleanup(self) -> None:
        await self.stop()
        if self.pg is not None:
            with contextlib.suppress(Exception):
                await self.pg.drop()
        shutil.rmtree(self.tmp, ignore_errors=True)


def listening_sockets(port: int) -> int:
    """TCP sockets listening on ``port`` on this machine (one per SO_REUSEPORT worker)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                    count += 1
    return count


BENCH_METRICS_TOKEN = "bench-metrics"  # [server] metrics_token of the relays bench starts


async def writer_metrics(ws_url: str) -> dict[str, float]:
    """The relay's group-commit counters from ``/metrics`` (one worker's, with ``--workers``)."""
    import httpx

    http_url = ws_url.replace("ws://", "http://", 1).replace("wss://", "https://", 1).rstrip("/") + "/metrics"
    wanted = {f"satsrelay_writer_{n}_total" for n in ("batches", "events", "commit_seconds")}
    async with httpx.AsyncClient(timeout=10) as client:
        text = (await client.get(http_url, headers={"Authorization": f"Bearer {BENCH_METRICS_TOKEN}"})).text
    out: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in wanted:
            out[name.removeprefix("satsrelay_writer_").removesuffix("_total")] = float(value)
    return out


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent busy since boot (/proc/stat: everything but idle and
    iowait). Sampled around a phase, it shows how much CPU *other* processes took: on a
    shared 2-core machine that is the difference between a slow relay and a starved one."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / CLOCK_TICKS


def postgres_cpu_seconds() -> float:
    """CPU of every process named postgres on this machine (the server's backends). With
    ``--store-url`` on a local server this is the database's share of the work; it also
    counts other clients' queries, so read it next to ``other_processes_cores``."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError), open(f"/proc/{entry}/stat") as f:
            head, _, tail = f.read().rpartition(")")
            if head.split("(", 1)[-1].startswith("postgres"):
                fields = tail.split()
                total += int(fields[11]) + int(fields[12])
    return total / CLOCK_TICKS
