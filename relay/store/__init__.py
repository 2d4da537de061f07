"""The event store: one ``Store`` protocol (``base``), a SQLite and a PostgreSQL implementation,
and the seam through which a plug-in keeps its own tables in the same database (``database``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from relay.config import StorageSettings
    from relay.store.base import Store


def open_store(settings: StorageSettings, *, search_kinds: frozenset[int] | None = None) -> Store:
    """The Store the URL names; backends are imported only when chosen. ``search_kinds``:
    the kinds indexed for NIP-50 (default ``relay.nostr.search.DEFAULT_SEARCH_KINDS``)."""
    from relay.nostr.search import DEFAULT_SEARCH_KINDS

    kinds = DEFAULT_SEARCH_KINDS if search_kinds is None else search_kinds
    url = settings.url
    if url.startswith("sqlite:"):
        from relay.store.sqlite import SqliteStore

        return SqliteStore.from_settings(settings, search_kinds=kinds)
    if url.startswith(("postgresql://", "postgres://")):
        from relay.store.postgres import PostgresStore

        store: Store = PostgresStore(url, schema=settings.schema_name, search_kinds=kinds)
        return store
    raise ValueError(f"storage.url must start with sqlite:/// or postgresql://, got {url!r}")
