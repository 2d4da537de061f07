"""Storage: one ``Store`` protocol (``base``), a SQLite and a PostgreSQL implementation."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from relay.config import StorageSettings
    from relay.store.base import Store


def open_store(settings: StorageSettings) -> Store:
    """The Store the URL names; backends are imported only when chosen."""
    url = settings.url
    if url.startswith("sqlite:"):
        from relay.store.sqlite import SqliteStore

        return SqliteStore.from_url(
            url, synchronous=settings.synchronous, read_connections=settings.read_connections
        )
    if url.startswith(("postgresql://", "postgres://")):
        from relay.store.postgres import PostgresStore

        store: Store = PostgresStore(url, schema=settings.schema_name)
        return store
    raise ValueError(f"storage.url must start with sqlite:/// or postgresql://, got {url!r}")
