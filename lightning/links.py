"""One plan, several keys (README "One plan, several keys"): the HTTP routes that link a key
to a member's plan and unlink it, each signed by the keys it concerns.

People use several keys (one per app, Amber #284), and paying once per key is what keeps
them off paid relays. A member links up to ``linked_keys`` other keys (per tier, else
``[payments] linked_keys``); a linked key then writes as the member's account, and the
plan's quotas count the events of all its keys together (``lightning.gate``).

- ``POST /account/<owner>/links/<key>`` links ``key`` to ``owner``'s plan. Both keys sign
  the same request with NIP-98 (kind 27235, this URL, ``POST``): the owner in the
  ``Authorization`` header (whose ``payload`` tag names the body, as every signed POST
  here), ``key`` in the body, ``{"consent": <its signed event>}``. Neither signature can
  be made without its secret key, so nobody links a key that is not theirs, nor joins a
  plan that is not theirs.
- ``DELETE /account/<owner>/links/<key>`` unlinks it, NIP-98 signed by either key: the
  member drops a key, or the key leaves the plan.
- ``GET /account/<owner>/links``, signed by the owner: the linked keys and how many more fit.

Each signature authorises one request (``nip98.single_use``, recorded in the store for
every node): a captured request cannot be replayed within its minute, e.g. to link a key
again right after it left. Links live in the ledger (``linked_keys``), so they hold across
restarts and on every node; a change bumps the account change counter, which every
process's account cache polls.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

import orjson

from lightning.plans import Plans
from lightning.pubkeys import parse_pubkey
from lightning.store.base import LedgerStore, LinkOutcome
from lightning.web import _error, _json, _response
from relay.net.http import HttpRequest, HttpResponse, http_url
from relay.nostr import nip98
from relay.nostr.errors import Invalid
from relay.nostr.event import Event, parse_event
from relay.store.base import Store, UseLimit

PREFIX = "/account/"
MAX_BODY_BYTES = 16384  # a consent event is a few hundred bytes

_REFUSALS = {
    LinkOutcome.TAKEN: (HTTPStatus.CONFLICT, "this key is linked to another plan: unlink it there first"),
    LinkOutcome.OWNER_IS_LINKED: (
        HTTPStatus.CONFLICT,
        "the plan's key is itself linked to another plan: link keys to that plan instead",
    ),
    LinkOutcome.KEY_HAS_LINKS: (
        HTTPStatus.CONFLICT,
        "this key has keys linked to its own plan: a plan's key cannot join another plan",
    ),
}


class KeyLinks:
    """The link routes (``handle`` answers None for any other path)."""

    def __init__(
        self,
        store: LedgerStore,
        events: Store,
        plans: Plans,
        relay_url: str,
        *,
        is_member: Callable[[str, int], Awaitable[bool]],
        banned: Callable[[str], Awaitable[bool]],
        changed: Callable[[str], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``is_member(owner, now)``: may that key's plan take linked keys (the gate's
        rule); ``banned(key)``: a banned key joins no plan; ``changed(key)``: drop cached
        state of a key whose link changed."""
        self._store = store
        self._events = events
        self._plans = plans
        self._base = http_url(relay_url)
        self._is_member = is_member
        self._banned = banned
        self._changed = changed
        self._clock = clock

    async def handle(self, request: HttpRequest) -> HttpResponse | None:
        path = request.path
        if not path.startswith(PREFIX):
            return None
        owner_part, _, rest = path[len(PREFIX) :].partition("/")
        if rest == "links":
            key_part = None
        elif rest.startswith("links/") and "/" not in rest[len("links/") :]:
            key_part = rest[len("links/") :]
        else:
            return None
        owner = parse_pubkey(owner_part)
        key = parse_pubkey(key_part) if key_part is not None else None
        if owner is None or (key_part is not None and key is None):
            return _error(HTTPStatus.BAD_REQUEST, "not a hex pubkey or npub")
        now = int(self._clock())
        if key is None:
            if request.method not in ("GET", "HEAD"):
                return _not_allowed("GET")
            signer = await self._signer(request, now, (owner,))
            if isinstance(signer, HttpResponse):
                return signer
            return _json(HTTPStatus.OK, await self.view(owner))
        if request.method == "POST":
            return await self._link(owner, key, request, now)
        if request.method == "DELETE":
            return await self._unlink(owner, key, request, now)
        return _not_allowed("POST, DELETE")

    async def view(self, owner: str) -> dict[str, Any]:
        """The plan's linked keys and its limit, as the owner sees them."""
        account = await self._store.get_account(owner)
        links = await self._store.linked_keys(owner)
        return {
            "pubkey": owner,
            "linked_keys": [k.pubkey for k in links],  # oldest link first, as on the account page
            "linked_keys_max": self._plans.keys_to_link(account.role if account is not None else ""),
        }

    async def _signer(self, request: HttpRequest, now: int, allowed: tuple[str, ...]) -> Event | HttpResponse:
        """The NIP-98 event that signed this request (header; a POST's ``payload`` names its
        body) by one of ``allowed``, else the refusal (401/403). Its single use is recorded by
        the caller (``_first_use``) once the request is known to act."""
        header = request.headers.get("Authorization") or None
        if header is None:
            return _error(HTTPStatus.UNAUTHORIZED, "sign this request with NIP-98 (your browser extension)")
        body_sha256 = hashlib.sha256(request.body).hexdigest() if request.method == "POST" else None
        try:
            event = nip98.decode_header(header)
            problem = nip98.verify(
                event, url=self._base + request.target, method=request.method, now=now, body_sha256=body_sha256
            )
        except nip98.Nip98Error as exc:
            problem = str(exc)
        if problem is not None:
            return _error(HTTPStatus.UNAUTHORIZED, f"NIP-98 authorization refused: {problem}")
        if event.pubkey not in allowed:
            return _error(HTTPStatus.FORBIDDEN, "sign with " + " or ".join(_role_names(len(allowed))))
        return event

    async def _first_use(self, events: list[Event], now: int) -> bool:
        """Record each signature's single use, in one store write; False if one was used.
        Called only once the request is known to act: a refused stranger's signatures cost
        the store no row (it has one writer, shared with every event)."""
        uses = [UseLimit(key, 1, keep_until) for key, keep_until in map(nip98.single_use, events)]
        return await self._events.take_uses(uses, now) is None

    async def _link(self, owner: str, key: str, request: HttpRequest, now: int) -> HttpResponse:
        if key == owner:
            return _error(HTTPStatus.BAD_REQUEST, "a key is part of its own plan already")
        if len(request.body) > MAX_BODY_BYTES:
            return _error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "the body is too large")
        consent = _consent(request.body)
        if isinstance(consent, str):
            return _error(HTTPStatus.BAD_REQUEST, consent)
        url = self._base + request.target
        problem = nip98.verify(consent, url=url, method="POST", now=now)
        if problem is not None:
            return _error(HTTPStatus.UNAUTHORIZED, f"the key's consent is refused: {problem}")
        if consent.pubkey != key:
            return _error(HTTPStatus.FORBIDDEN, "the consent must be signed by the key being linked")
        signer = await self._signer(request, now, (owner,))
        if isinstance(signer, HttpResponse):
            return signer
        if await self._banned(key):
            return _error(HTTPStatus.FORBIDDEN, "this key is banned from this relay")
        if not await self._is_member(owner, now):
            return _error(HTTPStatus.FORBIDDEN, "this key has no plan here to share: pay first, then link keys")
        if not await self._first_use([signer, consent], now):
            return _error(HTTPStatus.CONFLICT, "a signature was used already: sign the request and the consent anew")
        account = await self._store.get_account(owner)
        role = account.role_at(now) if account is not None else ""
        limit = self._plans.keys_to_link(role)
        outcome = await self._store.link_key(owner, key, limit, now)
        if outcome is LinkOutcome.FULL:
            return _error(HTTPStatus.CONFLICT, self._full(role, limit))
        if outcome in _REFUSALS:
            status, message = _REFUSALS[outcome]
            return _error(status, message)
        self._changed(key)
        self._changed(owner)
        return _json(HTTPStatus.OK, {**await self.view(owner), "linked": key})

    def _full(self, role: str, limit: int) -> str:
        """Why no more keys fit, and the tier that takes more (by display order)."""
        if limit == 0:
            return "this plan links no other keys"
        tier = self._plans.tier(role)
        text = f"the {tier.label} plan" if tier is not None else "this plan"
        text += f" links at most {limit} other key{'s' if limit != 1 else ''}: unlink one first"
        later = self._plans.tiers[self._plans.tiers.index(tier) + 1 :] if tier is not None else ()
        for other in later:
            if self._plans.keys_to_link(other.name) > limit:
                return text + f", or upgrade to the {other.label} tier ({other.offer_text()})"
        return text

    async def _unlink(self, owner: str, key: str, request: HttpRequest, now: int) -> HttpResponse:
        signer = await self._signer(request, now, (owner, key))
        if isinstance(signer, HttpResponse):
            return signer
        if key not in {k.pubkey for k in await self._store.linked_keys(owner)}:
            return _error(HTTPStatus.NOT_FOUND, "this key is not linked to this plan")
        if not await self._first_use([signer], now):
            return _error(HTTPStatus.CONFLICT, "this signed request was used already: sign a new one")
        if not await self._store.unlink_key(owner, key, now):
            return _error(HTTPStatus.NOT_FOUND, "this key is not linked to this plan")
        self._changed(key)
        self._changed(owner)
        return _json(HTTPStatus.OK, {"pubkey": owner, "unlinked": key})


def _consent(body: bytes) -> Event | str:
    """The linked key's signed event in ``{"consent": {...}}``, or what is wrong with it."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return "the body must be JSON: {\"consent\": <the linked key's NIP-98 event>}"
    consent = doc.get("consent") if isinstance(doc, dict) else None
    if not isinstance(consent, dict):
        return "the body must hold the linked key's signed NIP-98 event as \"consent\""
    try:
        return parse_event(consent)
    except Invalid as exc:
        return f"the consent is not a valid event: {exc.reason}"


def _role_names(n: int) -> list[str]:
    return ["the plan's key"] if n == 1 else ["the plan's key", "the linked key"]


def _not_allowed(methods: str) -> HttpResponse:
    return _response(HTTPStatus.METHOD_NOT_ALLOWED, f"{methods} only\n".encode(), "text/plain", [("Allow", methods)])
