"""Storage: one ``Store`` protocol (``base``), a SQLite and a PostgreSQL implementation."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from relay.config import StorageSettings
    from relay.store.base import Store


def sqlite_path(url: str) -> Path:
    """``sqlite:///relative/file.db`` or ``sqlite:////absolute/file.db`` -> path."""
    if not url.startswith("sqlite:///"):
        raise ValueError(f"not a sqlite URL: {url!r} (expected sqlite:///path)")
    return Path(url[len("sqlite:///"):])


def open_store(settings: StorageSettings) -> Store:
    """The Store the URL names; backends are imported only when chosen."""
    url = settings.url
    if url.startswith("sqlite:"):
        from relay.store.sqlite import SqliteStore

        return SqliteStore(
            sqlite_path(url), synchronous=settings.synchronous, read_connections=settings.read_connections
        )
    if url.startswith(("postgresql://", "postgres://")):
        from relay.store.postgres import PostgresStore

        return PostgresStore(url, schema=settings.schema_name)
    raise ValueError(f"storage.url must start with sqlite:/// or postgresql://, got {url!r}")
