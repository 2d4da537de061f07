"""The composition root: Settings in, a wired ``Relay`` out.

Builds what the relay receives instead of building itself: the store the URL names, the
cross-node broadcast that goes with it (PostgreSQL LISTEN/NOTIFY, or in-process), the
metrics registry, and the extensions found by ``relay.extension.discover_plugins`` (each
configured from its own section). ``satsrelay serve`` and the tests' ``relay_factory``
both start relays through ``build_relay``.
"""

from __future__ import annotations

from collections.abc import Sequence

from relay.broadcast import Broadcast, LocalBroadcast, PostgresBroadcast
from relay.config import Settings
from relay.event import Event
from relay.extension import Extension, ExtensionHost, ExtensionPlugin, PluginError, discover_plugins
from relay.identity import load_identity
from relay.metrics import RelayMetrics
from relay.server import Relay
from relay.store import open_store
from relay.store.base import Store, WriteOutcome


def build_broadcast(settings: Settings, store: Store) -> Broadcast:
    storage = settings.storage
    if storage.url.startswith(("postgresql://", "postgres://")):
        from relay.store.postgres import PostgresStore

        bus = PostgresBroadcast(storage.url, storage.schema_name)
        if isinstance(store, PostgresStore):
            # Stored events are NOTIFY'd in the transaction that inserts them (atomic with
            # it); the broadcast's own connection carries only ephemeral events.
            store.announce_stored(bus.channel, bus.node_id)
            bus.store_announces = True
        return bus
    return LocalBroadcast()


def build_extension(
    settings: Settings,
    store: Store,
    metrics: RelayMetrics,
    plugins: Sequence[ExtensionPlugin],
    host: ExtensionHost,
) -> Extension | None:
    """The one enabled extension, or None. (The relay has one extension seam; a second
    enabled plug-in is refused rather than silently ignored.)"""
    enabled = [(p, ext) for p in plugins if (ext := p.build(settings, store, metrics.registry, host)) is not None]
    if len(enabled) > 1:
        names = ", ".join(f"[{p.section}]" for p, _ in enabled)
        raise PluginError(f"more than one extension is enabled ({names}); the relay runs one")
    return enabled[0][1] if enabled else None


def build_relay(
    settings: Settings, *, store: Store | None = None, plugins: Sequence[ExtensionPlugin] | None = None
) -> Relay:
    """``ConfigError`` (one line) for a bad relay key or key file."""
    plugins = discover_plugins() if plugins is None else plugins
    # A new key is written once the store has opened (Relay.start): a relay that cannot open
    # its database leaves no key file behind.
    identity = load_identity(settings, save=False)
    store = store if store is not None else open_store(settings.storage, search_kinds=settings.search.indexed_kinds())
    metrics = RelayMetrics()

    async def publish(event: Event) -> WriteOutcome:
        return await relay.publish_own(event)  # bound once the relay exists, below

    extension = build_extension(settings, store, metrics, plugins, ExtensionHost(identity, publish))
    relay = Relay(
        settings,
        store=store,
        broadcast=build_broadcast(settings, store),
        identity=identity,
        extension=extension,
        metrics=metrics,
    )
    return relay
