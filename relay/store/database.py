"""What the store offers a plug-in that keeps its own tables: the seam, not a ledger.

A plug-in (the payments one, say) keeps its rows in the relay's own database, beside the events,
so that a row an event pays for commits in that event's transaction or not at all. The
store offers it three general things, and knows nothing of what the plug-in keeps:

1. **A handle on the database**, ``database_of(store)``, one kind per dialect because the
   two stores write differently (``dialect`` tells them apart):

   - ``SqliteDatabase``: ``write(fn, *args)`` runs ``fn(conn, *args)`` as ONE transaction
     (``BEGIN IMMEDIATE``) on the store's single writer thread and connection, so a
     plug-in's write queues with the event batches instead of racing them for the file's
     lock, and costs one thread hop however many statements it runs (the reason the
     writer is a plain ``sqlite3`` connection: ``relay.store.sqlite``); ``read(sql,
     params)`` is one statement on one of the store's readers (WAL: the last commit).
     Under ``serve --workers N`` the writer thread is in the writer process
     (``relay.store.writer_process``): ``fn`` is sent there by reference and its
     arguments by value (pickle), so it must be a module-level function, and the
     arguments, the result and the attachments of write requests plain values or
     module-level classes. The plug-in is also built in the writer process (never
     started), which is how its write hooks are registered where the batches commit.
   - ``PostgresDatabase``: ``transaction()`` and ``acquire()`` hand out a connection of
     the store's asyncpg pool (in a transaction, or not), ``fetch``/``fetchval``/``execute``
     run one statement; ``scope`` names the schema, for advisory lock keys.

2. **A version line per component**: ``migrate(component, steps)`` applies the
   component's pending ``Migration`` steps and records its version in the table
   ``component_versions`` (made on first use), in one transaction under the same lock as
   the store's own migrations. The store's own line (``PRAGMA user_version``, PostgreSQL's
   ``schema_version``) is never touched, so installing or removing a plug-in changes
   nothing of the core's schema. ``adopt(conn)`` answers, for a component that has no row
   yet, which of its steps the database already holds (tables an older release made on
   another line); without it a new component starts at 0.

3. **Write hooks**: ``add_write_hook(component, hook)``. ``write_batch`` calls each hook,
   in the order added, inside the batch's own transaction, for every request that carries
   ``attachments`` (values a plug-in's write gate attached to the ``WriteRequest``; the
   store never looks inside), once the store has decided to store that event: never for
   a DUPLICATE, SUPERSEDED or DELETED one. A hook admits the event (None) and may write
   its own rows on the batch's connection, or refuses it with a ``Rejection``: that event
   is then neither stored nor charged, and its outcome is that ``Rejection`` (the writer
   raises it from ``submit``, the connection replies with its NIP-01 text). A batch
   where no request carries attachments calls no hook and keeps the store's fastest path.

   - SQLite, ``SqliteWriteHook``: ``hook(conn, request, now)``, on the writer thread, in
     batch order. A refusing hook must have written nothing; with several hooks each
     request's hooks run inside a SAVEPOINT, so a later hook's refusal undoes the rows
     an earlier one wrote.
   - PostgreSQL, ``PostgresWriteHook``: ``await hook(conn, requests, now)`` once per
     batch, after the store's locks and before its reads, with the requests that carry
     attachments: the hook reads and locks what it needs (in a stable order: several
     nodes write at once) and returns a ``BatchHook`` whose ``admit`` decides each request
     in memory, in batch order, while the store decides the batch; ``retract`` takes an
     ``admit`` back (a later hook refused, or another node stored the same id first), and
     ``write`` writes its rows on the batch's connection before the commit.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, Concatenate, Literal, ParamSpec, Protocol, TypeVar

if TYPE_CHECKING:
    from relay.nostr.errors import Rejection
    from relay.store.base import Store, WriteRequest
    from relay.store.migrations import Migration

P = ParamSpec("P")
T = TypeVar("T")

# The table that holds every component's version (never the core's own).
COMPONENT_VERSIONS = "component_versions"

SqliteWriteHook = Callable[[sqlite3.Connection, "WriteRequest", int], "Rejection | None"]
"""``hook(conn, request, now)``: None admits the event (rows written on ``conn`` commit with
it), a ``Rejection`` refuses it."""


class BatchHook(Protocol):
    """One PostgreSQL write hook's part in one batch (see the module docstring)."""

    def admit(self, request: WriteRequest) -> Rejection | None:
        """Decide one request in memory, in batch order: None admits, a ``Rejection`` refuses."""
        ...

    def retract(self, request: WriteRequest) -> None:
        """Take back ``admit(request)``: its event will not be stored after all."""
        ...

    async def write(self, conn: Any, now: int) -> None:
        """Write the rows of the requests it admitted that stand, on the batch's connection."""
        ...


PostgresWriteHook = Callable[[Any, Sequence["WriteRequest"], int], Awaitable[BatchHook]]
"""``await hook(conn, requests, now)``: read and lock what the batch needs, return its ``BatchHook``."""


class SqliteDatabase(Protocol):
    """A plug-in's handle on a SQLite store's database (see the module docstring)."""

    @property
    def dialect(self) -> Literal["sqlite"]: ...

    async def write(
        self, fn: Callable[Concatenate[sqlite3.Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """``fn(conn, *args, **kwargs)`` in one write transaction on the store's writer thread."""
        ...

    async def read(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> list[Any]:
        """The rows of one statement, read on one of the store's readers."""
        ...

    async def migrate(
        self,
        component: str,
        steps: Sequence[Migration],
        adopt: Callable[[sqlite3.Connection], int] | None = None,
    ) -> int:
        """Apply ``component``'s pending steps; return the version it is at."""
        ...

    def add_write_hook(self, component: str, hook: SqliteWriteHook) -> None:
        """Call ``hook`` in every event batch (one hook per component: a second replaces it)."""
        ...


class PostgresDatabase(Protocol):
    """A plug-in's handle on a PostgreSQL store's database (see the module docstring)."""

    @property
    def dialect(self) -> Literal["postgresql"]: ...

    @property
    def scope(self) -> str:
        """The schema the store's tables live in ("public" by default): mix it into
        advisory lock keys so relays on other schemas of one server never share a lock."""
        ...

    def acquire(self) -> AbstractAsyncContextManager[Any]:
        """A connection of the store's pool (asyncpg), returned on exit."""
        ...

    def transaction(self) -> AbstractAsyncContextManager[Any]:
        """A connection of the store's pool inside a transaction, committed on exit."""
        ...

    async def fetch(self, sql: str, *args: Any) -> list[Any]: ...

    async def fetchval(self, sql: str, *args: Any) -> Any: ...

    async def execute(self, sql: str, *args: Any) -> str:
        """The statement's status (e.g. ``UPDATE 1``)."""
        ...

    async def migrate(
        self,
        component: str,
        steps: Sequence[Migration],
        adopt: Callable[[Any], Awaitable[int]] | None = None,
    ) -> int:
        """Apply ``component``'s pending steps; return the version it is at."""
        ...

    def add_write_hook(self, component: str, hook: PostgresWriteHook) -> None:
        """Call ``hook`` in every event batch (one hook per component: a second replaces it)."""
        ...


Database = SqliteDatabase | PostgresDatabase


def database_of(store: Store) -> Database:
    """The plug-in handle of ``store`` (``SqliteStore`` and ``PostgresStore`` each have
    one, usable once the store is open). Not part of the ``Store`` protocol: the event
    store's own callers never need it."""
    database: Database | None = getattr(store, "database", None)
    if database is None:
        raise TypeError(f"{type(store).__name__} offers no database to plug-ins")
    return database
