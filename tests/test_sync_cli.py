"""``satsrelay sync`` against a second satsrelay process, on SQLite and PostgreSQL: NIP-77
where the peer speaks it, paged REQ where it does not; both directions; a second run finds
nothing left; what a peer sends is verified."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from relay.config import StorageSettings
from relay.nostr import crypto
from relay.nostr.event import Event, sign_event
from relay.nostr.filters import Filter
from relay.ops.peer_sync import _check
from relay.store import open_store
from relay.store.base import WriteRequest
from tests.conftest import RelayProcess
from tests.nostr_client import NostrClient, signed

FAST = (
    "[limits]\nevents_per_second = 10000\nevents_burst = 10000\nip_events_per_second = 10000\n"
    "ip_events_burst = 10000\n"
)


@pytest.fixture
async def local_storage(storage: dict[str, str], tmp_path: Path) -> AsyncIterator[dict[str, str]]:
    """The CLI's own store: a SQLite file, or another PostgreSQL schema than the peer's."""
    if not storage:
        yield {"url": f"sqlite:///{tmp_path}/local.db"}
        return
    import asyncpg

    schema = f"sync_{uuid.uuid4().hex[:16]}"
    yield {"url": storage["url"], "schema_name": schema}
    conn = await asyncpg.connect(storage["url"])
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


def start_peer(relay_process: Callable[..., RelayProcess], storage: dict[str, str], extra: str = "") -> RelayProcess:
    if storage:
        schema = f'schema_name = "{storage["schema_name"]}"'
        return relay_process(FAST + extra, storage_url=storage["url"], storage_toml=schema)
    return relay_process(FAST + extra)


def local_config(tmp_path: Path, local: dict[str, str]) -> Path:
    lines = [f'url = "{local["url"]}"']
    if "schema_name" in local:
        lines.append(f'schema_name = "{local["schema_name"]}"')
    path = tmp_path / "local.toml"
    path.write_text('log_level = "WARNING"\n[storage]\n' + "\n".join(lines) + "\n")
    return path


async def write_local(local: dict[str, str], events: list[Event]) -> None:
    store = open_store(StorageSettings(**local))  # type: ignore[arg-type]
    await store.open()
    try:
        await store.write_batch([WriteRequest(ev) for ev in events], int(time.time()))
    finally:
        await store.close()


async def local_ids(local: dict[str, str]) -> set[str]:
    store = open_store(StorageSettings(**local))  # type: ignore[arg-type]
    await store.open()
    try:
        return {orjson.loads(raw)["id"] for raw in await store.query([Filter(limit=100_000)], int(time.time()))}
    finally:
        await store.close()


async def peer_has(url: str, events: list[Event]) -> set[str]:
    """Which of ``events`` the peer holds (asked by id, 20 at a time: its max_limit is small)."""
    found: set[str] = set()
    async with NostrClient(url) as client:
        for i in range(0, len(events), 20):
            chunk = [ev.id for ev in events[i : i + 20]]
            found |= {e["id"] for e in await client.req(f"q{i}", {"ids": chunk})}
    return found


async def publish(url: str, events: list[Event]) -> None:
    async with NostrClient(url) as client:
        for ev in events:
            await client.send(["EVENT", ev.to_dict()])
        pending = {ev.id for ev in events}
        while pending:
            msg = await client.recv_where(lambda m: m[0] == "OK")
            assert msg[2] is True, msg
            pending.discard(msg[1])


def sync_process(config: Path, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relay.cli", "sync", url, "--config", str(config), *args],
        capture_output=True, text=True, timeout=120, env={**os.environ},
    )


def run_sync(config: Path, url: str, *args: str) -> tuple[str, str]:
    done = sync_process(config, url, *args)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip(), done.stderr


def sets(secret: bytes, shared: int, each: int) -> tuple[list[Event], list[Event], list[Event]]:
    base = int(time.time()) - 5000
    common = [signed(secret, 1, f"c{i}", created_at=base + i // 3) for i in range(shared)]
    mine = [signed(secret, 1, f"l{i}", created_at=base + i * 7) for i in range(each)]
    theirs = [signed(secret, 1, f"p{i}", created_at=base + i * 5) for i in range(each + 5)]
    return common, mine, theirs


@pytest.mark.parametrize("negentropy", [True, False], ids=["nip77", "paged-req"])
async def test_sync_both_ways_then_nothing_left(
    relay_process: Callable[..., RelayProcess],
    storage: dict[str, str],
    local_storage: dict[str, str],
    tmp_path: Path,
    alice: bytes,
    negentropy: bool,
) -> None:
    # A small max_limit on the peer makes the paged REQ fallback turn several pages.
    extra = "max_limit = 40\n" + ("" if negentropy else "[negentropy]\nenabled = false\n")
    peer = start_peer(relay_process, storage, extra)
    common, mine, theirs = sets(alice, 150, 20)
    await publish(peer.url, common + theirs)
    await write_local(local_storage, common + mine)
    config = local_config(tmp_path, local_storage)

    out, err = run_sync(config, peer.url)
    method = "NIP-77" if negentropy else "paged REQ"
    assert out == f"sync ({method}): have 20, need 25, sent 20, received 25, rejected 0", err
    everything = {ev.id for ev in common + mine + theirs}
    assert await local_ids(local_storage) == everything
    assert await peer_has(peer.url, common + mine + theirs) == everything

    out, _ = run_sync(config, peer.url)
    assert out == f"sync ({method}): have 0, need 0, sent 0, received 0, rejected 0"


async def test_sync_direction_and_filter(
    relay_process: Callable[..., RelayProcess], local_storage: dict[str, str], tmp_path: Path, alice: bytes
) -> None:
    peer = relay_process(FAST)
    common, mine, theirs = sets(alice, 10, 4)
    reaction = signed(alice, 7, "+")
    await publish(peer.url, common + theirs + [reaction])
    await write_local(local_storage, common + mine)
    config = local_config(tmp_path, local_storage)

    out, _ = run_sync(config, peer.url, "--direction", "down", "--filter", '{"kinds": [1]}')
    assert out == "sync (NIP-77): have 4, need 9, sent 0, received 9, rejected 0"
    assert reaction.id not in await local_ids(local_storage)  # outside the filter
    assert await peer_has(peer.url, mine) == set()  # nothing went up
    out, _ = run_sync(config, peer.url, "--direction", "up")
    assert out == "sync (NIP-77): have 4, need 1, sent 4, received 0, rejected 0"


def test_bad_peer_urls_and_filters_exit_with_one_line(tmp_path: Path) -> None:
    config = local_config(tmp_path, {"url": f"sqlite:///{tmp_path}/x.db"})
    for args, text in (
        (["http://example.com"], "is not a ws:// or wss:// URL"),
        (["ws://127.0.0.1:9", "--filter", "{"], "bad --filter"),
        (["ws://127.0.0.1:9"], "satsrelay sync: cannot reach ws://127.0.0.1:9"),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "relay.cli", "sync", *args, "--config", str(config)],
            capture_output=True, text=True, timeout=60,
        )
        assert done.returncode != 0
        assert text in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_what_a_peer_sends_is_checked_before_it_is_stored() -> None:
    secret = bytes.fromhex("07" * 32)
    good = sign_event(secret, 1, "fine", [], 100)
    forged: dict[str, Any] = good.to_dict() | {"sig": "00" * 64}
    unasked = sign_event(secret, 1, "not requested", [], 100)
    off_filter = sign_event(secret, 7, "+", [], 100)
    wanted = {bytes.fromhex(e.id) for e in (good, off_filter)}
    kept, bad = _check([good.to_dict(), forged, unasked.to_dict(), off_filter.to_dict(), {"id": 5}], wanted,
                       Filter(kinds=frozenset({1})))
    assert [e.id for e in kept] == [good.id]
    assert bad == 4


async def ban_locally(local: dict[str, str], rows: list[tuple[str, str, str | None]]) -> None:
    """NIP-86 bans in the CLI's own store: what an operator's banpubkey / banevent wrote."""
    store = open_store(StorageSettings(**local))  # type: ignore[arg-type]
    await store.open()
    try:
        await store.apply_management(rows)
    finally:
        await store.close()


async def test_sync_keeps_what_the_operator_banned_out_of_uploads_and_downloads(
    relay_process: Callable[..., RelayProcess],
    storage: dict[str, str],
    local_storage: dict[str, str],
    tmp_path: Path,
    alice: bytes,
    bob: bytes,
) -> None:
    """Issue 17 item 8: ``sync`` uploaded events the operator had banned (the events, and
    their authors'). They stay out both ways unless ``--include-banned``."""
    peer = start_peer(relay_process, storage)
    kept = [signed(alice, 1, f"kept {i}") for i in range(4)]
    banned_event = signed(alice, 1, "banned event")
    by_banned_author = [signed(bob, 1, f"spam {i}") for i in range(3)]
    from_peer = signed(bob, 1, "spam the peer holds")
    await publish(peer.url, [from_peer])
    await write_local(local_storage, [*kept, banned_event, *by_banned_author])
    await ban_locally(
        local_storage,
        [("ban_event", banned_event.id, "illegal"), ("ban_pubkey", crypto.public_key(bob).hex(), "spam")],
    )
    config = local_config(tmp_path, local_storage)

    out, err = run_sync(config, peer.url)
    assert out == "sync (NIP-77): have 8, need 1, sent 4, received 0, rejected 0, withheld 5 (banned here)", err
    everything = [*kept, banned_event, *by_banned_author]
    assert await peer_has(peer.url, everything) == {ev.id for ev in kept}
    assert from_peer.id not in await local_ids(local_storage)  # not stored here either

    out, err = run_sync(config, peer.url, "--include-banned")
    assert out == "sync (NIP-77): have 4, need 1, sent 4, received 1, rejected 0", err
    assert await peer_has(peer.url, everything) == {ev.id for ev in everything}


async def test_sync_up_to_a_peer_that_refuses_everything_stops_with_its_reason(
    relay_process: Callable[..., RelayProcess], local_storage: dict[str, str], tmp_path: Path, alice: bytes
) -> None:
    """A paid peer answers every EVENT ``OK false "restricted: ..."``: the upload shows the
    peer's reason and stops after STOP_AFTER_REFUSALS refusals, instead of sending every
    event and printing only "rejected N" (issue 17 item 8)."""
    peer = relay_process(FAST + '[payments]\nenabled = true\nbackend = "fake"\n')
    await write_local(local_storage, [signed(alice, 1, f"n{i}") for i in range(400)])
    config = local_config(tmp_path, local_storage)
    started = time.monotonic()
    done = sync_process(config, peer.url, "--direction", "up")
    assert done.returncode == 1, (done.stdout, done.stderr)
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("satsrelay sync: the peer refused all 50 events sent, for one reason: restricted: "), last
    assert last.endswith("stopped uploading (nothing more was sent)"), last
    assert "the peer refused " in done.stderr and "Traceback" not in done.stderr
    assert time.monotonic() - started < 60
