"""The path of one EVENT after its cheap checks: a short list of named stages, built once by
the relay (``relay.session.server``) from the collaborators each stage needs, and run in
order for every event a connection admits.

Why stages rather than one method: each stage owns one rule and only the parts it needs (the
verifier, the plug-ins' gates, the quota, the writer), so a stage can be read, tested or
reordered alone, and a connection holds the path, not the relay's settings and store.

A stage returns ``None`` to hand the event on, or the OK it ends with (``(True, "")``,
``(False, "mute: ...")``); it raises a ``Rejection`` to refuse the event. The last stage
always answers. ``applies`` says, without an await, whether a stage has anything to do with
this event (NIP-62 only for kind 62, the quota only when one is set), and a stage whose work
never waits (the per-author rate) runs as a plain call: the path then costs what the inline
method it replaced cost (measured: 1.0 us an event for the calls themselves, against 3.0 us
with every stage awaited).
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from relay.net.limits import BucketTable
from relay.nostr.errors import Invalid, RateLimited, Rejection
from relay.nostr.event import Event, KindClass
from relay.nostr.policy import WriteContext, WritePolicy, check_write
from relay.ops import vanish
from relay.ops.retention import StorageQuota
from relay.ops.vanish import VanishedAuthors
from relay.plugins.hooks import Hooks, Refuse
from relay.session.verifier import SignatureVerifier
from relay.store.base import WriteOutcome, WriteRequest
from relay.store.writer import EventWriter

Reply = tuple[bool, str]

MUTED = "mute: nobody was listening to this ephemeral event, so it was ignored"

_OUTCOME_REPLY: dict[WriteOutcome, Reply] = {
    WriteOutcome.STORED: (True, ""),
    WriteOutcome.DUPLICATE: (True, "duplicate: already have this event"),
    WriteOutcome.SUPERSEDED: (False, "duplicate: a newer version of this replaceable event is stored"),
    WriteOutcome.DELETED: (False, "blocked: this event was deleted by its author"),
}


@dataclass(slots=True)
class Admission:
    """One EVENT on its way through the stages, with what the gates attached to it (a price
    a plug-in's store write hook takes in the event's own transaction)."""

    event: Event
    ctx: WriteContext
    attachments: tuple[object, ...] = ()
    # told the author once the signature holds (the connection offers its NOTIFY then)
    on_verified: Callable[[str], None] | None = None


class Stage(Protocol):
    name: str

    def applies(self, event: Event) -> bool: ...

    def run(self, a: Admission) -> Reply | Awaitable[Reply | None] | None: ...


@dataclass(slots=True)
class Verify:
    """BIP-340 signature on the verifier's threads (the GIL released)."""

    verifier: SignatureVerifier
    name: str = "verify"

    def applies(self, event: Event) -> bool:
        return True

    async def run(self, a: Admission) -> Reply | None:
        if not await self.verifier.verify(a.event):
            raise Invalid("signature is invalid")
        if a.on_verified is not None:
            a.on_verified(a.event.pubkey)
        return None


@dataclass(slots=True)
class AuthorRate:
    """Per author, whatever the connection or address, and only once the signature proves
    the author sent it: a forger must not drain someone else's bucket."""

    authors: BucketTable
    name: str = "author rate"

    def applies(self, event: Event) -> bool:
        return True

    def run(self, a: Admission) -> Reply | None:
        if not self.authors.take(a.event.pubkey, time.monotonic()):
            raise RateLimited("slow down: too many events from this author")
        return None


@dataclass(slots=True)
class Vanish:
    """NIP-62 requests are applied here, free whatever the plug-ins would ask."""

    vanished: VanishedAuthors
    public_url: str
    name: str = "vanish"

    def applies(self, event: Event) -> bool:
        return event.kind == vanish.VANISH_KIND

    async def run(self, a: Admission) -> Reply | None:
        rejection = vanish.check_request(a.event, self.public_url)
        if rejection is not None:
            raise rejection
        await self.vanished.vanish(a.event, a.ctx.now)
        return (True, "")


@dataclass(slots=True)
class Gates:
    """The plug-ins' write gates in their documented order (``relay.plugins.hooks``)."""

    hooks: Hooks
    name: str = "gates"

    def applies(self, event: Event) -> bool:
        return bool(self.hooks.write_gates)  # no gate: admitted, nothing attached

    async def run(self, a: Admission) -> Reply | None:
        verdict = await self.hooks.judge(a.event, a.ctx)
        if isinstance(verdict, Refuse):
            raise verdict.rejection
        a.attachments = verdict.attachments
        return None


@dataclass(slots=True)
class Ephemeral:
    """Ephemeral events are fanned out, never stored: NIP-01 ``mute:`` when nobody could
    receive one (nothing delivered, nothing taken), else the plug-ins take what their gates
    attached now, since no store write hook will (issue 8)."""

    hooks: Hooks
    fan_out: Callable[[Event], None]
    may_reach_anyone: Callable[[Event], bool]
    name: str = "ephemeral"

    def applies(self, event: Event) -> bool:
        return event.kind_class is KindClass.EPHEMERAL

    async def run(self, a: Admission) -> Reply | None:
        if not self.may_reach_anyone(a.event):
            return (False, MUTED)
        refused = await self.hooks.take_unstored(a.event, a.attachments, a.ctx.now)
        if refused is not None:
            raise refused
        self.fan_out(a.event)
        return (True, "")


@dataclass(slots=True)
class Quota:
    """``[retention]`` bytes per author, or what a plug-in allows this author instead."""

    quota: StorageQuota
    hooks: Hooks
    name: str = "quota"

    def applies(self, event: Event) -> bool:
        return self.quota.enabled

    async def run(self, a: Admission) -> Reply | None:
        allowance = await self.hooks.storage_allowance(a.event.pubkey, a.ctx.now)
        if allowance is None:
            refused = await self.quota.check(a.event, None)
        else:
            refused = await self.quota.check(a.event, allowance.bytes, allowance.refusal, allowance.authors)
        if refused is not None:
            raise refused
        return None


@dataclass(slots=True)
class Write:
    """The group-commit writer: the OK waits for the commit. A plug-in's write hook that
    refuses the event inside the transaction raises its Rejection here: nothing was stored."""

    writer: EventWriter
    quota: StorageQuota
    name: str = "write"

    def applies(self, event: Event) -> bool:
        return True

    async def run(self, a: Admission) -> Reply | None:
        outcome = await self.writer.submit(WriteRequest(a.event, attachments=a.attachments))
        if outcome is WriteOutcome.STORED:
            self.quota.stored(a.event)
        return _OUTCOME_REPLY[outcome]


class WritePath:
    """The cheap policies (run before an EVENT costs a task) and the stages after them."""

    def __init__(self, policies: Sequence[WritePolicy], stages: Sequence[Stage]) -> None:
        self.policies = tuple(policies)
        self.stages = tuple(stages)
        # (applies, run, whether run must be awaited), bound once: this loop runs per event
        self._calls: tuple[tuple[Callable[[Event], bool], Callable[[Admission], Any], bool], ...] = tuple(
            (stage.applies, stage.run, inspect.iscoroutinefunction(stage.run)) for stage in self.stages
        )

    def check(self, event: Event, ctx: WriteContext) -> Rejection | None:
        """Size, time window, PoW, expiration, kinds, NIP-70, bans: no I/O, no await."""
        return check_write(self.policies, event, ctx)

    async def run(self, a: Admission) -> Reply:
        event = a.event
        for applies, run, waits in self._calls:
            if not applies(event):
                continue
            reply: Reply | None = await run(a) if waits else run(a)
            if reply is not None:
                return reply
        raise AssertionError("the write path ended without an answer")  # Write always answers


def write_path(
    *,
    policies: Sequence[WritePolicy],
    verifier: SignatureVerifier,
    authors: BucketTable,
    vanished: VanishedAuthors,
    public_url: str,
    hooks: Hooks,
    fan_out: Callable[[Event], None],
    may_reach_anyone: Callable[[Event], bool],
    quota: StorageQuota,
    writer: EventWriter,
) -> WritePath:
    """The stages in ARCHITECTURE's order: verify, per-author rate, NIP-62, plug-in gates,
    ephemeral fan-out, quota, write."""
    return WritePath(
        policies,
        [
            Verify(verifier),
            AuthorRate(authors),
            Vanish(vanished, public_url),
            Gates(hooks),
            Ephemeral(hooks, fan_out, may_reach_anyone),
            Quota(quota, hooks),
            Write(writer, quota),
        ],
    )
