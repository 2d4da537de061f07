"""Renewal by Nostr Wallet Connect: the relay pays its own renewal invoice from a member's
wallet (NIP-47 ``pay_invoice``), ``days_before`` the end of their period: the tier they
hold at its end (a downgrade already paid for renews the lower tier), else the
subscription plan.

- The member hands the relay a ``nostr+walletconnect://`` URI (account page, signed with
  NIP-98 by the account's key) with a budget: the most one renewal may cost. The wallet
  side should limit that connection to ``pay_invoice`` and a budget too (NIP-47 wallets
  offer both); the relay never asks for anything else.
- The URI is kept sealed (ChaCha20-Poly1305, the account's pubkey as associated data) with
  a key derived from the relay's own key (HKDF-SHA256), so a copy of the database alone
  cannot spend; revoking (or leaving the relay) deletes it.
- Exactly once per period, across restarts and nodes: the renewal of the period that ends
  at ``admitted_until`` is one row (``LedgerStore.claim_renewal``, a unique key) bound to
  ONE invoice at a time, created before the first payment request. Every later round only
  asks the ledger whether that invoice is paid (the usual exactly-once settlement credits
  the period) and, while it is unpaid and unexpired, asks the wallet to pay that same
  invoice again (every ``retry_seconds``): a Lightning invoice can be paid once, so a retry
  after a crash or a lost answer cannot pay twice.
- A schedule of tries (``retry_schedule_hours``, default 0, 6 and 24 hours after the
  start): when a try's invoice expired unpaid, the next try binds the row to a fresh
  invoice (``rebind_renewal``, only while it is still bound to the expired one, so two
  nodes cannot both) and asks the wallet again. After the last try, the fallback: an
  invoice living ``fallback_invoice_hours`` is left for the member to pay by hand, and sent
  to them. The tries go on through the grace of the tier held at the end (paid then, the
  period still counts from its old end: ``lightning.billing``), and stop when the period
  is renewed another way.
- Each attempt is recorded (state, tries, last detail) and, when the member opted in to
  reminders, the result is sent as a NIP-17 DM.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import logging
import os
import time
from collections.abc import Awaitable, Callable

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from lightning import nip44
from lightning.backend import BackendError
from lightning.backends.nwc import NwcBackend, NwcConfig, NwcConnection
from lightning.giftwrap import gift_wrap
from lightning.ledger import Confirmation, ConfirmResult, Ledger
from lightning.plans import DAY, Plans, UnknownPlan
from lightning.settings import RenewalSettings
from lightning.store.base import FOREVER, Account, InvoiceState, LedgerStore, NwcLink, RenewalAttempt
from relay.nostr.event import Event
from relay.ops.periodic import run_every
from relay.store.identity import RelayIdentity

log = logging.getLogger(__name__)

PLAN = "subscription"  # what a renewal buys without a tier: one more period
RUNNING = ("paying", "invoice")  # attempt states a later round still looks at
Publish = Callable[[Event], Awaitable[object]]
Pay = Callable[[str, str], Awaitable[str]]  # (uri, bolt11) -> preimage


class SealError(ValueError):
    """A sealed URI does not open (another relay key, or tampered with)."""


class UriSeal:
    """Seals NWC URIs at rest with a key derived from the relay's key."""

    def __init__(self, identity: RelayIdentity) -> None:
        key = HKDF(algorithm=SHA256(), length=32, salt=b"satsrelay", info=b"nwc-uri v1").derive(identity.secret)
        self._aead = ChaCha20Poly1305(key)

    def seal(self, uri: str, pubkey: str) -> str:
        nonce = os.urandom(12)
        return base64.b64encode(nonce + self._aead.encrypt(nonce, uri.encode(), pubkey.encode())).decode()

    def open(self, sealed: str, pubkey: str) -> str:
        try:
            raw = base64.b64decode(sealed)
            return self._aead.decrypt(raw[:12], raw[12:], pubkey.encode()).decode()
        except Exception:
            raise SealError("the sealed wallet connection does not open with this relay's key") from None


def check_uri(uri: str) -> NwcConnection:
    """The parsed URI, or ``BackendError`` with a reason that never quotes the secret."""
    return NwcConnection.parse(uri)


async def pay_with_nwc(uri: str, bolt11: str, *, public_only: bool = True) -> str:
    backend = NwcBackend(NwcConfig(uri, request_timeout_seconds=60.0, public_only=public_only))
    try:
        return await backend.pay_invoice(bolt11)
    finally:
        await backend.close()


class Renewals:
    def __init__(
        self,
        settings: RenewalSettings,
        *,
        store: LedgerStore,
        ledger: Ledger,
        plans: Plans,
        identity: RelayIdentity,
        publish: Publish,
        confirm: Callable[[str], Awaitable[ConfirmResult]],
        relay_name: str,
        pay: Pay | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``confirm(payment_hash)`` is the watcher's: it settles a paid invoice exactly once
        and refreshes the gate's cache."""
        self.settings = settings
        self.seal = UriSeal(identity)
        self._store = store
        self._ledger = ledger
        self._plans = plans
        self._identity = identity
        self._publish = publish
        self._confirm = confirm
        self._relay_name = relay_name
        self._pay_invoice = pay or functools.partial(pay_with_nwc, public_only=not settings.allow_private_relays)
        self._clock = clock
        self._task: asyncio.Task[None] | None = None

    @property
    def available(self) -> bool:
        """Renewal needs a period to renew: the subscription plan, or a tier sold per period."""
        return self._subscription() or any(tier.period_seconds for tier in self._plans.tiers)

    def _subscription(self) -> bool:
        try:
            self._plans.grant(PLAN)
        except UnknownPlan:
            return False
        return True

    def _plan_of(self, account: Account) -> str | None:
        """What renews this account's time: the tier it holds at the end of it (a
        downgrade paid for renews the lower tier), else the subscription plan."""
        tier = self._plans.tier(account.last_role)
        if tier is not None:
            return tier.name if tier.period_seconds else None
        return PLAN if self._subscription() else None

    def _in_standing(self, account: Account, now: int) -> bool:
        """Still admitted, or within the grace of the tier held at the end: a renewal
        starts, or goes on trying, only then (an ended term is renewed by paying)."""
        tier = self._plans.tier(account.last_role)
        grace = tier.grace_seconds if tier is not None else 0
        return account.admitted_until + grace > now

    async def connect(self, pubkey: str, uri: str, budget_sats: int, now: int) -> None:
        """Keep a member's wallet connection (``BackendError`` for a malformed URI)."""
        check_uri(uri)
        sealed = self.seal.seal(uri.strip(), pubkey)
        await self._store.set_nwc_link(NwcLink(pubkey, sealed, budget_sats * 1000, now))

    @property
    def relay_pubkey(self) -> str:
        return self._identity.pubkey

    async def connect_encrypted(self, pubkey: str, ciphertext: str, budget_sats: int, now: int) -> None:
        """The account page's hand-over: the URI NIP-44 encrypted by the member's key to the
        relay's (their extension does it), so it travels and is logged only as ciphertext.
        ``BackendError`` when it does not decrypt or is not a valid URI."""
        try:
            uri = nip44.decrypt(ciphertext, nip44.conversation_key(self._identity.secret, bytes.fromhex(pubkey)))
        except (nip44.Nip44Error, ValueError):
            raise BackendError("the wallet connection does not decrypt (NIP-44, to the relay's key)") from None
        await self.connect(pubkey, uri, budget_sats, now)

    async def status(self, pubkey: str) -> dict[str, object]:
        links = {link.pubkey: link for link in await self._store.nwc_links()}
        link = links.get(pubkey)
        attempts = await self._store.list_renewals(pubkey)
        return {
            "connected": link is not None,
            "budget_sats": None if link is None else link.budget_msat // 1000,
            "renewals": [
                {"period_end": a.period_end, "state": a.state, "tries": a.tries, "detail": a.detail}
                for a in attempts[:12]
            ],
        }

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="nwc-renewals")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        await run_every(self.settings.check_interval_seconds, self.check, log, "renewals by NWC failed")

    async def check(self) -> None:
        if not self.available:
            return
        for link in await self._store.nwc_links():
            try:
                await self._renew(link)
            except Exception:
                log.exception("renewal of %s failed; retrying later", link.pubkey)

    async def _renew(self, link: NwcLink) -> None:
        # First the attempts still running: one may have been paid while this node was
        # down, and its credit moved the period end already (a period and ~12 rows a year).
        for attempt in await self._store.list_renewals(link.pubkey):
            if attempt.state in RUNNING:
                await self._advance(link, attempt)
        now = int(self._clock())
        account = await self._store.get_account(link.pubkey)
        if account is None or account.banned or account.admitted_until >= FOREVER or account.admitted_until <= 0:
            return
        if not self._in_standing(account, now):
            return  # nothing running to renew (an ended term is renewed by paying, not silently)
        period_end = account.admitted_until
        if period_end - now > self.settings.days_before * DAY:
            return
        if await self._store.get_renewal(link.pubkey, period_end) is not None:
            return  # this period's renewal is under way (advanced above) or over
        plan = self._plan_of(account)
        if plan is None:
            return
        started = await self._start(link, plan, period_end, now)
        if started is not None:
            await self._advance(link, started)

    async def _start(self, link: NwcLink, plan: str, period_end: int, now: int) -> RenewalAttempt | None:
        price = self._plans.grant(plan).amount_msat
        if price > link.budget_msat:
            if await self._store.claim_renewal(link.pubkey, period_end, "", now):
                detail = f"the renewal costs {price // 1000} sats, over your budget of {link.budget_msat // 1000}"
                await self._store.record_renewal(link.pubkey, period_end, "failed", detail, now, tried=False)
                await self._tell(link.pubkey, f"Your subscription was not renewed: {detail}.")
            return None
        invoice = await self._ledger.issue(link.pubkey, plan, now, memo=f"{self._relay_name}: renewal")
        if not await self._store.claim_renewal(link.pubkey, period_end, invoice.payment_hash, now):
            return None  # another node started it; its invoice is the one
        log.info("renewing %s (period ending %d) with invoice %s", link.pubkey, period_end, invoice.payment_hash)
        return await self._store.get_renewal(link.pubkey, period_end)

    async def _advance(self, link: NwcLink, attempt: RenewalAttempt) -> None:
        """One step for a running attempt: credited? else, while its invoice lives, ask
        the wallet to pay it (again); once it expired unpaid, the next try of the schedule
        with a fresh invoice, or after the last one an invoice left for the member."""
        pubkey, period_end = attempt.pubkey, attempt.period_end
        if await self._settled(attempt):
            return
        now = int(self._clock())
        account = await self._store.get_account(pubkey)
        if account is None or account.banned or account.admitted_until != period_end:
            # Another payment (the join page, a zap, an earlier try that was paid late), the
            # operator moved the period or banned the key: this renewal asks for nothing more.
            await self._store.record_renewal(
                pubkey, period_end, "cancelled", "the period was renewed or changed otherwise", now, tried=False
            )
            return
        invoice = await self._store.get_invoice(attempt.payment_hash)
        alive = invoice is not None and invoice.state is not InvoiceState.EXPIRED and invoice.expires_at > now
        if attempt.state == "invoice":
            if not alive:
                await self._store.record_renewal(
                    pubkey, period_end, "failed", "the renewal invoice expired unpaid", now, tried=False
                )
                await self._tell(pubkey, "Your subscription was not renewed: its invoice expired unpaid.")
            return
        if not self._in_standing(account, now):
            await self._store.record_renewal(
                pubkey, period_end, "failed", "the period and its grace ended unpaid", now, tried=False
            )
            return
        if alive:
            assert invoice is not None
            if attempt.tries and now - attempt.updated_at < self.settings.retry_seconds:
                return
            await self._pay(link, attempt, invoice.bolt11)
            return
        # This try's invoice expired unpaid (a Lightning invoice is paid once and not after
        # its expiry, so a fresh one cannot make the period be paid twice).
        schedule = self.settings.retry_schedule_hours
        started = 0 if invoice is None else invoice.created_at - attempt.created_at
        tried = max(1, sum(1 for hours in schedule if hours * 3600 <= started + 1))
        plan = invoice.plan if invoice is not None else self._plan_of(account)
        if plan is None:
            return
        memo = f"{self._relay_name}: renewal"
        if tried < len(schedule):
            if now < attempt.created_at + schedule[tried] * 3600:
                return  # the next try's time has not come
            fresh = await self._ledger.issue(pubkey, plan, now, memo=memo)
            detail = f"try {tried + 1} of {len(schedule)}"
            if await self._store.rebind_renewal(
                pubkey, period_end, attempt.payment_hash, fresh.payment_hash, "paying", detail, now
            ):
                rebound = await self._store.get_renewal(pubkey, period_end)
                if rebound is not None:
                    await self._pay(link, rebound, fresh.bolt11)
            return
        grant = self._plans.grant(plan)
        left = await self._ledger.issue_grant(
            pubkey,
            grant,
            now,
            memo=memo,
            capped_per_pubkey=False,
            expiry_seconds=round(self.settings.fallback_invoice_hours * 3600),
        )
        detail = f"your wallet did not pay in {len(schedule)} tries; an invoice waits for you"
        if not await self._store.rebind_renewal(
            pubkey, period_end, attempt.payment_hash, left.payment_hash, "invoice", detail, now
        ):
            return
        log.info("renewal of %s: the wallet did not pay; invoice %s left to pay", pubkey, left.payment_hash)
        by = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(left.expires_at))
        await self._tell(
            pubkey,
            f"Your wallet did not pay the renewal of your subscription to {self._relay_name}"
            f" ({grant.amount_msat // 1000} sats) after {len(schedule)} tries. Pay this invoice by {by}"
            f" to keep writing: {left.bolt11}",
        )

    async def _pay(self, link: NwcLink, attempt: RenewalAttempt, bolt11: str) -> None:
        """Ask the member's wallet to pay ``bolt11`` (the attempt's invoice) once, and record it."""
        try:
            uri = self.seal.open(link.sealed_uri, attempt.pubkey)
            await self._pay_invoice(uri, bolt11)
            detail = "the wallet says paid"
        except (BackendError, SealError) as exc:
            detail = str(exc)[:300]
        await self._store.record_renewal(
            attempt.pubkey, attempt.period_end, "paying", detail, int(self._clock()), tried=True
        )
        await self._settled(attempt)

    async def _settled(self, attempt: RenewalAttempt) -> bool:
        """Ask the ledger (through the watcher) whether the attempt's invoice is paid; the
        settlement credits the period exactly once. Records the attempt paid."""
        try:
            result = await self._confirm(attempt.payment_hash)
        except BackendError as exc:
            log.info("renewal invoice %s: the relay's wallet is unreachable (%s)", attempt.payment_hash, exc)
            return False
        if result.outcome not in (Confirmation.CREDITED, Confirmation.ALREADY_PAID):
            return False
        now = int(self._clock())
        await self._store.record_renewal(attempt.pubkey, attempt.period_end, "paid", "renewed", now, tried=False)
        account = await self._store.get_account(attempt.pubkey)
        until = "" if account is None else time.strftime(" until %Y-%m-%d", time.gmtime(account.admitted_until))
        await self._tell(
            attempt.pubkey, f"Your subscription to {self._relay_name} was renewed from your wallet{until}."
        )
        return True

    async def _tell(self, pubkey: str, text: str) -> None:
        """The result, as a NIP-17 DM, to members who asked for messages."""
        if await self._store.reminders_on(pubkey):
            await self._publish(gift_wrap(self._identity.secret, pubkey, text, int(self._clock())))
