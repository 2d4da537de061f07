"""Write and read policies: small pure functions assembled from Settings at start-up.

A write policy is ``(event, ctx) -> Rejection | None``; the first rejection wins and its
text (with its NIP-01 prefix) becomes the OK message. Policies run before the signature
check because they cost a fraction of it; plug-ins' write gates run after it (see
``relay.plugins.hooks``). Adding a rule is adding a function here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import orjson

from relay.nostr.errors import AuthRequired, Blocked, Invalid, PowTooLow, Rejection, Restricted
from relay.nostr.event import Event, is_hex64
from relay.nostr.filters import Filter


@dataclass(frozen=True, slots=True)
class WriteContext:
    """What a write policy or a plug-in's write gate may know about the connection an
    event came in on."""

    now: int
    authed: frozenset[str]  # pubkeys authenticated on this connection (NIP-42)
    ip: str


WritePolicy = Callable[[Event, WriteContext], Rejection | None]

AUTH_KIND = 22242
REPOST_KINDS = frozenset((6, 16))  # NIP-18: a repost, a generic repost
# NIP-42: DMs and gift wraps are served only to an authenticated party they name; the
# ephemeral gift wrap (NIP-59 kind 21059) is never stored, so this rule is all that decides
# who receives it live: its authenticated recipient (or its one-time signer), nobody else.
PRIVATE_KINDS = frozenset((4, 1059, 1060, 21059))
AUTH_MAX_SKEW = 600  # seconds an AUTH event's created_at may differ from now


def leading_zero_bits(hex_id: str) -> int:
    """NIP-13 difficulty: the number of leading zero bits of the event id."""
    value = int(hex_id, 16)
    return 256 - value.bit_length()


def created_at_window(lower: int | None, upper: int | None) -> WritePolicy:
    """NIP-22: refuse events dated too far in the past or the future."""

    def check(event: Event, ctx: WriteContext) -> Rejection | None:
        if upper is not None and event.created_at > ctx.now + upper:
            return Invalid(f"created_at is more than {upper} seconds in the future")
        if lower is not None and event.created_at < ctx.now - lower:
            return Invalid(f"created_at is more than {lower} seconds in the past")
        return None

    return check


def not_expired(event: Event, ctx: WriteContext) -> Rejection | None:
    """NIP-40: an event that has already expired is refused."""
    expiration = event.expiration
    if expiration is not None and expiration <= ctx.now:
        return Invalid("event has expired")
    return None


def min_pow(difficulty: int) -> WritePolicy:
    """NIP-13: require ``difficulty`` leading zero bits in the id."""

    def check(event: Event, ctx: WriteContext) -> Rejection | None:
        bits = leading_zero_bits(event.id)
        if bits < difficulty:
            return PowTooLow(f"difficulty {bits} is less than {difficulty}")
        return None

    return check


def max_tags(limit: int) -> WritePolicy:
    def check(event: Event, ctx: WriteContext) -> Rejection | None:
        if len(event.tags) > limit:
            return Invalid(f"too many tags ({len(event.tags)} > {limit})")
        return None

    return check


def max_content(limit: int) -> WritePolicy:
    """NIP-11 max_content_length counts unicode characters."""

    def check(event: Event, ctx: WriteContext) -> Rejection | None:
        if len(event.content) > limit:
            return Invalid(f"content longer than {limit} characters")
        return None

    return check


def no_auth_events(event: Event, ctx: WriteContext) -> Rejection | None:
    """NIP-42: kind 22242 is only for AUTH and must never be broadcast."""
    if event.kind == AUTH_KIND:
        return Invalid("kind 22242 events are sent with AUTH, not published")
    return None


def protected_by_author(event: Event, ctx: WriteContext) -> Rejection | None:
    """NIP-70: an event tagged ``["-"]`` is accepted only from its authenticated author.
    NIP-42's prefixes: ``auth-required`` before any AUTH, ``restricted`` when the client
    authenticated as someone else (authenticating again would not help with that key)."""
    if event.is_protected and event.pubkey not in ctx.authed:
        reason = "this event may only be published by its author"
        return Restricted(reason) if ctx.authed else AuthRequired(reason)
    return None


def no_embedded_protected_repost(event: Event, ctx: WriteContext) -> Rejection | None:
    """NIP-70 (2026-05): a repost (NIP-18 kind 6 or 16) of a protected event must not embed
    it, and relays SHOULD reject one that does: its ``content`` would republish, under the
    reposter's signature, what the author allowed on chosen relays only. The content is
    parsed only when it looks like a JSON object (it is bounded by max_content_length); one
    that does not parse embeds nothing."""
    if event.kind not in REPOST_KINDS:
        return None
    content = event.content.lstrip()
    if not content.startswith("{"):
        return None
    try:
        embedded = orjson.loads(content)
    except orjson.JSONDecodeError:
        return None
    tags = embedded.get("tags") if isinstance(embedded, dict) else None
    if isinstance(tags, list) and any(tag == ["-"] for tag in tags):
        return Blocked("a repost must not embed a protected event (NIP-70): leave the content empty")
    return None


def auth_to_write(event: Event, ctx: WriteContext) -> Rejection | None:
    if not ctx.authed:
        return AuthRequired("this relay accepts events only from authenticated clients")
    return None


@dataclass(frozen=True, slots=True)
class WriteRules:
    max_event_tags: int
    max_content_length: int
    created_at_lower_limit: int | None
    created_at_upper_limit: int | None
    min_pow_difficulty: int
    auth_required_to_write: bool


def build_write_policies(rules: WriteRules) -> list[WritePolicy]:
    """The policy list, cheapest and most common refusals first."""
    policies: list[WritePolicy] = [
        max_tags(rules.max_event_tags),
        max_content(rules.max_content_length),
        no_auth_events,
        created_at_window(rules.created_at_lower_limit, rules.created_at_upper_limit),
        not_expired,
    ]
    if rules.min_pow_difficulty > 0:
        policies.append(min_pow(rules.min_pow_difficulty))
    if rules.auth_required_to_write:
        policies.append(auth_to_write)
    policies.append(protected_by_author)
    policies.append(no_embedded_protected_repost)
    return policies


def check_write(policies: Sequence[WritePolicy], event: Event, ctx: WriteContext) -> Rejection | None:
    for policy in policies:
        rejection = policy(event, ctx)
        if rejection is not None:
            return rejection
    return None


# --- reads -------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ReadScope:
    """What one connection may read of the stored events, shared by REQ, COUNT, NIP-77
    sync and live fan-out. Two rules:

    - NIP-42: an event of a kind in ``private_kinds`` (DMs, gift wraps) is visible only to
      a connection authenticated as its author or as a pubkey it ``p``-tags;
    - NIP-86: an event by a banned pubkey, or itself banned, is visible to no one.

    Live delivery applies them to each event in Python (``allows``, and the management
    view's ``hides_event``). REQ, COUNT and NEG-OPEN hand the scope to the store, which
    applies both rules in SQL (``Store.query_pages``, ``Store.count``,
    ``Store.sync_items``) before a filter's ``limit``: hidden rows never use up a REQ's
    limit (a spammer's flood of the newest 50 kind-1 events, once banned, used to leave
    ``{"kinds":[1],"limit":50}`` empty), COUNT never counts what REQ hides (issue 8,
    item 7) and a syncing client is never told of ids it could not fetch.

    ``banned_pubkeys`` and ``banned_ids`` are the node's copy of the ban lists (hex, from
    ``ManagementView``). They only decide whether a filter needs the ban condition at
    all (``hides_banned_authors``/``hides_banned_ids``), so a relay without bans runs the
    very SQL it ran before bans existed; the condition itself reads the bans from the
    store's ``management`` table, so the statement does not grow with the ban list.
    """

    private_kinds: frozenset[int]
    readers: frozenset[str]  # pubkeys authenticated on the connection
    banned_pubkeys: frozenset[str] = frozenset()
    banned_ids: frozenset[str] = frozenset()

    def allows(self, kind: int, pubkey: str, tags: list[list[str]]) -> bool:
        """The NIP-42 rule for one event (bans: ``banned``)."""
        if kind not in self.private_kinds:
            return True
        if not self.readers:
            return False
        readers = self.readers
        return pubkey in readers or any(len(t) > 1 and t[0] == "p" and t[1] in readers for t in tags)

    def banned(self, event_id: str, pubkey: str) -> bool:
        """The NIP-86 rule for one event, as the stores apply it in SQL."""
        return pubkey in self.banned_pubkeys or event_id in self.banned_ids

    def hides_private(self, f: Filter) -> bool:
        """True when ``f`` may match a private event this scope hides: only then need a
        query or count apply the NIP-42 rule. Not when its kinds are all public, nor when
        every event it matches is authored by a reader or ``p``-tags one (a client reading
        its own DMs: the store then runs the filter as it stands)."""
        if f.kinds is not None and f.kinds.isdisjoint(self.private_kinds):
            return False
        if self.readers and f.authors is not None and f.authors <= self.readers:
            return False
        return not (self.readers and any(name == "p" and values <= self.readers for name, values in f.tags))

    def hides_banned_authors(self, f: Filter) -> bool:
        """True when ``f`` may match an event by a banned pubkey (some ban, and ``f``
        names no authors or some banned one)."""
        return bool(self.banned_pubkeys) and (f.authors is None or not f.authors.isdisjoint(self.banned_pubkeys))

    def hides_banned_ids(self, f: Filter) -> bool:
        """True when ``f`` may match a banned event."""
        return bool(self.banned_ids) and (f.ids is None or not f.ids.isdisjoint(self.banned_ids))


def read_scope(
    authed: frozenset[str],
    banned_pubkeys: frozenset[str] = frozenset(),
    banned_ids: frozenset[str] = frozenset(),
) -> ReadScope:
    return ReadScope(PRIVATE_KINDS, authed, banned_pubkeys, banned_ids)


def may_see(event: Event, authed: frozenset[str]) -> bool:
    """NIP-42: a private-kind event is visible only to its author or a p-tagged party."""
    return read_scope(authed).allows(event.kind, event.pubkey, event.tags)


def may_see_fields(kind: int, pubkey: str, tags: list[list[str]], authed: frozenset[str]) -> bool:
    """``may_see`` for a stored event read back as plain JSON (no Event built)."""
    return read_scope(authed).allows(kind, pubkey, tags)


def filter_may_return_private(f: Filter) -> bool:
    return read_scope(frozenset()).hides_private(f)


def check_private_read(f: Filter, authed: frozenset[str]) -> Rejection | None:
    """A filter that asks for DM kinds explicitly needs AUTH first (NIP-42's
    ``auth-required`` tells the client to authenticate and retry). Once authenticated, it
    is served like any other filter with the private events the client is not named in
    left out (``may_see``), as NIP-42's own ``{"kinds": [4]}`` example expects; filters
    without ``kinds`` are filtered the same way without asking for AUTH."""
    if f.kinds is None or f.kinds.isdisjoint(PRIVATE_KINDS):
        return None
    if not authed:
        return AuthRequired("private messages are served only to authenticated recipients")
    return None


def check_auth_event(event: Event, challenge: str, relay_url: str, now: int) -> Rejection | None:
    """NIP-42 AUTH event: kind 22242, recent, our challenge, our URL."""
    if event.kind != AUTH_KIND:
        return Invalid("AUTH event must be kind 22242")
    if abs(event.created_at - now) > AUTH_MAX_SKEW:
        return Invalid("AUTH event created_at is too far from now")
    if challenge not in event.tag_values("challenge"):
        return Invalid("AUTH challenge does not match")
    if not any(_same_relay(url, relay_url) for url in event.tag_values("relay")):
        return Invalid("AUTH relay URL does not match this relay")
    if not is_hex64(event.pubkey):
        return Invalid("AUTH pubkey is malformed")
    return None


def _same_relay(a: str, b: str) -> bool:
    """URLs equal up to scheme case, a trailing slash and default ports."""

    def norm(url: str) -> str:
        url = url.strip().lower().rstrip("/")
        for scheme, port in (("wss://", ":443"), ("ws://", ":80")):
            if url.startswith(scheme):
                host, _, path = url[len(scheme):].partition("/")
                host = host.removesuffix(port)
                return scheme + host + ("/" + path if path else "")
        return url

    return norm(a) == norm(b)
