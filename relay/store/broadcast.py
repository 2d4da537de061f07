"""The fan-out seam between processes and nodes: where accepted events go beyond this one.

A ``Broadcast`` announces the events this process accepted and delivers other processes'
and nodes' events to the local subscription index. One process on SQLite needs none
(``LocalBroadcast``); PostgreSQL nodes use LISTEN/NOTIFY, which lives with that store
(``relay.store.postgres_broadcast``), chosen by the composition root (``relay.app``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from relay.nostr.event import Event

Deliver = Callable[[Event], object]


class Broadcast(Protocol):
    # True when other processes or nodes may have subscribers: this node cannot then tell
    # that nobody listened to an ephemeral event (NIP-01 ``mute:``), so it never says so.
    reaches_other_nodes: bool

    async def start(self, deliver: Deliver) -> None:
        """Begin delivering other nodes' events to ``deliver`` (local fan-out)."""

    def publish(self, events: list[Event]) -> None:
        """Announce events this node accepted; never blocks the caller."""

    async def stop(self) -> None: ...


class LocalBroadcast:
    """One process: nothing to announce."""

    reaches_other_nodes = False

    async def start(self, deliver: Deliver) -> None:
        return None

    def publish(self, events: list[Event]) -> None:
        return None

    async def stop(self) -> None:
        return None
