"""The payments plug-in as the relay's composition root finds it.

pyproject.toml names ``PLUGIN`` under the ``satsrelay.extensions`` entry-point group;
``relay.discovery.discover_plugins`` loads it with importlib.metadata. It owns the
``[payments]`` config section (validated by ``PaymentSettings``), builds the running
``PaymentsExtension`` when ``payments.enabled`` is true and hands the relay its hooks, and adds the operator commands
(``accounts``, ``invoices``, ``pay-fake``) to ``satsrelay``. The relay core never imports
this package.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from lightning.settings import PaymentSettings

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from relay.config import Settings
    from relay.plugins.hooks import PluginHooks
    from relay.plugins.protocol import PluginHost, SettingsLoader
    from relay.store.base import Store


class PaymentsPlugin:
    section = "payments"
    settings_model = PaymentSettings

    def build(
        self, settings: Settings, store: Store, registry: CollectorRegistry, host: PluginHost
    ) -> PluginHooks | None:
        from lightning.extension import build_extension, payment_settings

        if not payment_settings(settings).enabled:
            return None
        extension = build_extension(settings, store, registry=registry, identity=host.identity, publish=host.publish)
        return extension.hooks()

    def add_commands(
        self,
        sub: argparse._SubParsersAction[argparse.ArgumentParser],
        common: argparse.ArgumentParser,
        load: SettingsLoader,
    ) -> None:
        from lightning.cli import add_commands

        add_commands(sub, common, load)


PLUGIN = PaymentsPlugin()
