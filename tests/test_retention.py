"""``[retention]`` over real WebSockets on both stores: per-kind maximum age purged in bounded
batches while writes go on, per-author storage quotas (members and others), NIP-11."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest

from relay.config import ConfigError, load_settings, parse_duration
from relay.nostr import crypto
from relay.ops.retention import purge_old_events
from tests.conftest import RelayFactory
from tests.lightning.payment_stack import ledger_of
from tests.nostr_client import NostrClient, signed
from tests.test_nodes import pg_dsn  # noqa: F401  (fixture)
from tests.test_vanish import ids, storage  # noqa: F401  (fixture: SQLite and PostgreSQL)
from tests.waiting import eventually

DAY = 86400


def test_durations() -> None:
    assert [parse_duration(v) for v in ("365d", "12h", "30m", "45s", "2w", 90)] == [
        365 * DAY, 12 * 3600, 1800, 45, 14 * DAY, 90
    ]
    with pytest.raises(ConfigError, match=r"retention\.kinds"):
        load_settings(None, retention={"kinds": {"1": "soon"}})


async def test_events_past_their_kinds_age_are_purged_others_kept(
    relay_factory: RelayFactory, storage: dict[str, Any], alice: bytes  # noqa: F811
) -> None:
    now = int(time.time())
    # created_at_lower_limit off: old events may be written (an import, a re-broadcast)
    limits = {"created_at_lower_limit": None}
    retention = {"kinds": {"1": "30d", "7": "1d"}, "purge_batch": 7}
    old_notes = [signed(alice, 1, f"old {i}", created_at=now - 40 * DAY - i) for i in range(25)]
    young_note = signed(alice, 1, "young", created_at=now - 10 * DAY)
    old_reaction = signed(alice, 7, "+", created_at=now - 2 * DAY)
    old_profile = signed(alice, 0, "{}", created_at=now - 400 * DAY)  # kind 0 is not listed: kept
    async with (
        relay_factory(storage=storage, limits=limits, retention=retention) as relay,
        NostrClient(relay.url) as client,
    ):
        for event in [*old_notes, young_note, old_reaction, old_profile]:
            ok, message = await client.publish(event)
            assert ok, message
        async def purged() -> bool:  # purge_interval_seconds is 0.2 in tests
            return await ids(client, authors=[crypto.public_key(alice).hex()]) == {young_note.id, old_profile.id}

        await eventually(purged, 10.0, interval=0.2, what="old events to be purged")
        async with httpx.AsyncClient() as http:
            doc = (await http.get(relay.url.replace("ws", "http"), headers={"Accept": "application/nostr+json"})).json()
            page = (await http.get(relay.url.replace("ws", "http"), headers={"Accept": "text/html"})).text
        # NIP-11 dropped `retention` (2026-02): the policy is stated on the relay's page instead.
        assert "retention" not in doc
        assert "kind 7: kept 1 day<" in page and "kind 1: kept 30 days<" in page


async def test_purge_runs_in_batches_and_writes_proceed_meanwhile(
    relay_factory: RelayFactory, alice: bytes, bob: bytes
) -> None:
    now = int(time.time())
    async with relay_factory(limits={"created_at_lower_limit": None}) as relay, NostrClient(relay.url) as client:
        for i in range(60):
            assert (await client.publish(signed(alice, 1, f"{i}", created_at=now - 5 * DAY - i)))[0]
        calls: list[int] = []
        real = relay.store.purge_older

        async def counting(kind: int, before: int, limit: int) -> int:
            purged = await real(kind, before, limit)
            calls.append(purged)
            return purged

        relay.store.purge_older = counting  # type: ignore[method-assign]
        purge = asyncio.create_task(purge_old_events(relay.store, {1: DAY}, now, 10))
        ok, message = await client.publish(signed(bob, 1, "written during the purge"))
        assert ok, message
        assert await purge == 60
        assert calls == [10, 10, 10, 10, 10, 10, 0]  # never more than a batch per transaction


async def test_storage_quota_refuses_past_the_limit_members_get_more(
    relay_factory: RelayFactory, storage: dict[str, Any], alice: bytes, bob: bytes  # noqa: F811
) -> None:
    a = crypto.public_key(alice).hex()
    b = crypto.public_key(bob).hex()
    now = int(time.time())
    payments = {"enabled": True, "backend": "fake", "free_kinds": [1]}  # kind 1 free: the quota decides
    retention = {"max_bytes_per_pubkey": 2000, "member_max_bytes_per_pubkey": 20000}
    async with (
        relay_factory(storage=storage, payments=payments, retention=retention) as relay,
        NostrClient(relay.url) as client,
    ):
        await ledger_of(relay).update_account(b, now, allowed=True)
        payments = relay.hooks.owner("payments")

        async def bob_is_member() -> bool:  # what the quota asks, once the cache saw the change
            return bool(await payments.gate.is_member(b, now))  # type: ignore[attr-defined]

        await eventually(bob_is_member, what="the gate to see bob allowed")
        accepted = 0
        while True:
            ok, message = await client.publish(signed(alice, 1, f"{accepted:03} " + "x" * 300))
            if not ok:
                assert message == "blocked: storage quota reached"
                break
            accepted += 1
            assert accepted < 20
        assert 3 <= accepted <= 5  # ~440 bytes each against 2,000
        assert await relay.store.stored_bytes(a) <= 2000
        for i in range(10):  # a member may store ten times as much
            ok, message = await client.publish(signed(bob, 1, f"{i:03} " + "x" * 300))
            assert ok, message
        await client.publish(signed(alice, 20001, "ephemeral is never stored, never counted"))
