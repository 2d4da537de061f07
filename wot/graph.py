"""The trusted set, pure: who is within ``max_hops`` follows of the roots (NIP-02).

Rules (issue 21): the roots are hop 0; a pubkey a root follows is hop 1; from hop 2 on, a
pubkey is hop ``k`` when at least ``min_followers`` members at hops below ``k`` follow it.
A contact list counts only when its author is a member below ``max_hops`` (the last hop's
lists would only reach further), is not banned, and follows at most
``max_banned_follows`` banned pubkeys. Banned pubkeys are never members.

The shape is made for an incremental update: per pubkey, ``counts[level]`` is how many
counted lists at that hop follow it, so a pubkey's hop is a function of its own counts.
Changing one list adjusts its targets' counts and re-derives only their hops; a hop that
moves re-counts that member's own list, and so on (a worklist). Each hop depends only on
members at lower hops, so the fixpoint is unique and the worklist reaches the same set a
full computation does (tests/test_wot.py checks both ways on random graphs).

Lists are held only for the members whose lists count (at ``max_hops = 2``: the roots'
and hop 1's, about a thousand), never for the whole network: a member newly below
``max_hops`` is put in ``pending`` and the caller supplies its list (``provide``), from
the store; ``compute`` is the same loop started from the roots alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class GraphRules:
    roots: frozenset[str]
    max_hops: int
    min_followers: int
    max_banned_follows: int


class TrustGraph:
    def __init__(self, rules: GraphRules, banned: frozenset[str] = frozenset()) -> None:
        self.rules = rules
        self.banned = banned
        self.hops: dict[str, int] = {}
        self.counts: dict[str, list[int]] = {}
        self.lists: dict[str, frozenset[str]] = {}  # authors whose lists count, or will
        self.counted_at: dict[str, int] = {}  # author -> the level its list is counted at
        self.pending: set[str] = set()  # members below max_hops whose list is not loaded
        self._dirty: set[str] = set()
        for root in rules.roots:
            if root not in banned:
                self.hops[root] = 0
                self.pending.add(root)

    # --- what the caller feeds in -------------------------------------------------------

    def provide(self, lists: Mapping[str, frozenset[str]]) -> set[str]:
        """Lists the caller loaded for ``pending`` authors (an empty set for one without a
        contact list); returns the pubkeys whose hop changed."""
        for author, follows in lists.items():
            if author in self.pending:
                self.pending.discard(author)
                self.lists[author] = follows
                self._recount(author)
        return self._settle()

    def set_list(self, author: str, follows: frozenset[str]) -> set[str]:
        """``author`` published a new contact list; returns the pubkeys whose hop changed.
        A list whose author is not a member below ``max_hops`` changes nothing."""
        if author not in self.lists and author not in self.pending:
            return set()
        level = self.counted_at.pop(author, None)
        if level is not None:
            self._add(self.lists[author], level, -1)
        self.pending.discard(author)
        self.lists[author] = follows
        self._recount(author)
        return self._settle()

    # --- what the caller reads ------------------------------------------------------------

    def hop_counts(self) -> list[int]:
        """Members per hop, 0..max_hops."""
        per = [0] * (self.rules.max_hops + 1)
        for hop in self.hops.values():
            per[hop] += 1
        return per

    def via(self, pubkey: str, most: int = 5) -> list[str]:
        """Members one hop nearer the roots whose counted lists follow ``pubkey``."""
        hop = self.hops.get(pubkey)
        if not hop:
            return []
        found = [a for a, level in self.counted_at.items() if level < hop and pubkey in self.lists[a]]
        found.sort(key=lambda a: (self.counted_at[a], a))
        return found[:most]

    def near_misses(self, most: int = 20) -> list[tuple[str, int]]:
        """Pubkeys followed inside the trusted set yet not members (short of
        ``min_followers``), most followed first."""
        out: list[tuple[str, int]] = []
        for pubkey, counts in self.counts.items():
            followers = sum(counts)
            if followers and pubkey not in self.hops and pubkey not in self.banned:
                out.append((pubkey, followers))
        out.sort(key=lambda x: (-x[1], x[0]))
        return out[:most]

    # --- the worklist ---------------------------------------------------------------------

    def _counts_list(self, author: str) -> bool:
        follows = self.lists[author]
        if not self.banned or self.rules.max_banned_follows >= len(follows):
            return True
        return len(follows & self.banned) <= self.rules.max_banned_follows

    def _recount(self, author: str) -> None:
        """Count ``author``'s list at its current hop, or stop counting it."""
        hop = self.hops.get(author)
        want = hop if hop is not None and hop < self.rules.max_hops else None
        have = self.counted_at.get(author)
        if want is not None and author not in self.lists:
            self.pending.add(author)
            return
        if want is not None and not self._counts_list(author):
            want = None
        if want == have:
            return
        if have is not None:
            self._add(self.lists[author], have, -1)
            del self.counted_at[author]
        if want is not None:
            self._add(self.lists[author], want, +1)
            self.counted_at[author] = want
        elif hop is None or hop >= self.rules.max_hops:
            # No longer a member whose list counts: drop the list (loaded again if needed).
            self.lists.pop(author, None)
            self.pending.discard(author)

    def _add(self, follows: Iterable[str], level: int, sign: int) -> None:
        counts, dirty, width = self.counts, self._dirty, self.rules.max_hops
        for target in follows:
            c = counts.get(target)
            if c is None:
                c = counts[target] = [0] * width
            c[level] += sign
            if sign < 0 and not any(c):
                del counts[target]
            dirty.add(target)

    def _hop_of(self, pubkey: str) -> int | None:
        rules = self.rules
        if pubkey in self.banned:
            return None
        if pubkey in rules.roots:
            return 0
        c = self.counts.get(pubkey)
        if c is None:
            return None
        if c[0] > 0:
            return 1
        total = c[0]
        for hop in range(2, rules.max_hops + 1):
            total += c[hop - 1]
            if total >= rules.min_followers:
                return hop
        return None

    def _settle(self) -> set[str]:
        changed: set[str] = set()
        dirty = self._dirty
        while dirty:
            pubkey = dirty.pop()
            new = self._hop_of(pubkey)
            if new == self.hops.get(pubkey):
                continue
            if new is None:
                del self.hops[pubkey]
            else:
                self.hops[pubkey] = new
            changed.add(pubkey)
            self._recount(pubkey)
        return changed


def reference_hops(
    rules: GraphRules, lists: Mapping[str, frozenset[str]], banned: frozenset[str] = frozenset()
) -> dict[str, int]:
    """The same rules level by level, straight from their statement (for tests): slow and
    obviously right, against which the worklist is checked."""
    hops = {r: 0 for r in rules.roots if r not in banned}
    for hop in range(1, rules.max_hops + 1):
        followers: dict[str, int] = {}
        for author, level in hops.items():
            follows = lists.get(author, frozenset())
            if level >= hop or (len(follows & banned) > rules.max_banned_follows and banned):
                continue
            if hop == 1 and level != 0:
                continue
            for target in follows:
                followers[target] = followers.get(target, 0) + 1
        need = 1 if hop == 1 else rules.min_followers
        for target, n in followers.items():
            if target not in hops and target not in banned and n >= need:
                hops[target] = hop
    return hops
