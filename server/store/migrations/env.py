"""Alembic environment: SQLite through pysqlite, PostgreSQL through asyncpg."""

from __future__ import annotations

import asyncio

import sqlalchemy as sa
from alembic import context
from sqlalchemy.ext.asyncio import create_async_engine

from server.store.schema import metadata

URL: str = context.config.get_main_option("sqlalchemy.url") or ""


def run(connection: sa.Connection) -> None:
    # render_as_batch: SQLite can only ALTER a table by copying it; batch mode does that.
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


async def run_postgres() -> None:
    engine = create_async_engine(URL.replace("postgresql://", "postgresql+asyncpg://", 1))
    async with engine.connect() as conn:
        await conn.run_sync(run)
    await engine.dispose()


if URL.startswith("postgresql"):
    asyncio.run(run_postgres())
else:
    engine = sa.create_engine(URL, poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        run(conn)
    engine.dispose()
