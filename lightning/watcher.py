"""Turns wallet settlements into ledger credits, and never lets one slip by.

Two loops share one job. The *push* loop listens to the backend's settlement stream for
speed (admission within about a second of payment) and reconnects with backoff when the
stream drops. The *poll* loop asks the wallet about every pending invoice at start-up
(reconciliation: payments made while the relay was down) and then on a schedule, so a
missed or forged push, a dropped stream, a restart or a wallet outage only delays a
credit. Both go through ``Ledger.confirm``, which verifies with the wallet and settles
exactly once; running both (or several nodes) at once is therefore harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from lightning.backend import BackendError
from lightning.ledger import Confirmation, ConfirmResult, Ledger

log = logging.getLogger(__name__)

MAX_BACKOFF = 30.0
POLL_CONCURRENCY = 8


class Watcher:
    def __init__(
        self,
        ledger: Ledger,
        *,
        poll_interval: float,
        push: bool = True,
        on_result: Callable[[ConfirmResult], None] = lambda result: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._ledger = ledger
        self._poll_interval = poll_interval
        self._push = push
        self._on_result = on_result
        self._clock = clock
        self._tasks: list[asyncio.Task[None]] = []
        self._poll_wakeup = asyncio.Event()
        self.stream_connects = 0  # how many times the push stream was (re)opened

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

    def poll_soon(self) -> None:
        """Run the next poll now (e.g. after the join page's simulated payment)."""
        self._poll_wakeup.set()

    async def confirm(self, payment_hash: str) -> ConfirmResult:
        result = await self._ledger.confirm(payment_hash, int(self._clock()))
        self._on_result(result)
        return result

    async def poll_once(self) -> int:
        """Confirm every pending invoice with the wallet, then mark the expired ones.

        Invoices just past their expiry get this last look before they are marked, and
        ``settle_invoice`` still accepts a locally expired one, so a payment that raced
        the expiry is credited either way. Returns how many were credited.
        """
        store = self._ledger.store
        pending = await store.list_invoices(pending_only=True)
        limit = asyncio.Semaphore(POLL_CONCURRENCY)
        credited = 0
        failures: list[BackendError] = []

        async def check(payment_hash: str) -> None:
            nonlocal credited
            async with limit:
                try:
                    result = await self.confirm(payment_hash)
                except BackendError as exc:
                    failures.append(exc)
                    return
                if result.outcome is Confirmation.CREDITED:
                    credited += 1

        await asyncio.gather(*(check(invoice.payment_hash) for invoice in pending))
        if failures:
            # Do not expire anything we could not check: it may have been paid.
            raise BackendError(f"{len(failures)} of {len(pending)} lookups failed: {failures[0]}")
        await store.expire_invoices(int(self._clock()))
        return credited

    async def _poll_loop(self) -> None:
        failures = 0
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poll_wakeup.wait(), self._poll_interval)
            self._poll_wakeup.clear()
            try:
                await self.poll_once()
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
        while True:
            self.stream_connects += 1
            try:
                async for payment_hash in self._ledger.backend.settlements():
                    backoff = 0.5
                    try:
                        await self.confirm(payment_hash)
                    except BackendError as exc:
                        log.warning("settlement hint for %s not confirmed yet (%s); polling will", payment_hash, exc)
                log.warning("wallet settlement stream ended; reconnecting in %.1f s", backoff)
            except BackendError as exc:
                log.warning("wallet settlement stream dropped (%s); reconnecting in %.1f s", exc, backoff)
            except Exception:
                log.exception("wallet settlement stream crashed; reconnecting in %.1f s", backoff)
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
