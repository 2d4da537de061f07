"""NIP-01/09 write rules, once, as pure functions and one in-memory plan; both stores use them.

A store's job is to read the state a batch's rules need and to write what the rules
decided; the rules themselves (an event's replaceable address, "the newest created_at
wins, ties to the lowest id", which ``a`` and ``e`` tags a deletion may act on) live
here, free of SQL, and are unit-tested without a database (tests/store/test_rules.py).

``BatchPlan`` decides a whole batch in batch order from a snapshot of the state (events
present, current versions of addresses, tombstones) as if its events were applied one
by one, asking the plug-ins' write hooks about the events it would store, and records
what to write: rows to insert, rows to delete, tombstones. PostgreSQL reads that snapshot
set-based under its advisory locks and writes the plan with one statement per table;
SQLite applies the same predicates to the rows it reads on its single writer thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from relay.nostr.errors import Rejection
from relay.nostr.event import Event, KindClass, is_hex64, kind_class, parse_address
from relay.store.base import WriteOutcome, WriteRequest

if TYPE_CHECKING:
    from relay.store.database import BatchHook

Address = tuple[str, int, str]  # (pubkey hex, kind, d) of a replaceable/addressable event
GIFT_WRAP_KIND = 1059  # NIP-59: signed by a one-time key; its ``p`` tag names the recipient


def address_of(ev: Event) -> Address | None:
    """NIP-01: replaceable kinds keep one event per (pubkey, kind), addressable kinds one
    per (pubkey, kind, d tag); a replaceable kind's address has d ""."""
    cls = ev.kind_class
    if cls is KindClass.REPLACEABLE:
        return (ev.pubkey, ev.kind, "")
    if cls is KindClass.ADDRESSABLE:
        return (ev.pubkey, ev.kind, ev.d_tag)
    return None


def a_tag_addresses(ev: Event) -> list[Address]:
    """NIP-09 ``a`` targets ``kind:pubkey:d`` of the deletion's own author, replaceable or
    addressable kinds only (a replaceable kind's address has d "")."""
    out: list[Address] = []
    for value in ev.tag_values("a"):
        # parse_address, not str.isdigit + int: "²" and 5,000-digit kinds raised inside
        # the batch's transaction and failed every event in it (issue 8).
        address = parse_address(value)
        if address is None or address[1] != ev.pubkey:
            continue
        kind = address[0]
        cls = kind_class(kind)
        if cls is KindClass.ADDRESSABLE:
            out.append((ev.pubkey, kind, address[2]))
        elif cls is KindClass.REPLACEABLE:
            out.append((ev.pubkey, kind, ""))
    return out


def e_tag_targets(ev: Event) -> list[str]:
    """NIP-09 ``e`` targets: event ids (malformed values are ignored, not an error)."""
    return [t for t in ev.tag_values("e") if is_hex64(t)]


def newer(created_at: int, event_id: str, cur_created_at: int, cur_id: str) -> bool:
    """NIP-01: of two versions of one address the newest created_at wins; on a tie, the
    lowest id (so every relay keeps the same one)."""
    return created_at > cur_created_at or (created_at == cur_created_at and event_id < cur_id)


def gift_wrap_recipients(kind: int, tags: list[list[str]]) -> frozenset[str]:
    """The pubkeys a gift wrap ``p``-tags (well-formed hex only); none for other kinds."""
    if kind != GIFT_WRAP_KIND:
        return frozenset()
    return frozenset(t[1] for t in tags if len(t) > 1 and t[0] == "p" and is_hex64(t[1]))


def deletion_removes(
    target_pubkey: str, target_kind: int, deleter: str, recipients: frozenset[str] = frozenset()
) -> bool:
    """NIP-09: an ``e``-tag deletion removes only its author's own events, and never a
    kind-5 (deleting a deletion has no effect). NIP-59/17: a gift wrap's signer is a
    one-time key nobody holds afterwards, so the wrap's ``p``-tagged recipient
    (``recipients``) may delete it too."""
    if target_kind == 5:
        return False
    return target_pubkey == deleter or (target_kind == GIFT_WRAP_KIND and deleter in recipients)


def tombstone_applies(ev: Event, tombstoned_by: set[str] | frozenset[str]) -> bool:
    """An event whose id its own author deleted earlier is refused when sent again, and so
    is a gift wrap its recipient deleted; a kind 5 ignores tombstones (NIP-09: deleting a
    deletion has no effect)."""
    if ev.kind == 5 or not tombstoned_by:
        return False
    return ev.pubkey in tombstoned_by or not tombstoned_by.isdisjoint(gift_wrap_recipients(ev.kind, ev.tags))


@dataclass(frozen=True, slots=True)
class Present:
    """An event present in the store at this point of the batch (stored before, or earlier
    in this batch)."""

    id: str
    pubkey: str
    kind: int
    created_at: int
    address: Address | None
    recipients: frozenset[str] = frozenset()  # a gift wrap's p-tagged keys (gift_wrap_recipients)


def simple_batch(batch: Sequence[WriteRequest]) -> bool:
    """True when every rule the batch needs is "duplicate id" or "tombstoned id": regular
    kinds only (no replaceable/addressable versions, no kind-5 deletions), no attachments
    for plug-ins' write hooks, no id twice, and no gift wrap (its tombstone may be its
    recipient's, which the cheaper path's "this id by this author" check does not see). A
    store may take a cheaper path for such a batch."""
    seen: set[str] = set()
    for req in batch:
        ev = req.event
        if req.attachments or ev.kind == 5 or ev.kind_class is not KindClass.REGULAR or ev.id in seen:
            return False
        if ev.kind == GIFT_WRAP_KIND:
            return False
        seen.add(ev.id)
    return True


def lookups(events: list[Event]) -> tuple[set[str], set[Address]]:
    """The ids and addresses whose stored state a batch's rules read: its own ids, its
    addresses, and the targets of its deletions."""
    ids = {ev.id for ev in events}
    addresses: set[Address] = set()
    for ev in events:
        address = address_of(ev)
        if address is not None:
            addresses.add(address)
        if ev.kind == 5:
            ids.update(e_tag_targets(ev))
            addresses.update(a_tag_addresses(ev))
    return ids, addresses


class BatchPlan:
    """The outcome of a batch decided in memory, in batch order, from the state read
    before it; then written by the store.

    Mutable working state of one ``write_batch`` call, never shared. Inputs: ``present``
    (id -> event, for every id in ``lookups``), ``current`` (address -> its stored version
    or None), ``tomb_ids`` (id -> pubkeys whose deletion named it), ``tomb_addresses``
    (address -> latest deletion created_at), ``hooks`` (the plug-ins' ``BatchHook`` for
    this batch, asked in order about each event with attachments it would store).
    """

    def __init__(
        self,
        present: dict[str, Present],
        current: dict[Address, Present | None],
        tomb_ids: dict[str, set[str]],
        tomb_addresses: dict[Address, int],
        hooks: Sequence[BatchHook] = (),
    ) -> None:
        self.present = present
        self.hooks = hooks
        self.current = current
        self.tomb_ids = tomb_ids
        self.tomb_addresses = tomb_addresses
        self.outcomes: list[WriteOutcome] = []
        self.inserts: dict[str, tuple[int, WriteRequest]] = {}  # id -> (batch index, request)
        self.db_deletes: set[str] = set()
        self.new_tomb_ids: set[tuple[str, str]] = set()
        self.new_tomb_addresses: dict[Address, int] = {}

    def apply(self, index: int, req: WriteRequest) -> WriteOutcome | Rejection:
        ev = req.event
        if ev.id in self.present:
            return WriteOutcome.DUPLICATE
        if tombstone_applies(ev, self.tomb_ids.get(ev.id, set())):
            return WriteOutcome.DELETED
        address = address_of(ev)
        cur: Present | None = None
        if address is not None:
            until = self.tomb_addresses.get(address)
            if until is not None and ev.created_at <= until:
                return WriteOutcome.DELETED
            cur = self.current.get(address)
            if cur is not None and not newer(ev.created_at, ev.id, cur.created_at, cur.id):
                return WriteOutcome.SUPERSEDED
        if req.attachments:
            refusal = self._admit(req)
            if refusal is not None:
                return refusal
        if cur is not None:
            self._remove(cur.id)
        entry = Present(ev.id, ev.pubkey, ev.kind, ev.created_at, address, gift_wrap_recipients(ev.kind, ev.tags))
        self.present[ev.id] = entry
        self.inserts[ev.id] = (index, req)
        if address is not None:
            self.current[address] = entry
        if ev.kind == 5:
            self._delete(ev)
        return WriteOutcome.STORED

    def _admit(self, req: WriteRequest) -> Rejection | None:
        """The write hooks' verdicts on an event about to be stored, in order; a refusal
        makes the hooks before it take theirs back."""
        for i, hook in enumerate(self.hooks):
            refusal = hook.admit(req)
            if refusal is not None:
                for earlier in self.hooks[:i]:
                    earlier.retract(req)
                return refusal
        return None

    def retract(self, req: WriteRequest) -> None:
        """``req`` was not stored after all (another node stored its id first): every
        hook takes back its ``admit``."""
        for hook in self.hooks:
            hook.retract(req)

    def _remove(self, event_id: str) -> None:
        entry = self.present.pop(event_id)
        if self.inserts.pop(event_id, None) is None:
            self.db_deletes.add(event_id)
        if entry.address is not None and self.current.get(entry.address) is entry:
            self.current[entry.address] = None

    def _delete(self, ev: Event) -> None:
        """NIP-09: the author's own events named by ``e`` (never a kind 5) and gift wraps
        addressed to the author, and every version of an ``a`` address up to the request's
        created_at; tombstones kept."""
        for target in e_tag_targets(ev):
            self.tomb_ids.setdefault(target, set()).add(ev.pubkey)
            self.new_tomb_ids.add((target, ev.pubkey))
            hit = self.present.get(target)
            if hit is not None and deletion_removes(hit.pubkey, hit.kind, ev.pubkey, hit.recipients):
                self._remove(target)
        for address in a_tag_addresses(ev):
            until = max(self.tomb_addresses.get(address, ev.created_at), ev.created_at)
            self.tomb_addresses[address] = until
            self.new_tomb_addresses[address] = max(self.new_tomb_addresses.get(address, until), until)
            cur = self.current.get(address)
            if cur is not None and cur.created_at <= ev.created_at:
                self._remove(cur.id)
