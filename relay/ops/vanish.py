"""NIP-62 request to vanish: a kind-62 event naming this relay (``["relay", <our URL>]``)
or every relay (``["relay", "ALL_RELAYS"]``) deletes every stored event of its author up to
its ``created_at`` (NIP-09 deletions included), and the gift wraps (NIP-59, kind 1059)
that ``p``-tag the author up to then. Paid relays MUST honour it whatever the author's
payment status, so it is handled before the payment gate and costs nothing.

The request itself is not stored as an event: the store keeps one bookkeeping row per
author (the latest ``until``), and the relay refuses the author's events created at or
before it, so a vanished history cannot be re-published here (NIP-62 "ensure past events
are not re-broadcasted"). A row is kept only when the request deleted something: an author
with nothing stored here has nothing to protect, and this bounds the rows (and the memory
every node holds for them) by the authors who ever stored events, not by the number of
keys an attacker can generate for free.

``VanishedAuthors`` holds the rows in memory for the write policy (no query per event) and
re-reads them when the store's ``vanish`` change counter moves (a request accepted on
another node), every ``REFRESH_SECONDS``. Between a request on node A and node B's refresh,
node B may still accept an older event of that author: a window of about half a second.
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

from relay.nostr.errors import Blocked, Invalid, Rejection
from relay.nostr.event import Event
from relay.nostr.policy import WriteContext
from relay.ops.periodic import run_every
from relay.store.base import Store

log = logging.getLogger(__name__)

VANISH_KIND = 62
ALL_RELAYS = "ALL_RELAYS"
GIFT_WRAP_KIND = 1059
REFRESH_SECONDS = 0.5


def _normalized(url: str) -> str:
    """Scheme and host are case-insensitive, a trailing slash is not part of the address."""
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return url
    path = parts.path.rstrip("/")
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}{path}"


def names_relay(event: Event, relay_url: str) -> bool:
    """Whether a kind-62 event is addressed to this relay (NIP-62: ``relay`` tags, or the
    exact uppercase ``ALL_RELAYS``)."""
    ours = _normalized(relay_url)
    for tag in event.tags:
        if len(tag) >= 2 and tag[0] == "relay" and (tag[1] == ALL_RELAYS or _normalized(tag[1]) == ours):
            return True
    return False


def check_request(event: Event, relay_url: str) -> Rejection | None:
    """A kind 62 that does not name this relay is refused rather than stored: it was meant
    for other relays (clients SHOULD send it to the target relays only)."""
    if not names_relay(event, relay_url):
        return Invalid(f"this request to vanish names no relay tag for {relay_url} or ALL_RELAYS (NIP-62)")
    return None


class VanishedAuthors:
    """Authors who vanished and up to when; the write policy and the refresher."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._until: dict[str, int] = {}
        self._changes: int | None = None

    async def load(self) -> None:
        self._changes = await self._store.vanish_changes()
        self._until = await self._store.list_vanished()

    def policy(self, event: Event, ctx: WriteContext) -> Rejection | None:
        """Write policy: refuse an event of a vanished author dated at or before the request,
        and a gift wrap to a vanished recipient dated so (NIP-62: the wraps deleted with the
        request must not come back through a re-broadcast; a wrap's ``created_at`` is set
        back by its sender, so a new wrap dated before the request is refused too)."""
        until = self._until.get(event.pubkey)
        if until is not None and event.created_at <= until and event.kind != VANISH_KIND:
            return Blocked("this pubkey asked to vanish from this relay (NIP-62); its older events are not accepted")
        if event.kind == GIFT_WRAP_KIND and self._until:
            for recipient in event.tag_values("p"):
                until = self._until.get(recipient)
                if until is not None and event.created_at <= until:
                    return Blocked("the recipient asked to vanish from this relay (NIP-62); older wraps are refused")
        return None

    async def vanish(self, event: Event, now: int) -> int:
        """Apply a request already checked with ``check_request``; return events deleted."""
        deleted = await self._store.vanish(event.pubkey, event.created_at, now)
        if deleted:  # logged only then: requests are free, a line each would be a flood
            self._until[event.pubkey] = max(self._until.get(event.pubkey, 0), event.created_at)
            log.info("NIP-62: %s vanished up to %d (%d events deleted)", event.pubkey, event.created_at, deleted)
        return deleted

    async def refresh(self) -> None:
        changes = await self._store.vanish_changes()
        if changes != self._changes:
            self._changes = changes
            self._until = await self._store.list_vanished()

    async def watch(self) -> None:
        """Background task: pick up requests accepted on other nodes."""
        await run_every(REFRESH_SECONDS, self.refresh, log, "reading NIP-62 requests failed", wait_first=True)
