"""Alembic migrations build exactly the schema the code declares, from empty and from
the first revision, keeping data."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.ext.asyncio import create_async_engine

from server import chain, migrate
from server.schema import metadata
from server.store import Store


def drift(conn: sa.Connection) -> list[Any]:
    return list(compare_metadata(MigrationContext.configure(conn), metadata))


async def schema_drift(url: str) -> list[Any]:
    if url.startswith("postgresql"):
        engine = create_async_engine(url.replace("postgresql://", "postgresql+asyncpg://", 1))
        async with engine.connect() as conn:
            found = await conn.run_sync(drift)
        await engine.dispose()
        return found
    sync_engine = sa.create_engine(url)
    with sync_engine.connect() as conn:
        found = drift(conn)
    sync_engine.dispose()
    return found


async def test_migrations_from_empty_match_the_declared_schema(store: Store) -> None:
    # The store fixture migrated this (empty) database to head.
    assert await schema_drift(store.url) == []
    version = await store.fetch_val("SELECT version_num FROM alembic_version")
    assert version == "0005"


async def test_upgrade_from_the_first_revision_keeps_data(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    await asyncio.to_thread(migrate.upgrade, url, "0001")
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        assert "sessions" not in sa.inspect(conn).get_table_names()
        conn.exec_driver_sql(
            "INSERT INTO users (id, username, password_hash, created_at) "
            "VALUES ('usr_old', 'olduser', '!', 1)"
        )
    await asyncio.to_thread(migrate.upgrade, url)
    with engine.connect() as conn:
        assert "sessions" in sa.inspect(conn).get_table_names()
        assert conn.exec_driver_sql("SELECT username FROM users").scalar() == "olduser"
    engine.dispose()
    assert await schema_drift(url) == []


async def test_0004_names_the_parties_of_existing_transfers(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    await asyncio.to_thread(migrate.upgrade, url, "0003")
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        for sql in (
            "INSERT INTO users VALUES ('usr_b', 'bank', '!', 1), ('usr_a', 'ann', '!', 1),"
            " ('usr_c', 'cy', '!', 1)",
            "INSERT INTO accounts (id, user_id, name, currency, kind, status, created_at)"
            " VALUES ('acc_f', 'usr_b', 'Funding USD', 'USD', 'funding', 'active', 1),"
            " ('acc_a', 'usr_a', 'Main', 'USD', 'user', 'active', 1),"
            " ('acc_c', 'usr_c', 'Main', 'USD', 'user', 'active', 1)",
            "INSERT INTO transfers (id, from_account, to_account, amount, currency, memo,"
            " status, created_by, created_at) VALUES"
            " ('tr_1', 'acc_f', 'acc_a', 100, 'USD', '', 'completed', 'usr_b', 10),"
            " ('tr_2', 'acc_a', 'acc_c', 50, 'USD', '', 'pending', 'usr_a', 20)",
        ):
            conn.exec_driver_sql(sql)
    await asyncio.to_thread(migrate.upgrade, url, "0004")
    with engine.connect() as conn:
        rows = conn.exec_driver_sql(
            "SELECT id, from_name, to_name, kind, expires_at FROM transfers ORDER BY id"
        ).fetchall()
    engine.dispose()
    day = 86_400 * 1_000_000
    assert [tuple(r) for r in rows] == [
        ("tr_1", "Funding USD", "ann", "deposit", 10 + day),
        ("tr_2", "ann", "cy", "transfer", 20 + day),
    ]


async def test_0005_chains_the_entries_already_posted(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    await asyncio.to_thread(migrate.upgrade, url, "0004")
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        for sql in (
            "INSERT INTO users VALUES ('usr_b', 'bank', '!', 1), ('usr_a', 'ann', '!', 1)",
            "INSERT INTO accounts (id, user_id, name, currency, kind, status, posted,"
            " created_at) VALUES ('acc_f', 'usr_b', 'Funding USD', 'USD', 'funding',"
            " 'active', -150, 1), ('acc_a', 'usr_a', 'Main', 'USD', 'user', 'active', 150, 1)",
            "INSERT INTO transfers (id, from_account, to_account, amount, currency, memo,"
            " status, created_by, created_at) VALUES"
            " ('tr_1', 'acc_f', 'acc_a', 100, 'USD', '', 'completed', 'usr_b', 10),"
            " ('tr_2', 'acc_f', 'acc_a', 50, 'USD', '', 'completed', 'usr_b', 20)",
            "INSERT INTO ledger_entries (transfer_id, account_id, amount, created_at) VALUES"
            " ('tr_2', 'acc_a', 50, 20), ('tr_1', 'acc_a', 100, 10),"
            " ('tr_1', 'acc_f', -100, 10), ('tr_2', 'acc_f', -50, 20)",
        ):
            conn.exec_driver_sql(sql)
    await asyncio.to_thread(migrate.upgrade, url, "0005")
    with engine.connect() as conn:
        entries = (
            conn.execute(sa.text("SELECT * FROM ledger_entries ORDER BY account_id, seq"))
            .mappings()
            .all()
        )
        heads: dict[str, str] = {
            r[0]: r[1] for r in conn.exec_driver_sql("SELECT id, chain_head FROM accounts")
        }
        lengths: dict[str, int] = {
            r[0]: r[1] for r in conn.exec_driver_sql("SELECT id, entries FROM accounts")
        }
    engine.dispose()
    for account in ("acc_a", "acc_f"):
        mine = [e for e in entries if e["account_id"] == account]
        walker = chain.Walker(account)
        for entry in mine:
            walker.step(dict(entry))
        assert walker.broken is None and walker.head == heads[account]
        assert lengths[account] == 2
    assert [
        (e["transfer_id"], e["balance_after"]) for e in entries if e["account_id"] == "acc_a"
    ] == [
        ("tr_1", 100),
        ("tr_2", 150),
    ]
    assert await schema_drift(url) == []
