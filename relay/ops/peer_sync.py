"""``satsrelay sync``: reconcile the local store with another relay, for migration and for
backups between nodes.

Where the peer speaks NIP-77 the difference is found with negentropy (``relay.nostr.negentropy``,
this side the initiator) over the ``(created_at, id)`` sets of the filter; otherwise the
peer's events are listed with paged REQs (newest first, ``until`` moving back), which
downloads them whole. Then, by direction:

- ``down``: the events the peer has and we lack are fetched by id, each one checked (shape,
  id, BIP-340 signature, that we asked for it and that it matches the filter) before the
  store's own write rules see it (deletions, replacements); anything else counts as rejected;
- ``up``: the events we have and the peer lacks are sent with EVENT; an ``OK false`` counts
  as rejected. The first few refusals are shown with the peer's reason, and when the first
  ``STOP_AFTER_REFUSALS`` answers are all refusals for one reason (the same NIP-01 prefix:
  ``auth-required:``, ``restricted:``, ``blocked:``...) nothing was accepted and nothing
  will be: the upload stops with that reason instead of sending the rest.

Events the operator banned here (NIP-86: the event, or its author) stay out of both
directions unless ``include_banned``: they are not uploaded and not stored when a peer
sends them, and count as withheld.

Resumable: events are committed (down) or acknowledged (up) in chunks as they arrive, and a
new run reconciles again, so after an interruption it transfers only what is still
missing. Counts printed at the end: have (we hold, the peer lacks), need (the peer holds, we
lack), sent, received, rejected, and withheld (banned here) when there were any.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import IO, Any

import orjson
from websockets.asyncio.client import ClientConnection, connect

from relay.nostr.errors import Invalid
from relay.nostr.event import Event, KindClass, parse_event, verify_signature
from relay.nostr.filters import Filter
from relay.nostr.management import ManagementState
from relay.nostr.negentropy import ItemSet, Negentropy, NegentropyError
from relay.nostr.policy import ReadScope
from relay.store.base import Store, WriteOutcome, WriteRequest

FRAME_SIZE_LIMIT = 60_000  # bytes per negentropy message we send (hex doubles it)
FETCH_CHUNK = 100  # ids per REQ (relays cap a filter's values and limit)
SEND_WINDOW = 200  # EVENTs in flight before waiting for OKs
PAGE = 500  # limit asked for per paged REQ (the peer may cap it lower)
REPLY_TIMEOUT = 30.0
RATE_LIMIT_RETRIES = 120
LOCAL_MAX_ITEMS = 50_000_000
STOP_AFTER_REFUSALS = 50  # refusals for one reason, none accepted: the peer refuses everything
SHOWN_REFUSALS = 3  # distinct refusal messages shown as they come
# Offsets of the id and the pubkey in an event's compact raw JSON ({"id":"<64>","pubkey":
# "<64>",...}, the layout relay/nostr/event.py writes and the stores return byte for byte).
_ID = slice(7, 71)
_PUBKEY = slice(83, 147)


class SyncError(Exception):
    """The sync cannot go on (peer unreachable, protocol error); the text says why."""


@dataclass(slots=True)
class SyncCounts:
    have: int = 0
    need: int = 0
    sent: int = 0
    received: int = 0
    rejected: int = 0
    withheld: int = 0  # banned here: neither sent nor stored
    method: str = ""

    def line(self) -> str:
        withheld = f", withheld {self.withheld} (banned here)" if self.withheld else ""
        return (
            f"sync ({self.method}): have {self.have}, need {self.need}, sent {self.sent}, "
            f"received {self.received}, rejected {self.rejected}{withheld}"
        )


class _Progress:
    """One status line, rewritten in place on a terminal, else at most every 2 s."""

    def __init__(self, out: IO[str] | None) -> None:
        self._out = out
        self._tty = bool(out is not None and out.isatty())
        self._last = 0.0

    def show(self, text: str, *, force: bool = False) -> None:
        if self._out is None:
            return
        now = time.monotonic()
        if self._tty:
            self._out.write("\r\x1b[2K" + text)
            if force:
                self._out.write("\n")
            self._out.flush()
        elif force or now - self._last >= 2.0:
            self._last = now
            print(text, file=self._out, flush=True)


class _Peer:
    """The peer relay over one WebSocket, one request at a time (AUTH challenges and
    NOTICEs are skipped)."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self._ids = itertools.count(1)
        self.notices: list[str] = []

    def sub_id(self, prefix: str) -> str:
        return f"{prefix}-{next(self._ids)}"

    async def send(self, msg: list[Any]) -> None:
        await self.ws.send(orjson.dumps(msg).decode())

    async def recv(self, timeout: float = REPLY_TIMEOUT) -> list[Any]:
        while True:
            try:
                raw = await asyncio.wait_for(self.ws.recv(), timeout)
            except TimeoutError:
                raise SyncError("the peer stopped answering") from None
            msg = orjson.loads(raw)
            if not isinstance(msg, list) or not msg:
                continue
            if msg[0] == "NOTICE" and len(msg) > 1:
                self.notices.append(str(msg[1]))
                return msg
            if msg[0] != "AUTH":
                return msg

    async def fetch(self, f: dict[str, Any]) -> list[dict[str, Any]]:
        """Stored events for one filter (REQ until EOSE)."""
        sub = self.sub_id("sync")
        await self.send(["REQ", sub, f])
        out: list[dict[str, Any]] = []
        while True:
            msg = await self.recv()
            if msg[0] == "EVENT" and len(msg) > 2 and msg[1] == sub and isinstance(msg[2], dict):
                out.append(msg[2])
            elif msg[0] == "EOSE" and msg[1:2] == [sub]:
                await self.send(["CLOSE", sub])
                return out
            elif msg[0] == "CLOSED" and msg[1:2] == [sub]:
                raise SyncError(f"the peer closed a query: {msg[2] if len(msg) > 2 else ''}")


async def sync_with_peer(
    store: Store,
    url: str,
    f: Filter,
    direction: str,
    progress: IO[str] | None = None,
    *,
    force_req: bool = False,
    include_banned: bool = False,
) -> SyncCounts:
    """Reconcile ``store`` with the relay at ``url`` for the events ``f`` matches; what the
    operator banned here stays out unless ``include_banned``."""
    if direction not in ("down", "up", "both"):
        raise ValueError("direction must be down, up or both")
    bar = _Progress(progress)
    counts = SyncCounts()
    bans = None if include_banned else ManagementState.from_rows(await store.list_management()).ban_scope()
    if bans is not None and not (bans.banned_pubkeys or bans.banned_ids):
        bans = None
    now = int(time.time())
    local = {eid: ts for ts, eid in await store.sync_items(f, now, None, LOCAL_MAX_ITEMS)}
    try:
        ws_cm = connect(url, max_size=None, compression=None, open_timeout=REPLY_TIMEOUT)
        async with ws_cm as ws:
            peer = _Peer(ws)
            diff = None if force_req else await _negentropy_diff(peer, f, local, bar)
            if diff is not None:
                counts.method = "NIP-77"
                have, need = diff
                counts.have, counts.need = len(have), len(need)
                if direction in ("down", "both"):
                    await _download(peer, store, f, need, counts, bar, bans)
            else:
                counts.method = "paged REQ"
                peer_ids = await _page_peer(peer, store, f, local, direction != "up", counts, bar, bans)
                have = [eid for eid in local if eid not in peer_ids]
                counts.have = len(have)
            if direction in ("up", "both") and have:
                await _upload(peer, store, have, counts, bar, bans)
    except OSError as exc:
        raise SyncError(f"cannot reach {url}: {exc}") from None
    bar.show(counts.line(), force=True)
    return counts


async def _negentropy_diff(
    peer: _Peer, f: Filter, local: dict[bytes, int], bar: _Progress
) -> tuple[list[bytes], list[bytes]] | None:
    """(have, need) by NIP-77, or None when the peer does not do it (or refuses this set)."""
    neg = Negentropy(ItemSet((ts, eid) for eid, ts in local.items()), FRAME_SIZE_LIMIT)
    sub = peer.sub_id("neg")
    filter_json = f.to_json()
    filter_json.pop("limit", None)
    await peer.send(["NEG-OPEN", sub, filter_json, neg.initiate().hex()])
    have: dict[bytes, None] = {}
    need: dict[bytes, None] = {}
    rounds = 0
    while True:
        try:
            msg = await peer.recv(timeout=REPLY_TIMEOUT if rounds else 10.0)
        except SyncError:
            if rounds == 0:
                return None  # silence: a relay that ignores unknown verbs
            raise
        if msg[0] == "NOTICE" and rounds == 0:
            return None  # "unknown message type": no NIP-77
        if msg[0] == "NEG-ERR" and msg[1:2] == [sub]:
            if rounds == 0:
                bar.show(f"peer refused NIP-77 ({msg[2] if len(msg) > 2 else ''}); using paged REQ", force=True)
                return None
            raise SyncError(f"the peer ended the reconciliation: {msg[2] if len(msg) > 2 else ''}")
        if msg[0] != "NEG-MSG" or msg[1:2] != [sub] or len(msg) < 3:
            continue
        rounds += 1
        try:
            result = neg.reconcile_initiator(bytes.fromhex(msg[2]))
        except (ValueError, NegentropyError) as exc:
            raise SyncError(f"bad negentropy message from the peer: {exc}") from None
        # With frame size limits an id may be reported twice (spec): keep each once.
        have.update(dict.fromkeys(result.have))
        need.update(dict.fromkeys(result.need))
        bar.show(f"reconciling: round {rounds}, have {len(have)}, need {len(need)}")
        if result.reply is None:
            await peer.send(["NEG-CLOSE", sub])
            return list(have), list(need)
        await peer.send(["NEG-MSG", sub, result.reply.hex()])


def _check(objs: Iterable[dict[str, Any]], wanted: set[bytes] | None, f: Filter) -> tuple[list[Event], int]:
    """Events that are well-formed, correctly signed, asked for and within the filter;
    and how many were not."""
    good: list[Event] = []
    bad = 0
    for obj in objs:
        try:
            ev = parse_event(obj)
        except Invalid:
            bad += 1
            continue
        if (
            (wanted is not None and bytes.fromhex(ev.id) not in wanted)
            or not f.matches(ev)
            or ev.kind_class is KindClass.EPHEMERAL
            or not verify_signature(ev)
        ):
            bad += 1
            continue
        good.append(ev)
    return good, bad


def _unbanned(events: list[Event], bans: ReadScope | None, counts: SyncCounts) -> list[Event]:
    """``events`` less those banned here (counted as withheld)."""
    if bans is None:
        return events
    kept = [ev for ev in events if not bans.banned(ev.id, ev.pubkey)]
    counts.withheld += len(events) - len(kept)
    return kept


async def _store_events(store: Store, events: Sequence[Event], counts: SyncCounts) -> None:
    if not events:
        return
    outcomes = await store.write_batch([WriteRequest(ev) for ev in events], int(time.time()))
    for outcome in outcomes:
        if outcome in (WriteOutcome.STORED, WriteOutcome.DUPLICATE):
            counts.received += 1
        else:  # deleted here, or superseded by a newer version we hold
            counts.rejected += 1


async def _download(
    peer: _Peer,
    store: Store,
    f: Filter,
    need: list[bytes],
    counts: SyncCounts,
    bar: _Progress,
    bans: ReadScope | None,
) -> None:
    done = 0
    for i in range(0, len(need), FETCH_CHUNK):
        chunk = need[i : i + FETCH_CHUNK]
        objs = await peer.fetch({"ids": [eid.hex() for eid in chunk], "limit": len(chunk)})
        good, bad = await asyncio.to_thread(_check, objs, set(chunk), f)
        counts.rejected += bad
        await _store_events(store, _unbanned(good, bans, counts), counts)
        done += len(chunk)
        bar.show(f"downloading: {done}/{len(need)}, received {counts.received}, rejected {counts.rejected}")


async def _upload(
    peer: _Peer, store: Store, have: list[bytes], counts: SyncCounts, bar: _Progress, bans: ReadScope | None
) -> None:
    """Send what the peer lacks, ``SEND_WINDOW`` at a time; events the peer answers with
    ``rate-limited:`` are sent again after a pause (a peer's per-connection limits are
    normal, not a refusal), up to ``RATE_LIMIT_RETRIES`` pauses in all. Events banned here
    are withheld; a peer that refuses everything for one reason stops the upload
    (``_Refusals``)."""
    now = int(time.time())
    done = 0
    pauses = 0
    refusals = _Refusals(bar)
    for i in range(0, len(have), SEND_WINDOW):
        chunk = have[i : i + SEND_WINDOW]
        raws = {
            raw[_ID].decode(): raw
            for raw in await store.query([Filter(ids=frozenset(eid.hex() for eid in chunk))], now)
        }
        if bans is not None:
            banned = [eid for eid, raw in raws.items() if bans.banned(eid, raw[_PUBKEY].decode())]
            for eid in banned:
                del raws[eid]
            counts.withheld += len(banned)
        todo = list(raws)
        while todo:
            for eid in todo:
                await peer.ws.send(b'["EVENT",' + raws[eid] + b"]", text=True)
            waiting = set(todo)
            todo = []
            while waiting:
                msg = await peer.recv()
                if msg[0] != "OK" or len(msg) < 4 or msg[1] not in waiting:
                    continue
                waiting.discard(msg[1])
                if msg[2] is True:
                    counts.sent += 1
                elif str(msg[3]).startswith("rate-limited:") and pauses < RATE_LIMIT_RETRIES:
                    todo.append(msg[1])
                else:
                    counts.rejected += 1
                    refusals.add(msg[1], str(msg[3]), accepted=counts.sent)
            if todo:
                pauses += 1
                await asyncio.sleep(1.0)
        done += len(chunk)
        bar.show(f"uploading: {done}/{len(have)}, sent {counts.sent}, rejected {counts.rejected}")


class _Refusals:
    """The peer's ``OK false`` answers to an upload. The first ``SHOWN_REFUSALS`` distinct
    messages are shown as they come (the peer's reason, not only a count); once
    ``STOP_AFTER_REFUSALS`` events were refused, all with one NIP-01 prefix, and none
    accepted, the peer refuses everything for that reason (a write-restricted or paid
    relay, AUTH required): ``SyncError`` with the messages, instead of sending the rest
    (1,400 refusals took 86 s to print "rejected 1400")."""

    def __init__(self, bar: _Progress) -> None:
        self._bar = bar
        self.refused = 0
        self.shown: list[str] = []
        self._prefixes: set[str] = set()

    def add(self, event_id: str, message: str, *, accepted: int) -> None:
        self.refused += 1
        prefix, colon, _ = message.partition(":")
        self._prefixes.add(prefix if colon else message)
        if message not in self.shown and len(self.shown) < SHOWN_REFUSALS:
            self.shown.append(message)
            self._bar.show(f"the peer refused {event_id[:16]}: {message or '(no reason given)'}", force=True)
        if accepted == 0 and self.refused >= STOP_AFTER_REFUSALS and len(self._prefixes) == 1:
            reasons = " | ".join(m or "(no reason given)" for m in self.shown)
            raise SyncError(
                f"the peer refused all {self.refused} events sent, for one reason: {reasons}; "
                "stopped uploading (nothing more was sent)"
            )


async def _page_peer(
    peer: _Peer,
    store: Store,
    f: Filter,
    local: dict[bytes, int],
    keep: bool,
    counts: SyncCounts,
    bar: _Progress,
    bans: ReadScope | None,
) -> set[bytes]:
    """Without NIP-77: list the peer's events for ``f`` newest first, page by page
    (``until`` = the oldest second seen, ids already seen skipped, one second back when a
    page brings nothing new), storing those we lack when ``keep``. Returns the peer's ids."""
    base = f.to_json()
    base.pop("limit", None)
    seen: set[bytes] = set()
    until = f.until
    while True:
        page = dict(base, limit=PAGE)
        if until is not None:
            page["until"] = until
        objs = await peer.fetch(page)
        fresh = [o for o in objs if isinstance(o.get("id"), str) and _id_bytes(o["id"]) not in seen]
        if not objs:
            return seen
        for o in fresh:
            seen.add(_id_bytes(o["id"]))
        missing = [o for o in fresh if _id_bytes(o["id"]) not in local]
        counts.need += len(missing)
        if missing and keep:
            good, bad = await asyncio.to_thread(_check, missing, None, f)
            counts.rejected += bad
            await _store_events(store, _unbanned(good, bans, counts), counts)
        stamps = [o["created_at"] for o in objs if isinstance(o.get("created_at"), int)]
        if not stamps:
            return seen
        oldest: int = min(stamps)
        if not fresh:
            if until is not None and until <= 0:
                return seen
            oldest = (until if until is not None else oldest) - 1
        if f.since is not None and oldest < f.since:
            return seen
        until = oldest
        bar.show(f"listing the peer: {len(seen)} events, need {counts.need}, received {counts.received}")


def _id_bytes(value: str) -> bytes:
    try:
        return bytes.fromhex(value)
    except ValueError:
        return value.encode()
