"""The web-of-trust plug-in as the composition root finds it.

pyproject.toml names ``PLUGIN`` under ``satsrelay.extensions``; it owns the ``[wot]``
section (``WotSettings``) and, when ``wot.enabled``, hands the relay the hooks of a
running ``WotTier``. It adds no ``satsrelay`` commands. The relay core never imports it.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from wot.settings import WotSettings

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from relay.config import Settings
    from relay.plugins.hooks import PluginHooks
    from relay.plugins.protocol import PluginHost, SettingsLoader
    from relay.store.base import Store


class WotPlugin:
    section = "wot"
    settings_model = WotSettings

    def build(
        self, settings: Settings, store: Store, registry: CollectorRegistry, host: PluginHost
    ) -> PluginHooks | None:
        from relay.net.http import http_url
        from wot.tier import WotTier

        conf = settings.section(self.section)
        assert isinstance(conf, WotSettings)
        if not conf.enabled:
            return None
        return WotTier(conf, store, http_url(settings.relay.public_url) + "/wot").hooks()

    def add_commands(
        self,
        sub: argparse._SubParsersAction[argparse.ArgumentParser],
        common: argparse.ArgumentParser,
        load: SettingsLoader,
    ) -> None:
        """No commands of its own: ``/wot/<pubkey>`` and the console answer the operator."""


PLUGIN = WotPlugin()
