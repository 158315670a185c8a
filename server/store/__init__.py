"""The database: ``open_store(settings)`` gives the SQLite store (the embedded default,
``server.store.sqlite``) or the PostgreSQL one (``server.store.postgres``), both behind
the ``Store`` interface of ``server.store.base``."""

from __future__ import annotations

import asyncio

from server.settings import Settings
from server.store import migrate
from server.store.base import (
    Body,
    BodyAwaited,
    Conn,
    Query,
    Row,
    Store,
    Values,
    findable,
    unavailable,
)

__all__ = [
    "Body",
    "BodyAwaited",
    "Conn",
    "Query",
    "Row",
    "Store",
    "Values",
    "create_schema",
    "findable",
    "open_store",
    "unavailable",
]


def open_store(settings: Settings) -> Store:
    """The store ``settings.database_url`` names (not yet connected)."""
    if settings.is_sqlite:
        from server.store.sqlite import SqliteStore

        return SqliteStore(settings.database_url)
    from server.store.postgres import PostgresStore

    return PostgresStore(settings.database_url)


async def create_schema(store: Store) -> None:
    """Bring the schema up to date with the Alembic migrations (``server/store/migrations``).

    Runs in a thread: Alembic is synchronous and runs its own event loop for asyncpg.
    Concurrent callers are safe: each migration runs in a transaction, and on SQLite the
    store's write lock keeps this process's own writers out meanwhile.
    """
    async with store.exclusive():
        await asyncio.to_thread(migrate.upgrade, store.url)
