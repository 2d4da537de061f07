"""Whether the wallet answers, told to the operator once, and shown until it is fixed.

A wrong ``url`` or key used to show only as the push stream's reconnect warnings, one every
few seconds, and the first payer's failed invoice. Now the relay asks the wallet at start-up
(``WalletBackend.check``: read-only, creates nothing) and says in one WARNING what failed and
which settings to look at; the console's overview shows the reason for as long as it lasts.
While it fails it is asked again every ``recheck_seconds`` (and, once well, every
``healthy_recheck_seconds``), and the change is logged once each way.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from lightning.backend import BackendError, WalletBackend

log = logging.getLogger(__name__)

CHECK_TIMEOUT = 15.0  # seconds; the wallet's HTTP client gives up on a connect after 5


class WalletHealth:
    def __init__(
        self,
        backend: WalletBackend,
        *,
        hint: str,
        recheck_seconds: float = 30.0,
        healthy_recheck_seconds: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``hint``: what to check when the wallet does not answer (its settings' names)."""
        self._backend = backend
        self._hint = hint
        self._recheck = recheck_seconds
        self._healthy_recheck = healthy_recheck_seconds
        self._clock = clock
        self.problem: str | None = None  # why the last check failed; None: it answered
        self.since: float | None = None  # clock() of the first failure in a row
        self.checks = 0

    async def check(self) -> bool:
        """Ask the wallet once; True when it answered and took the credential."""
        self.checks += 1
        try:
            await asyncio.wait_for(self._backend.check(), CHECK_TIMEOUT)
        except BackendError as exc:
            self._failed(str(exc))
            return False
        except TimeoutError:
            self._failed(f"no answer within {CHECK_TIMEOUT:.0f} s")
            return False
        if self.problem is not None:
            log.info("the %s wallet answers again", self._backend.name)
        self.problem = self.since = None
        return True

    async def run(self) -> None:
        """Background task: check again, often while it fails, rarely while it answers."""
        while True:
            await asyncio.sleep(self._recheck if self.problem is not None else self._healthy_recheck)
            try:
                await self.check()
            except Exception:
                log.exception("checking the wallet crashed; trying again later")

    def _failed(self, reason: str) -> None:
        if self.problem is None:
            self.since = self._clock()
            log.warning(
                "the %s wallet does not answer: %s. Invoices cannot be issued or credited until it does: %s",
                self._backend.name,
                reason,
                self._hint,
            )
        else:
            log.debug("the %s wallet still does not answer: %s", self._backend.name, reason)
        self.problem = reason
