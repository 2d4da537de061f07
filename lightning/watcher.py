"""Turns wallet settlements into ledger credits, and never lets one slip by, at a bounded cost.

Three paths share one job, all through ``Ledger.confirm`` (which verifies with the wallet
and settles exactly once, so running them together, or on several nodes, is harmless):

- *push*: the backend's settlement stream, for speed (admission within about a second of
  payment); reconnects with backoff when the stream drops.
- *poll rounds* every ``poll_interval``: a missed or forged push, or a wallet without push,
  only delays a credit. While the wallet promises a notification for every payment and the
  stream is live (``WalletBackend.notifications_live``: NIP-47 ``payment_received``), the
  rounds leave young and watched invoices to it and ask about each at most every
  ``old_interval`` (the join page's status route still asks on a payer's behalf); the
  moment the stream drops they poll as before. Which invoices are asked about is scheduled so the cost does not
  grow with rows an attacker creates (issue 8): invoices someone is watching (the join
  page is polling their status) and young ones are due every round, older ones every
  ``old_interval``; invoices already past their expiry wait for the next reconciliation;
  and at most ``max_lookups`` lookups run per round whatever is pending (watched first,
  then young, then the longest unasked).
- *reconciliation* of every pending invoice at start-up (payments made while the relay was
  down) and every ``reconcile_interval``; it is also what marks unpaid invoices expired
  (each got its last look in that same pass) and deletes never-paid ones ``prune_after``
  seconds after they expired. Pending rows are capped (``max_pending_invoices``), so a
  reconciliation is bounded too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from lightning.backend import BackendError
from lightning.ledger import Confirmation, ConfirmResult, Ledger
from lightning.store.base import Invoice

log = logging.getLogger(__name__)

MAX_BACKOFF = 30.0
STREAM_FAILURES_LOGGED = 20  # a failing push stream logs a warning every 20th try (~10 min at MAX_BACKOFF)
POLL_CONCURRENCY = 8
MAX_WATCHED = 10_000  # invoices whose "someone is looking at it" time is remembered


@dataclass(frozen=True, slots=True)
class PollSchedule:
    """How often which pending invoice is asked about (see the module docstring)."""

    poll_interval: float = 5.0
    young_seconds: float = 600.0
    watched_seconds: float = 60.0
    old_interval: float = 300.0
    max_lookups: int = 20
    reconcile_interval: float = 3600.0
    prune_after: int = 86400


class Watcher:
    def __init__(
        self,
        ledger: Ledger,
        *,
        poll_interval: float,
        push: bool = True,
        schedule: PollSchedule | None = None,
        on_result: Callable[[ConfirmResult], None] = lambda result: None,
        on_pending: Callable[[int], None] = lambda count: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``on_pending``: how many invoices are pending, after each round's listing (a gauge)."""
        self._ledger = ledger
        self._schedule = schedule or PollSchedule(poll_interval=poll_interval)
        self._poll_interval = poll_interval
        self._push = push
        self._on_result = on_result
        self._on_pending = on_pending
        self._clock = clock
        self._tasks: list[asyncio.Task[None]] = []
        self._poll_wakeup = asyncio.Event()
        self._last_lookup: dict[str, float] = {}  # payment hash -> clock() of our last lookup
        self._watched: OrderedDict[str, float] = OrderedDict()  # payment hash -> clock() last asked
        self._last_reconcile = 0.0
        self.stream_connects = 0  # how many times the push stream was (re)opened
        self.notified = False  # the last round left young invoices to wallet notifications

    async def start(self) -> None:
        """Reconcile once before returning (so a restart credits what was paid meanwhile),
        then keep both loops running."""
        try:
            await self.poll_once()
        except BackendError as exc:
            log.warning("start-up reconciliation could not reach the wallet (%s); the poll loop retries", exc)
        self._tasks.append(asyncio.create_task(self._poll_loop(), name="payments-poll"))
        if self._push:
            self._tasks.append(asyncio.create_task(self._push_loop(), name="payments-push"))
        for task in self._tasks:
            task.add_done_callback(self._task_died)

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def watch(self, payment_hash: str) -> None:
        """Someone is looking at this invoice (its status route was asked): poll it often."""
        self._watched[payment_hash] = self._clock()
        self._watched.move_to_end(payment_hash)
        while len(self._watched) > MAX_WATCHED:
            self._watched.popitem(last=False)

    async def confirm(self, payment_hash: str) -> ConfirmResult:
        result = await self._ledger.confirm(payment_hash, int(self._clock()))
        self._on_result(result)
        return result

    async def poll_once(self) -> int:
        """Reconcile: confirm EVERY pending invoice with the wallet, then mark the unpaid ones
        past their expiry expired and delete never-paid ones expired ``prune_after`` ago.

        Invoices just past their expiry get this last look before they are marked, and
        ``settle_invoice`` still accepts a locally expired one, so a payment that raced
        the expiry is credited either way. Returns how many were credited.
        """
        started = self._clock()
        store = self._ledger.store
        pending = await store.list_invoices(pending_only=True)
        self._on_pending(len(pending))
        credited = await self._look_up(pending, started, raise_on_failure=True)
        self._last_reconcile = started
        await store.expire_invoices(int(started))
        pruned = await store.delete_unpaid_invoices(int(started) - self._schedule.prune_after)
        if pruned:
            log.info("deleted %d never-paid invoices that expired over %d s ago", pruned, self._schedule.prune_after)
        return credited

    async def poll_due(self) -> int:
        """One poll round: look up the invoices the schedule says are due, at most
        ``max_lookups`` of them. Returns how many were credited."""
        s = self._schedule
        now = self._clock()
        notified = self._ledger.backend.notifications_live()
        if notified != self.notified:
            self.notified = notified
            log.info(
                "wallet payment notifications %s",
                "live: young invoices are left to them" if notified else "not live: polling young invoices",
            )
        pending = await self._ledger.store.list_invoices(pending_only=True)
        self._on_pending(len(pending))
        live = {invoice.payment_hash for invoice in pending}
        for payment_hash in [h for h in self._last_lookup if h not in live]:
            del self._last_lookup[payment_hash]  # settled, expired or pruned: forget it
        due: list[tuple[int, float, Invoice]] = []
        for invoice in pending:
            watched = now - self._watched.get(invoice.payment_hash, -1e18) < s.watched_seconds
            if invoice.expires_at <= now and not watched:
                continue  # its last look is the next reconciliation's
            young = now - invoice.created_at < s.young_seconds
            if notified:
                # the stream reports its payment: the first look is old_interval after it was made
                last = self._last_lookup.get(invoice.payment_hash, float(invoice.created_at))
                interval = s.old_interval
            else:
                last = self._last_lookup.get(invoice.payment_hash, 0.0)
                interval = s.poll_interval if watched or young else s.old_interval
            if now - last >= interval * 0.95:  # rounds are not exactly poll_interval apart
                due.append((0 if watched else 1 if young else 2, last, invoice))
        due.sort(key=lambda item: (item[0], item[1]))
        return await self._look_up([invoice for _, _, invoice in due[: s.max_lookups]], now)

    async def _look_up(self, invoices: list[Invoice], now: float, *, raise_on_failure: bool = False) -> int:
        limit = asyncio.Semaphore(POLL_CONCURRENCY)
        credited = 0
        failures: list[BackendError] = []

        async def check(payment_hash: str) -> None:
            nonlocal credited
            async with limit:
                self._last_lookup[payment_hash] = now
                try:
                    result = await self.confirm(payment_hash)
                except BackendError as exc:
                    failures.append(exc)
                    return
                if result.outcome is Confirmation.CREDITED:
                    credited += 1

        await asyncio.gather(*(check(invoice.payment_hash) for invoice in invoices))
        if failures and (raise_on_failure or len(failures) == len(invoices)):
            # Do not expire anything we could not check: it may have been paid.
            raise BackendError(f"{len(failures)} of {len(invoices)} lookups failed: {failures[0]}")
        return credited

    async def _poll_loop(self) -> None:
        failures = 0
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poll_wakeup.wait(), self._poll_interval)
            self._poll_wakeup.clear()
            try:
                if self._clock() - self._last_reconcile >= self._schedule.reconcile_interval:
                    await self.poll_once()
                else:
                    await self.poll_due()
            except BackendError as exc:
                failures += 1
                if failures == 1 or failures % 60 == 0:
                    log.warning("polling pending invoices failed (%s); retrying every %.0f s", exc, self._poll_interval)
            except Exception:
                # A store hiccup must not end polling for good: it is the safety net.
                log.exception("polling pending invoices crashed; retrying next round")
            else:
                if failures:
                    log.info("wallet reachable again after %d failed polls", failures)
                failures = 0

    async def _push_loop(self) -> None:
        backoff = 0.5
        failures = 0  # in a row: streams that failed without living long
        while True:
            self.stream_connects += 1
            opened = time.monotonic()
            try:
                async for payment_hash in self._ledger.backend.settlements():
                    backoff = 0.5
                    try:
                        await self.confirm(payment_hash)
                    except BackendError as exc:
                        log.warning("settlement hint for %s not confirmed yet (%s); polling will", payment_hash, exc)
                reason = "ended"
            except BackendError as exc:
                reason = f"dropped ({exc})"
            except Exception:
                log.exception("wallet settlement stream crashed; reconnecting in %.1f s", backoff)
                reason = ""
            if reason:
                # A wallet that is down or refuses the key fails every reconnect: say so once
                # (and every STREAM_FAILURES_LOGGED after), not at each try of the backoff.
                # A stream that lived a while was up: its drop is news again.
                failures = 1 if time.monotonic() - opened > MAX_BACKOFF else failures + 1
                level = logging.WARNING if failures % STREAM_FAILURES_LOGGED == 1 else logging.DEBUG
                log.log(level, "wallet settlement stream %s; reconnecting in %.1f s", reason, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)

    def _task_died(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error(
                "payment watcher task %s died; payments are credited only after a restart",
                task.get_name(),
                exc_info=exc,
            )
