"""Finding installed plug-ins by entry point, before any setting is read.

Kept apart from ``relay.plugins.protocol`` (what a plug-in is) so that ``relay.config``, which
needs each plug-in's section and model to validate a config file, imports nothing that
imports it back.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

ENTRY_POINT_GROUP = "satsrelay.extensions"


class PluginError(Exception):
    """An installed plug-in is broken, or two of them clash; the message names it."""


def discover_plugins() -> list[Any]:
    """Every installed plug-in (``relay.plugins.Plugin``), in entry-point name order."""
    found: list[Any] = []
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        try:
            plugin = ep.load()
        except Exception as exc:
            raise PluginError(f"plug-in {ep.name!r} ({ep.value}) cannot be loaded: {exc}") from exc
        for attr in ("section", "settings_model", "build", "add_commands"):
            if not hasattr(plugin, attr):
                raise PluginError(f"plug-in {ep.name!r} ({ep.value}) has no {attr!r}")
        found.append(plugin)
    return found
