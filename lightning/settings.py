"""The ``[payments]`` section of the relay's Settings.

Prices are written in sats (what operators think in) except per-kind publication prices,
which are msat because a single event is usually worth less than a sat. Everything the
ledger stores is msat. Wallet secrets are ``SecretStr`` so a logged or printed Settings
object never shows them.
"""

from __future__ import annotations

import itertools
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

BackendName = Literal["fake", "lnbits", "lnd", "cln", "phoenixd", "nwc"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AdmissionPlan(_Section):
    """One fee admits a pubkey for good (``term_days = 0``) or for a fixed term."""

    enabled: bool = True
    fee_sats: int = Field(1000, ge=1)
    term_days: float = Field(0, ge=0, description="0 = admitted for good")


class SubscriptionPlan(_Section):
    """A fee per period; paying again extends from the later of now and the current end."""

    enabled: bool = False
    fee_sats: int = Field(2000, ge=1)
    period_days: float = Field(30, gt=0)


class CreditPlan(_Section):
    """Prepaid balance; each accepted event costs its kind's price."""

    enabled: bool = False
    min_topup_sats: int = Field(100, ge=1)
    max_topup_sats: int = Field(1_000_000, ge=1)
    default_topup_sats: int = Field(1000, ge=1)
    default_price_msat: int = Field(1000, ge=0, description="price of an event whose kind is not listed")
    kind_prices_msat: dict[int, int] = Field(default_factory=dict, description="kind -> msat; 0 = free")

    @model_validator(mode="after")
    def _topup_range(self) -> CreditPlan:
        if not self.min_topup_sats <= self.default_topup_sats <= self.max_topup_sats:
            raise ValueError("need min_topup_sats <= default_topup_sats <= max_topup_sats")
        if any(price < 0 for price in self.kind_prices_msat.values()):
            raise ValueError("kind prices must be >= 0")
        return self


RESERVED_PLAN_NAMES = frozenset({"admission", "subscription", "credit"})


class TierSettings(_Section):
    """One plan of several (``[payments.tiers.<name>]``): a price per period with its own
    limits, published as a NIP-43 role whose ``d`` tag is the tier's name. A limit left
    out is the relay's own (``[limits]``, ``[retention]``): a tier only narrows or widens
    what it names."""

    label: str = Field("", max_length=64, description="shown to people; default the name")
    description: str = Field("", max_length=500)
    color: int | None = Field(None, ge=0, le=360, description="a hue (NIP-43 role color)")
    order: int = Field(0, description="display order, lower first (NIP-43 role order)")
    price_sats: int = Field(..., ge=1)
    period_days: float = Field(30, ge=0, description="0 = admitted for good")
    grace_days: float = Field(0, ge=0, description="writes continue this long after the period ends")
    events_per_second: float | None = Field(None, gt=0, description="per member; default the relay's [limits]")
    events_per_day: int | None = Field(None, ge=1, description="per member, a day from the first event")
    max_bytes_stored: int | None = Field(
        None, ge=0, description="stored raw JSON; default retention.member_max_bytes_per_pubkey; 0 = no limit"
    )
    max_event_bytes: int | None = Field(None, ge=1, description="largest event (raw JSON)")
    kinds: list[int] | None = Field(None, description="the kinds a member may write; default every kind")
    free_inbox: bool = Field(True, description="strangers may write to members' inboxes free (free_if_p_tags_member)")
    linked_keys: int | None = Field(
        None, ge=0, le=100, description="other keys a member may link to the plan; default [payments] linked_keys"
    )


class FakeBackendSettings(_Section):
    """The in-process demo wallet: invoices look real but nobody can pay them for real."""

    state_file: str | None = Field(
        None, description="SQLite file shared with `satsrelay pay-fake`; default fake-wallet.db next to the store"
    )
    auto_settle_seconds: float | None = Field(None, ge=0, description="settle each invoice by itself after N s")


class LnbitsSettings(_Section):
    url: str = "http://127.0.0.1:5000"
    invoice_key: SecretStr = Field(SecretStr(""), description="the wallet's invoice/read key (cannot spend)")


class LndSettings(_Section):
    url: str = "https://127.0.0.1:8080"
    macaroon_hex: SecretStr = SecretStr("")
    tls_cert_path: str | None = Field(None, description="LND's tls.cert when it is self-signed")


class ClnSettings(_Section):
    url: str = "https://127.0.0.1:3010"
    rune: SecretStr = SecretStr("")
    ca_cert_path: str | None = Field(None, description="clnrest's ca.pem, when it serves its own certificates")


class PhoenixdSettings(_Section):
    url: str = "http://127.0.0.1:9740"
    password: SecretStr = SecretStr("")


class NwcSettings(_Section):
    uri: SecretStr = Field(SecretStr(""), description="nostr+walletconnect://...")


class ZapSettings(_Section):
    """Zap the relay to join (NIP-57 over LNURL-pay, LUD-06/LUD-16)."""

    enabled: bool = Field(True, description="serve /.well-known/lnurlp/<name> and credit zaps to the relay")
    name: str = Field("relay", pattern=r"^[a-z0-9._-]{1,64}$", description="the lud16 is <name>@<public_url host>")
    max_sats: int = Field(1_000_000, ge=1, description="largest zap accepted (LNURL maxSendable)")
    publish_timeout_seconds: float = Field(5.0, gt=0, description="per relay named in the zap request")
    max_publish_relays: int = Field(5, ge=0, description="receipts go to at most this many of the request's relays")
    publish_to_private_addresses: bool = Field(
        False, description="also publish receipts to relays on loopback/private addresses (tests, LAN setups)"
    )


class MembershipSettings(_Section):
    """NIP-43: invite codes (kind 28934 claims), leave requests (28936), invite requests
    (28935) and the member list (13534, with 8000/8001 on changes), signed by the relay's key."""

    enabled: bool = Field(True, description="answer NIP-43 claims and leave requests; list 43 in NIP-11")
    list_members: bool = Field(
        False, description="publish the member list; it names only members whose own kind 10010 names this relay"
    )
    list_refresh_seconds: float = Field(60.0, gt=0, description="how often the member list is brought up to date")
    max_listed_members: int = Field(1000, ge=1, description="the list names at most this many (newest opt-ins)")
    members_may_invite: bool = Field(False, description="members get a fresh invite code by asking for kind 28935")
    member_invite_plan: Literal["admission", "subscription", "credit"] = Field(
        "admission", description="what a member's invite code grants"
    )
    member_invite_days: float = Field(7.0, gt=0, description="a member's invite code expires after this")
    max_open_invites_per_member: int = Field(3, ge=1, description="unused codes a member may hold at once")
    request_window_seconds: int = Field(
        300, ge=10, description="claims and leave requests dated further from now are refused"
    )


class ReminderSettings(_Section):
    """NIP-17 direct messages from the relay's key to members who asked for them."""

    enabled: bool = Field(True, description="send reminders to members who opted in (join page or CLI)")
    days_before: list[float] = Field(
        default_factory=lambda: [7.0, 1.0], description="remind this many days before a term ends"
    )
    credit_below_sats: int | None = Field(
        None, ge=1, description="remind when prepaid credit falls under this; default the minimum top-up"
    )
    check_interval_seconds: float = Field(600.0, gt=0, description="how often terms and balances are looked at")
    notify: bool = Field(
        True,
        description="also prompt them in their client (a NOTIFY, nips PR #901) from the first of days_before"
        " to as long after the plan (and its grace) ended, once per connection and day",
    )

    @field_validator("days_before")
    @classmethod
    def _positive(cls, value: list[float]) -> list[float]:
        if any(days <= 0 for days in value):
            raise ValueError("days must be positive")
        return sorted(set(value), reverse=True)


class RenewalSettings(_Section):
    """Renewal by Nostr Wallet Connect (NIP-47): members who hand the relay a wallet
    connection have their subscription paid from it before the period ends."""

    enabled: bool = Field(True, description="accept wallet connections (account page) and renew from them")
    days_before: float = Field(3.0, gt=0, description="renew this many days before the period ends")
    check_interval_seconds: float = Field(600.0, gt=0, description="how often periods are looked at")
    retry_seconds: float = Field(300.0, gt=0, description="ask the wallet again after this, while the invoice lives")
    retry_schedule_hours: list[float] = Field(
        default_factory=lambda: [0.0, 6.0, 24.0],
        description="a fresh invoice is offered to the wallet this many hours after the renewal started",
    )
    fallback_invoice_hours: float = Field(
        72.0, gt=0, description="after the last try: an invoice left for the member to pay, living this long"
    )
    allow_private_relays: bool = Field(
        False, description="also dial wallet relays on loopback/private addresses (tests, LAN setups)"
    )

    @field_validator("retry_schedule_hours")
    @classmethod
    def _schedule(cls, value: list[float]) -> list[float]:
        if not value or value[0] != 0 or any(later <= earlier for earlier, later in itertools.pairwise(value)):
            raise ValueError("start at 0 and grow: e.g. [0, 6, 24]")
        return value


class PaymentSettings(_Section):
    enabled: bool = False
    backend: BackendName = "fake"
    payments_url: str | None = Field(
        None, description="where the OK message sends unpaid users; default http(s) form of relay.public_url + /join"
    )
    invoice_expiry_seconds: int = Field(900, ge=60)
    poll_interval_seconds: float = Field(5.0, gt=0, description="how often pending invoices are checked")
    push: bool = Field(True, description="listen to the wallet's push stream as well as polling")
    account_cache_seconds: float = Field(5.0, ge=0, description="how long the gate may lag a CLI/other-node change")
    invoice_requests_per_minute: int = Field(
        10, ge=1, description="per address group (IPv4 address, IPv6 /ipv6_prefix), join page and zaps together"
    )
    max_pending_invoices: int = Field(
        1000, ge=1, description="unpaid, unexpired invoices in all; when full, the biggest holder's oldest makes room"
    )
    max_pending_invoices_per_address: int = Field(
        10, ge=1, description="unpaid, unexpired invoices per address group, join page and zaps together"
    )
    max_pending_invoices_per_pubkey: int = Field(3, ge=1, description="unpaid, unexpired invoices per pubkey")
    prune_expired_invoices_after_seconds: int = Field(
        86400, ge=0, description="never-paid invoices are deleted this long after they expired; paid ones are kept"
    )
    young_invoice_seconds: float = Field(600, ge=0, description="invoices this young are polled every poll interval")
    watched_invoice_seconds: float = Field(
        60, ge=0, description="an invoice whose status was asked this recently is polled every poll interval"
    )
    old_invoice_poll_seconds: float = Field(300, gt=0, description="how often older pending invoices are polled")
    max_lookups_per_poll: int = Field(20, ge=1, description="wallet lookups per poll round, whatever is pending")
    reconcile_interval_seconds: float = Field(
        3600, gt=0, description="full reconciliation of every pending invoice (also at start-up)"
    )
    status_lookups_per_second: float = Field(
        5.0, gt=0, description="wallet lookups the public invoice-status route may cause, in all"
    )

    admission: AdmissionPlan = AdmissionPlan()
    subscription: SubscriptionPlan = SubscriptionPlan()
    credit: CreditPlan = CreditPlan()
    tiers: dict[str, TierSettings] = Field(
        default_factory=dict, description="named plans with their own limits, each a NIP-43 role"
    )

    free_kinds: list[int] = Field(default_factory=lambda: [22242], description="kinds anyone may write")
    trusted_zappers: list[str] = Field(
        default_factory=list, description="hex pubkeys whose valid NIP-57 zap receipts (kind 9735) are free"
    )
    zap_receipt_max_bytes: int = Field(8192, ge=1024, description="a larger zap receipt is priced like any event")
    free_if_p_tags_member: bool = Field(True, description="events that p-tag a paying member are free (inbox use)")
    inbox_kinds: list[int] = Field(
        default_factory=lambda: [1, 4, 7, 1059, 1111], description="kinds the members' inbox accepts for free"
    )
    inbox_events_per_hour: int = Field(30, ge=0, description="free inbox events per unpaid sender pubkey")
    inbox_events_per_hour_per_ip: int = Field(300, ge=0, description="free inbox events per client IP")
    inbox_max_bytes: int = Field(4096, ge=0, description="content of a free inbox event, in UTF-8 bytes")
    inbox_max_event_bytes: int = Field(
        8192, ge=512, description="a free inbox event or report as a whole (JSON, tags included), in bytes"
    )
    inbox_max_tags: int = Field(40, ge=1, description="tags of a free inbox event or report")
    allow_pubkeys: list[str] = Field(default_factory=list, description="write free of charge")
    linked_keys: int = Field(
        3, ge=0, le=100, description="other keys a member may link to their plan (a tier's own wins); 0 = none"
    )
    ban_pubkeys: list[str] = Field(default_factory=list, description="never write")

    fake: FakeBackendSettings = FakeBackendSettings()
    lnbits: LnbitsSettings = LnbitsSettings()
    lnd: LndSettings = LndSettings()
    cln: ClnSettings = ClnSettings()
    phoenixd: PhoenixdSettings = PhoenixdSettings()
    nwc: NwcSettings = NwcSettings()
    zaps: ZapSettings = ZapSettings()
    membership: MembershipSettings = MembershipSettings()
    reminders: ReminderSettings = ReminderSettings()
    renewal: RenewalSettings = RenewalSettings()

    @field_validator("allow_pubkeys", "ban_pubkeys", "trusted_zappers")
    @classmethod
    def _hex_pubkeys(cls, value: list[str]) -> list[str]:
        out = []
        for key in value:
            key = key.strip().lower()
            if len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
                raise ValueError(f"{key!r} is not a 64-character hex pubkey")
            out.append(key)
        return out

    @model_validator(mode="after")
    def _some_plan(self) -> PaymentSettings:
        if self.enabled and not (
            self.admission.enabled or self.subscription.enabled or self.credit.enabled or self.tiers
        ):
            raise ValueError("payments are enabled but no plan (admission, subscription, credit, tiers) is")
        return self

    @field_validator("tiers")
    @classmethod
    def _tier_names(cls, value: dict[str, TierSettings]) -> dict[str, TierSettings]:
        for name in value:
            if name in RESERVED_PLAN_NAMES or not re.fullmatch(r"[a-z0-9_-]{1,32}", name):
                raise ValueError(
                    f"tier name {name!r}: use 1-32 of a-z 0-9 _ - and none of {', '.join(sorted(RESERVED_PLAN_NAMES))}"
                )
        return value

    @model_validator(mode="after")
    def _backend_secret(self) -> PaymentSettings:
        """An enabled wallet without its credential would start and then fail every
        invoice request: refuse it at start-up, naming the key to set."""
        if not self.enabled:
            return self
        section, key = REQUIRED_SECRETS.get(self.backend, ("", ""))
        if section and not getattr(getattr(self, section), key).get_secret_value().strip():
            env = f"SATSRELAY_PAYMENTS__{section.upper()}__{key.upper()}"
            raise ValueError(f"backend = {self.backend!r} needs payments.{section}.{key} (or env {env}); it is empty")
        return self


# The credential each wallet cannot work without: (section, key) under [payments].
REQUIRED_SECRETS: dict[str, tuple[str, str]] = {
    "lnbits": ("lnbits", "invoice_key"),
    "lnd": ("lnd", "macaroon_hex"),
    "cln": ("cln", "rune"),
    "phoenixd": ("phoenixd", "password"),
    "nwc": ("nwc", "uri"),
}
