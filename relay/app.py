"""The composition root: Settings in, a wired ``Relay`` out.

Builds what the relay receives instead of building itself: the store the URL names, the
cross-node broadcast that goes with it (PostgreSQL LISTEN/NOTIFY, or in-process), the
metrics registry, and the hooks of the plug-ins found by ``relay.discovery.discover_plugins`` (each
configured from its own section). ``satsrelay serve`` and the tests' ``relay_factory``
both start relays through ``build_relay``.

``serve --workers N`` on SQLite (``relay.workers``) composes two more shapes here: a worker
(``build_relay`` with ``writer_address``: its store's writes, its commits and its fan-out go
through its link to the writer process) and the writer process itself
(``build_writer_service``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from relay.config import Settings
from relay.discovery import discover_plugins
from relay.nostr.event import Event
from relay.ops.metrics import RelayMetrics
from relay.plugins.hooks import Hooks, PluginHooks
from relay.plugins.protocol import Plugin, PluginHost
from relay.session.server import Relay
from relay.store import open_store
from relay.store.base import Store, WriteOutcome
from relay.store.broadcast import Broadcast, LocalBroadcast
from relay.store.identity import load_identity
from relay.store.writer import EventWriter

if TYPE_CHECKING:
    from relay.store.sqlite import SqliteStore
    from relay.store.writer_process import WriterService


def build_broadcast(settings: Settings, store: Store) -> Broadcast:
    storage = settings.storage
    if storage.url.startswith(("postgresql://", "postgres://")):
        from relay.store.postgres import PostgresStore
        from relay.store.postgres_broadcast import PostgresBroadcast

        bus = PostgresBroadcast(storage.url, storage.schema_name)
        if isinstance(store, PostgresStore):
            # Stored events are NOTIFY'd in the transaction that inserts them (atomic with
            # it); the broadcast's own connection carries only ephemeral events.
            store.announce_stored(bus.channel, bus.node_id)
            bus.store_announces = True
        return bus
    return LocalBroadcast()


def build_hooks(
    settings: Settings,
    store: Store,
    metrics: RelayMetrics,
    plugins: Sequence[Plugin],
    host: PluginHost,
) -> Hooks:
    """Every enabled plug-in's hooks, in their documented order: by each plug-in's
    ``order`` (lower first: free tiers, 10, before paid ones, 50), then section name. A
    plug-in whose section leaves it disabled adds nothing; with none enabled the relay is
    a free relay."""
    built: list[PluginHooks] = []
    for plugin in plugins:
        hooks = plugin.build(settings, store, metrics.registry, host)
        if hooks is not None:
            built.append(hooks)
    return Hooks(built)


def build_relay(
    settings: Settings,
    *,
    store: Store | None = None,
    plugins: Sequence[Plugin] | None = None,
    writer_address: str | None = None,
) -> Relay:
    """``ConfigError`` (one line) for a bad relay key or key file. ``writer_address``: a
    ``--workers`` worker on SQLite, whose writer process listens there."""
    plugins = discover_plugins() if plugins is None else plugins
    # A new key is written once the store has opened (Relay.start): a relay that cannot open
    # its database leaves no key file behind.
    identity = load_identity(settings, save=False)
    writer: EventWriter | None = None
    broadcast: Broadcast | None = None
    if writer_address is not None:
        from relay.store.sqlite import SqliteStore
        from relay.store.writer_client import CommitStream, RemoteWriter, WriterLink

        link = WriterLink(writer_address)
        store = SqliteStore.from_settings(settings.storage, search_kinds=settings.search.indexed_kinds(), link=link)
        writer, broadcast = RemoteWriter(link), CommitStream(link)
    store = store if store is not None else open_store(settings.storage, search_kinds=settings.search.indexed_kinds())
    metrics = RelayMetrics()

    async def publish(event: Event) -> WriteOutcome:
        return await relay.publish_own(event)  # bound once the relay exists, below

    hooks = build_hooks(settings, store, metrics, plugins, PluginHost(identity, publish))
    relay = Relay(
        settings,
        store=store,
        broadcast=broadcast or build_broadcast(settings, store),
        identity=identity,
        hooks=hooks,
        metrics=metrics,
        writer=writer,
    )
    return relay


def build_writer_service(
    settings: Settings, *, plugins: Sequence[Plugin] | None = None
) -> tuple[SqliteStore, WriterService]:
    """The SQLite writer process of ``--workers`` (``relay.store.writer_process``): the
    store that owns the file's writer, and the service the workers' links reach.

    Each enabled plug-in is built here as in a worker, and nothing more: its hooks (gates,
    routes, services) serve in the workers, but building it registers its write hooks on
    this store (``relay.store.database``), which must run where the batches commit. What a
    write hook does to its plug-in's memory happens in this process, not in the worker
    whose gate admitted the event: the payments hook's refusal drops a stale balance from
    this process's cache, so a worker's cache keeps it until ``account_cache_seconds`` or
    the next grant (each event meanwhile is refused at commit, "credit ran out", instead
    of by the gate: the same refusal, one round trip later)."""
    from relay.store.sqlite import SqliteStore
    from relay.store.writer_process import WriterService

    plugins = discover_plugins() if plugins is None else plugins
    store = SqliteStore.from_settings(settings.storage, search_kinds=settings.search.indexed_kinds())

    async def publish(event: Event) -> WriteOutcome:
        raise RuntimeError("the writer process publishes no events of its own")

    build_hooks(settings, store, RelayMetrics(), plugins, PluginHost(load_identity(settings, save=False), publish))
    service = WriterService(store, batch_max=settings.storage.batch_max, calls=store.writer_calls())
    return store, service
