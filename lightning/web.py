"""The join page, account page and invoice API (routes of the relay's HTTP router).

Routes (``handle`` answers None for anything else, so the relay falls through):

- ``/`` (browsers, ``Accept: text/html``) and ``/join``: the join page;
- ``/static/<file>``: its script and styles (nothing is loaded from other sites; the
  Content-Security-Policy header makes the browser enforce that);
- ``POST /api/invoice`` with a JSON body ``{"pubkey": <hex|npub>, "plan": <name>[, "amount":
  <sats>]}``: issue an invoice (rate-limited per address group, one budget with the zap
  callback, and within the group's share of unpaid invoices; stored before it is returned). A POST,
  not a GET: creating an invoice changes state, and link prefetchers and crawlers follow
  GETs. JSON only, so a cross-site form cannot post it (a browser preflights JSON);
- ``/api/invoice/<payment_hash>``: its state and the account's, polled by the page; while
  the invoice is pending this also asks the wallet about it (at most once every
  ``check_interval`` seconds per invoice), so a payer is admitted within seconds even when
  the wallet has no push stream and the watcher's next poll is far off (those lookups share
  one budget, ``status_lookups_per_second``, and the invoice is marked watched so the
  watcher polls it every round meanwhile);
- ``/api/invoice/<payment_hash>/qr.svg``: the QR code, drawn server-side by segno;
- ``/account/<pubkey>``: whether the pubkey may write (and until when), HTML or JSON
  (``Accept: application/json``); balance and flags only to the owner, by NIP-98;
- ``POST /api/fake/pay/<payment_hash>``: settle a demo invoice, only with the ``fake`` wallet.
"""

from __future__ import annotations

import asyncio
import hashlib
import html
import io
import logging
import string
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from importlib import resources
from typing import Any

import orjson
import segno

from lightning.backend import BackendError
from lightning.ledger import Ledger, RequestBudget, TooManyPending
from lightning.plans import DAY, PlanOffer, Plans, UnknownPlan
from lightning.pubkeys import npub_encode, parse_pubkey
from lightning.renewal import Renewals
from lightning.store.base import FOREVER, Account, Invoice, InvoiceState, plan_account
from relay.net.http import HttpRequest, HttpResponse, http_url
from relay.net.limits import TokenBucket
from relay.nostr import nip98

log = logging.getLogger(__name__)

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
STATIC_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
MAX_TRACKED_CHECKS = 10_000  # invoices whose last status-route lookup time is remembered
STATUS_CHECK_INTERVAL = 2.0  # seconds between wallet lookups of one invoice caused by status requests
STATUS_CHECK_WAIT = 1.5  # how long a status request waits for its lookup before answering from the store


@dataclass(frozen=True, slots=True)
class PageInfo:
    """What the pages say about the relay."""

    name: str
    description: str
    relay_url: str
    demo: bool  # fake wallet: show the "simulate payment" button and a demo banner


def _response(
    status: HTTPStatus, body: bytes, content_type: str, extra: list[tuple[str, str]] | None = None
) -> HttpResponse:
    headers = [
        ("Content-Type", content_type),
        ("Cache-Control", "no-store"),
        ("X-Content-Type-Options", "nosniff"),
        *(extra or []),
    ]
    return HttpResponse(status.value, body, headers)


def _json(status: HTTPStatus, doc: Any) -> HttpResponse:
    return _response(status, orjson.dumps(doc), "application/json", [("Access-Control-Allow-Origin", "*")])


def _error(status: HTTPStatus, message: str, retry_after: int | None = None) -> HttpResponse:
    response = _json(status, {"error": message})
    if retry_after is not None:  # RFC 9110 10.2.3: when asking again may succeed (429, 503)
        response.headers.append(("Retry-After", str(retry_after)))
    return response


def _html(body: str) -> HttpResponse:
    return _response(HTTPStatus.OK, body.encode(), "text/html; charset=utf-8", [("Content-Security-Policy", CSP)])


def account_json(
    pubkey: str,
    account: Account | None,
    now: int,
    *,
    linked_keys: list[str] | None = None,
    linked_to: str | None = None,
) -> dict[str, Any]:
    """The account as the API and the CLI show it; ``linked_keys``: the keys linked to its
    plan, ``linked_to``: the plan's key when this key is linked to another's plan."""
    account = account or Account(pubkey)
    until = account.admitted_until
    extra: dict[str, Any] = {}
    if linked_keys is not None:
        extra["linked_keys"] = linked_keys
    if linked_to is not None:
        extra["linked_to"] = linked_to
    return {
        "pubkey": pubkey,
        "npub": npub_encode(pubkey),
        "admitted": account.admitted(now),
        "admitted_until": None if until == 0 else ("forever" if until >= FOREVER else until),
        "credit_msat": account.credit_msat,
        "banned": account.banned,
        "allowed": account.allowed,
        "tier": account.role_at(now) or None,  # the NIP-43 role whose limits apply (a tier)
        "comped": account.comped,
        **extra,
        **_scheduled(account, now),
    }


def _scheduled(account: Account, now: int) -> dict[str, Any]:
    """A change paid for and not yet come (a downgrade at the period end): to which tier
    ("" the single plans), and when."""
    if account.switch_at > now:
        return {"next_tier": account.next_role, "tier_changes_at": account.switch_at}
    return {}


def may_write(account: Account, now: int) -> bool:
    """What the public account view tells anyone: this pubkey can publish here now."""
    return not account.banned and (
        account.allowed or account.comped or account.admitted(now) or account.credit_msat > 0
    )


def public_account_json(pubkey: str, account: Account | None, now: int) -> dict[str, Any]:
    """The account as anyone may see it: whether the pubkey may write, and until when.
    Balances and flags are the owner's business (``account_json`` after NIP-98)."""
    account = account or Account(pubkey)
    until = account.admitted_until
    return {
        "pubkey": pubkey,
        "npub": npub_encode(pubkey),
        "may_write": may_write(account, now),
        "tier": account.role_at(now) or None,  # public anyway: the NIP-43 member list names it
        "admitted": account.admitted(now),
        "admitted_until": None if until == 0 else ("forever" if until >= FOREVER else until),
        **_scheduled(account, now),
    }


def invoice_json(invoice: Invoice) -> dict[str, Any]:
    return {
        "payment_hash": invoice.payment_hash,
        "pubkey": invoice.pubkey,
        "plan": invoice.plan,
        "amount_msat": invoice.amount_msat,
        "bolt11": invoice.bolt11,
        "created_at": invoice.created_at,
        "expires_at": invoice.expires_at,
        "state": invoice.state.value,
        "paid": invoice.state is InvoiceState.PAID,
        "paid_at": invoice.paid_at,
        "qr": f"/api/invoice/{invoice.payment_hash}/qr.svg",
    }


def _sats(msat: int) -> str:
    return f"{msat // 1000:,} sats" if msat % 1000 == 0 else f"{msat:,} msat"


def _is_hash(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)


class JoinWeb:
    def __init__(
        self,
        info: PageInfo,
        ledger: Ledger,
        plans: Plans,
        *,
        budget: RequestBudget,
        on_issued: Callable[[Invoice], None] = lambda invoice: None,
        fake_pay: Callable[[str], Awaitable[bool]] | None = None,
        confirm: Callable[[str], Awaitable[object]] | None = None,
        watch: Callable[[str], None] = lambda payment_hash: None,
        status_lookups_per_second: float = 5.0,
        reminders: bool = False,
        renewals: Renewals | None = None,
        check_interval: float = STATUS_CHECK_INTERVAL,
        check_wait: float = STATUS_CHECK_WAIT,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``confirm(payment_hash)`` asks the wallet about one invoice and settles it if paid
        (the watcher's ``confirm``, so the gate's account cache is refreshed too); without
        it the status route only reports what the store holds."""
        self._info = info
        self._ledger = ledger
        self._plans = plans
        self._budget = budget  # shared with the zap callback (lightning.zapper)
        self._on_issued = on_issued
        self._fake_pay = fake_pay
        self._confirm = confirm
        self._watch = watch
        # Anyone may poll any invoice's status: all status-caused wallet lookups share one budget.
        self._status_lookups = TokenBucket(status_lookups_per_second, max(1.0, 2 * status_lookups_per_second))
        self._check_interval = check_interval
        self._check_wait = check_wait
        self._last_check: OrderedDict[str, float] = OrderedDict()  # payment hash -> monotonic time
        self._checks: dict[str, asyncio.Task[None]] = {}  # lookups in flight, by payment hash
        self._clock = clock
        self._reminders = reminders  # members may opt in to reminders by DM (lightning.reminders)
        self._renewals = renewals  # members may connect a wallet for renewals (lightning.renewal)
        templates = resources.files("lightning") / "templates"
        self._join_template = string.Template((templates / "join.html").read_text("utf-8"))
        self._account_template = string.Template((templates / "account.html").read_text("utf-8"))
        self._join_page = self._render_join()
        self._favicon = (resources.files("lightning") / "static" / "favicon.ico").read_bytes()

    async def close(self) -> None:
        """Cancel status-route lookups still in flight (the store is about to close)."""
        tasks = list(self._checks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def handle(self, request: HttpRequest) -> HttpResponse | None:
        path = request.path
        if path == "/api/invoice":
            if request.method != "POST":
                return _response(
                    HTTPStatus.METHOD_NOT_ALLOWED, b"POST a JSON body to create an invoice\n", "text/plain",
                    [("Allow", "POST")],
                )
            return await self._create_invoice(request)
        if path.startswith("/api/fake/pay/") and self._fake_pay is not None:
            if request.method != "POST":
                return _response(HTTPStatus.METHOD_NOT_ALLOWED, b"POST only\n", "text/plain", [("Allow", "POST")])
            return await self._simulate_payment(path[len("/api/fake/pay/") :])
        if path.startswith("/account/") and path.endswith("/wallet") and self._renewals is not None:
            return await self._wallet(path[len("/account/") : -len("/wallet")], request)
        if path.startswith("/account/") and path.endswith("/reminders") and self._reminders:
            return await self._reminder_optin(path[len("/account/") : -len("/reminders")], request)
        if request.method not in ("GET", "HEAD"):
            return None
        if path == "/join" or (path == "/" and "text/html" in request.headers.get("Accept", "")):
            return _html(self._join_page)
        if path.startswith("/static/"):
            return self._static(path[len("/static/") :])
        if path == "/favicon.ico":  # browsers ask for it on every page; a 404 is noise in every log
            return HttpResponse(
                HTTPStatus.OK.value,
                self._favicon,
                [("Content-Type", "image/x-icon"), ("Cache-Control", "public, max-age=86400"),
                 ("X-Content-Type-Options", "nosniff")],
            )
        if path.startswith("/api/invoice/"):
            rest = path[len("/api/invoice/") :]
            if rest.endswith("/qr.svg"):
                return await self._qr(rest[: -len("/qr.svg")])
            return await self._invoice_status(rest)
        if path.startswith("/account/"):
            return await self._account(path[len("/account/") :], request)
        return None

    # --- pages ------------------------------------------------------------------

    def _render_join(self) -> str:
        esc = html.escape
        offers = self._plans.offers()
        rows = "".join(
            f"<li><strong>{esc(o.title)}</strong>: {esc(self._price_text(o))} <span class=muted>"
            f"({esc(o.description)}{esc(self._plan_terms(o.name))})</span></li>"
            for o in offers
        )
        choices = "".join(
            f'<label class=plan><input type=radio name=plan value="{esc(o.name)}"'
            f"{' checked' if i == 0 else ''}> {esc(o.title)} &middot; {esc(self._price_text(o))}</label>"
            for i, o in enumerate(offers)
        )
        credit = ""
        if self._plans.credit_enabled:
            credit = (
                "<label id=credit-amount-row hidden>Top-up amount (sats) <input id=credit-amount type=number "
                f'min="{self._plans.credit_min_msat // 1000}" max="{self._plans.credit_max_msat // 1000}" '
                f'value="{self._plans.credit_default_msat // 1000}"></label>'
            )
        demo = (
            "<p class=demo id=demo-banner>Demo mode: this relay uses a pretend wallet. Invoices cannot be paid "
            "with real sats; use &ldquo;Simulate payment&rdquo;.</p>"
            if self._info.demo
            else ""
        )
        return self._join_template.substitute(
            plans_note=self._plans_note(offers),
            name=esc(self._info.name),
            description=esc(self._info.description),
            relay_url=esc(self._info.relay_url),
            prices=rows,
            plan_choices=choices,
            credit_amount=credit,
            demo_banner=demo,
            demo_flag="1" if self._info.demo else "0",
            reminders_flag="1" if self._reminders else "0",
        )

    def _plans_note(self, offers: list[PlanOffer]) -> str:
        """Beside tiers, the single plans buy time that follows a tier held, not the tier
        (lightning/billing.py: they rank below every tier): said where the plan is chosen,
        since a renewal link brings a tier member to this page with the first plan checked."""
        single = [o.title for o in offers if o.name in ("admission", "subscription")]
        if not self._plans.tiers or not single:
            return ""
        names = " and ".join(single)
        are, their = ("are not tiers and do not", "their") if len(single) > 1 else ("is not a tier and does not", "its")
        return (
            f"<p class=muted id=plans-note>Renewing a tier? Choose that tier. {html.escape(names)} {are} "
            f"renew a tier: bought while you hold one, {their} time begins when the tier ends.</p>"
        )

    def _plan_terms(self, plan: str) -> str:
        """"; N-day grace; links K other keys": what a plan gives beyond its price."""
        tier = self._plans.tier(plan)
        terms = []
        if tier is not None and tier.grace_seconds:
            terms.append(f"{tier.grace_seconds / DAY:g}-day grace")
        keys = self._plans.keys_to_link(tier.name if tier is not None else "")
        if keys:
            terms.append(f"links up to {keys} other key{'s' if keys != 1 else ''}")
        return "".join(f"; {t}" for t in terms)

    def _price_text(self, offer: PlanOffer) -> str:
        if offer.amount_msat is None:
            low, high = self._plans.credit_min_msat, self._plans.credit_max_msat
            return f"top up {_sats(low)} to {_sats(high)}"
        return _sats(offer.amount_msat)

    def _static(self, name: str) -> HttpResponse:
        suffix = name[name.rfind(".") :] if "." in name else ""
        if "/" in name or name.startswith(".") or suffix not in STATIC_TYPES:
            return _response(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")
        resource = resources.files("lightning") / "static" / name
        if not resource.is_file():
            return _response(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")
        return _response(HTTPStatus.OK, resource.read_bytes(), STATIC_TYPES[suffix])

    async def _account(self, raw_pubkey: str, request: HttpRequest) -> HttpResponse:
        """Anyone sees whether ``pubkey`` may write; its owner, signing the request with
        NIP-98 (``Authorization: Nostr <base64 kind-27235>`` for this URL and GET), also
        sees the balance and flags. A header that does not verify is 401 (NIP-98), a valid
        one from another key 403: a failed sign-in never falls back to the public view
        silently."""
        pubkey = parse_pubkey(raw_pubkey)
        if pubkey is None:
            return _error(HTTPStatus.BAD_REQUEST, "not a hex pubkey or npub")
        now = int(self._clock())
        authorization = request.headers.get("Authorization") or None
        owner = False
        if authorization is not None:
            url = http_url(self._info.relay_url) + request.target
            try:
                signer = nip98.authorised_pubkey(authorization, url=url, method="GET", now=now)
            except nip98.Nip98Error as exc:
                return _error(HTTPStatus.UNAUTHORIZED, f"NIP-98 authorization refused: {exc}")
            if signer != pubkey:
                return _error(HTTPStatus.FORBIDDEN, "only the account's owner sees its balance")
            owner = True
        store = self._ledger.store
        own, linked_to = await store.account_and_owner(pubkey)
        # A key linked to a member's plan writes as that plan: its view is the plan's
        # (README "One plan, several keys"); only the key's own signed view says whose.
        plan = await store.get_account(linked_to) if linked_to is not None else None
        account = plan_account(own, plan, now)
        plan_key = account.pubkey if account is not None else pubkey
        if owner:
            links = [k.pubkey for k in await store.linked_keys(pubkey)]
            doc = account_json(pubkey, account, now, linked_keys=links, linked_to=linked_to)
        else:
            doc = public_account_json(pubkey, account, now)
        doc.update(self.plan_fields(account, plan_key, now))
        if "application/json" in request.headers.get("Accept", ""):
            return _json(HTTPStatus.OK, doc)
        return _html(self._render_account(doc))

    def plan_fields(self, account: Account | None, plan_key: str, now: int) -> dict[str, Any]:
        """What the pages show of a plan beside the account: the tier in force now and, when
        a change waits for its end (a lower tier, or a single plan bought under a tier),
        the label of what follows (None: the single plans); when the grace ends (writes go
        on until then: the grace of what is held at the end of the paid time, so a single
        plan bought under a tier does not look like a renewed tier); how many other keys
        it may link; and the key it is kept under."""
        role = account.role_at(now) if account is not None else ""
        tier = self._plans.tier(role)
        last = self._plans.tier(account.last_role) if account is not None else None
        until = account.admitted_until if account is not None else 0
        grace = last.grace_seconds if last is not None else 0
        fields: dict[str, Any] = {
            "tier_label": tier.label if tier is not None else None,
            "grace_until": until + grace if grace and 0 < until < FOREVER else None,
            "linked_keys_max": self._plans.keys_to_link(role),
            "plan_pubkey": plan_key,
        }
        if account is not None and account.switch_at > now:
            fields["next_tier_label"] = last.label if last is not None else None
        return fields

    def _owner(self, pubkey: str, request: HttpRequest, now: int) -> HttpResponse | None:
        """None when the request is NIP-98 signed by ``pubkey`` for this exact URL and
        method, else the refusal (401 unsigned or invalid, 403 another key). A POST's
        signature must also name its body (NIP-98 ``payload``): a signed header lifted from
        one state change cannot carry another body within its time window."""
        authorization = request.headers.get("Authorization") or None
        if authorization is None:
            return _error(HTTPStatus.UNAUTHORIZED, "sign this request with NIP-98 (your browser extension)")
        body_sha256 = hashlib.sha256(request.body).hexdigest() if request.method == "POST" else None
        try:
            signer = nip98.authorised_pubkey(
                authorization,
                url=http_url(self._info.relay_url) + request.target,
                method=request.method,
                now=now,
                body_sha256=body_sha256,
            )
        except nip98.Nip98Error as exc:
            return _error(HTTPStatus.UNAUTHORIZED, f"NIP-98 authorization refused: {exc}")
        if signer != pubkey:
            return _error(HTTPStatus.FORBIDDEN, "sign with the key of this account")
        return None

    def _owner_call(
        self, raw_pubkey: str, request: HttpRequest
    ) -> HttpResponse | tuple[str, int, dict[str, Any] | None]:
        """The common front of the owner-only routes (GET reads, POST a JSON object changes):
        the refusal, or (pubkey, now, the POSTed object or None for a GET)."""
        if request.method not in ("GET", "HEAD", "POST"):
            return _response(HTTPStatus.METHOD_NOT_ALLOWED, b"GET or POST\n", "text/plain", [("Allow", "GET, POST")])
        pubkey = parse_pubkey(raw_pubkey)
        if pubkey is None:
            return _error(HTTPStatus.BAD_REQUEST, "not a hex pubkey or npub")
        now = int(self._clock())
        refusal = self._owner(pubkey, request, now)
        if refusal is not None:
            return refusal
        if request.method != "POST":
            return pubkey, now, None
        try:
            body = orjson.loads(request.body)
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict):
            return _error(HTTPStatus.BAD_REQUEST, "the body must be a JSON object")
        return pubkey, now, body

    async def _wallet(self, raw_pubkey: str, request: HttpRequest) -> HttpResponse:
        """``/account/<pubkey>/wallet``, for the owner only (NIP-98, this URL and method):
        GET shows the connection and the last renewal attempts; POST a JSON body
        ``{"connect": <NIP-44 ciphertext of the URI, to the relay's key>, "budget_sats": N}``
        keeps a wallet connection for renewals, ``{"forget": true}`` deletes it. The URI
        never travels or is logged in clear: only the relay's key opens it."""
        assert self._renewals is not None
        owner = self._owner_call(raw_pubkey, request)
        if isinstance(owner, HttpResponse):
            return owner
        pubkey, now, body = owner
        if body is not None:
            if body.get("forget") is True:
                await self._ledger.store.forget_nwc_link(pubkey)
            else:
                sealed, budget = body.get("connect"), body.get("budget_sats")
                if not isinstance(sealed, str) or len(sealed) > 65_536:
                    return _error(HTTPStatus.BAD_REQUEST, "connect must be the NIP-44 encrypted URI")
                if not isinstance(budget, int) or isinstance(budget, bool) or not 0 < budget <= 100_000_000:
                    return _error(HTTPStatus.BAD_REQUEST, "budget_sats must be a whole number of sats")
                if await self._ledger.store.get_account(pubkey) is None:
                    # Keys cost nothing: only accounts (something paid or granted) store a connection.
                    return _error(HTTPStatus.FORBIDDEN, "this key has no account here yet: pay first")
                try:
                    await self._renewals.connect_encrypted(pubkey, sealed, budget, now)
                except BackendError as exc:
                    return _error(HTTPStatus.BAD_REQUEST, str(exc))
        return _json(HTTPStatus.OK, {"pubkey": pubkey, **await self._renewals.status(pubkey)})

    async def _reminder_optin(self, raw_pubkey: str, request: HttpRequest) -> HttpResponse:
        """``/account/<pubkey>/reminders``, for the owner only (NIP-98, this URL and method):
        GET reads the setting, POST ``{"reminders": true|false}`` turns reminders by DM on
        or off. Reminders are sent only to those who asked (issue 10); a change of state is
        a POST, never a GET a prefetcher could replay."""
        owner = self._owner_call(raw_pubkey, request)
        if isinstance(owner, HttpResponse):
            return owner
        pubkey, now, body = owner
        store = self._ledger.store
        if body is not None:
            wanted = body.get("reminders")
            if not isinstance(wanted, bool):
                return _error(HTTPStatus.BAD_REQUEST, 'POST {"reminders": true} or {"reminders": false}')
            if wanted and await store.get_account(pubkey) is None:
                # Keys cost nothing: only accounts (something paid or granted) may store an opt-in.
                return _error(HTTPStatus.FORBIDDEN, "this key has no account here yet: pay first")
            await store.set_reminders(pubkey, wanted, now)
        return _json(HTTPStatus.OK, {"pubkey": pubkey, "reminders": await store.reminders_on(pubkey)})

    def _render_account(self, doc: dict[str, Any]) -> str:
        """The owner's view (``credit_msat`` present) or the public one."""
        esc = html.escape
        owner = "credit_msat" in doc
        if owner:
            state = "banned" if doc["banned"] else ("allowed by the operator" if doc["allowed"] else "normal")
            credit = esc(_sats(doc["credit_msat"]))
        else:
            state = "may write" if doc["may_write"] else "may not write"
            credit = "shown to its owner only (NIP-98 signed request)"
        return self._account_template.substitute(
            name=esc(self._info.name),
            pubkey=esc(doc["pubkey"]),
            npub=esc(doc["npub"]),
            admitted=esc(self._admitted_text(doc)),
            tier=esc(self._tier_text(doc)),
            credit=credit,
            state=esc(state),
            links=esc(self._links_text(doc)),
            links_max=str(doc["linked_keys_max"]),
            **self._wallet_vars(),
        )

    @staticmethod
    def _links_text(doc: dict[str, Any]) -> str:
        """The plan's linked keys (README "One plan, several keys"): the list to its owner,
        how many may be linked to anyone."""
        most = doc["linked_keys_max"]
        if doc.get("linked_to"):
            return f"this key writes under the plan of {npub_encode(doc['linked_to'])}"
        if "linked_keys" in doc:
            keys = doc["linked_keys"]
            listed = ", ".join(npub_encode(k) for k in keys) if keys else "none yet"
            return f"{listed} ({len(keys)} of {most})"
        if most == 0:
            return "none (this plan links no other keys)"
        return f"up to {most} other key{'s' if most != 1 else ''} may write under this plan (listed to its owner)"

    def _wallet_vars(self) -> dict[str, str]:
        renewals = self._renewals
        return {
            "renewal_flag": "1" if renewals is not None and renewals.available else "0",
            "relay_self": renewals.relay_pubkey if renewals is not None else "",
        }

    def _tier_text(self, doc: dict[str, Any]) -> str:
        """The tier, its price and when it renews (or its grace ends): what the member
        pays again, and by when (issue 20 item 5)."""
        role = doc.get("tier")
        if not role:
            return "none"
        tier = self._plans.tier(role)
        if tier is None:
            return f"{role} (a role given by the operator)"
        text = f"{tier.label} ({tier.offer_text()})"
        until = doc["admitted_until"]
        if doc.get("comped"):
            return text + ", given by the operator"
        changes_at = doc.get("tier_changes_at")
        if isinstance(changes_at, int):  # a downgrade waits for the period end
            following = self._plans.tier(doc.get("next_tier") or "")
            day = time.strftime("%Y-%m-%d", time.gmtime(changes_at))
            if following is None:
                return text + f" until {day}, then the single plan until {self._admitted_day(until)}"
            text += f" until {day}, then {following.label} ({following.offer_text()})"
            tier = following
        if isinstance(until, int) and tier.period_seconds:
            renew = time.strftime("%Y-%m-%d", time.gmtime(until))
            text += f", renew by {renew}"
            if tier.grace_seconds:
                grace = time.strftime("%Y-%m-%d", time.gmtime(until + tier.grace_seconds))
                text += f" (writes go on until {grace})"
        return text

    @staticmethod
    def _admitted_day(until: object) -> str:
        return time.strftime("%Y-%m-%d", time.gmtime(until)) if isinstance(until, int) else "for good"

    @staticmethod
    def _admitted_text(doc: dict[str, Any]) -> str:
        until = doc["admitted_until"]
        if until == "forever":
            admitted = "yes, for good"
        elif doc["admitted"]:
            admitted = "until " + time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(until))
        elif until:
            admitted = "no (ended " + time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(until)) + ")"
        else:
            admitted = "no"
        return admitted

    # --- API --------------------------------------------------------------------

    async def _create_invoice(self, request: HttpRequest) -> HttpResponse:
        source = self._budget.source(request.client_ip)
        if "application/json" not in request.headers.get("Content-Type"):
            return _error(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "send the invoice request as application/json")
        try:
            doc = orjson.loads(request.body)
        except orjson.JSONDecodeError:
            return _error(HTTPStatus.BAD_REQUEST, "the body is not JSON")
        if not isinstance(doc, dict):
            return _error(HTTPStatus.BAD_REQUEST, "the body must be a JSON object")
        raw_pubkey, plan, raw_amount = doc.get("pubkey"), doc.get("plan", ""), doc.get("amount")
        pubkey = parse_pubkey(raw_pubkey) if isinstance(raw_pubkey, str) else None
        if pubkey is None:
            return _error(HTTPStatus.BAD_REQUEST, "pubkey must be 64 hex characters or an npub")
        if not isinstance(plan, str):
            return _error(HTTPStatus.BAD_REQUEST, "plan must be a string")
        amount: int | None = None
        if raw_amount not in (None, ""):
            text = str(raw_amount)
            # ASCII digits only: str.isdigit() also accepts "²" and other digits int() refuses.
            if isinstance(raw_amount, bool) or not (text.isascii() and text.isdigit()) or len(text) > 12:
                return _error(HTTPStatus.BAD_REQUEST, "amount must be a whole number of sats")
            amount = int(text)
        if not self._budget.take(source):
            return _error(
                HTTPStatus.TOO_MANY_REQUESTS,
                "too many invoices from your address; wait a minute",
                self._budget.retry_after,
            )
        try:
            async with self._budget.turn(source):
                issued = await self._ledger.issue_or_reuse(
                    pubkey, plan, int(self._clock()), amount, memo=self._memo(plan), source=source
                )
        except UnknownPlan as exc:
            return _error(HTTPStatus.BAD_REQUEST, str(exc))
        except TooManyPending as exc:
            status = HTTPStatus.TOO_MANY_REQUESTS if exc.per_pubkey else HTTPStatus.SERVICE_UNAVAILABLE
            # A pending invoice frees its slot when paid or expired: a minute is a fair retry.
            return _error(status, str(exc), 60)
        except BackendError as exc:
            log.warning("invoice creation failed: %s", exc)
            return _error(HTTPStatus.SERVICE_UNAVAILABLE, "the relay's wallet is unavailable; try again shortly")
        if not issued.reused:
            self._on_issued(issued.invoice)
        return _json(HTTPStatus.OK, invoice_json(issued.invoice))

    def _memo(self, plan: str) -> str:
        return f"{self._info.name}: {plan}"

    async def _invoice_status(self, payment_hash: str) -> HttpResponse:
        if not _is_hash(payment_hash):
            return _error(HTTPStatus.BAD_REQUEST, "not a payment hash")
        invoice = await self._ledger.store.get_invoice(payment_hash)
        if invoice is None:
            return _error(HTTPStatus.NOT_FOUND, "no such invoice")
        now = int(self._clock())
        if invoice.state is InvoiceState.PENDING:
            self._watch(payment_hash)  # the watcher polls it often while someone looks at it
        if invoice.state is InvoiceState.PENDING and invoice.expires_at > now and await self._check(payment_hash):
            invoice = await self._ledger.store.get_invoice(payment_hash) or invoice
            now = int(self._clock())
        doc = invoice_json(invoice)
        if invoice.state is InvoiceState.PENDING and invoice.expires_at <= now:
            doc["state"] = InvoiceState.EXPIRED.value  # the watcher marks it on its next round
        # Anyone can create an invoice in any pubkey's name and poll it: the public view only.
        account = await self._ledger.store.get_account(invoice.pubkey)
        doc["account"] = {
            **public_account_json(invoice.pubkey, account, now),
            **self.plan_fields(account, invoice.pubkey, now),
        }
        return _json(HTTPStatus.OK, doc)

    async def _check(self, payment_hash: str) -> bool:
        """Ask the wallet about a pending invoice unless that was done in the last
        ``check_interval`` seconds; True when a lookup finished while we waited.

        The page polls its status every second or so, and anyone may poll any stored
        invoice, so lookups are limited per invoice (and concurrent requests share one).
        The lookup runs in its own task and the request waits at most ``check_wait``: a
        stalled wallet delays the answer by that much, never by the HTTP timeout, and the
        lookup still finishes (and credits) in the background.
        """
        if self._confirm is None:
            return False
        task = self._checks.get(payment_hash)
        if task is None:
            started = time.monotonic()
            last = self._last_check.get(payment_hash)
            if last is not None and started - last < self._check_interval:
                return False
            if not self._status_lookups.take(started):
                return False  # the budget is spent: answer from the store; the watcher polls it
            self._last_check[payment_hash] = started
            self._last_check.move_to_end(payment_hash)
            if len(self._last_check) > MAX_TRACKED_CHECKS:
                self._last_check.popitem(last=False)
            task = asyncio.create_task(self._lookup(payment_hash), name=f"invoice-status-check-{payment_hash[:12]}")
            self._checks[payment_hash] = task
            task.add_done_callback(lambda _: self._checks.pop(payment_hash, None))
        done, _ = await asyncio.wait({task}, timeout=self._check_wait)
        return bool(done)

    async def _lookup(self, payment_hash: str) -> None:
        assert self._confirm is not None
        try:
            await self._confirm(payment_hash)
        except BackendError as exc:
            # Not a warning: the watcher's poll loop reports an unreachable wallet once.
            log.info("status check of invoice %s failed: %s", payment_hash, exc)
        except Exception:
            log.exception("status check of invoice %s crashed", payment_hash)

    async def _qr(self, payment_hash: str) -> HttpResponse:
        if not _is_hash(payment_hash):
            return _error(HTTPStatus.BAD_REQUEST, "not a payment hash")
        invoice = await self._ledger.store.get_invoice(payment_hash)
        if invoice is None:
            return _error(HTTPStatus.NOT_FOUND, "no such invoice")
        # Upper case lets the QR use its denser alphanumeric mode (BOLT11 allows either case).
        qr = segno.make(f"LIGHTNING:{invoice.bolt11.upper()}", error="m")
        out = io.BytesIO()
        qr.save(out, kind="svg", scale=5, border=2, xmldecl=False, title="Lightning invoice")
        return _response(HTTPStatus.OK, out.getvalue(), "image/svg+xml", [("Content-Security-Policy", CSP)])

    async def _simulate_payment(self, payment_hash: str) -> HttpResponse:
        assert self._fake_pay is not None
        if not _is_hash(payment_hash):
            return _error(HTTPStatus.BAD_REQUEST, "not a payment hash")
        try:
            paid = await self._fake_pay(payment_hash)
        except BackendError as exc:
            return _error(HTTPStatus.SERVICE_UNAVAILABLE, str(exc))
        return _json(HTTPStatus.OK, {"payment_hash": payment_hash, "simulated": paid})
