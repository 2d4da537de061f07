"""The running web-of-trust tier: its write gate, limits, page, console panel and refresher.

The write path costs one dict lookup (``members``; measured in bench/wot.py) and never
queries the store: the refresher keeps ``members`` up to date in the background.

The refresher (one task per process; every node runs its own and reaches the same set,
since it reads the same store):
- every ``refresh_seconds``: contact lists stored since the last look (from any node),
  NIP-85 assertions of the provider, and the NIP-86 ban counter; a changed list of a
  member whose list counts updates the graph incrementally (``wot.graph``); a ban, or a
  change seen before the graph is built, starts a full computation;
- with ``sources``: the lists a new member brings into the graph are synced in from the
  sources before the store is read (``wot.sources``), and, with what is left of the
  refresh's budget, the lists that already count are asked again in turn, and the
  provider's ranks of the strangers refused since the last look; whatever arrived is
  applied like a list stored here, and so is a list of those that another node fetched
  first (its id differs from the one the graph holds: ``lists_changed``);
- every ``full_refresh_seconds``: a full computation (lists stored with a clock far behind,
  which the "since" window misses, are picked up here);
- each change is saved (``wot.store``). At start the saved result serves at once, and the
  schedule continues from when it was computed: a restart waits for no computation.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Collection, Mapping, Sequence
from http import HTTPStatus
from typing import Any

import orjson

from relay.net.http import HttpRequest, HttpResponse, response
from relay.nostr.errors import RateLimited, Restricted
from relay.nostr.event import Event, is_hex64
from relay.nostr.filters import Filter
from relay.nostr.policy import WriteContext
from relay.ops import console_blocks as ui
from relay.plugins.hooks import Admit, ConsolePanel, PluginHooks, Refuse, Verdict
from relay.store.base import Store
from wot.graph import GraphRules, TrustGraph
from wot.settings import WotSettings
from wot.sources import Rotation, SourceRelays
from wot.store import (
    ASSERTION_KIND,
    CONTACTS_KIND,
    PROVIDER_HOP,
    WotTable,
    banned_pubkeys,
    contact_lists,
    followed,
    lists_changed,
    provider_trusted,
)

log = logging.getLogger(__name__)

LATE_SECONDS = 300  # a contact list stamped up to this far behind the last look is still seen
POLL_LIMIT = 20_000  # more changed lists than this in one look: a full computation instead
RECENT_REFUSALS = 50  # distinct strangers the console lists
NEXT_HOP_SAMPLE = 2_000  # last-hop members whose lists the console reads for "one more hop"
# The id's place in an event's compact raw JSON ({"id":"<64 hex>",...}), the layout the
# stores return byte for byte (relay/nostr/event.py).
_ID = slice(7, 71)


class WotTier:
    def __init__(self, settings: WotSettings, store: Store, page_url: str) -> None:
        self.settings = settings
        self.store = store
        self.page_url = page_url  # http(s)://host/wot
        self.rules = GraphRules(
            frozenset(settings.roots), settings.max_hops, settings.min_followers, settings.max_banned_follows
        )
        self.table = WotTable(store)
        # pubkey -> hop (PROVIDER_HOP: by rank): what the write gate reads, replaced whole
        # or changed in place by the refresher only.
        self.members: dict[str, int] = {r: 0 for r in self.rules.roots}
        self.graph: TrustGraph | None = None
        self.provider_set: frozenset[str] = frozenset()
        self.computed_at = 0
        self.full_runs = 0
        # stranger -> (last refused at, times): the console's recent refusals, most recent last
        self.refusals: collections.OrderedDict[str, tuple[int, int]] = collections.OrderedDict()
        self.sources = (
            SourceRelays(settings.sources, settings.source_authors_per_refresh, store) if settings.sources else None
        )
        self._list_turn = Rotation()  # counted authors' lists, re-asked of the sources in turn
        # With sources: author -> id of the list the graph holds, to see a list another node
        # fetched (its stamp may be too old for the "since" window) in this store.
        self._list_ids: dict[str, str] = {}
        self._rank_turn = Rotation()  # provider-ranked members, re-asked in turn
        # Strangers refused since the last refresh, whose NIP-85 rank the sources are asked
        # for (bounded: a flood of strangers costs one budget per refresh).
        self._unranked: dict[str, None] = {}
        self._ask_ranks = bool(settings.sources and settings.provider)
        self._hour: dict[str, tuple[int, int]] = {}  # pubkey -> (hour, events admitted in it)
        self._saved: dict[str, int] = {}
        self._since = 0
        self._looked_at = 0  # when the saved set last took the stored lists into account
        self._first_look = True
        self._seen: dict[str, int] = {}  # ids of lists already applied in the late window
        self._ban_changes: int | None = None
        self._task: asyncio.Task[None] | None = None

    # --- hooks ---------------------------------------------------------------------------

    def hooks(self) -> PluginHooks:
        """Order 10: before payments (50), so a member is admitted free and a stranger's
        refusal is joined with the payment reply ("...; or ...")."""
        return PluginHooks(
            name="wot",
            description=f"wot ({self.settings.max_hops} hops)",
            order=10,
            write_gates=(self.judge,),
            storage_allowances=(self.storage_allowance,),
            http_routes=(self.handle_http,),
            console_panels=(ConsolePanel("wot", "Web of trust", self.panel),),
            nip11_fields=(self.nip11,),
            services=(self,),
            links=(self.links,),
            problems=(self.problems,),
            owner=self,
        )

    def fingerprint(self) -> str:
        """The rules a saved result was computed under: another set of rules ignores it."""
        s = self.settings
        return orjson.dumps(
            [sorted(s.roots), s.max_hops, s.min_followers, s.max_banned_follows, s.provider, s.min_rank]
        ).decode()

    async def judge(self, event: Event, ctx: WriteContext) -> Verdict:
        if event.pubkey not in self.members:
            if event.kind == ASSERTION_KIND and event.pubkey == self.settings.provider:
                return Admit()  # NIP-85: the provider the operator named publishes its ranks here
            self._refused(event.pubkey, ctx.now)
            return Refuse(Restricted(self.hint(event.pubkey)))
        kinds = self.settings.kinds
        if kinds and event.kind not in kinds:
            return Refuse(Restricted(f"the web-of-trust free tier does not take kind {event.kind}"))
        limit = self.settings.events_per_hour
        if limit:
            hour = ctx.now // 3600
            was_hour, used = self._hour.get(event.pubkey, (hour, 0))
            used = used if was_hour == hour else 0
            if used >= limit:
                return Refuse(RateLimited(f"the web-of-trust free tier allows {limit} events per hour"))
            self._hour[event.pubkey] = (hour, used + 1)
        return Admit()

    def _refused(self, pubkey: str, now: int) -> None:
        refusals = self.refusals
        times = refusals.pop(pubkey, (0, 0))[1]
        refusals[pubkey] = (now, times + 1)
        if len(refusals) > RECENT_REFUSALS:
            refusals.popitem(last=False)
        unranked = self._unranked
        if self._ask_ranks and len(unranked) < self.settings.source_authors_per_refresh:
            unranked[pubkey] = None

    def hint(self, pubkey: str) -> str:
        return f"free for people followed by this relay's web of trust ({self.page_url}/{pubkey})"

    async def storage_allowance(self, pubkey: str, now: int) -> int | None:
        return self.settings.max_bytes if pubkey in self.members else None

    def lookup(self, pubkey: str) -> dict[str, Any]:
        hop = self.members.get(pubkey)
        doc: dict[str, Any] = {"pubkey": pubkey, "trusted": hop is not None, "max_hops": self.settings.max_hops}
        if hop == PROVIDER_HOP:
            doc["by"] = "provider"
        elif hop is not None:
            doc["hops"] = hop
            doc["via"] = self.graph.via(pubkey) if self.graph is not None else []
        doc["computed_at"] = self.computed_at
        return doc

    async def handle_http(self, request: HttpRequest) -> HttpResponse | None:
        path = request.path
        if not path.startswith("/wot/"):
            return None
        pubkey = path[len("/wot/") :].lower()
        if not is_hex64(pubkey):
            return response(HTTPStatus.BAD_REQUEST, b'{"error":"not a hex pubkey"}', "application/json")
        body = orjson.dumps(self.lookup(pubkey))
        return response(HTTPStatus.OK, body, "application/json", [("Access-Control-Allow-Origin", "*")])

    def nip11(self) -> Mapping[str, Any]:
        return {"limitation": {"restricted_writes": True}}

    def links(self) -> Mapping[str, str]:
        return {"web of trust lookup": f"{self.page_url}/<pubkey>"}

    def problems(self) -> Sequence[str]:
        if not self.settings.roots and not self.settings.provider:
            return ["[wot] is enabled with no roots and no provider: nobody writes free"]
        return []

    # --- console -------------------------------------------------------------------------

    async def panel(self, query: Mapping[str, str]) -> dict[str, Any]:
        per_hop = self.graph.hop_counts() if self.graph is not None else self._saved_hops()
        items = [(f"hop {h}", str(n)) for h, n in enumerate(per_hop)]
        items.append(("by provider rank", str(sum(1 for h in self.members.values() if h == PROVIDER_HOP))))
        items.append(("computed", time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(self.computed_at)) + " UTC"))
        refusals = [
            [time.strftime("%H:%M:%S", time.gmtime(t)), p, str(n)] for p, (t, n) in reversed(self.refusals.items())
        ]
        nearest = await self.next_hop()
        blocks = [
            ui.stats(items, "Trusted set"),
            # With payments on, a paying member is refused here first and then admitted by
            # its plan: the title says whose refusal this is.
            ui.table(
                "Recent refusals (outside the web of trust)",
                ["last (UTC)", "pubkey", "events"],
                refusals,
                empty="none yet",
            ),
            ui.table(
                f"Would be admitted at {self.settings.max_hops + 1} hops",
                ["pubkey", "followers in the trusted set"],
                [[p, str(n)] for p, n in nearest],
                empty="none (or the graph is still being computed)",
            ),
        ]
        if self.sources is not None:
            sources = self.sources
            rows = [[url, sources.state(url)] for url in sources.urls]
            blocks.append(ui.table(f"Sources ({sources.received} events fetched)", ["relay", "state"], rows))
        return ui.document("Web of trust", blocks, refresh=30)

    def _saved_hops(self) -> list[int]:
        per = [0] * (self.settings.max_hops + 1)
        for hop in self.members.values():
            if 0 <= hop <= self.settings.max_hops:
                per[hop] += 1
        return per

    async def next_hop(self, most: int = 20) -> list[tuple[str, int]]:
        """Who one more hop would admit, most followed first: pubkeys, not yet members, that
        the last hop's lists follow, with ``min_followers`` followers among all members
        (the counted lists' follows plus the last hop's). Reads at most
        ``NEXT_HOP_SAMPLE`` lists from the store (the most followed last-hop members), so
        the page stays cheap at any graph size."""
        graph = self.graph
        if graph is None:
            return []
        last = [p for p, h in graph.hops.items() if h == self.settings.max_hops]
        last.sort(key=lambda p: (-sum(graph.counts.get(p, ())), p))
        lists = await contact_lists(self.store, last[:NEXT_HOP_SAMPLE], int(time.time()))
        tally: collections.Counter[str] = collections.Counter()
        for follows in lists.values():
            tally.update(p for p in follows if p not in self.members and p not in graph.banned)
        need = self.settings.min_followers
        found = [(p, n + sum(graph.counts.get(p, ()))) for p, n in tally.items()]
        found = [(p, n) for p, n in found if n >= need]
        found.sort(key=lambda x: (-x[1], x[0]))
        return found[:most]

    # --- the refresher (Service) ---------------------------------------------------------

    async def start(self) -> None:
        await self.table.open()
        saved, state = await self.table.load()
        if state.get("fingerprint") == self.fingerprint():
            self.members = {**saved, **{r: 0 for r in self.rules.roots}}
            self._saved = saved
            self.computed_at = int(state.get("computed_at", "0"))
            self._since = int(state.get("since", "0"))
            self._looked_at = int(state.get("looked_at", "0"))
        self._task = asyncio.create_task(self._run(), name="wot-refresher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                await self.refresh(int(time.time()))
            except asyncio.CancelledError:
                raise
            except Exception:
                # A store that is briefly away: the saved set keeps serving, the next look retries.
                log.exception("web of trust: refreshing the trusted set failed")
            await asyncio.sleep(self.settings.refresh_seconds)

    async def refresh(self, now: int) -> None:
        """One look (see the module docstring)."""
        if self.sources is not None:
            self.sources.new_round()
        ban_changes = await self.store.management_changes()
        bans_moved = self._ban_changes is not None and ban_changes != self._ban_changes
        self._ban_changes = ban_changes
        due = self.computed_at + self.settings.full_refresh_seconds <= now
        if self.graph is None and (due or not self._saved):
            await self.compute(now)
            return
        if bans_moved or due:
            await self.compute(now)
            return
        await self.poll(now)

    async def compute(self, now: int) -> None:
        """A full computation from the stored lists (those the sources hold brought in
        first, hop by hop); the gate keeps the old set until the new one is whole."""
        since = now - LATE_SECONDS
        graph = TrustGraph(self.rules, await banned_pubkeys(self.store))
        ids: dict[str, str] = {}
        await self._load_pending(graph, now, ids)
        provided = await provider_trusted(self.store, self.settings.provider, self.settings.min_rank, now)
        self.provider_set = provided - graph.banned
        members = {p: PROVIDER_HOP for p in self.provider_set}
        members.update(graph.hops)
        self.graph, self.members, self._list_ids = graph, members, ids
        # Lists the computation read are not applied again by the next look.
        self.computed_at, self._since, self._seen, self._looked_at = now, since, {}, now
        self.full_runs += 1
        await self._save(None)
        log.info("web of trust: %d members (per hop %s)", len(members), graph.hop_counts())

    async def _load_pending(self, graph: TrustGraph, now: int, ids: dict[str, str]) -> set[str]:
        """Give the graph the lists it waits for, a hop at a time: the sources' copies are
        synced into the store first (within this refresh's budget), then the store is read."""
        changed: set[str] = set()
        while graph.pending:
            authors = sorted(graph.pending)
            if self.sources is not None:
                await self.sources.contact_lists(authors)
            changed |= graph.provide(await contact_lists(self.store, authors, now, self._track(ids)))
        return changed

    def _track(self, ids: dict[str, str]) -> dict[str, str] | None:
        """``ids`` to be filled where there are sources (``lists_changed``), else None."""
        return ids if self.sources is not None else None

    async def _ask_sources(self, now: int) -> tuple[set[str], bool]:
        """This refresh's questions to the sources about what is already known: the lists
        that count, in turn (a member may have changed its follows elsewhere), and the
        provider's ranks of the strangers refused since the last look and, in turn, of the
        pubkeys it already ranks. Returns the authors whose lists arrived (here, or in the
        store from another node's sync) and whether any assertion did."""
        sources = self.sources
        if sources is None:
            return set(), False
        graph = self.graph
        if graph is not None:
            counted: Collection[str] = graph.lists.keys()
        else:  # serving the saved set: the members whose lists would count
            counted = [p for p, h in self.members.items() if 0 <= h < self.settings.max_hops]
        order = self._list_turn.order(counted)
        arrived, asked = await sources.contact_lists(order)
        self._list_turn.asked(order, asked)
        if graph is not None:
            # Another node on this database may have fetched a list first (this sync then
            # found nothing to bring), stamped too long ago for the "since" window.
            arrived |= await lists_changed(self.store, order[:asked], self._list_ids, now)
        provider = self.settings.provider
        if not provider:
            return arrived, False
        strangers = list(self._unranked)
        self._unranked.clear()
        ranked = self._rank_turn.order(self.provider_set - set(strangers))
        rated, asked = await sources.assertions(provider, strangers + ranked)
        self._rank_turn.asked(ranked, max(0, asked - len(strangers)))
        return arrived, bool(rated)

    async def poll(self, now: int) -> None:
        """Lists (and assertions) stored since the last look, from any node, and those the
        sources had that this store lacked."""
        since = self._since
        kinds = [Filter(kinds=frozenset({CONTACTS_KIND}), since=since, limit=POLL_LIMIT)]
        if self.settings.provider:
            kinds.append(
                Filter(authors=frozenset({self.settings.provider}), kinds=frozenset({ASSERTION_KIND}), since=since)
            )
        raws = await self.store.query(kinds, now)
        lists: dict[str, frozenset[str]] = {}
        stamped: dict[str, int] = {}
        list_ids: dict[str, str] = {}
        assertions = False
        contacts = 0
        for raw in raws:
            if raw[_ID].decode() in self._seen:
                continue  # applied on an earlier look (the windows overlap): not parsed again
            event_id, author, created_at, follows = followed(raw)
            self._seen[event_id] = created_at
            if b'"kind":30382' in raw and author == self.settings.provider:
                assertions = True
                continue
            contacts += 1
            lists[author] = follows
            stamped[author] = created_at
            list_ids[author] = event_id
        if contacts >= POLL_LIMIT:
            await self.compute(now)
            return
        graph = self.graph
        if graph is None:
            # Serving the saved set: on the first look, a list stamped after the saved look
            # is news (the graph is then computed); one stamped before it was applied before
            # the restart, or is one the schedule's full computation picks up. On later
            # looks every list not seen before is news; so is a list a source had.
            first, self._first_look = self._first_look, False
            fetched, ranks_arrived = await self._ask_sources(now)
            news = [
                a for a in lists
                if 0 <= self.members.get(a, -1) < self.settings.max_hops
                and (not first or stamped[a] > self._looked_at)
            ]
            if news or assertions or fetched or ranks_arrived:
                await self.compute(now)
            else:
                self._advance(now)
            return
        changed: set[str] = set()
        ids = self._list_ids
        for author, follows in lists.items():
            changed |= graph.set_list(author, follows)  # a non-member's list changes nothing
            if self.sources is not None and author in graph.lists:
                ids[author] = list_ids[author]
        # New members' lists first (the sources' copies included), then the sources are
        # asked again about the lists already counted, with what is left of the budget.
        changed |= await self._load_pending(graph, now, ids)
        fetched, ranks_arrived = await self._ask_sources(now)
        assertions = assertions or ranks_arrived
        if fetched:
            # Lists a source had that this store lacked: read back whatever their stamp
            # (a list the source received late is older than the window above).
            stored = await contact_lists(self.store, sorted(fetched), now, self._track(ids))
            for author, follows in stored.items():
                if author in graph.lists and graph.lists[author] != follows:
                    changed |= graph.set_list(author, follows)
        changed |= await self._load_pending(graph, now, ids)
        if assertions:
            provided = await provider_trusted(self.store, self.settings.provider, self.settings.min_rank, now)
            provided -= graph.banned
            changed |= provided ^ self.provider_set
            self.provider_set = provided
        for pubkey in changed:
            hop = graph.hops.get(pubkey)
            if hop is None and pubkey in self.provider_set:
                hop = PROVIDER_HOP
            if hop is None:
                self.members.pop(pubkey, None)
            else:
                self.members[pubkey] = hop
        self._advance(now)
        if changed:
            await self._save(changed)

    def _advance(self, now: int) -> None:
        self._looked_at = now
        self._since = now - LATE_SECONDS
        self._seen = {i: t for i, t in self._seen.items() if t >= self._since}

    async def _save(self, changed: set[str] | None) -> None:
        """The difference from what is saved: ``changed`` pubkeys, or (None) all of them."""
        members, saved = self.members, self._saved
        keys = set(members) | set(saved) if changed is None else changed
        upserts = {p: members[p] for p in keys if p in members and saved.get(p) != members[p]}
        deletes = [p for p in keys if p not in members and p in saved]
        state = {
            "fingerprint": self.fingerprint(),
            "computed_at": str(self.computed_at),
            "since": str(self._since),
            "looked_at": str(self._looked_at),
        }
        await self.table.save(upserts, deletes, state)
        saved.update(upserts)
        for p in deletes:
            del saved[p]
