"""``PaymentsExtension``: the lightning package as the relay sees it (its ``relay.plugins.hooks.PluginHooks``).

It wires the pieces together: a wallet backend chosen by ``payments.backend``, the
ledger (issue + verified settlement), the watcher (push + polling + reconciliation), the
write gate (cached account state) and the join page. The relay calls ``build_extension``
once at start-up when ``payments.enabled`` is true.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from prometheus_client import CollectorRegistry

from lightning.backend import WalletBackend
from lightning.console import PaymentsConsole
from lightning.gate import AccountCache, Gate, InboxAllowance
from lightning.ledger import Confirmation, ConfirmResult, Ledger, PendingCaps, RequestBudget
from lightning.links import KeyLinks
from lightning.management import PaymentMethods
from lightning.membership import REQUEST_KINDS, Membership
from lightning.metrics import MeteredWallet, PaymentMetrics
from lightning.plans import Plans, UnknownPlan
from lightning.prompts import RenewalPrompts
from lightning.reminders import Reminders
from lightning.renewal import Renewals
from lightning.settings import REQUIRED_SECRETS, PaymentSettings
from lightning.store import open_ledger
from lightning.store.base import Invoice, RoleDefinition, charge_of, payer_of
from lightning.wallet_health import WalletHealth
from lightning.watcher import PollSchedule, Watcher
from lightning.web import JoinWeb, PageInfo
from lightning.zapper import Publish, Zapper
from relay.config import ConfigError
from relay.net.http import HttpRequest, HttpResponse, http_url
from relay.nostr.errors import Rejection, Restricted
from relay.nostr.event import Event
from relay.nostr.filters import Filter
from relay.nostr.policy import WriteContext
from relay.plugins.hooks import Admit, Allowance, Answered, ConsolePanel, ManagementMethod, PluginHooks, Refuse, Verdict
from relay.store.base import Store
from relay.store.identity import RelayIdentity

if TYPE_CHECKING:
    from lightning.backends.fake import FakeBackend
    from relay.config import Settings


def payment_settings(settings: Settings) -> PaymentSettings:
    """The ``[payments]`` section, validated by ``PaymentSettings`` (lightning.plugin adds it)."""
    section = settings.section("payments")
    assert isinstance(section, PaymentSettings)
    return section


def payments_url(settings: Settings) -> str:
    """Where unpaid writers are sent: the configured URL, else the http(s) form of the
    relay's public URL + ``/join`` (the relay serves the page itself)."""
    p = payment_settings(settings)
    if p.payments_url:
        return p.payments_url
    return http_url(settings.relay.public_url) + "/join"


def fake_state_file(settings: Settings) -> Path:
    """The fake wallet's SQLite file: configured, else next to the SQLite store, else ./data.

    ``satsrelay pay-fake`` computes the same path from the same Settings.
    """
    state_file = payment_settings(settings).fake.state_file
    if state_file:
        return Path(state_file)
    url = settings.storage.url
    if url.startswith("sqlite:///") and len(url) > len("sqlite:///"):
        return Path(url[len("sqlite:///") :]).parent / "fake-wallet.db"
    return Path("data") / "fake-wallet.db"


def wallet_hint(p: PaymentSettings) -> str:
    """Which settings to look at when the chosen wallet does not answer."""
    if p.backend == "fake":
        return "the demo wallet is in-process; restart the relay"
    section, secret = REQUIRED_SECRETS[p.backend]
    fields = secret if section == "nwc" else f"url and {secret}"
    env = f"SATSRELAY_PAYMENTS__{section.upper()}__{secret.upper()}"
    return f"check {fields} in [payments.{section}] (or env {env})"


def build_backend(settings: Settings, http: httpx.AsyncClient) -> WalletBackend:
    """The wallet ``payments.backend`` names; each module is imported only when chosen."""
    p = payment_settings(settings)
    if p.backend == "fake":
        from lightning.backends.fake import FakeBackend, FakeConfig

        return FakeBackend(FakeConfig(fake_state_file(settings), auto_settle_seconds=p.fake.auto_settle_seconds))
    if p.backend == "lnbits":
        from lightning.backends.lnbits import LnbitsBackend, LnbitsConfig

        return LnbitsBackend(LnbitsConfig(p.lnbits.url, p.lnbits.invoice_key.get_secret_value()), http)
    if p.backend == "lnd":
        from lightning.backends.lnd import LndBackend, LndConfig

        lnd = p.lnd
        return LndBackend(LndConfig(lnd.url, lnd.macaroon_hex.get_secret_value(), lnd.tls_cert_path), http)
    if p.backend == "cln":
        from lightning.backends.cln import ClnBackend, ClnConfig

        return ClnBackend(ClnConfig(p.cln.url, p.cln.rune.get_secret_value(), ca_cert_path=p.cln.ca_cert_path), http)
    if p.backend == "phoenixd":
        from lightning.backends.phoenixd import PhoenixdBackend, PhoenixdConfig

        return PhoenixdBackend(PhoenixdConfig(p.phoenixd.url, p.phoenixd.password.get_secret_value()), http)
    if p.backend == "nwc":
        from lightning.backends.nwc import NwcBackend, NwcConfig

        return NwcBackend(NwcConfig(p.nwc.uri.get_secret_value()), http)
    raise ValueError(f"unknown payments.backend {p.backend!r}")


class PaymentsExtension:
    """The payments plug-in's running parts; ``hooks()`` is what the relay calls."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        backend: WalletBackend,
        *,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.time,
        trusted_zappers: Collection[str] = (),
        identity: RelayIdentity | None = None,
        publish: Publish | None = None,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        """``trusted_zappers`` adds to ``[payments] trusted_zappers`` the keys whose valid
        NIP-57 receipts are free; ``identity`` and ``publish`` (the relay's key and its
        own-event writer) turn on zaps to the relay (``payments.zaps``), and the relay's
        key then trusts its own receipts. ``http``: the wallet's HTTP client, closed by ``stop``
        (the extension owns it)."""
        p = payment_settings(settings)
        self._http = http
        self.settings = settings
        self.events = store  # the relay's event store
        self.store = open_ledger(store)  # the payments tables beside it (lightning.store)
        self.backend = backend
        self.plans = Plans.from_settings(p)
        self.payments_url = payments_url(settings)
        self.metrics = PaymentMetrics(registry)
        self.accounts = AccountCache(self.store, p.account_cache_seconds)
        caps = PendingCaps(
            p.max_pending_invoices, p.max_pending_invoices_per_pubkey, p.max_pending_invoices_per_address
        )
        # The ledger and the check reach the wallet through its error counter; ``backend``
        # stays the wallet itself (the demo's "simulate payment" needs the fake one).
        metered = MeteredWallet(backend, self.metrics.wallet_errors)
        self.ledger = Ledger(self.store, metered, self.plans, p.invoice_expiry_seconds, caps)
        self.health = WalletHealth(metered, hint=wallet_hint(p), clock=clock)
        self.metrics.watch_wallet(lambda: self.health.problem is None)
        self._clock = clock
        self._health_task: asyncio.Task[None] | None = None
        # One rate budget per address group for the join page and the zap callback together.
        limits = settings.limits
        self.invoice_budget = RequestBudget(
            p.invoice_requests_per_minute, ipv6_prefix=limits.ipv6_prefix, capacity=limits.rate_table_size
        )
        self.zapper: Zapper | None = None
        if identity is not None and publish is not None and p.zaps.enabled:
            self.zapper = Zapper(
                p.zaps,
                relay_name=settings.relay.name,
                public_url=settings.relay.public_url,
                identity=identity,
                ledger=self.ledger,
                events=store,
                plans=self.plans,
                publish=publish,
                budget=self.invoice_budget,
                on_issued=self._on_issued,
                clock=clock,
            )
        zap_hint = None
        if self.zapper is not None:
            zap_hint = f"zap {self.zapper.address} {self.zapper.min_msat // 1000} sats"
        self.gate = Gate(
            p,
            self.plans,
            self.accounts,
            self.payments_url,
            # The relay's own receipts (zaps to itself) are genuine by construction.
            trusted_zappers=(*trusted_zappers, *((identity.pubkey,) if identity is not None else ())),
            inbox=InboxAllowance(
                store, p.inbox_events_per_hour, p.inbox_events_per_hour_per_ip, ipv6_prefix=settings.limits.ipv6_prefix
            ),
            zap_hint=zap_hint,
            events=store,
            rate_table_size=settings.limits.rate_table_size,
        )
        # A priced event's charge commits in its own transaction (lightning.store.base).
        self.store.charge_events(self.gate.credit_ran_out, self.accounts.invalidate)
        schedule = PollSchedule(
            poll_interval=p.poll_interval_seconds,
            young_seconds=p.young_invoice_seconds,
            watched_seconds=p.watched_invoice_seconds,
            old_interval=p.old_invoice_poll_seconds,
            max_lookups=p.max_lookups_per_poll,
            reconcile_interval=p.reconcile_interval_seconds,
            prune_after=p.prune_expired_invoices_after_seconds,
        )
        self.watcher = Watcher(
            self.ledger,
            poll_interval=p.poll_interval_seconds,
            push=p.push,
            schedule=schedule,
            on_result=self._on_result,
            on_pending=self.metrics.invoices_pending.set,
            clock=clock,
        )
        self.reminders: Reminders | None = None
        if identity is not None and publish is not None and p.reminders.enabled:
            self.reminders = Reminders(
                p.reminders,
                store=self.store,
                plans=self.plans,
                identity=identity,
                publish=publish,
                relay_name=settings.relay.name,
                relay_url=settings.relay.public_url,
                payments_url=self.payments_url,
                zap_address=self.zapper.address if self.zapper is not None else None,
                allow=frozenset(p.allow_pubkeys),
                clock=clock,
            )
        self.prompts: RenewalPrompts | None = None  # NOTIFY near and at the end of a plan
        if self.reminders is not None and p.reminders.notify:
            self.prompts = RenewalPrompts(
                accounts=self.accounts,
                store=self.store,
                plans=self.plans,
                days_before=max(p.reminders.days_before),
                relay_name=settings.relay.name,
                join_link=self.payments_url,
                zap_address=self.zapper.address if self.zapper is not None else None,
            )
        self.renewals: Renewals | None = None
        if identity is not None and publish is not None and p.renewal.enabled:
            self.renewals = Renewals(
                p.renewal,
                store=self.store,
                ledger=self.ledger,
                plans=self.plans,
                identity=identity,
                publish=publish,
                confirm=self.watcher.confirm,
                relay_name=settings.relay.name,
                clock=clock,
            )
        self.membership: Membership | None = None
        if identity is not None and publish is not None and p.membership.enabled:
            self.membership = self._membership(settings, identity, publish, clock)
        self.admin_methods = PaymentMethods(  # NIP-86
            self.store,
            self._on_account_changed,
            clock,
            credit_pays=self.plans.credit_enabled,
            tiers=self.plans.tiers,
            on_roles_change=self._on_roles_changed,
        )
        self.console = PaymentsConsole(self.store, clock, tiers=self.plans.tiers)  # operator console pages
        self.key_links = KeyLinks(  # one plan, several keys
            self.store,
            store,
            self.plans,
            settings.relay.public_url,
            is_member=self.gate.is_member,
            banned=self._banned,
            changed=self._on_account_changed,
            clock=clock,
        )
        fake = self._fake_backend()
        self.web = JoinWeb(
            PageInfo(settings.relay.name, settings.relay.description, settings.relay.public_url, demo=fake is not None),
            self.ledger,
            self.plans,
            budget=self.invoice_budget,
            on_issued=self._on_issued,
            fake_pay=self._simulate_payment if fake is not None else None,
            confirm=self.watcher.confirm,
            watch=self.watcher.watch,
            status_lookups_per_second=p.status_lookups_per_second,
            reminders=self.reminders is not None,
            renewals=self.renewals,
            clock=clock,
        )

    def _membership(
        self, settings: Settings, identity: RelayIdentity, publish: Publish, clock: Callable[[], float]
    ) -> Membership:
        m = payment_settings(settings).membership
        if m.members_may_invite:
            try:
                self.plans.grant(m.member_invite_plan)
            except UnknownPlan as exc:
                raise ConfigError(f"payments.membership.member_invite_plan: {exc}") from None
        return Membership(
            m,
            plans=self.plans,
            store=self.store,
            events=self.events,
            accounts=self.accounts,
            identity=identity,
            publish=publish,
            relay_url=settings.relay.public_url,
            is_member=self.gate.is_member,
            banned=frozenset(payment_settings(settings).ban_pubkeys),
            on_leave=self._on_leave,
            clock=clock,
            ipv6_prefix=settings.limits.ipv6_prefix,
            roles=self.roles,
        )

    async def _banned(self, pubkey: str) -> bool:
        if pubkey in payment_settings(self.settings).ban_pubkeys:
            return True
        account = await self.store.get_account(pubkey)
        return account is not None and account.banned

    async def roles(self) -> list[RoleDefinition]:
        """Every NIP-43 role: the tiers (their limits are the config's), then those made
        through NIP-86 ``createrole``."""
        tiers = [RoleDefinition(t.name, t.label, t.description, t.color, t.order) for t in self.plans.tiers]
        return [*tiers, *await self.store.list_roles()]

    async def _on_leave(self, pubkey: str, now: int) -> None:
        """A member who leaves is forgotten: no more reminders, no wallet connection, no
        keys linked to its plan (nor this key to another's)."""
        await self.store.set_reminders(pubkey, False, now)
        await self.store.forget_nwc_link(pubkey)
        if await self.store.unlink_all(pubkey, now):
            self.accounts.invalidate_all()

    def _fake_backend(self) -> FakeBackend | None:
        from lightning.backends.fake import FakeBackend

        return self.backend if isinstance(self.backend, FakeBackend) else None

    # --- Extension ------------------------------------------------------------------

    async def start(self) -> None:
        await self.store.open()  # the ledger's tables, before anything reads them
        # The wallet first: a wrong URL or key is one clear line at start-up (and on the
        # console's overview), before the watcher's own tries.
        await self.health.check()
        self._health_task = asyncio.create_task(self.health.run(), name="wallet-health")
        await self.watcher.start()
        if self.zapper is not None:
            await self.zapper.reconcile()
        if self.membership is not None:
            await self.membership.start()
        if self.reminders is not None:
            await self.reminders.start()
        if self.renewals is not None:
            await self.renewals.start()

    async def stop(self) -> None:
        if self._health_task is not None:
            self._health_task.cancel()
            await asyncio.gather(self._health_task, return_exceptions=True)
        if self.membership is not None:
            await self.membership.stop()
        if self.reminders is not None:
            await self.reminders.stop()
        if self.renewals is not None:
            await self.renewals.stop()
        if self.zapper is not None:
            await self.zapper.close()
        await self.web.close()
        await self.watcher.stop()
        await self.backend.close()
        if self._http is not None:
            await self._http.aclose()

    async def admit(self, event: Event, ctx: WriteContext) -> tuple[object, ...]:
        if self.membership is not None and event.kind in REQUEST_KINDS:
            # NIP-43 join/leave requests are addressed to the relay: answered, never stored.
            raise Answered(*await self.membership.answer(event, ctx.ip))
        charge = await self.gate.admit(event, ctx)
        if charge.msat <= 0:
            return ()
        # Debited by the ledger's write hook in the event's transaction (from the plan's
        # account for a linked key); an ephemeral event, never stored, by ``take_unstored``
        # once the relay knows someone can receive it.
        return (charge,)

    async def take_unstored(self, event: Event, attachments: tuple[object, ...], now: int) -> Rejection | None:
        """An ephemeral event's price, in its own ledger transaction, before the relay fans
        it out (issue 8); not taken at all when nobody could receive it (NIP-01 ``mute:``)."""
        price = charge_of(attachments)
        payer = payer_of(attachments, event.pubkey)
        if price > 0 and not await self.store.charge_credit(payer, price, now):
            self.accounts.invalidate(payer)
            return self.gate.insufficient_credit(event)
        return None

    def hooks(self) -> PluginHooks:
        """The relay's hook lists, filled (``relay.plugins.hooks``). Order 50: after free tiers
        (a web of trust, order 10), whose members then write free; a refusal here that
        is not ``restricted:`` (a ban, a rate) is final."""
        return PluginHooks(
            name="payments",
            description=self.describe(),
            order=50,
            write_gates=(self.judge,),
            unstored_takers=(self.take_unstored,),
            req_sources=(self.req_events,) if self.membership is not None else (),
            session_notices=(self.prompts.prompt,) if self.prompts is not None else (),
            # Asked per event only where a member's quota differs from the relay's default.
            storage_allowances=(self.storage_allowance,) if self._quota_differs() else (),
            http_routes=(self.handle_http,),
            management_methods=self.management_methods(),
            console_panels=self.console_panels(),
            nip11_fields=(self.nip11,),
            profile_fields=(self.profile,),
            services=(self,),
            links=(self.links,),
            problems=(self.problems,),
            owner=self,
        )

    async def judge(self, event: Event, ctx: WriteContext) -> Verdict:
        """``admit`` as a write gate's verdict: a paid (or free-rule) event is admitted
        with its price attached; "pay first" is a refusal a later gate may override."""
        try:
            return Admit(await self.admit(event, ctx))
        except Restricted as exc:
            return Refuse(exc)
        except Rejection as exc:
            return Refuse(exc, final=True)

    def _quota_differs(self) -> bool:
        retention = self.settings.retention
        return bool(retention.max_bytes_per_pubkey or retention.member_max_bytes_per_pubkey) or any(
            t.max_bytes_stored is not None for t in self.plans.tiers
        )

    async def storage_allowance(self, pubkey: str, now: int) -> Allowance | None:
        """Members in good standing get ``retention.member_max_bytes_per_pubkey``, or their
        tier's ``max_bytes_stored`` (the reply past it names the tier and the next one),
        for the bytes of every key of their plan together."""
        if not await self.gate.is_member(pubkey, now):
            return None
        account = await self.accounts.get(pubkey)
        # One plan, several keys: the plan's quota holds the bytes of all its keys together.
        plan = account.pubkey if account is not None else pubkey
        keys = await self.accounts.plan_keys(plan)
        tier = self.plans.tier(account.role_at(now)) if account is not None and not account.allowed else None
        if tier is not None and tier.max_bytes_stored is not None:
            return Allowance(tier.max_bytes_stored, self.gate.storage_refusal(tier, plan), authors=keys)
        return Allowance(self.settings.retention.member_max_bytes_per_pubkey, authors=keys)

    def profile(self) -> Mapping[str, Any]:
        """The relay's kind-0 profile carries the address zaps reach (NIP-57)."""
        return {"lud16": self.zapper.address} if self.zapper is not None else {}

    async def req_events(self, filters: tuple[Filter, ...], authed: frozenset[str]) -> list[bytes]:
        if self.membership is None:
            return []
        return await self.membership.invite_events(filters, authed)

    async def handle_http(self, request: HttpRequest) -> HttpResponse | None:
        if self.zapper is not None:
            response = await self.zapper.handle(request)
            if response is not None:
                return response
        return await self.key_links.handle(request) or await self.web.handle(request)

    def describe(self) -> str:
        return f"payments ({payment_settings(self.settings).backend})"

    def links(self) -> Mapping[str, str]:
        return {"join page (unpaid writers are sent here)": self.payments_url}

    def problems(self) -> Sequence[str]:
        if self.health.problem is None or self.health.since is None:
            return []
        since = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(self.health.since))
        return [
            f"The {self.backend.name} wallet does not answer (since {since}): {self.health.problem}. "
            f"No invoice can be issued or credited: {wallet_hint(payment_settings(self.settings))}."
        ]

    def management_methods(self) -> Mapping[str, ManagementMethod]:
        return self.admin_methods.methods()

    def console_panels(self) -> Sequence[ConsolePanel]:
        return self.console.panels()

    def nip11(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "limitation": {"payment_required": True, "restricted_writes": True},
            "payments_url": self.payments_url,
            "fees": self.plans.nip11_fees(),
        }
        nips = []
        if self.zapper is not None:
            nips.append(57)
            doc["lud16"] = self.zapper.address
        if self.membership is not None:
            nips.append(43)
        if nips:
            doc["supported_nips"] = nips
        return doc

    # --- wiring -------------------------------------------------------------------

    def _on_account_changed(self, pubkey: str) -> None:
        """An admin's grant or revoke (NIP-86): the pubkey's next EVENT here must see it,
        not the cached state (other nodes drop theirs on the store's change counter)."""
        self.accounts.invalidate(pubkey)
        if self.membership is not None:
            self.membership.changed()

    def _on_roles_changed(self) -> None:
        """A role made, changed or deleted (NIP-86): republish the kind 33534 events soon."""
        self.accounts.invalidate_all()
        if self.membership is not None:
            self.membership.changed()

    def _on_issued(self, invoice: Invoice) -> None:
        self.metrics.invoices_created.labels(invoice.plan).inc()

    def _on_result(self, result: ConfirmResult) -> None:
        if result.invoice is None:
            return
        if result.outcome is Confirmation.CREDITED:
            # The payer's next EVENT must see the new state at once, not after the TTL.
            self.accounts.invalidate(result.invoice.pubkey)
            self.metrics.invoices_settled.labels(result.invoice.plan).inc()
            self.metrics.sats_received.inc(result.invoice.amount_msat / 1000)
            self.metrics.wallet_fees_msat.inc(result.fee_msat)
            self.metrics.settlement_lag.observe(max(0.0, self._clock() - result.invoice.created_at))
            if self.zapper is not None:
                self.zapper.settled(result.invoice, result.preimage, result.paid_at)
            if self.membership is not None:
                self.membership.changed()
        elif result.outcome is Confirmation.REJECTED:
            self.metrics.settlements_rejected.inc()

    async def _simulate_payment(self, payment_hash: str) -> bool:
        fake = self._fake_backend()
        assert fake is not None
        paid = await fake.pay(payment_hash)
        await self.watcher.confirm(payment_hash)  # demo: credit now rather than on the next poll
        return paid


def build_extension(
    settings: Settings,
    store: Store,
    http: httpx.AsyncClient | None = None,
    *,
    registry: CollectorRegistry | None = None,
    identity: RelayIdentity | None = None,
    publish: Publish | None = None,
) -> PaymentsExtension:
    """Backend from settings, everything wired (``lightning.plugin`` calls it at start-up);
    without ``http`` the extension makes its own client and closes it on stop."""
    owned = None
    if http is None:
        http = owned = httpx.AsyncClient(timeout=httpx.Timeout(10.0, connect=5.0))
    backend = build_backend(settings, http)
    return PaymentsExtension(
        settings, store, backend, registry=registry, identity=identity, publish=publish, http=owned
    )
