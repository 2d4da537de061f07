"""Soak: a mixed honest + abusive load against one relay for N minutes (issue 8, "Also").

The relay runs with its real defaults (rate limits, payments on with the demo wallet,
AUTH), not bench's lifted limits: the point is to watch the defences hold for a long
time, not to measure peak throughput. Every client class connects from its own loopback
address (127/8 all reaches the relay), so per-IP limits treat honest and abusive clients
as the different machines they would be.

Honest (the bystanders whose service must not suffer):
- ``publishers`` paid keys (granted with ``satsrelay accounts grant``) publish kind-1
  notes at ``--honest-rate`` events/s in all; one of them also sends a kind-4 DM to
  another every tenth event. Each OK's latency is measured (write to OK frame);
- ``subscribers`` connections hold a live subscription to the notes and count deliveries;
- a prober asks a stored REQ (limit 50, three shapes, and the DM recipient's own DMs
  after AUTH) twice a second and measures write-to-EOSE.

Abusive (each class counted by what the relay answered):
- ``unpaid_writes``: kind-1 events from keys that never paid;
- ``inbox_spam``: unpaid keys p-tagging a paying member (the bounded free inbox);
- ``fake_zaps``: 30 KB kind-9735 "receipts" without bolt11 or description;
- ``bad_values``: a paying key's events with created_at / expiration past int64, NUL
  in a tag, and filters with ``since`` past int64;
- ``malformed``: invalid JSON, wrong shapes, unknown verbs, frames over the size cap;
- ``huge_req``: REQs ``limit 5000`` over the stored set on connections that never read;
- ``reconnect_flood``: connect, pipeline 20 unpaid events, close, again, from ten addresses;
- ``count_probe``: COUNT/REQ for the DM recipient's events, unauthenticated and as a
  stranger; any non-zero answer is a leak;
- ``invoice_flood``: the join page's invoice route for random pubkeys, from 20 addresses.

Reported: the relay's RSS over time, per class the answers by NIP-01 prefix, bystander OK
and EOSE latency p50/p99, live deliveries against the expected count, and the relay log's
WARNING / ERROR / Traceback line counts (expected tracebacks: zero).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from bench.events import EventSetSpec, ensure_event_set, secret_for
from bench.latency import summary_ms
from bench.loadproc import Ready, WorkerGroup
from bench.relayproc import REPO, SATSRELAY, RelayOptions, RelayProcess, cpu_seconds, machine_busy_seconds, rss_kib
from bench.wsclient import RawWebSocket, client_frame
from relay.nostr.crypto import public_key
from relay.nostr.event import sign_event

HONEST_IP = {"publishers": "127.0.0.2", "subscribers": "127.0.0.3", "prober": "127.0.0.4"}
ATTACK_IP = {
    "unpaid_writes": "127.0.1.1",
    "inbox_spam": "127.0.1.2",
    "fake_zaps": "127.0.1.3",
    "bad_values": "127.0.1.4",
    "malformed": "127.0.1.5",
    "huge_req": "127.0.1.6",
    "count_probe": "127.0.1.7",
}
FLOOD_IPS = [f"127.0.2.{i}" for i in range(1, 11)]
INVOICE_IPS = [f"127.0.3.{i}" for i in range(1, 21)]
INT64_PAST = 2**63  # one past int64's maximum


def keys(seed: int, role: str, n: int) -> list[bytes]:
    return [secret_for(seed, role, i) for i in range(n)]


def pubkey(secret: bytes) -> str:
    return public_key(secret).hex()


@dataclass(frozen=True, slots=True)
class SoakJob:
    role: str  # "honest" or "attack"
    url: str
    seconds: float
    seed: int
    publishers: int = 4
    subscribers: int = 10
    honest_rate: float = 20.0
    attack_scale: float = 1.0


def reply_label(payload: bytes) -> str:
    """An OK's outcome: ``accepted`` or the NIP-01 prefix of the refusal."""
    msg = orjson.loads(payload)
    if msg[2]:
        return "accepted"
    reason = str(msg[3])
    return "refused:" + (reason.split(":", 1)[0] if ":" in reason else "(no prefix)")


class Conn:
    """A RawWebSocket whose messages go to ``handle``; remembers the AUTH challenge."""

    def __init__(self, handle: Callable[[bytes, float], None] | None = None) -> None:
        self.handle = handle
        self.ws: RawWebSocket | None = None
        self.challenge = ""

    def _on(self, payload: bytes, now: float) -> None:
        if payload.startswith(b'["AUTH"'):
            self.challenge = orjson.loads(payload)[1]
            return
        if self.handle is not None:
            self.handle(payload, now)

    async def open(self, url: str, source: str) -> Conn:
        self.ws = await RawWebSocket.connect(url, self._on, timeout=10, source=source)
        return self

    @property
    def alive(self) -> bool:
        return self.ws is not None and not self.ws.closed.done()

    def send(self, msg: Any) -> None:
        assert self.ws is not None
        self.ws.send(msg if isinstance(msg, bytes) else orjson.dumps(msg))

    async def auth(self, secret: bytes, url: str) -> None:
        for _ in range(50):
            if self.challenge:
                break
            await asyncio.sleep(0.02)
        ev = sign_event(secret, 22242, "", [["relay", url], ["challenge", self.challenge]], int(time.time()))
        self.send(["AUTH", ev.to_dict()])
        await asyncio.sleep(0.1)

    def close(self) -> None:
        if self.ws is not None:
            self.ws.close()


# --- honest ------------------------------------------------------------------------------


async def honest_main(job: SoakJob, ready: Ready) -> dict[str, Any]:
    pubs = keys(job.seed, "soak-publisher", job.publishers)
    dm_from, dm_to = pubs[0], pubs[1]
    out: dict[str, Any] = {"ok": Counter(), "ok_latency": [], "eose_latency": [], "dm_reads": Counter()}
    sent_at: dict[str, float] = {}
    dm_ids: set[str] = set()
    notes_accepted = 0
    delivered = 0

    def on_ok(payload: bytes, now: float) -> None:
        nonlocal notes_accepted
        if not payload.startswith(b'["OK"'):
            return
        eid = payload[7:71].decode()
        started = sent_at.pop(eid, None)
        label = reply_label(payload)
        out["ok"][label] += 1
        if started is not None:
            out["ok_latency"].append(now - started)
            if label == "accepted" and eid not in dm_ids:
                notes_accepted += 1  # kind 1 tagged "soak": what every subscriber should get

    def on_live(payload: bytes, now: float) -> None:
        nonlocal delivered
        if payload.startswith(b'["EVENT","live"'):
            delivered += 1

    publishers = [await Conn(on_ok).open(job.url, HONEST_IP["publishers"]) for _ in pubs]
    subscribers = [await Conn(on_live).open(job.url, HONEST_IP["subscribers"]) for _ in range(job.subscribers)]
    for s in subscribers:
        s.send(["REQ", "live", {"kinds": [1], "#t": ["soak"], "limit": 0}])
    eose_wait: dict[str, tuple[float, asyncio.Future[int]]] = {}
    got: Counter[str] = Counter()

    def on_probe(payload: bytes, now: float) -> None:
        if payload.startswith(b'["EVENT"'):
            got[orjson.loads(payload)[1]] += 1
            return
        if payload.startswith((b'["EOSE"', b'["CLOSED"')):
            msg = orjson.loads(payload)
            waiter = eose_wait.pop(msg[1], None)
            if waiter is not None:
                out["eose_latency"].append(now - waiter[0])
                if not waiter[1].done():
                    waiter[1].set_result(got.pop(msg[1], 0) if msg[0] == "EOSE" else -1)

    prober = await Conn(on_probe).open(job.url, HONEST_IP["prober"])
    await prober.auth(dm_to, job.url)  # the DM recipient reads its own DMs on this connection
    authors = [pubkey(s) for s in pubs]
    shapes: list[dict[str, Any]] = [
        {"kinds": [1], "limit": 50},
        {"authors": [authors[2 % len(authors)]], "limit": 50},
        {"#t": ["soak"], "limit": 50},
        {"kinds": [4], "#p": [pubkey(dm_to)], "limit": 10},
    ]
    await ready()
    started = time.monotonic()
    end = started + job.seconds
    interval = len(pubs) / job.honest_rate

    async def publish(i: int, conn: Conn, secret: bytes) -> None:
        n = 0
        await asyncio.sleep(interval * i / len(pubs))
        while time.monotonic() < end and conn.alive:
            n += 1
            if secret is dm_from and n % 10 == 0:
                ev = sign_event(secret, 4, f"dm {n}", [["p", pubkey(dm_to)]], int(time.time()))
                dm_ids.add(ev.id)
            else:
                ev = sign_event(secret, 1, f"soak note {n} from publisher {i} " + "x" * 160, [["t", "soak"]],
                                int(time.time()))
            sent_at[ev.id] = time.perf_counter()
            conn.send(["EVENT", ev.to_dict()])
            await asyncio.sleep(interval)

    async def probe() -> None:
        n = 0
        while time.monotonic() < end and prober.alive:
            shape = shapes[n % len(shapes)]
            sub = f"p{n}"
            fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            eose_wait[sub] = (time.perf_counter(), fut)
            prober.send(["REQ", sub, shape])
            try:
                count = await asyncio.wait_for(fut, 30)
            except TimeoutError:
                out["ok"]["probe_timeout"] += 1
                count = -2
            prober.send(["CLOSE", sub])
            if "#p" in shape:  # the recipient must see its DMs (after the first ten events)
                out["dm_reads"]["some" if count > 0 else "none" if count == 0 else "closed"] += 1
            n += 1
            await asyncio.sleep(0.5)

    await asyncio.gather(*(publish(i, c, s) for i, (c, s) in enumerate(zip(publishers, pubs, strict=True))),
                         probe())
    await asyncio.sleep(2)  # the last OKs and deliveries
    out["alive_at_end"] = sum(c.alive for c in (*publishers, *subscribers, prober))
    for c in (*publishers, *subscribers, prober):
        c.close()
    return {
        "role": "honest",
        "client_cpu_seconds": round(time.process_time(), 1),
        "ok": dict(out["ok"]),
        "ok_latency": summary_ms(out["ok_latency"]),
        "eose_latency": summary_ms(out["eose_latency"]),
        "dm_reads_by_recipient": dict(out["dm_reads"]),
        "notes_accepted": notes_accepted,
        "live_deliveries": delivered,
        "live_deliveries_expected": notes_accepted * job.subscribers,
        "connections_alive_at_end": out["alive_at_end"],
        "connections": len(publishers) + len(subscribers) + 1,
    }


# --- attackers ---------------------------------------------------------------------------


class Tally:
    """Per attack class: what the relay answered, by outcome."""

    def __init__(self) -> None:
        self.by_class: dict[str, Counter[str]] = {}

    def add(self, cls: str, label: str, n: int = 1) -> None:
        self.by_class.setdefault(cls, Counter())[label] += n

    def handler(self, cls: str) -> Callable[[bytes, float], None]:
        def on(payload: bytes, now: float) -> None:
            if payload.startswith(b'["OK"'):
                self.add(cls, reply_label(payload))
            elif payload.startswith(b'["NOTICE"'):
                self.add(cls, "notice")
            elif payload.startswith(b'["CLOSED"'):
                reason = str(orjson.loads(payload)[2])
                self.add(cls, "closed:" + reason.split(":", 1)[0])
            elif payload.startswith(b'["EOSE"'):
                self.add(cls, "eose")
            elif payload.startswith(b'["EVENT"'):
                # every attack REQ asks only for what it may not read (count_probe) or never
                # reads (huge_req): an event here is a leak
                self.add(cls, "req_event_leak" if cls == "count_probe" else "event_received")
            elif payload.startswith(b'["COUNT"'):
                msg = orjson.loads(payload)
                self.add(cls, "count_leak" if msg[2].get("count", 0) > 0 else "count_zero")

        return on


async def _reconnecting(tally: Tally, cls: str, url: str, source: str, end: float,
                        body: Callable[[Conn], Any]) -> None:
    """Run ``body(conn)`` on a connection, opening a new one whenever the relay closes it."""
    while time.monotonic() < end:
        try:
            conn = await Conn(tally.handler(cls)).open(url, source)
        except (OSError, ConnectionError, TimeoutError) as exc:
            tally.add(cls, "connect_refused" if "429" in str(exc) or "503" in str(exc) else "connect_failed")
            await asyncio.sleep(0.5)
            continue
        tally.add(cls, "connections")
        try:
            await body(conn)
        finally:
            if not conn.alive:
                tally.add(cls, "closed_by_relay")
            conn.close()


async def attack_main(job: SoakJob, ready: Ready) -> dict[str, Any]:
    rng = random.Random(job.seed)
    scale = job.attack_scale
    url = job.url
    tally = Tally()
    now = int(time.time())
    publishers = keys(job.seed, "soak-publisher", 2)
    dm_from, member = pubkey(publishers[0]), pubkey(publishers[1])  # honest_main's DM pair
    unpaid = keys(job.seed, "soak-unpaid", 20)
    abuser = secret_for(job.seed, "soak-paid-abuser", 0)  # paid, and sends what no store can hold
    # Pre-signed: a refused event is never stored, so the same ones can be sent again.
    unpaid_events = [sign_event(unpaid[i % 20], 1, f"spam {i} " + "s" * 200, [], now).to_dict() for i in range(400)]
    inbox_events = [sign_event(unpaid[i % 20], 1, f"hi member {i}", [["p", member]], now + i // 20).to_dict()
                    for i in range(400)]
    zap_events = [sign_event(unpaid[i % 20], 9735, "z" * 30_000, [["p", member]], now).to_dict() for i in range(20)]
    bad_events = [
        sign_event(abuser, 1, "past int64", [], INT64_PAST).to_dict(),
        sign_event(abuser, 1, "expiration past int64", [["expiration", "99999999999999999999"]], now).to_dict(),
        sign_event(abuser, 1, "nul", [["t", "a\u0000b"]], now).to_dict(),
        sign_event(abuser, 2**31, "kind past int32", [], now).to_dict(),
    ]
    bad_filters: list[dict[str, Any]] = [{"since": INT64_PAST}, {"until": -1}, {"limit": INT64_PAST},
                                         {"kinds": [INT64_PAST]}, {"#t": ["a\u0000b"]}]
    malformed = [b"not json", b"[]", b'["EVENT"]', b'["EVENT", 1]', b'{"a":1}', b'["REQ"]', b'["HELLO","x"]',
                 b'["REQ","s",{"kinds":"x"}]', b'["EVENT",{"id":"00"}]', b"\xff\xfe", b'["CLOSE"]' * 10]
    oversized = b'["EVENT",{"content":"' + b"A" * 200_000 + b'"}]'
    stranger = secret_for(job.seed, "soak-stranger", 0)

    await ready()
    end = time.monotonic() + job.seconds

    def pace(base: float) -> float:
        return base / max(scale, 0.01)

    async def unpaid_writes(conn: Conn) -> None:
        i = 0
        while time.monotonic() < end and conn.alive:
            for _ in range(25):
                conn.send(["EVENT", unpaid_events[i % len(unpaid_events)]])
                i += 1
            tally.add("unpaid_writes", "sent", 25)
            await asyncio.sleep(pace(0.25))

    async def inbox_spam(conn: Conn) -> None:
        i = 0
        while time.monotonic() < end and conn.alive:
            conn.send(["EVENT", inbox_events[i % len(inbox_events)]])
            tally.add("inbox_spam", "sent")
            i += 1
            await asyncio.sleep(pace(0.1))

    async def fake_zaps(conn: Conn) -> None:
        i = 0
        while time.monotonic() < end and conn.alive:
            conn.send(["EVENT", zap_events[i % len(zap_events)]])
            tally.add("fake_zaps", "sent")
            i += 1
            await asyncio.sleep(pace(0.1))

    async def bad_values(conn: Conn) -> None:
        i = 0
        while time.monotonic() < end and conn.alive:
            conn.send(["EVENT", bad_events[i % len(bad_events)]])
            conn.send(["REQ", f"b{i}", bad_filters[i % len(bad_filters)]])
            conn.send(["CLOSE", f"b{i}"])
            tally.add("bad_values", "sent", 2)
            i += 1
            await asyncio.sleep(pace(0.1))

    async def malformed_frames(conn: Conn) -> None:
        i = 0
        while time.monotonic() < end and conn.alive:
            if i % 20 == 19:
                conn.send(oversized)  # past max_message_length: the relay closes the connection
                tally.add("malformed", "sent_oversized")
            else:
                conn.send(malformed[i % len(malformed)])
                tally.add("malformed", "sent")
            i += 1
            await asyncio.sleep(pace(0.05))

    async def huge_req(conn: Conn) -> None:
        assert conn.ws is not None and conn.ws.transport is not None
        for k in range(10):
            conn.send(["REQ", f"h{k}", {"limit": 5000}, {"kinds": [1], "until": int(time.time()) - k, "limit": 5000}])
        conn.ws.transport.pause_reading()  # never read: the relay must bound what it queues for us
        tally.add("huge_req", "sent", 10)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(conn.ws.closed), max(0.1, min(60.0, end - time.monotonic())))

    async def count_probe(conn: Conn) -> None:
        """Only the DMs from ``dm_from`` to ``member`` match these filters (its notes tag
        nobody; inbox spam is by other keys), so any count or event is a leak."""
        authed = False
        i = 0
        while time.monotonic() < end and conn.alive:
            if i == 50 and not authed:  # from here on: authenticated as a stranger
                await conn.auth(stranger, url)
                authed = True
            shape: dict[str, Any] = {"kinds": [4, 1059], "#p": [member]} if authed else {
                "authors": [dm_from], "#p": [member]}
            conn.send(["COUNT", f"c{i}", shape])
            conn.send(["COUNT", f"k{i}", {"kinds": [4, 1059]}])  # unauthenticated: auth-required
            conn.send(["REQ", f"r{i}", {**shape, "limit": 10}])
            conn.send(["CLOSE", f"r{i}"])
            tally.add("count_probe", "sent", 3)
            i += 1
            await asyncio.sleep(pace(0.2))

    async def reconnect_flood(source: str) -> None:
        frames = b"".join(client_frame(orjson.dumps(["EVENT", e])) for e in unpaid_events[:20])
        while time.monotonic() < end:
            try:
                conn = await Conn(tally.handler("reconnect_flood")).open(url, source)
            except (OSError, ConnectionError, TimeoutError) as exc:
                label = "connect_refused" if "429" in str(exc) or "503" in str(exc) else "connect_failed"
                tally.add("reconnect_flood", label)
                await asyncio.sleep(0.2)
                continue
            tally.add("reconnect_flood", "connections")
            assert conn.ws is not None
            conn.ws.send_frames(frames)
            tally.add("reconnect_flood", "sent", 20)
            await asyncio.sleep(0.05)  # read a few answers, then hang up
            conn.close()
            await asyncio.sleep(pace(0.1))

    async def invoice_flood() -> None:
        import httpx

        http = url.replace("ws://", "http://", 1)
        clients = [httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(local_address=ip), timeout=10)
                   for ip in INVOICE_IPS]
        try:
            i = 0
            while time.monotonic() < end:
                pk = rng.randbytes(32).hex()
                try:
                    r = await clients[i % len(clients)].post(f"{http}/api/invoice",
                                                             json={"pubkey": pk, "plan": "admission"})
                    tally.add("invoice_flood", f"http_{r.status_code}")
                except httpx.HTTPError as exc:
                    tally.add("invoice_flood", type(exc).__name__)
                i += 1
                await asyncio.sleep(pace(0.05))
        finally:
            for c in clients:
                await c.aclose()

    def on(cls: str, body: Callable[[Conn], Any]) -> Any:
        return _reconnecting(tally, cls, url, ATTACK_IP[cls], end, body)

    await asyncio.gather(
        on("unpaid_writes", unpaid_writes),
        on("inbox_spam", inbox_spam),
        on("fake_zaps", fake_zaps),
        on("bad_values", bad_values),
        on("malformed", malformed_frames),
        *(on("huge_req", huge_req) for _ in range(4)),
        on("count_probe", count_probe),
        *(reconnect_flood(ip) for ip in FLOOD_IPS),
        invoice_flood(),
    )
    await asyncio.sleep(1)
    return {"role": "attack", "client_cpu_seconds": round(time.process_time(), 1),
            **{cls: dict(sorted(c.items())) for cls, c in sorted(tally.by_class.items())}}


async def _worker(job: SoakJob, ready: Ready) -> dict[str, Any]:
    return await (honest_main(job, ready) if job.role == "honest" else attack_main(job, ready))


# --- the scenario ------------------------------------------------------------------------

SOAK_SECTIONS: dict[str, dict[str, object]] = {
    # The demo's payments: an unpaid key is refused, the join page issues invoices.
    "payments": {"enabled": True, "backend": "fake", "free_kinds": [22242]},
    "payments.admission": {"enabled": True, "fee_sats": 21, "term_days": 0},
}
# [limits] as documented (config.example.toml's defaults): nothing lifted.
SOAK_LIMITS: dict[str, object] = {}


def _log_counts(path: Path) -> dict[str, Any]:
    text = path.read_text(errors="replace") if path.exists() else ""
    lines = text.splitlines()
    first: dict[str, str] = {}
    for line in lines:
        for key in ("Traceback", "ERROR", "WARNING"):
            if key in line and key not in first:
                first[key] = line[:300]
    return {
        "lines": len(lines),
        "warning": sum("WARNING" in ln for ln in lines),
        "error": sum("ERROR" in ln for ln in lines),
        "traceback": sum("Traceback" in ln for ln in lines),
        "first": first,
    }


async def _grant(relay: RelayProcess, secrets: list[bytes]) -> None:
    """``satsrelay accounts grant <pubkey> --forever``: paid keys the way an operator makes them."""
    procs = [
        await asyncio.create_subprocess_exec(
            *SATSRELAY, "--config", str(relay.config), "accounts", "grant", pubkey(s), "--forever",
            cwd=REPO, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )
        for s in secrets
    ]
    for proc in procs:
        _, err = await proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"satsrelay accounts grant failed: {err.decode()[-1000:]}")


async def run_soak(options: RelayOptions, *, seconds: float, seed: int, preload: int, sample_every: float,
                   honest_rate: float, attack_scale: float,
                   log: Callable[[str], None]) -> dict[str, Any]:
    relay = RelayProcess(options, "soak")
    try:
        await relay.prepare_store()
        imported: dict[str, Any] = {}
        if preload:
            spec = EventSetSpec("query", preload, seed, authors=max(1, preload // 100),
                                p_targets=max(1, preload // 500))
            path, _ = ensure_event_set(spec)
            summary, took = relay.import_events(path)
            imported = {"events": preload, "summary": summary, "seconds": round(took, 1)}
            log(f"preloaded: {summary}")
        # Files the relay would otherwise put in the repository's data/ (with PostgreSQL).
        relay.configure("payments.fake", state_file=str(relay.tmp / "fake-wallet.db"))
        relay.configure("relay", key_file=str(relay.tmp / "relay.key"))
        paid = [*keys(seed, "soak-publisher", 4), secret_for(seed, "soak-paid-abuser", 0)]
        await _grant(relay, paid[:1])  # the first grant migrates a fresh store ...
        await _grant(relay, paid[1:])  # ... the rest run together
        await relay.start()
        jobs = [SoakJob(role, relay.url, seconds, seed, honest_rate=honest_rate, attack_scale=attack_scale)
                for role in ("honest", "attack")]
        group = WorkerGroup(_worker, jobs)
        await group.start_and_wait_ready()
        rss: list[tuple[int, int]] = [(0, rss_kib(relay.pid))]
        cpu0, busy0, t0 = cpu_seconds(relay.pid), machine_busy_seconds(), time.monotonic()
        group.go()
        results_task = asyncio.ensure_future(group.results(timeout=seconds + 300))
        next_log = t0 + 60
        while not results_task.done():
            await asyncio.wait([results_task], timeout=sample_every)
            if relay.proc is not None and relay.proc.poll() is not None:
                group.kill()
                raise RuntimeError(f"the relay exited during the soak:\n{relay.log_tail()}")
            elapsed = time.monotonic() - t0
            if not results_task.done():
                rss.append((round(elapsed), rss_kib(relay.pid)))
            if time.monotonic() >= next_log:
                log(f"soak {elapsed / 60:.0f} min: relay RSS {rss[-1][1] / 1024:.0f} MiB")
                next_log += 60
        by_role = {r.pop("role"): r for r in results_task.result()}
        honest, attack = by_role["honest"], by_role["attack"]
        wall = time.monotonic() - t0
        relay_cpu = (cpu_seconds(relay.pid) - cpu0) / wall
        busy = (machine_busy_seconds() - busy0) / wall
        rss_mib = [kib / 1024 for _, kib in rss]
        await relay.stop()
        logs = _log_counts(relay.tmp / "relay.log")
        return {
            "store": "postgresql" if relay.pg else "sqlite",
            "seconds": round(wall, 1),
            "preloaded": imported,
            "relay_rss_mib": {
                "start": round(rss_mib[0], 1),
                "max": round(max(rss_mib), 1),
                "end": round(rss_mib[-1], 1),
                "samples": [[t, round(kib / 1024, 1)] for t, kib in rss],
            },
            "relay_cpu_cores_used": round(relay_cpu, 2),
            "machine_busy_cores": round(busy, 2),
            "machine_load_1min_end": round(os.getloadavg()[0], 2),
            "honest": honest,
            "attack": attack,
            "relay_log": logs,
        }
    except BaseException:
        if relay.proc is not None:
            log(f"relay log tail:\n{relay.log_tail()}")
        raise
    finally:
        await relay.cleanup()
