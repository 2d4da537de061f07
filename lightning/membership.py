"""NIP-43 membership: invite codes, join and leave requests, the member list.

All of it is signed by the relay's own key (``relay.store.identity``, NIP-11 ``self``):

- **Join request** (kind 28934, ``claim`` tag): redeems a single-use invite code made by
  ``satsrelay invites create`` (or handed to a member, below). The code's grant (what
  buying its plan would give) is applied in the same transaction that uses the code
  (``LedgerStore.redeem_invite``), exactly once across nodes. The OK texts are the NIP's own:
  ``info: welcome to <url>!``, ``duplicate: you are already a member of this relay.``,
  ``restricted: that invite code is expired.``, ``restricted: that is an invalid invite code.``
- **Leave request** (kind 28936, NIP-70 ``-`` tag): admission, credit and the allowed flag
  end; nothing is refunded. Reminder opt-ins and wallet connections are forgotten too
  (``on_leave``).
- Both are dated "now" (``request_window_seconds``) and are answered, never stored or
  relayed (a claim's code must not reach other subscribers). Both carry, or may carry,
  NIP-70's ``-`` tag, so the relay's protected-event rule asks the client to AUTH first.
- **Invite request** (a REQ for kind 28935): with ``members_may_invite``, a member
  authenticated by NIP-42 gets a fresh code on the fly, in an ephemeral event signed by
  the relay; at most ``max_open_invites_per_member`` unused codes each.
- **Member list** (kind 13534, with 8000/8001 for each change): off by default. When on,
  it names only members who said so themselves: whose own kind 10010 event stored here has
  an ``r`` tag naming this relay (NIP-43: "both a kind 13534 event by the relay, and a kind
  10010 event by the member should be consulted"). Recomputed every
  ``list_refresh_seconds`` and soon after a claim or leave; the stored 13534 is the state,
  so a restart publishes nothing new. Turning the list off publishes an empty one.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence

import orjson

from lightning.gate import AccountCache
from lightning.plans import DAY, Plans
from lightning.settings import MembershipSettings
from lightning.store.base import Invite, InviteOutcome, LedgerStore, RoleDefinition
from relay.net.limits import BucketTable, address_group
from relay.nostr.errors import AuthRequired, RateLimited, Restricted
from relay.nostr.event import Event, sign_event
from relay.nostr.filters import Filter
from relay.store.base import Store
from relay.store.identity import RelayIdentity

log = logging.getLogger(__name__)

JOIN_KIND = 28934
INVITE_KIND = 28935
LEAVE_KIND = 28936
LIST_KIND = 13534
ADD_KIND = 8000
REMOVE_KIND = 8001
OPT_IN_KIND = 10010
REQUEST_KINDS = frozenset({JOIN_KIND, LEAVE_KIND})
ROLE_KIND = 33534
DELETION_KIND = 5  # NIP-09: a role the operator deleted is withdrawn by its address

OPERATOR = "operator"  # Invite.created_by of codes made with the CLI
CLAIMS_PER_MINUTE = 6  # per address group: each claim is a write transaction
MAX_TRACKED_IPS = 10_000

# The exact OK texts NIP-43 shows.
WELCOME = "info: welcome to {url}!"
ALREADY_MEMBER = "duplicate: you are already a member of this relay."
EXPIRED_CODE = "restricted: that invite code is expired."
INVALID_CODE = "restricted: that is an invalid invite code."

Publish = Callable[[Event], Awaitable[object]]
IsMember = Callable[[str, int], Awaitable[bool]]
Roles = Callable[[], Awaitable[list[RoleDefinition]]]


def new_code() -> str:
    """16 characters of base32 (80 random bits): easy to read out, impossible to guess."""
    return base64.b32encode(secrets.token_bytes(10)).decode().lower()


def code_hash(code: str) -> str:
    return hashlib.sha256(code.strip().lower().encode()).hexdigest()


def make_invites(
    plans: Plans,
    plan: str,
    count: int,
    now: int,
    *,
    expires_at: int | None = None,
    created_by: str = OPERATOR,
    amount_sats: int | None = None,
) -> tuple[list[str], list[Invite]]:
    """``count`` new codes granting what buying ``plan`` would (``UnknownPlan`` if it is
    not offered); the codes themselves are returned once and stored only hashed."""
    grant = plans.grant(plan, amount_sats)
    codes = [new_code() for _ in range(count)]
    invites = [
        Invite(
            code_hash=code_hash(code),
            plan=grant.plan,
            created_at=now,
            expires_at=expires_at,
            created_by=created_by,
            admit_seconds=grant.admit_seconds,
            admit_forever=grant.admit_forever,
            credit_msat=grant.credit_msat,
        )
        for code in codes
    ]
    return codes, invites


def claim_code(event: Event) -> str | None:
    for tag in event.tags:
        if len(tag) > 1 and tag[0] == "claim" and tag[1]:
            return tag[1]
    return None


def relay_urls(public_url: str) -> frozenset[str]:
    """The spellings of this relay's URL a member's ``r`` tag may use."""
    url = public_url.rstrip("/")
    return frozenset({url, url + "/"})


def listed_members(event_raw: bytes | None) -> list[list[str]]:
    """The ``member`` tags of a stored kind-13534 event, in order: the pubkey, then its
    roles (NIP-43: "assigned roles may be included as subsequent arguments")."""
    if event_raw is None:
        return []
    tags = orjson.loads(event_raw)["tags"]
    return [t for t in tags if len(t) > 1 and t[0] == "member"]


def role_tags(role: RoleDefinition) -> list[list[str]]:
    """A kind-33534 role definition's tags (NIP-43): ``-`` and ``d`` required, ``label``,
    ``description``, ``color`` (a hue 0-360) and ``order`` when set."""
    tags = [["-"], ["d", role.id]]
    if role.label:
        tags.append(["label", role.label])
    if role.description:
        tags.append(["description", role.description])
    if role.color is not None:
        tags.append(["color", str(role.color)])
    if role.order is not None:
        tags.append(["order", str(role.order)])
    return tags


class Membership:
    def __init__(
        self,
        settings: MembershipSettings,
        *,
        plans: Plans,
        store: LedgerStore,
        events: Store,
        accounts: AccountCache,
        identity: RelayIdentity,
        publish: Publish,
        relay_url: str,
        is_member: IsMember,
        banned: frozenset[str] = frozenset(),
        on_leave: Callable[[str, int], Awaitable[None]] | None = None,
        clock: Callable[[], float] = time.time,
        ipv6_prefix: int = 64,
        roles: Roles | None = None,
    ) -> None:
        """``ipv6_prefix``: the relay's ``[limits] ipv6_prefix``, grouping claimants."""
        self.settings = settings
        self._plans = plans
        self._store = store
        self._events = events  # the relay's event store: the published list, members' opt-ins
        self._accounts = accounts
        self._identity = identity
        self._publish = publish
        self._relay_url = relay_url
        self._is_member = is_member
        self._banned = banned
        self._on_leave = on_leave
        self._roles = roles  # the tiers and the roles made by NIP-86, published as kind 33534
        self._clock = clock
        # Per address group (an IPv6 /64 is one client, as for the connection caps) and,
        # with --workers, per relay: the table lives in the workers' shared segment.
        self._claims = BucketTable(
            CLAIMS_PER_MINUTE / 60.0, CLAIMS_PER_MINUTE, MAX_TRACKED_IPS, name="nip43-claims"
        )
        self._ipv6_prefix = ipv6_prefix
        self._dirty = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # --- requests addressed to the relay (kinds 28934, 28936) ------------------------

    async def answer(self, event: Event, ip: str) -> tuple[bool, str]:
        """The OK (accepted, message) for a join or leave request."""
        now = int(self._clock())
        window = self.settings.request_window_seconds
        if abs(event.created_at - now) > window:
            return False, f"invalid: a membership request must be dated now (within {window} seconds)"
        if event.kind == JOIN_KIND:
            return await self._join(event, now, ip)
        return await self._leave(event, now)

    async def _join(self, event: Event, now: int, ip: str) -> tuple[bool, str]:
        pubkey = event.pubkey
        account = await self._accounts.get(pubkey)
        if pubkey in self._banned or (account is not None and account.banned):
            return False, "blocked: this pubkey is banned from this relay"
        code = claim_code(event)
        if code is None:
            return False, "invalid: a join request needs a claim tag with an invite code"
        if await self._is_member(pubkey, now):
            return True, ALREADY_MEMBER  # the code stays unused for someone else
        if not self._take_claim(ip):
            return False, "rate-limited: too many join requests from this address; try again in a minute"
        outcome = await self._store.redeem_invite(code_hash(code), pubkey, now, terms=self._plans.terms())
        if outcome is InviteOutcome.REDEEMED:
            self._accounts.invalidate(pubkey)
            self._dirty.set()
            log.info("invite code redeemed by %s", pubkey)
            return True, WELCOME.format(url=self._relay_url)
        if outcome is InviteOutcome.EXPIRED:
            return False, EXPIRED_CODE
        return False, INVALID_CODE  # unknown, revoked, or already used (by anyone)

    async def _leave(self, event: Event, now: int) -> tuple[bool, str]:
        if not event.is_protected:
            return False, 'invalid: a leave request must carry the NIP-70 "-" tag'
        ended = await self._store.end_membership(event.pubkey, now)
        self._accounts.invalidate(event.pubkey)
        if self._on_leave is not None:
            await self._on_leave(event.pubkey, now)
        self._dirty.set()
        if not ended:
            return True, "duplicate: you are not a member of this relay"
        log.info("member %s left", event.pubkey)
        return True, f"info: you have left {self._relay_url}; nothing paid is refunded"

    def _take_claim(self, ip: str) -> bool:
        return self._claims.take(address_group(ip, self._ipv6_prefix), time.monotonic())

    # --- invite requests (REQ for kind 28935) ----------------------------------------

    async def invite_events(self, filters: Sequence[Filter], authed: frozenset[str]) -> list[bytes]:
        """A fresh invite code for an authenticated member whose REQ asks for kind 28935;
        nothing when no filter does or members may not invite. Raises ``AuthRequired`` /
        ``Restricted`` / ``RateLimited`` (the REQ is CLOSED with it)."""
        wanted = [f for f in filters if f.kinds is not None and INVITE_KIND in f.kinds]
        if not wanted or not self.settings.members_may_invite:
            return []
        if not authed:
            raise AuthRequired("authenticate (NIP-42) as a member of this relay to get an invite code")
        now = int(self._clock())
        member = None
        for pubkey in sorted(authed):
            if await self._is_member(pubkey, now):
                member = pubkey
                break
        if member is None:
            raise Restricted("only members of this relay may ask for invite codes")
        held = await self._store.open_invite_count(member, now)
        if held >= self.settings.max_open_invites_per_member:
            raise RateLimited(f"you hold {held} unused invite codes; share those first")
        expires_at = now + round(self.settings.member_invite_days * DAY)
        codes, invites = make_invites(
            self._plans, self.settings.member_invite_plan, 1, now, expires_at=expires_at, created_by=member
        )
        event = sign_event(self._identity.secret, INVITE_KIND, "", [["-"], ["claim", codes[0]]], created_at=now)
        if not any(f.matches(event) for f in wanted):
            return []  # e.g. authors that are not the relay: no code is made
        await self._store.add_invites(invites)
        log.info("invite code made for member %s", member)
        return [event.raw]

    # --- the member list (13534, 8000, 8001) ------------------------------------------

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="nip43-member-list")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def changed(self) -> None:
        """Someone's membership may have changed (a payment, a grant): refresh soon."""
        self._dirty.set()

    async def _run(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception:
                log.exception("updating the NIP-43 member list failed; retrying later")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._dirty.wait(), self.settings.list_refresh_seconds)
            self._dirty.clear()

    async def refresh(self) -> bool:
        """Bring the published roles and member list up to date; True when something was
        published."""
        roles_changed = await self._refresh_roles()
        return await self._refresh_list() or roles_changed

    async def _refresh_roles(self) -> bool:
        """Publish each role whose stored kind 33534 differs (or is missing), and withdraw
        (NIP-09, by its address) each stored role that no longer exists."""
        if self._roles is None:
            return False
        now = int(self._clock())
        me = self._identity.pubkey
        stored = await self._events.query([Filter(authors=frozenset({me}), kinds=frozenset({ROLE_KIND}))], now)
        current: dict[str, tuple[list[list[str]], int]] = {}
        for raw in stored:
            doc = orjson.loads(raw)
            d = next((t[1] for t in doc["tags"] if len(t) > 1 and t[0] == "d"), "")
            current[d] = (doc["tags"], int(doc["created_at"]))
        published = False
        wanted = {role.id: role_tags(role) for role in await self._roles()}
        for role_id, tags in wanted.items():
            held = current.get(role_id)
            if held is not None and held[0] == tags:
                continue
            created_at = max(now, held[1] + 1) if held is not None else now  # addressable: newer wins
            await self._sign_and_publish(ROLE_KIND, tags, created_at)
            published = True
        for role_id, (_, created_at) in current.items():
            if role_id not in wanted:
                await self._sign_and_publish(
                    DELETION_KIND, [["a", f"{ROLE_KIND}:{me}:{role_id}"]], max(now, created_at + 1)
                )
                published = True
        return published

    async def _refresh_list(self) -> bool:
        now = int(self._clock())
        me = self._identity.pubkey
        stored = await self._events.query([Filter(authors=frozenset({me}), kinds=frozenset({LIST_KIND}), limit=1)], now)
        current_raw = stored[0] if stored else None
        current = listed_members(current_raw)
        wanted = await self._listed(now) if self.settings.list_members else []
        if current_raw is not None and wanted == current:
            return False
        if current_raw is None and not wanted:
            return False  # nothing was ever listed and nothing is to be
        created_at = now
        if current_raw is not None:
            created_at = max(now, int(orjson.loads(current_raw)["created_at"]) + 1)  # replaceable: newer wins
        if self.settings.list_members:
            before = {tag[1] for tag in current}
            after = {tag[1] for tag in wanted}
            for pubkey in sorted(after - before):
                await self._sign_and_publish(ADD_KIND, [["-"], ["p", pubkey]], created_at)
            for pubkey in sorted(before - after):
                await self._sign_and_publish(REMOVE_KIND, [["-"], ["p", pubkey]], created_at)
        await self._sign_and_publish(LIST_KIND, [["-"], *wanted], created_at)
        return True

    async def _listed(self, now: int) -> list[list[str]]:
        """The ``member`` tags of members whose newest kind 10010 here names this relay,
        newest opt-in first, at most ``max_listed_members``, then sorted (a stable list
        does not churn); a member holding a role (a tier) has it as the tag's next argument."""
        optins = await self._events.query(
            [Filter(kinds=frozenset({OPT_IN_KIND}), tags=(("r", relay_urls(self._relay_url)),), limit=5000)], now
        )
        out: list[str] = []
        for raw in optins:
            pubkey = orjson.loads(raw)["pubkey"]
            if pubkey not in out and await self._is_member(pubkey, now):
                out.append(pubkey)
                if len(out) >= self.settings.max_listed_members:
                    break
        tags = []
        for pubkey in sorted(out):
            account = await self._accounts.get(pubkey)
            role = account.role_at(now) if account is not None else ""
            tags.append(["member", pubkey, role] if role else ["member", pubkey])
        return tags

    async def _sign_and_publish(self, kind: int, tags: list[list[str]], created_at: int) -> None:
        await self._publish(sign_event(self._identity.secret, kind, "", tags, created_at=created_at))
