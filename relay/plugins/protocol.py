"""Plug-ins as the application finds and builds them (the composition root's side).

An installed distribution declares a plug-in under the ``satsrelay.extensions``
entry-point group (pyproject.toml): an object with its config ``section`` and
``settings_model``, a ``build`` that returns its ``relay.plugins.hooks.PluginHooks`` (None when
its section leaves it disabled) and an ``add_commands`` for its ``satsrelay``
subcommands. ``relay.discovery`` finds them; ``relay.app`` builds every enabled one and
hands their hooks to the relay in order (``relay.plugins.hooks.Hooks``). Several plug-ins run
side by side (payments and a web-of-trust free tier, say); a relay without any is a free
relay.
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from pydantic import BaseModel

from relay.nostr.event import Event
from relay.plugins.hooks import PluginHooks

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from relay.config import Settings
    from relay.store.base import Store, WriteOutcome
    from relay.store.identity import RelayIdentity

SettingsLoader = Callable[[argparse.Namespace], "Settings"]


@dataclass(frozen=True, slots=True)
class PluginHost:
    """What the relay offers a plug-in beyond its store: its own key, and a way to store
    and fan out events it signs itself (its profile, NIP-57 zap receipts), past the write
    policies and the gates, which are for clients."""

    identity: RelayIdentity
    publish: Callable[[Event], Awaitable[WriteOutcome]]


class Plugin(Protocol):
    """What an entry point in ``satsrelay.extensions`` names (an object, not a class)."""

    section: str  # its top-level config section, e.g. "payments"
    settings_model: type[BaseModel]  # validates that section (extra keys refused)

    def build(
        self, settings: Settings, store: Store, registry: CollectorRegistry, host: PluginHost
    ) -> PluginHooks | None:
        """Its hooks, or None when its section leaves it disabled."""
        ...

    def add_commands(
        self,
        sub: argparse._SubParsersAction[argparse.ArgumentParser],
        common: argparse.ArgumentParser,
        load: SettingsLoader,
    ) -> None:
        """Add its ``satsrelay`` subcommands."""
        ...
