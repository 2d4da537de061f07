"""Bystander suite (issue 17, "the class, closed"): one stranger drains a pool, does anyone notice?

For each expensive request a stranger can send for free, an attacker process sends it as
fast as the relay lets it (from one address group, or from 50 addresses where the cap it
meets is relay-wide) while a bystander process on another address keeps doing what an
ordinary user does, and the suite reports what the bystander saw:

- ``req``: a ``REQ {"kinds":[1],"limit":1}`` every 50 ms, one at a time, write to EOSE;
- ``event``: a paid key's kind-1 note every 100 ms, write to OK (success = ``OK true``);
- ``invoice``: for the invoice attacks, the join page's invoice route and the zap callback
  once a second each (success = an invoice);
- ``connect``: for the connection attacks, a fresh WebSocket and a NIP-11 GET every 200 ms.

Attacks (``ATTACKS``): ``baseline`` (none), ``huge_req``, ``count_all``, ``neg_open``,
``search``, ``invoices``, ``zap_callback``, ``nip86_badsig``, ``link_strangers``, ``half_open_http``,
``idle_conns``, ``slow_readers``. The relay runs with its documented defaults (no lifted
limits), the demo's payments, an ``[admin]`` key (NIP-86 on) and ``--preload`` stored
events, on SQLite or (``--store-url``) PostgreSQL, with ``--workers``.

Addresses: every 127/8 address reaches a loopback relay, and the relay groups IPv4 by
address, so ``127.0.5.1`` is one stranger and ``127.0.6.1``-``127.0.6.50`` are fifty.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from bench.events import EventSetSpec, ensure_event_set, secret_for
from bench.latency import summary_ms
from bench.loadproc import Ready, WorkerGroup
from bench.relayproc import RelayOptions, RelayProcess, cpu_seconds, rss_kib
from bench.soak import Conn, _grant, pubkey
from relay.nostr import crypto
from relay.nostr.event import sign_event
from relay.nostr.negentropy import ItemSet, Negentropy

ATTACKS = [
    "baseline",
    "huge_req",
    "count_all",
    "neg_open",
    "search",
    "invoices",
    "zap_callback",
    "nip86_badsig",
    "link_strangers",
    "half_open_http",
    "idle_conns",
    "slow_readers",
]
ONE_GROUP = "127.0.5.1"
MANY = [f"127.0.6.{i}" for i in range(1, 51)]  # where the cap met is relay-wide
BYSTANDER = "127.0.9.1"
INVOICE_ATTACKS = {"invoices", "zap_callback"}
CONNECTION_ATTACKS = {"half_open_http", "idle_conns", "slow_readers"}

BYSTANDER_SECTIONS: dict[str, dict[str, object]] = {
    "payments": {"enabled": True, "backend": "fake"},
    "payments.admission": {"enabled": True, "fee_sats": 21, "term_days": 0},
    "payments.credit": {"enabled": True},
    "payments.zaps": {"enabled": True},
}


@dataclass(frozen=True, slots=True)
class Job:
    role: str  # "attacker" or "bystander"
    attack: str
    url: str
    seconds: float
    seed: int
    admin_secret: bytes = b""
    relay_self: str = ""  # the relay's pubkey (NIP-11 self), for zap requests
    search_word: str = "fox"
    extra: dict[str, Any] = field(default_factory=dict)


def http_base(url: str) -> str:
    return url.replace("ws://", "http://", 1).rstrip("/")


# --- the bystander -----------------------------------------------------------------------


async def bystander_main(job: Job, ready: Ready) -> dict[str, Any]:
    writer = secret_for(job.seed, "bystander-writer", 0)
    req_lat: list[float] = []
    ok_lat: list[float] = []
    outcome: Counter[str] = Counter()
    waiting: dict[str, tuple[float, asyncio.Future[None]]] = {}

    def on_message(payload: bytes, now: float) -> None:
        if payload.startswith((b'["EOSE"', b'["CLOSED"', b'["OK"')):
            msg = orjson.loads(payload)
            entry = waiting.pop(msg[1], None)
            if entry is None:
                return
            started, fut = entry
            if msg[0] == "OK":
                if msg[2]:
                    ok_lat.append(now - started)
                    outcome["event_ok"] += 1
                else:
                    outcome["event_refused:" + str(msg[3]).split(":", 1)[0]] += 1
            elif msg[0] == "EOSE":
                req_lat.append(now - started)
                outcome["req_ok"] += 1
            else:
                outcome["req_closed:" + str(msg[2]).split(":", 1)[0]] += 1
            if not fut.done():
                fut.set_result(None)

    conn = await Conn(on_message).open(job.url, BYSTANDER)
    await ready()
    end = time.monotonic() + job.seconds
    loop = asyncio.get_running_loop()

    async def ask(key: str, msg: list[Any], label: str, timeout: float = 5.0) -> None:
        fut: asyncio.Future[None] = loop.create_future()
        waiting[key] = (time.perf_counter(), fut)
        conn.send(msg)
        try:
            await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            waiting.pop(key, None)
            outcome[f"{label}_timeout"] += 1

    async def reads() -> None:
        n = 0
        while time.monotonic() < end and conn.alive:
            sub = f"b{n}"
            await ask(sub, ["REQ", sub, {"kinds": [1], "limit": 1}], "req")
            conn.send(["CLOSE", sub])
            n += 1
            await asyncio.sleep(0.05)

    async def writes() -> None:
        n = 0
        while time.monotonic() < end and conn.alive:
            ev = sign_event(writer, 1, f"bystander note {n}", [], int(time.time()))
            await ask(ev.id, ["EVENT", ev.to_dict()], "event")
            n += 1
            await asyncio.sleep(0.1)

    async def invoices() -> None:
        """An honest payer: one invoice every 3 s, the join page and the zap callback in
        turn (within the relay's 10 a minute per address: faster, and the bystander would
        be throttled for its own pace, not for the attacker's)."""
        zapper = crypto.generate_secret()
        transport = httpx.AsyncHTTPTransport(local_address=BYSTANDER)
        async with httpx.AsyncClient(base_url=http_base(job.url), transport=transport, timeout=10) as web:
            n = 0
            await asyncio.sleep(1.0)  # once the flood is under way
            while time.monotonic() < end:
                with contextlib.suppress(httpx.HTTPError):
                    if n % 2 == 0:
                        who = pubkey(crypto.generate_secret())
                        r = await web.post("/api/invoice", json={"pubkey": who, "plan": "admission"})
                        outcome[f"join_invoice_{'ok' if r.status_code == 200 else r.status_code}"] += 1
                    else:
                        request = zap_request(zapper, job.relay_self, job.url)
                        r = await web.get("/lnurlp/relay/callback", params={"amount": "21000", "nostr": request})
                        outcome[f"zap_invoice_{'ok' if r.status_code == 200 else r.status_code}"] += 1
                n += 1
                await asyncio.sleep(3.0)

    async def connects() -> None:
        transport = httpx.AsyncHTTPTransport(local_address=BYSTANDER)
        async with httpx.AsyncClient(base_url=http_base(job.url), transport=transport, timeout=5) as web:
            while time.monotonic() < end:
                try:
                    r = await web.get("/", headers={"Accept": "application/nostr+json"})
                    outcome["nip11_ok" if r.status_code == 200 else f"nip11_{r.status_code}"] += 1
                except httpx.HTTPError:
                    outcome["nip11_failed"] += 1
                try:
                    fresh = await Conn().open(job.url, BYSTANDER)
                    outcome["ws_connect_ok"] += 1
                    fresh.close()
                except (OSError, ConnectionError, TimeoutError):
                    outcome["ws_connect_failed"] += 1
                await asyncio.sleep(0.2)

    tasks: list[Awaitable[None]] = [reads(), writes()]
    if job.attack in INVOICE_ATTACKS:
        tasks.append(invoices())
    if job.attack in CONNECTION_ATTACKS:
        tasks.append(connects())
    await asyncio.gather(*tasks)
    conn.close()
    return {"role": "bystander", "req": summary_ms(req_lat), "event": summary_ms(ok_lat), "outcome": dict(outcome)}


def zap_request(secret: bytes, relay_self: str, url: str) -> str:
    tags = [["p", relay_self], ["amount", "21000"], ["relays", url]]
    return orjson.dumps(sign_event(secret, 9734, "", tags, int(time.time())).to_dict()).decode()


# --- the attackers -----------------------------------------------------------------------


async def attacker_main(job: Job, ready: Ready) -> dict[str, Any]:
    tally: Counter[str] = Counter()
    await ready()
    end = time.monotonic() + job.seconds
    attack = ATTACK_BODIES[job.attack]
    await attack(job, tally, end)
    return {"role": "attacker", "tally": dict(tally)}


def _counting(tally: Counter[str]) -> Callable[[bytes, float], None]:
    def on(payload: bytes, now: float) -> None:
        head = payload[:12]
        for verb in (b"EOSE", b"COUNT", b"NEG-MSG", b"NEG-ERR", b"CLOSED", b"NOTICE", b"OK"):
            if head.startswith(b'["' + verb + b'"'):
                tally[verb.decode().lower()] += 1
                if verb in (b"CLOSED", b"NEG-ERR"):
                    tally["refused:" + str(orjson.loads(payload)[2]).split(":", 1)[0]] += 1
                return
        if head.startswith(b'["EVENT"'):
            tally["events_received"] += 1

    return on


async def _connections(job: Job, tally: Counter[str], sources: list[str], per_source: int,
                       handler: Callable[[bytes, float], None] | None = None) -> list[Conn]:
    conns: list[Conn] = []
    for source in sources:
        for _ in range(per_source):
            try:
                conns.append(await Conn(handler).open(job.url, source))
                tally["connections"] += 1
            except (OSError, ConnectionError, TimeoutError) as exc:
                tally["connect_refused" if "429" in str(exc) or "503" in str(exc) else "connect_failed"] += 1
    return conns


async def _flood(job: Job, tally: Counter[str], end: float, message: Callable[[int], list[Any]],
                 connections: int = 20, pause: float = 0.0) -> None:
    """``connections`` connections from one address group, each sending ``message(n)``
    back to back (the relay's own limits set the pace); reconnect when closed."""

    async def one(slot: int) -> None:
        n = 0
        while time.monotonic() < end:
            try:
                conn = await Conn(_counting(tally)).open(job.url, ONE_GROUP)
            except (OSError, ConnectionError, TimeoutError):
                tally["connect_refused"] += 1
                await asyncio.sleep(0.5)
                continue
            while time.monotonic() < end and conn.alive:
                conn.send(message(slot * 1_000_000 + n))
                tally["sent"] += 1
                n += 1
                await asyncio.sleep(pause or 0.02)
            conn.close()

    await asyncio.gather(*(one(i) for i in range(connections)))


async def huge_req(job: Job, tally: Counter[str], end: float) -> None:
    await _flood(job, tally, end, lambda n: ["REQ", f"h{n % 16}", {"limit": 5000}], pause=0.05)


async def count_all(job: Job, tally: Counter[str], end: float) -> None:
    await _flood(job, tally, end, lambda n: ["COUNT", f"c{n}", {}])


async def neg_open(job: Job, tally: Counter[str], end: float) -> None:
    initial = Negentropy(ItemSet([])).initiate().hex()
    await _flood(job, tally, end, lambda n: ["NEG-OPEN", f"n{n % 4}", {}, initial], connections=60, pause=0.25)


async def search(job: Job, tally: Counter[str], end: float) -> None:
    await _flood(job, tally, end, lambda n: ["REQ", f"s{n % 16}", {"search": job.search_word, "limit": 500}])


async def _http_flood(job: Job, tally: Counter[str], end: float, sources: list[str],
                      request: Callable[[httpx.AsyncClient], Awaitable[httpx.Response]]) -> None:
    async def one(source: str) -> None:
        transport = httpx.AsyncHTTPTransport(local_address=source)
        async with httpx.AsyncClient(base_url=http_base(job.url), transport=transport, timeout=10) as web:
            while time.monotonic() < end:
                try:
                    r = await request(web)
                    tally[f"http_{r.status_code}"] += 1
                except httpx.HTTPError:
                    tally["http_failed"] += 1
                    await asyncio.sleep(0.2)

    await asyncio.gather(*(one(s) for s in sources))


async def invoices(job: Job, tally: Counter[str], end: float) -> None:
    async def ask(web: httpx.AsyncClient) -> httpx.Response:
        return await web.post("/api/invoice", json={"pubkey": pubkey(crypto.generate_secret()), "plan": "credit",
                                                     "amount": random.randint(21, 5000)})

    await _http_flood(job, tally, end, MANY, ask)


async def zap_callback(job: Job, tally: Counter[str], end: float) -> None:
    async def ask(web: httpx.AsyncClient) -> httpx.Response:
        request = zap_request(crypto.generate_secret(), job.relay_self, job.url)
        return await web.get("/lnurlp/relay/callback", params={"amount": "21000", "nostr": request})

    await _http_flood(job, tally, end, MANY, ask)


async def nip86_badsig(job: Job, tally: Counter[str], end: float) -> None:
    body = orjson.dumps({"method": "listbannedpubkeys", "params": []})

    async def ask(web: httpx.AsyncClient) -> httpx.Response:
        bogus = sign_event(crypto.generate_secret(), 27235, "", [["u", http_base(job.url) + "/"], ["method", "POST"]],
                           int(time.time())).to_dict()
        bogus["sig"] = "00" * 64
        header = "Nostr " + base64.b64encode(orjson.dumps(bogus)).decode()
        return await web.post("/", content=body, headers={"Content-Type": "application/nostr+json+rpc",
                                                          "Authorization": header})

    await _http_flood(job, tally, end, [ONE_GROUP] * 20, ask)


async def link_strangers(job: Job, tally: Counter[str], end: float) -> None:
    """Issue 20's key links asked by strangers with no plan: every request is well signed
    (a fresh owner key's NIP-98 header and a fresh key's consent), so the relay verifies two
    signatures and is refused only at the plan check (403), where nothing may be written."""

    def nip98(secret: bytes, url: str, body: bytes | None) -> dict[str, Any]:
        tags = [["u", url], ["method", "POST"], ["nonce", os.urandom(8).hex()]]
        if body is not None:
            tags.append(["payload", hashlib.sha256(body).hexdigest()])
        return sign_event(secret, 27235, "", tags, int(time.time())).to_dict()

    async def ask(web: httpx.AsyncClient) -> httpx.Response:
        owner, key = crypto.generate_secret(), crypto.generate_secret()
        path = f"/account/{pubkey(owner)}/links/{pubkey(key)}"
        url = http_base(job.url) + path
        body = orjson.dumps({"consent": nip98(key, url, None)})
        header = "Nostr " + base64.b64encode(orjson.dumps(nip98(owner, url, body))).decode()
        return await web.post(path, content=body, headers={"Authorization": header})

    await _http_flood(job, tally, end, [ONE_GROUP] * 20, ask)


async def half_open_http(job: Job, tally: Counter[str], end: float) -> None:
    """Connections that send half a request line and wait, from fifty addresses, up to what
    the relay lets each hold."""
    host, port = "127.0.0.1", int(job.url.rsplit(":", 1)[1])
    held: list[asyncio.StreamWriter] = []

    async def hold(source: str) -> None:
        for _ in range(120):
            if time.monotonic() >= end:
                return
            try:
                _reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(host, port, local_addr=(source, 0)), 5)
                writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")
                held.append(writer)
                tally["held"] += 1
            except (OSError, TimeoutError):
                tally["connect_failed"] += 1
                await asyncio.sleep(0.2)

    await asyncio.gather(*(hold(s) for s in MANY))
    await asyncio.sleep(max(0.0, end - time.monotonic()))
    for w in held:
        w.close()


async def idle_conns(job: Job, tally: Counter[str], end: float) -> None:
    conns: list[Conn] = []

    async def fill(source: str) -> None:
        conns.extend(await _connections(job, tally, [source], 120))

    await asyncio.gather(*(fill(s) for s in MANY))
    await asyncio.sleep(max(0.0, end - time.monotonic()))
    for c in conns:
        c.close()


async def slow_readers(job: Job, tally: Counter[str], end: float) -> None:
    """REQs for thousands of events on connections that never read their socket."""
    conns = await _connections(job, tally, [ONE_GROUP], 50)
    for i, c in enumerate(conns):
        assert c.ws is not None and c.ws.transport is not None
        c.ws.transport.pause_reading()
        for j in range(8):
            c.send(["REQ", f"r{i}-{j}", {"limit": 5000}])
            tally["sent"] += 1
    await asyncio.sleep(max(0.0, end - time.monotonic()))
    for c in conns:
        c.close()


async def baseline(job: Job, tally: Counter[str], end: float) -> None:
    await asyncio.sleep(max(0.0, end - time.monotonic()))


ATTACK_BODIES: dict[str, Callable[[Job, Counter[str], float], Awaitable[None]]] = {
    "baseline": baseline,
    "huge_req": huge_req,
    "count_all": count_all,
    "neg_open": neg_open,
    "search": search,
    "invoices": invoices,
    "zap_callback": zap_callback,
    "nip86_badsig": nip86_badsig,
    "link_strangers": link_strangers,
    "half_open_http": half_open_http,
    "idle_conns": idle_conns,
    "slow_readers": slow_readers,
}


async def _worker(job: Job, ready: Ready) -> dict[str, Any]:
    return await (bystander_main(job, ready) if job.role == "bystander" else attacker_main(job, ready))


# --- the scenario ------------------------------------------------------------------------


async def run_bystander(options: RelayOptions, *, attacks: list[str], seconds: float, seed: int, preload: int,
                        log: Callable[[str], None]) -> dict[str, Any]:
    """One relay, ``preload`` stored events, each attack in turn for ``seconds``."""
    admin = secret_for(seed, "bystander-admin", 0)
    options = RelayOptions(
        store_url=options.store_url, workers=options.workers, log_level="INFO", extra_env=options.extra_env,
        limits={}, sections={**BYSTANDER_SECTIONS, "admin": {"pubkeys": [pubkey(admin)]}},
    )
    relay = RelayProcess(options, "bystander")
    rows: list[dict[str, Any]] = []
    try:
        await relay.prepare_store()
        if preload:
            spec = EventSetSpec("query", preload, seed, authors=max(1, preload // 100),
                                p_targets=max(1, preload // 500))
            path, _ = ensure_event_set(spec)
            summary, _ = relay.import_events(path)
            log(f"preloaded: {summary}")
        relay.configure("payments.fake", state_file=str(relay.tmp / "fake-wallet.db"))
        relay.configure("relay", key_file=str(relay.tmp / "relay.key"))
        await _grant(relay, [secret_for(seed, "bystander-writer", 0)])
        await relay.start()
        async with httpx.AsyncClient(timeout=10) as web:
            doc = (await web.get(http_base(relay.url), headers={"Accept": "application/nostr+json"})).json()
        relay_self = str(doc.get("self", ""))
        for attack in attacks:
            jobs = [Job(role, attack, relay.url, seconds, seed, admin, relay_self)
                    for role in ("bystander", "attacker")]
            group = WorkerGroup(_worker, jobs)
            await group.start_and_wait_ready()
            cpu0, t0 = cpu_seconds(relay.pid), time.monotonic()
            group.go()
            results = await group.results(timeout=seconds + 120)
            wall = time.monotonic() - t0
            by_role = {r.pop("role"): r for r in results}
            row = {
                "attack": attack,
                "attacker": by_role["attacker"]["tally"],
                "bystander": by_role["bystander"],
                "relay_cpu_cores": round((cpu_seconds(relay.pid) - cpu0) / wall, 2),
                "relay_rss_mib": round(rss_kib(relay.pid) / 1024, 1),
            }
            rows.append(row)
            log(format_row(row))
            if relay.proc is not None and relay.proc.poll() is not None:
                raise RuntimeError(f"the relay exited during {attack}:\n{relay.log_tail()}")
            await asyncio.sleep(2)  # let held connections drain before the next attack
        await relay.stop()
        text = (relay.tmp / "relay.log").read_text(errors="replace")
        return {
            "store": "postgresql" if relay.pg else "sqlite",
            "workers": options.workers,
            "preloaded": preload,
            "seconds_per_attack": seconds,
            "rows": rows,
            "relay_log_tracebacks": text.count("Traceback"),
        }
    except BaseException:
        if relay.proc is not None:
            log(f"relay log tail:\n{relay.log_tail()}")
        raise
    finally:
        await relay.cleanup()


def format_row(row: dict[str, Any]) -> str:
    """One line of the table bench/README.md keeps."""
    b = row["bystander"]
    out = b["outcome"]
    req_total = sum(v for k, v in out.items() if k.startswith("req"))
    ev_total = sum(v for k, v in out.items() if k.startswith("event"))
    extra = ", ".join(f"{k} {v}" for k, v in sorted(out.items()) if not k.startswith(("req_ok", "event_ok")))
    attacker = ", ".join(f"{k} {v}" for k, v in sorted(row["attacker"].items()))
    return (
        f"| {row['attack']} | {attacker} | {b['req']['p50_ms']} / {b['req']['p99_ms']} "
        f"| {out.get('req_ok', 0)}/{req_total} | {b['event']['p99_ms']} | {out.get('event_ok', 0)}/{ev_total} "
        f"| {extra or '-'} | {row['relay_cpu_cores']} | {row['relay_rss_mib']} |"
    )
