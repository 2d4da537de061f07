"""GroupCommitWriter over each real store: batching under load, futures resolved only
after the commit, a failing batch fails alone, fan-out of stored events, clean close."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import pytest

from relay.nostr.errors import Rejection, ServerError
from relay.nostr.event import Event, sign_event
from relay.nostr.filters import Filter
from relay.store.base import Store, WriteOutcome, WriteRequest
from relay.store.writer import GroupCommitWriter

NOW = 1_700_000_000
ALICE = (1).to_bytes(32, "big")


class GatedStore:
    """Wraps a real store: each write_batch waits for ``gate`` and records batch sizes;
    batches containing ``poison`` raise instead of writing."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.gate = asyncio.Event()
        self.gate.set()
        self.sizes: list[int] = []
        self.poison: set[str] = set()
        self.entered = asyncio.Event()

    async def write_batch(self, batch: Sequence[WriteRequest], now: int) -> list[WriteOutcome | Rejection]:
        self.entered.set()
        await self.gate.wait()
        self.sizes.append(len(batch))
        if any(r.event.id in self.poison for r in batch):
            raise RuntimeError("disk on fire")
        return await self.inner.write_batch(batch, now)


def notes(n: int, start: int = 100) -> list[Event]:
    return [sign_event(ALICE, 1, f"note {i}", [], start + i) for i in range(n)]


async def test_concurrent_submits_are_batched(store: Store) -> None:
    gated = GatedStore(store)
    writer = GroupCommitWriter(gated, batch_max=64)  # type: ignore[arg-type]
    events = notes(300)
    outcomes = await asyncio.gather(*(writer.submit(WriteRequest(e)) for e in events))
    await writer.close()
    assert outcomes == [WriteOutcome.STORED] * 300
    assert sum(gated.sizes) == 300
    assert max(gated.sizes) > 1
    assert max(gated.sizes) <= 64
    stats = writer.stats
    assert (stats.events, stats.batches) == (300, len(gated.sizes))
    assert stats.batches < 300
    assert await store.count([Filter()], NOW) == 300


async def test_lone_event_is_written_without_waiting_for_company(store: Store) -> None:
    writer = GroupCommitWriter(store, batch_max=1000)
    ev = notes(1)[0]
    assert await asyncio.wait_for(writer.submit(WriteRequest(ev)), 5) == WriteOutcome.STORED
    assert writer.stats.last_batch_size == 1
    await writer.close()


async def test_futures_resolve_only_after_commit(store: Store) -> None:
    gated = GatedStore(store)
    gated.gate.clear()
    writer = GroupCommitWriter(gated)  # type: ignore[arg-type]
    events = notes(5)
    tasks = [asyncio.create_task(writer.submit(WriteRequest(e))) for e in events]
    await asyncio.wait_for(gated.entered.wait(), 5)
    await asyncio.sleep(0.05)
    assert not any(t.done() for t in tasks)
    assert await store.count([Filter()], NOW) == 0
    gated.gate.set()
    assert await asyncio.gather(*tasks) == [WriteOutcome.STORED] * 5
    # By the time a submit returned, its event is readable from another connection.
    assert await store.count([Filter()], NOW) == 5
    await writer.close()


async def test_failing_event_is_isolated_and_its_batch_mates_are_stored(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 8: a batch the store refuses is split until the refused events stand alone;
    only they get ``error:``, the others their real outcome, with no traceback logged."""
    gated = GatedStore(store)
    gated.gate.clear()
    writer = GroupCommitWriter(gated)  # type: ignore[arg-type]
    events = notes(1000)
    bad = {events[i].id for i in (3, 250, 251, 600, 999)}
    gated.poison.update(bad)
    tasks = [asyncio.create_task(writer.submit(WriteRequest(e))) for e in events]
    await asyncio.wait_for(gated.entered.wait(), 5)
    gated.gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for ev, result in zip(events, results, strict=True):
        if ev.id in bad:
            assert isinstance(result, ServerError), result
            assert str(result) == "error: the store could not hold this event"
            assert isinstance(result.__cause__, RuntimeError)
        else:
            assert result is WriteOutcome.STORED
    assert await store.count([Filter()], NOW) == 995
    assert writer.stats.failed_batches == 1
    assert gated.sizes[0] == 1000
    assert len(gated.sizes) < 200  # 5 bad among 1,000: about 2 x 5 x log2(1000) attempts
    warnings = [r for r in caplog.records if r.name == "relay.store.writer"]
    assert len(warnings) == 5
    assert all(r.levelno == logging.WARNING and r.exc_info is None for r in warnings)
    await writer.close()


async def test_many_refused_events_are_all_isolated_while_the_store_works(store: Store) -> None:
    """Once the store has taken part of the batch it is known to work: 50 refused events
    among 1,000 still fail alone (the tighter "store is down" budget would give up)."""
    gated = GatedStore(store)
    gated.gate.clear()
    writer = GroupCommitWriter(gated)  # type: ignore[arg-type]
    events = notes(1000)
    gated.poison.update(e.id for e in events[7::20])
    tasks = [asyncio.create_task(writer.submit(WriteRequest(e))) for e in events]
    await asyncio.wait_for(gated.entered.wait(), 5)
    gated.gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert sum(isinstance(r, ServerError) for r in results) == 50
    assert await store.count([Filter()], NOW) == 950
    await writer.close()


async def test_split_batches_commit_in_batch_order(store: Store) -> None:
    """The halves commit in order, so a replaceable event still meets the versions that
    came before it in the batch (and a refused one is as if it had never been sent)."""
    gated = GatedStore(store)
    gated.gate.clear()
    writer = GroupCommitWriter(gated)  # type: ignore[arg-type]
    v1 = sign_event(ALICE, 0, "v1", [], 100)
    bad = sign_event(ALICE, 1, "bad", [], 150)
    v2 = sign_event(ALICE, 0, "v2", [], 200)
    v0 = sign_event(ALICE, 0, "v0", [], 50)
    gated.poison.add(bad.id)
    tasks = [asyncio.create_task(writer.submit(WriteRequest(e))) for e in (v1, bad, v2, v0)]
    await asyncio.wait_for(gated.entered.wait(), 5)
    gated.gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert results[0] is WriteOutcome.STORED
    assert isinstance(results[1], ServerError)
    assert results[2:] == [WriteOutcome.STORED, WriteOutcome.SUPERSEDED]
    assert await store.query([Filter()], NOW) == [v2.raw]
    await writer.close()


async def test_store_that_fails_everything_fails_the_batch_with_bounded_retries(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """A store that is down refuses every attempt: the split gives up after its budget,
    every event gets ``error: ... try again``, and the fault is logged once, with its
    traceback; the writer goes on once the store is back."""
    gated = GatedStore(store)
    gated.gate.clear()
    writer = GroupCommitWriter(gated)  # type: ignore[arg-type]
    events = notes(1000)
    gated.poison.update(e.id for e in events)
    tasks = [asyncio.create_task(writer.submit(WriteRequest(e))) for e in events]
    await asyncio.wait_for(gated.entered.wait(), 5)
    gated.gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, ServerError) and str(r) == "error: could not store the event, try again"
               for r in results)
    assert len(gated.sizes) <= 1 + 8 * (1000).bit_length() + 1
    errors = [r for r in caplog.records if r.name == "relay.store.writer" and r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is not None
    assert "write batch of 1000 events failed" in errors[0].getMessage()
    later = notes(1, start=5000)[0]
    assert await writer.submit(WriteRequest(later)) == WriteOutcome.STORED
    assert await store.query([Filter()], NOW) == [later.raw]
    await writer.close()


async def test_on_committed_receives_only_stored_events(store: Store) -> None:
    seen: list[list[str]] = []
    writer = GroupCommitWriter(store, on_committed=lambda evs: seen.append([e.id for e in evs]))
    old = sign_event(ALICE, 0, "old", [], 100)
    new = sign_event(ALICE, 0, "new", [], 200)
    note = notes(1)[0]
    assert await writer.submit(WriteRequest(new)) == WriteOutcome.STORED
    outcomes = await asyncio.gather(writer.submit(WriteRequest(old)), writer.submit(WriteRequest(note)))
    assert list(outcomes) == [WriteOutcome.SUPERSEDED, WriteOutcome.STORED]
    assert await writer.submit(WriteRequest(note)) == WriteOutcome.DUPLICATE
    await writer.close()
    assert [i for batch in seen for i in batch] == [new.id, note.id]


async def test_on_committed_exception_is_logged_and_writer_survives(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    def explode(events: list[Event]) -> None:
        raise KeyError("subscriber gone")

    writer = GroupCommitWriter(store, on_committed=explode)
    with caplog.at_level(logging.ERROR):
        assert await writer.submit(WriteRequest(notes(1)[0])) == WriteOutcome.STORED
        assert await writer.submit(WriteRequest(notes(1, start=500)[0])) == WriteOutcome.STORED
    assert "on_committed callback failed" in caplog.text
    await writer.close()


async def test_close_flushes_queued_and_refuses_new(store: Store) -> None:
    gated = GatedStore(store)
    gated.gate.clear()
    writer = GroupCommitWriter(gated, batch_max=10)  # type: ignore[arg-type]
    events = notes(35)
    tasks = [asyncio.create_task(writer.submit(WriteRequest(e))) for e in events]
    await asyncio.wait_for(gated.entered.wait(), 5)
    closing = asyncio.create_task(writer.close())
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="closed"):
        await writer.submit(WriteRequest(notes(1, start=900)[0]))
    gated.gate.set()
    await asyncio.wait_for(closing, 10)
    assert all(t.done() for t in tasks)
    assert [t.result() for t in tasks] == [WriteOutcome.STORED] * 35
    assert await store.count([Filter()], NOW) == 35


async def test_cancelled_submitter_event_is_still_written(store: Store) -> None:
    gated = GatedStore(store)
    gated.gate.clear()
    writer = GroupCommitWriter(gated)  # type: ignore[arg-type]
    ev = notes(1)[0]
    task = asyncio.create_task(writer.submit(WriteRequest(ev)))
    await asyncio.wait_for(gated.entered.wait(), 5)
    task.cancel()
    gated.gate.set()
    await writer.close()
    assert task.cancelled()
    assert await store.query([Filter()], NOW) == [ev.raw]


async def test_ephemeral_event_is_refused_at_submit(store: Store) -> None:
    writer = GroupCommitWriter(store)
    with pytest.raises(ValueError, match="ephemeral"):
        await writer.submit(WriteRequest(sign_event(ALICE, 20000, "", [], 100)))
    await writer.close()
