"""The web-of-trust free tier (issue 21, package ``wot``) beside payments, over real
WebSockets: members of the operator's circle write free, strangers hear both ways in,
changes to contact lists move people in and out within ``refresh_seconds``, the result
survives a restart and is shared by nodes on one PostgreSQL; and the graph's incremental
update agrees with the rules' plain statement on random graphs.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from lightning.backends.fake import mark_paid
from lightning.plugin import PLUGIN as PAYMENTS
from relay.app import build_relay
from relay.config import load_settings
from relay.nostr import crypto
from relay.nostr.event import Event, sign_event
from relay.plugins.protocol import Plugin
from relay.session.server import Relay
from tests.conftest import RelayProcess, listening_socket
from tests.nostr_client import NostrClient
from tests.waiting import eventually
from wot.graph import GraphRules, TrustGraph, reference_hops
from wot.plugin import PLUGIN as WOT

LIMITS = {"events_per_second": 10000, "events_burst": 10000, "ip_events_per_second": 10000,
          "ip_events_burst": 10000, "pubkey_events_per_second": 10000, "pubkey_events_burst": 10000}


@contextlib.asynccontextmanager
async def wot_relay(
    tmp_path: Path, storage: dict[str, str], plugins: list[Plugin], sock: socket.socket | None = None, **sections: Any
) -> AsyncIterator[Relay]:
    """A relay with ``plugins`` only (none: a free relay), on ``sock`` or a free port."""
    sock = sock or listening_socket()
    port = sock.getsockname()[1]
    settings = load_settings(
        None,
        plugins=plugins,
        server={"port": port, "metrics_listen": "127.0.0.1:0", "shutdown_grace_seconds": 2.0},
        relay={"public_url": f"ws://127.0.0.1:{port}", "key_file": str(tmp_path / "relay.key")},
        storage={"url": f"sqlite:///{tmp_path}/relay.db", **storage},
        limits=LIMITS,
        log_level="WARNING",
        **sections,
    )
    relay = build_relay(settings, plugins=plugins)
    await relay.start(sock=sock)
    try:
        yield relay
    finally:
        await relay.stop()


def pub(secret: bytes) -> str:
    return crypto.public_key(secret).hex()


def note(secret: bytes) -> Event:
    return sign_event(secret, 1, f"hello {time.monotonic_ns()}", [], int(time.time()))


def contacts(secret: bytes, *follows: bytes, at: int | None = None) -> Event:
    return sign_event(secret, 3, "", [["p", pub(f)] for f in follows], at or int(time.time()))


def wot_section(root: bytes, **more: Any) -> dict[str, Any]:
    return {"enabled": True, "roots": [pub(root)], "max_hops": 2, "min_followers": 1, "refresh_seconds": 2, **more}


def payments_section(tmp_path: Path) -> dict[str, Any]:
    return {"enabled": True, "backend": "fake", "admission": {"enabled": True, "fee_sats": 21},
            "fake": {"state_file": str(tmp_path / "fake.db")}, "poll_interval_seconds": 0.2}


async def accepted(c: NostrClient, secret: bytes) -> bool:
    ok, _ = await c.publish(note(secret))
    return ok


async def test_followed_people_write_free_strangers_pay_and_unfollowed_fall_back(
    tmp_path: Path, storage: dict[str, str]
) -> None:
    r, a, b, c_ = (crypto.generate_secret() for _ in range(4))
    async with wot_relay(tmp_path, storage, [WOT, PAYMENTS], wot=wot_section(r),
                         payments=payments_section(tmp_path)) as relay, NostrClient(relay.url) as c:
        assert [p.name for p in relay.hooks.plugins] == ["wot", "payments"]
        # The root writes (roots are always trusted) and follows A: A writes free soon after.
        assert await c.publish(contacts(r, a)) == (True, "")
        await eventually(lambda: accepted(c, a), 10, interval=0.3, what="A admitted free")
        # A follows B: B (2 hops) writes free.
        assert await c.publish(contacts(a, b)) == (True, "")
        await eventually(lambda: accepted(c, b), 10, interval=0.3, what="B admitted free")
        # B follows C: 3 hops, beyond max_hops: C hears both ways in.
        assert await c.publish(contacts(b, c_)) == (True, "")
        http = relay.url.replace("ws://", "http://")
        ok, message = await c.publish(note(c_))
        assert not ok
        assert message.startswith(f"restricted: free for people followed by this relay's web of trust "
                                  f"({http}/wot/{pub(c_)}); or "), message
        assert "/join?pubkey=" in message and "21 sats" in message
        async with httpx.AsyncClient(base_url=http) as web:
            doc = (await web.get(f"/wot/{pub(b)}")).json()
            assert doc["trusted"] is True and doc["hops"] == 2 and doc["via"] == [pub(a)]
            assert (await web.get(f"/wot/{pub(c_)}")).json()["trusted"] is False
            assert (await web.get("/wot/nothex")).status_code == 400
            # C pays the admission fee (the demo wallet) and is accepted.
            invoice = (await web.post("/api/invoice", json={"pubkey": pub(c_), "plan": "admission"})).json()
            assert mark_paid(tmp_path / "fake.db", invoice["payment_hash"])
        await eventually(lambda: accepted(c, c_), 10, interval=0.3, what="C admitted after paying")
        # R unfollows A: A (and B, who only A vouched for) fall back to the unpaid rules.
        assert await c.publish(contacts(r, at=int(time.time()) + 1)) == (True, "")

        async def refused(secret: bytes) -> bool:
            """Back to the unpaid rules: both ways in, the payment reply included."""
            ok, message = await c.publish(note(secret))
            return not ok and message.startswith("restricted: free for people followed") and "/join?pubkey=" in message

        await eventually(lambda: refused(a), 10, interval=0.3, what="A refused once unfollowed")
        await eventually(lambda: refused(b), 10, interval=0.3, what="B refused once A is out")


async def test_the_graph_survives_a_restart_without_a_full_computation(
    tmp_path: Path, storage: dict[str, str]
) -> None:
    r, a = crypto.generate_secret(), crypto.generate_secret()
    wot = wot_section(r, full_refresh_seconds=3600)
    async with wot_relay(tmp_path, storage, [WOT], wot=wot) as relay, NostrClient(relay.url) as c:
        assert await c.publish(contacts(r, a)) == (True, "")
        await eventually(lambda: accepted(c, a), 10, interval=0.3, what="A admitted free")
        async with httpx.AsyncClient(base_url=relay.url.replace("ws://", "http://")) as web:
            computed_at = (await web.get(f"/wot/{pub(a)}")).json()["computed_at"]
    async with wot_relay(tmp_path, storage, [WOT], wot=wot) as relay, NostrClient(relay.url) as c:
        # The first event after the restart is admitted from the saved set, and the set is
        # the one computed before the restart (the full computation is an hour away).
        assert await c.publish(note(a)) == (True, "")
        async with httpx.AsyncClient(base_url=relay.url.replace("ws://", "http://")) as web:
            doc = (await web.get(f"/wot/{pub(a)}")).json()
        assert doc["trusted"] and doc["computed_at"] == computed_at
        # A change still counts: R follows nobody, A is out within refresh_seconds.
        assert await c.publish(contacts(r, at=int(time.time()) + 1)) == (True, "")
        await eventually(lambda: _refused(c, a), 10, interval=0.3, what="A refused once unfollowed")


async def _refused(c: NostrClient, secret: bytes) -> bool:
    ok, _ = await c.publish(note(secret))
    return not ok


@pytest.mark.postgres
async def test_two_relays_on_one_postgresql_agree(tmp_path: Path, pg_storage: dict[str, str]) -> None:
    storage = pg_storage
    r, a = crypto.generate_secret(), crypto.generate_secret()
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    async with (
        wot_relay(tmp_path / "one", storage, [WOT], wot=wot_section(r)) as one,
        wot_relay(tmp_path / "two", storage, [WOT], wot=wot_section(r)) as two,
        NostrClient(one.url) as c1,
        NostrClient(two.url) as c2,
    ):
        assert not await accepted(c2, a)
        assert await c1.publish(contacts(r, a)) == (True, "")
        await eventually(lambda: accepted(c2, a), 10, interval=0.3, what="A admitted on the other node")
        assert await accepted(c1, a)


async def test_without_payments_the_wot_alone_is_a_free_relay_for_the_circle(
    tmp_path: Path, storage: dict[str, str]
) -> None:
    r, a, stranger = (crypto.generate_secret() for _ in range(3))
    wot = wot_section(r, kinds=[1, 3])
    async with wot_relay(tmp_path, storage, [WOT], wot=wot) as relay, NostrClient(relay.url) as c:
        assert [p.name for p in relay.hooks.plugins] == ["wot"]
        assert await c.publish(contacts(r, a)) == (True, "")
        await eventually(lambda: accepted(c, a), 10, interval=0.3, what="A admitted free")
        ok, message = await c.publish(note(stranger))
        assert not ok and message.startswith("restricted: free for people followed") and "; or" not in message
        # The tier's own limits: kinds it does not take are refused.
        ok, message = await c.publish(sign_event(a, 7, "+", [], int(time.time())))
        assert (ok, message) == (False, "restricted: the web-of-trust free tier does not take kind 7")


def test_incremental_updates_agree_with_the_rules_on_random_graphs() -> None:
    rng = random.Random(21)
    for trial in range(60):
        people = [f"{i:064x}" for i in range(60)]
        lists = {p: frozenset(rng.sample(people, rng.randint(0, 6))) for p in people}
        banned = frozenset(rng.sample(people, 3)) if trial % 3 == 0 else frozenset()
        rules = GraphRules(frozenset(rng.sample(people, 2)), rng.randint(1, 3), rng.randint(1, 3), 1)
        graph = TrustGraph(rules, banned)
        while graph.pending:
            graph.provide({a: lists[a] for a in graph.pending})
        assert graph.hops == reference_hops(rules, lists, banned)
        for _ in range(15):
            author = rng.choice(people)
            lists[author] = frozenset(rng.sample(people, rng.randint(0, 8)))
            graph.set_list(author, lists[author])
            while graph.pending:
                graph.provide({a: lists[a] for a in graph.pending})
            assert graph.hops == reference_hops(rules, lists, banned), (trial, author)


async def test_a_banned_members_follows_no_longer_count(tmp_path: Path) -> None:
    """NIP-86: a banned pubkey is never trusted and its contact list vouches for nobody."""
    r, a, b = (crypto.generate_secret() for _ in range(3))
    async with wot_relay(tmp_path, {}, [WOT], wot=wot_section(r)) as relay, NostrClient(relay.url) as c:
        assert await c.publish(contacts(r, a)) == (True, "")
        await eventually(lambda: accepted(c, a), 10, interval=0.3, what="A admitted free")
        assert await c.publish(contacts(a, b)) == (True, "")
        await eventually(lambda: accepted(c, b), 10, interval=0.3, what="B admitted free")
        await relay.store.apply_management([("ban_pubkey", pub(a), "spam ring")])

        async def b_refused() -> bool:
            ok, message = await c.publish(note(b))
            return not ok and message.startswith("restricted: free for people followed")

        await eventually(b_refused, 10, interval=0.3, what="B refused once A is banned")


async def test_the_console_shows_the_set_per_hop_recent_refusals_and_who_one_more_hop_admits(
    tmp_path: Path, storage: dict[str, str]
) -> None:
    """Over HTTP, as the operator's browser asks (NIP-98 admin sign-in), the figures match
    the graph set up here: min_followers = 2, so hop 2 and "one more hop" count followers."""
    from tests.test_console import panel, tables, tiles

    r, a, a2, b, b2, b3, c_, d, x, provider, stranger, admin = (crypto.generate_secret() for _ in range(12))
    wot = wot_section(r, min_followers=2, provider=pub(provider))
    async with (
        wot_relay(tmp_path, storage, [WOT], wot=wot, admin={"pubkeys": [pub(admin)]}) as relay,
        NostrClient(relay.url) as c,
        httpx.AsyncClient(base_url=relay.url.replace("ws://", "http://")) as web,
    ):

        async def trusted(*secrets: bytes) -> bool:
            return all([(await web.get(f"/wot/{pub(s)}")).json()["trusted"] for s in secrets])

        # Hop 1: A, A2. Hop 2: B and B3 (each followed by A and A2); B2 has one follower.
        assert await c.publish(contacts(r, a, a2)) == (True, "")
        await eventually(lambda: trusted(a, a2), 10, interval=0.3, what="hop 1")
        assert await c.publish(contacts(a, b, b2, b3)) == (True, "")
        assert await c.publish(contacts(a2, b, b3)) == (True, "")
        await eventually(lambda: trusted(b, b3), 10, interval=0.3, what="hop 2")
        # The last hop's lists: at 3 hops C would have 2 followers (B, B3) and B2 too (A and
        # B); D only 1 (B).
        assert await c.publish(contacts(b, c_, d, b2)) == (True, "")
        assert await c.publish(contacts(b3, c_)) == (True, "")
        # NIP-85: the provider ranks X.
        assert await c.publish(sign_event(provider, 30382, "", [["d", pub(x)], ["rank", "90"]], int(time.time())))
        await eventually(lambda: trusted(x), 10, interval=0.3, what="X by rank")
        # A stranger is refused twice (the members above never were: they were asked about
        # over /wot, not by writing before they were in).
        for _ in range(2):
            ok, _ = await c.publish(note(stranger))
            assert not ok
        assert not await trusted(b2, c_, d)
        async with httpx.AsyncClient() as http:
            doc = await panel(http, relay, "wot", admin)
    figures = tiles(doc)
    assert [figures[f"hop {h}"] for h in range(3)] == ["1", "2", "2"]
    assert figures["by provider rank"] == "1"
    by_title = tables(doc)
    refusals = by_title["Recent refusals (outside the web of trust)"]
    assert [row[1:] for row in refusals["rows"]] == [[pub(stranger), "2"]]
    nearest = by_title["Would be admitted at 3 hops"]
    assert nearest["rows"] == sorted([[pub(b2), "2"], [pub(c_), "2"]])


async def test_sqlite_workers_agree_and_a_restart_serves_the_saved_set_without_computing(
    relay_process: Callable[..., RelayProcess],
) -> None:
    """``serve --workers 2`` on SQLite: each worker runs its own refresher on the one file
    (saved through the writer process), so a list published through one worker admits its
    follow on the other; after a restart both serve the saved set, with no full computation
    (each one logs "web of trust: N members")."""
    from tests.test_sqlite_workers import clients_on_each_worker, serving, start_workers

    r, a, b = (crypto.generate_secret() for _ in range(3))
    toml = (
        f'[wot]\nenabled = true\nroots = ["{pub(r)}"]\nmax_hops = 2\nmin_followers = 1\n'
        "refresh_seconds = 1\nfull_refresh_seconds = 3600\n"
    )
    supervisor = start_workers(relay_process, toml)
    _, workers = await serving(supervisor)
    async with contextlib.AsyncExitStack() as stack:
        by_worker = await clients_on_each_worker(stack, supervisor, workers, 1)
        one, two = (by_worker[pid][0] for pid in workers)
        assert await one.publish(contacts(r, a)) == (True, "")
        for c in (two, one):
            await eventually(lambda c=c: accepted(c, a), 10, interval=0.3, what="A admitted on each worker")
        assert await two.publish(contacts(a, b)) == (True, "")
        for c in (one, two):
            await eventually(lambda c=c: accepted(c, b), 10, interval=0.3, what="B admitted on each worker")
    assert supervisor.terminate() == 0
    log = supervisor.stderr_text()
    assert "refreshing the trusted set failed" not in log, log
    computed = log.count(" members (per hop ")
    assert computed >= 2  # one full computation per worker at least

    supervisor.start()
    _, workers = await serving(supervisor)
    async with contextlib.AsyncExitStack() as stack:
        by_worker = await clients_on_each_worker(stack, supervisor, workers, 1)
        for pid in workers:
            c = by_worker[pid][0]
            assert await accepted(c, b) and await accepted(c, a)
        await asyncio.sleep(2.5)  # two refreshes: they poll, they do not compute
    assert supervisor.terminate() == 0
    log = supervisor.stderr_text()
    assert log.count(" members (per hop ") == computed, log
