"""Schema migrations with Alembic, driven from code (no alembic.ini to keep in sync)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

HERE = Path(__file__).parent / "migrations"


class MigrationRefused(RuntimeError):
    """A migration found data it cannot carry forward as it is; its message says what
    to change first. Nothing was changed."""


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(HERE))
    config.set_main_option("sqlalchemy.url", database_url.replace("sqlite+aiosqlite", "sqlite"))
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    """Bring the database to ``revision``. Blocking: call it outside a running event loop
    (or through ``asyncio.to_thread``), since it runs its own for PostgreSQL."""
    command.upgrade(alembic_config(database_url), revision)
