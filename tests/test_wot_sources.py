"""Where the web of trust learns who to trust besides this relay's own store, over real
WebSockets: contact lists fetched from ``[wot] sources`` (a second satsrelay on 127.0.0.1
holding them) with the relay's own sync, bounded, a failing source logged once; and NIP-85
trust from a provider's kind 30382 ranks, stored here or fetched from a source.
"""

from __future__ import annotations

import logging
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from relay.nostr import crypto
from relay.nostr.event import Event, sign_event
from relay.session.server import Relay
from tests.conftest import listening_socket
from tests.nostr_client import NostrClient
from tests.test_wot import WOT, accepted, contacts, note, pub, wot_relay, wot_section
from tests.waiting import eventually
from wot.sources import Rotation, SourceRelays
from wot.tier import WotTier


def tier(relay: Relay) -> WotTier:
    owner = relay.hooks.owner("wot")
    assert isinstance(owner, WotTier)
    return owner


def rank(provider: bytes, subject: bytes, value: str, at: int | None = None) -> Event:
    """NIP-85: the provider's assertion about a user (kind 30382, ``d`` = its pubkey)."""
    tags = [["d", pub(subject)], ["rank", value]]
    return sign_event(provider, 30382, "", tags, at or int(time.time()))


async def refused(c: NostrClient, secret: bytes) -> bool:
    ok, message = await c.publish(note(secret))
    return not ok and message.startswith("restricted: free for people followed")


async def trusted(http: httpx.AsyncClient, secret: bytes) -> bool:
    doc: dict[str, Any] = (await http.get(f"/wot/{pub(secret)}")).json()
    return bool(doc["trusted"])


def http_of(relay: Relay) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=relay.url.replace("ws://", "http://"))


async def publish_all(url: str, *events: Event) -> None:
    async with NostrClient(url) as c:
        for event in events:
            assert await c.publish(event) == (True, ""), event


# --- contact lists from sources ------------------------------------------------------------


async def test_a_follow_stored_only_on_a_source_makes_its_pubkey_trusted(
    tmp_path: Path, storage: dict[str, str]
) -> None:
    r, a, b, d, x, y = (crypto.generate_secret() for _ in range(6))
    (tmp_path / "source").mkdir()
    (tmp_path / "main").mkdir()
    a_note = note(a)
    async with wot_relay(tmp_path / "source", {}, []) as source:
        # The source (a free relay) holds the circle's lists, and more; this relay holds none.
        await publish_all(source.url, contacts(r, a), contacts(a, b), a_note, contacts(x, y))
        wot = wot_section(r, sources=[source.url])
        async with wot_relay(tmp_path / "main", storage, [WOT], wot=wot) as relay, NostrClient(relay.url) as c:
            # B is 2 hops away through two lists stored only on the source.
            await eventually(lambda: accepted(c, b), 10, interval=0.3, what="B admitted from the source's lists")
            assert await accepted(c, a)
            assert tier(relay).sources is not None
            assert tier(relay).sources.state(source.url) == "answers (NIP-77)"
            # Bounded: the contact lists the graph needed came over, nothing else did (not
            # A's note, not the list of X, whom nobody trusted follows).
            lists = await c.req("lists", {"kinds": [3], "authors": [pub(r), pub(a), pub(x)]})
            assert sorted(e["pubkey"] for e in lists) == sorted([pub(r), pub(a)])
            assert await c.req("note", {"ids": [a_note.id]}) == []
            # A follows D in a newer list, published on the source only: D is trusted within
            # refresh_seconds (the lists that count are asked again each refresh).
            await publish_all(source.url, contacts(a, b, d, at=int(time.time()) + 1))
            await eventually(lambda: accepted(c, d), 10, interval=0.3, what="D admitted from A's newer list")
            async with http_of(relay) as http:
                doc = (await http.get(f"/wot/{pub(d)}")).json()
            assert doc["hops"] == 2 and doc["via"] == [pub(a)]


async def test_a_source_without_nip77_is_read_with_paged_req(tmp_path: Path) -> None:
    r, a, b = (crypto.generate_secret() for _ in range(3))
    (tmp_path / "source").mkdir()
    (tmp_path / "main").mkdir()
    async with wot_relay(tmp_path / "source", {}, [], negentropy={"enabled": False}) as source:
        await publish_all(source.url, contacts(r, a), contacts(a, b))
        wot = wot_section(r, sources=[source.url])
        async with wot_relay(tmp_path / "main", {}, [WOT], wot=wot) as relay, NostrClient(relay.url) as c:
            await eventually(lambda: accepted(c, b), 10, interval=0.3, what="B admitted through paged REQ")
            sources = tier(relay).sources
            assert sources is not None and sources.state(source.url) == "answers (paged REQ)"


async def test_each_refresh_asks_a_source_about_a_bounded_number_of_authors_in_turn(tmp_path: Path) -> None:
    """``source_authors_per_refresh``: what one refresh asks of a source is capped, the rest
    comes on the next refreshes, so every follow still counts in the end."""
    r = crypto.generate_secret()
    follows = [crypto.generate_secret() for _ in range(5)]
    seconds = [crypto.generate_secret() for _ in follows]
    authors = sorted(pub(f) for f in follows)
    for folder in ("source", "main", "bare"):
        (tmp_path / folder).mkdir()
    async with wot_relay(tmp_path / "source", {}, []) as source:
        await publish_all(
            source.url, contacts(r, *follows), *(contacts(f, s) for f, s in zip(follows, seconds, strict=True))
        )
        # The cap itself, against a store of its own: 2 of the 5 authors asked, only their
        # lists stored, the budget spent until the next round, which goes on from there.
        async with wot_relay(tmp_path / "bare", {}, []) as bare, NostrClient(bare.url) as c:
            sources = SourceRelays([source.url], 2, bare.store)
            sources.new_round()
            turn = Rotation()
            order = turn.order(authors)
            assert order == authors
            assert await sources.contact_lists(order) == (set(authors[:2]), 2)
            assert await sources.contact_lists(order[2:]) == (set(), 0)
            held = {e["pubkey"] for e in await c.req("held", {"kinds": [3], "authors": authors})}
            assert held == set(authors[:2])
            turn.asked(order, 2)
            sources.new_round()
            order = turn.order(authors)
            assert order == authors[2:] + authors[:2]
            assert await sources.contact_lists(order) == (set(authors[2:4]), 2)
        # The relay, at 2 authors a refresh: the 6 lists it needs come over 3 refreshes.
        wot = wot_section(r, sources=[source.url], source_authors_per_refresh=2)
        async with wot_relay(tmp_path / "main", {}, [WOT], wot=wot) as relay, NostrClient(relay.url) as c:
            for s in seconds:
                await eventually(lambda s=s: accepted(c, s), 15, interval=0.3, what="a second-hop follow admitted")


async def test_a_failing_source_is_logged_once_and_the_others_still_count(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="wot")
    r, a, b, d, admin = (crypto.generate_secret() for _ in range(5))
    gone = listening_socket()
    port = gone.getsockname()[1]
    gone.close()  # nothing listens there: every sync with it is refused at once
    dead = f"ws://127.0.0.1:{port}"
    for folder in ("source", "main", "back"):
        (tmp_path / folder).mkdir()
    async with wot_relay(tmp_path / "source", {}, []) as source:
        await publish_all(source.url, contacts(r, a), contacts(a, b))
        wot = wot_section(r, sources=[dead, source.url])
        async with (
            wot_relay(tmp_path / "main", {}, [WOT], wot=wot, admin={"pubkeys": [pub(admin)]}) as relay,
            NostrClient(relay.url) as c,
        ):
            await eventually(lambda: accepted(c, b), 10, interval=0.3, what="B admitted from the source that answers")
            sources = tier(relay).sources
            assert sources is not None
            start = sources.rounds

            async def rounds_passed() -> bool:
                return sources.rounds >= start + 3

            await eventually(rounds_passed, 15, interval=0.3, what="three more refreshes")
            lines = [rec for rec in caplog.records if rec.name.startswith("wot") and rec.levelno >= logging.WARNING]
            assert len(lines) == 1, [rec.getMessage() for rec in lines]
            assert dead in lines[0].getMessage() and "cannot reach" in lines[0].getMessage()
            assert all(rec.exc_info is None for rec in caplog.records), "a traceback was logged"
            # The console says which source fails and why.
            from tests.test_console import panel, tables

            async with httpx.AsyncClient() as http:
                doc = await panel(http, relay, "wot", admin)
            (table,) = [t for title, t in tables(doc).items() if title.startswith("Sources (")]
            states = dict(table["rows"])
            assert states[source.url] == "answers (NIP-77)"
            assert states[dead].startswith("failing: cannot reach")
            # The dead source comes back on its port, holding a newer list of A's.
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", port))
            sock.listen(64)
            async with wot_relay(tmp_path / "back", {}, [], sock=sock) as back:
                await publish_all(back.url, contacts(a, b, d, at=int(time.time()) + 1))
                await eventually(lambda: accepted(c, d), 10, interval=0.3, what="D admitted from the source back")
            again = [rec.getMessage() for rec in caplog.records if "answers again" in rec.getMessage()]
            assert again == [f"web of trust: source {dead} answers again"]


@pytest.mark.postgres
async def test_two_nodes_with_sources_agree_on_a_list_stamped_long_ago(
    tmp_path: Path, pg_storage: dict[str, str]
) -> None:
    """Two nodes on one PostgreSQL ask the same source. A's new list is stamped an hour ago
    (it reached the source late), outside the "since" window of every look, and it is in the
    shared store before a node's sync asks for it (in the field: the other node synced it
    first; here, so the order is certain, it is also published through node one): the sync
    then brings nothing, yet both nodes count it within refresh_seconds, not an hour later."""
    r, a, b = (crypto.generate_secret() for _ in range(3))
    for folder in ("source", "one", "two"):
        (tmp_path / folder).mkdir()
    async with wot_relay(tmp_path / "source", {}, []) as source:
        await publish_all(source.url, contacts(r, a))
        wot = wot_section(r, sources=[source.url])
        async with (
            wot_relay(tmp_path / "one", pg_storage, [WOT], wot=wot) as one,
            wot_relay(tmp_path / "two", pg_storage, [WOT], wot=wot) as two,
            NostrClient(one.url) as c1,
            NostrClient(two.url) as c2,
        ):
            for c in (c1, c2):
                await eventually(lambda c=c: accepted(c, a), 10, interval=0.3, what="A admitted on each node")
            late = contacts(a, b, at=int(time.time()) - 3600)
            assert await c1.publish(late) == (True, "")
            await publish_all(source.url, late)
            for c in (c1, c2):
                await eventually(lambda c=c: accepted(c, b), 10, interval=0.3, what="B admitted on each node")


# --- NIP-85: trust from a provider's ranks ---------------------------------------------------


async def test_a_pubkey_the_provider_ranks_at_min_rank_or_above_writes_free(
    tmp_path: Path, storage: dict[str, str]
) -> None:
    r, provider, member, x, y, z, odd, w = (crypto.generate_secret() for _ in range(8))
    wot = wot_section(r, provider=pub(provider), min_rank=50)
    async with (
        wot_relay(tmp_path, storage, [WOT], wot=wot) as relay,
        NostrClient(relay.url) as c,
        http_of(relay) as http,
    ):
        assert await c.publish(contacts(r, member)) == (True, "")
        await eventually(lambda: trusted(http, member), 10, interval=0.3, what="the member trusted")
        # The provider publishes its ranks here (its kind 30382 is admitted; it is no member);
        # a member's own "rank" of W is no provider's.
        ranks = (rank(provider, x, "80"), rank(provider, y, "49"), rank(provider, z, "50"), rank(provider, odd, "high"))
        for event in ranks:
            assert await c.publish(event) == (True, ""), event.tags
        assert await c.publish(rank(member, w, "99")) == (True, "")
        await eventually(lambda: accepted(c, x), 10, interval=0.3, what="X (rank 80) admitted")
        assert await accepted(c, z)  # exactly min_rank
        for secret in (y, odd, w):
            assert await refused(c, secret)
        assert (await http.get(f"/wot/{pub(x)}")).json()["by"] == "provider"
        # The provider's own notes are not free: only its assertions are.
        assert await refused(c, provider)
        # The provider lowers X's rank: X falls back to the unpaid rules.
        assert await c.publish(rank(provider, x, "10", at=int(time.time()) + 1)) == (True, "")
        await eventually(lambda: refused(c, x), 10, interval=0.3, what="X refused once ranked low")


async def test_the_providers_ranks_are_fetched_from_a_source_for_pubkeys_that_ask(tmp_path: Path) -> None:
    r, provider, x, y, v = (crypto.generate_secret() for _ in range(5))
    (tmp_path / "source").mkdir()
    (tmp_path / "main").mkdir()
    async with wot_relay(tmp_path / "source", {}, []) as source:
        await publish_all(source.url, rank(provider, x, "80"), rank(provider, y, "20"), rank(provider, v, "90"))
        wot = wot_section(r, provider=pub(provider), sources=[source.url])
        async with wot_relay(tmp_path / "main", {}, [WOT], wot=wot) as relay, NostrClient(relay.url) as c:
            # X's first write is refused (nothing here ranks it), and X is asked about: it
            # writes free within refresh_seconds.
            assert await refused(c, x)
            await eventually(lambda: accepted(c, x), 10, interval=0.3, what="X admitted by its fetched rank")
            # Y asks too; its rank comes over and is too low.
            assert await refused(c, y)

            async def y_rank_here() -> bool:
                return bool(await c.req("y", {"kinds": [30382], "authors": [pub(provider)], "#d": [pub(y)]}))

            await eventually(y_rank_here, 10, interval=0.3, what="Y's rank fetched")
            assert await refused(c, y)
            # Bounded: V never asked to write, so its rank stayed on the source.
            assert await c.req("v", {"kinds": [30382], "#d": [pub(v)]}) == []
