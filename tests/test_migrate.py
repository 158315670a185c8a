"""Alembic migrations build exactly the schema the code declares, from empty and from
the first revision, keeping data."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.ext.asyncio import create_async_engine

from server.domain import chain, wire
from server.domain.ledger import Order
from server.domain.settlement import slot_of
from server.settings import Settings
from server.store import Store, ledger, migrate, open_store
from server.store.schema import metadata


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
    assert version == "0010"


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
    await asyncio.to_thread(migrate.upgrade, url)
    assert await schema_drift(url) == []


async def test_0006_keeps_the_answers_of_keys_used_before_it_byte_for_byte(
    tmp_path: Path,
) -> None:
    """A key used before 0006 kept the 202 body; after it the same key replays exactly
    those bytes, from the typed transfer and balance 0006 made of them."""
    old_body = (
        '{"id":"tr_1","kind":"transfer","from_account":"acc_a","from_name":"ann",'
        '"to_account":"acc_c","to_name":"cy","amount":"12.34","currency":"USD","memo":"rent",'
        '"status":"pending","failure_reason":null,"created_at":"2026-12-01T10:00:00.123+00:00",'
        '"settled_at":null,"expires_at":"2026-12-02T10:00:00.123+00:00","settled_in_ms":null,'
        '"balance":{"posted":"100.00","pending_debits":"12.34","pending_credits":"0.00",'
        '"available":"87.66","projected":"87.66"}}'
    )
    url = f"sqlite:///{tmp_path / 'old.db'}"
    await asyncio.to_thread(migrate.upgrade, url, "0005")
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            sa.text("INSERT INTO idempotency_keys VALUES ('usr_a', 'k1', :hash, 'tr_1', :body, 1)"),
            {"hash": Order("usr_a", "acc_a", "acc_c", 1234, "rent").digest, "body": old_body},
        )
    await asyncio.to_thread(migrate.upgrade, url)
    engine.dispose()
    store = open_store(Settings(url, None, "", tmp_path))
    await store.connect()
    try:
        order = Order("usr_a", "acc_a", "acc_c", 1234, "rent", "k1")
        kept = await store.read(lambda conn: ledger.replay(conn, order))
    finally:
        await store.disconnect()
    assert kept is not None and kept.replayed
    assert wire.encode(wire.accepted(kept.transfer, kept.balance)).decode() == old_body


async def test_0008_names_existing_people_and_folds_usernames(tmp_path: Path) -> None:
    """Existing users go by their username, transfers keep their parties' names as
    display names, and usernames become case-insensitive, keeping everything else."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    await asyncio.to_thread(migrate.upgrade, url, "0006")
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        for sql in (
            "INSERT INTO users VALUES ('usr_b', 'bank', '!', 1), ('usr_a', 'Ann', 'h', 1),"
            " ('usr_c', 'cy', '!', 1)",
            "INSERT INTO accounts (id, user_id, name, currency, kind, status, created_at)"
            " VALUES ('acc_f', 'usr_b', 'Funding USD', 'USD', 'funding', 'active', 1),"
            " ('acc_a', 'usr_a', 'Main', 'USD', 'user', 'active', 1),"
            " ('acc_c', 'usr_c', 'Main', 'USD', 'user', 'active', 1)",
            "INSERT INTO transfers (id, from_account, to_account, amount, currency, memo,"
            " status, created_by, created_at, from_name, to_name, kind) VALUES"
            " ('tr_1', 'acc_f', 'acc_a', 100, 'USD', '', 'completed', 'usr_b', 10,"
            " 'Funding USD', 'Ann', 'deposit'),"
            " ('tr_2', 'acc_a', 'acc_c', 50, 'USD', 'tea', 'pending', 'usr_a', 20, 'Ann', 'cy',"
            " 'transfer')",
        ):
            conn.exec_driver_sql(sql)
    await asyncio.to_thread(migrate.upgrade, url)
    with engine.connect() as conn:
        people = conn.exec_driver_sql(
            "SELECT id, username, username_lower, display_name, time_zone, password_hash"
            " FROM users ORDER BY id"
        ).fetchall()
        moved = conn.exec_driver_sql(
            "SELECT id, from_display_name, to_display_name, memo, amount FROM transfers ORDER BY id"
        ).fetchall()
    engine.dispose()
    assert [tuple(r) for r in people] == [
        ("usr_a", "Ann", "ann", "Ann", "", "h"),
        ("usr_b", "bank", "bank", "bank", "", "!"),
        ("usr_c", "cy", "cy", "cy", "", "!"),
    ]
    assert [tuple(r) for r in moved] == [
        ("tr_1", "Funding USD", "Ann", "", 100),
        ("tr_2", "Ann", "cy", "tea", 50),
    ]
    assert await schema_drift(url) == []


async def test_0008_refuses_usernames_that_differ_only_in_case_naming_them(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    await asyncio.to_thread(migrate.upgrade, url, "0007")
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO users VALUES ('u1', 'bob', '!', 1), ('u2', 'BOB', '!', 1),"
            " ('u3', 'Ann', '!', 1), ('u4', 'ann', '!', 1), ('u5', 'cy', '!', 1)"
        )
    with pytest.raises(migrate.MigrationRefused) as refused:
        await asyncio.to_thread(migrate.upgrade, url)
    assert "'Ann', 'ann'" in str(refused.value) and "'BOB', 'bob'" in str(refused.value)
    assert "cy" not in str(refused.value)
    with engine.connect() as conn:
        version = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
        columns = {c["name"] for c in sa.inspect(conn).get_columns("users")}
    engine.dispose()
    assert version == "0007" and "username_lower" not in columns, "nothing was changed"


async def test_0007_gives_pending_transfers_their_senders_slot(tmp_path: Path) -> None:
    """A sender's transfers pending across the upgrade settle in its partition, so they
    still settle before the ones it sends after it."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    await asyncio.to_thread(migrate.upgrade, url, "0006")
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        for sql in (
            "INSERT INTO users VALUES ('usr_a', 'ann', '!', 1), ('usr_c', 'cy', '!', 1)",
            "INSERT INTO accounts (id, user_id, name, currency, kind, status, created_at)"
            " VALUES ('acc_a', 'usr_a', 'Main', 'USD', 'user', 'active', 1),"
            " ('acc_c', 'usr_c', 'Main', 'USD', 'user', 'active', 1)",
            "INSERT INTO transfers (id, from_account, to_account, amount, currency, memo,"
            " status, created_by, created_at, from_name, to_name, kind) VALUES"
            " ('tr_1', 'acc_a', 'acc_c', 100, 'USD', '', 'completed', 'usr_a', 10, 'ann',"
            " 'cy', 'transfer'),"
            " ('tr_2', 'acc_a', 'acc_c', 50, 'USD', '', 'pending', 'usr_a', 20, 'ann', 'cy',"
            " 'transfer'),"
            " ('tr_3', 'acc_c', 'acc_a', 5, 'USD', '', 'pending', 'usr_c', 30, 'cy', 'ann',"
            " 'transfer')",
        ):
            conn.exec_driver_sql(sql)
    await asyncio.to_thread(migrate.upgrade, url, "0007")
    with engine.connect() as conn:
        slots: dict[str, int] = dict(
            conn.exec_driver_sql("SELECT id, slot FROM transfers").fetchall()
        )
    engine.dispose()
    assert slots == {"tr_1": 0, "tr_2": slot_of("acc_a"), "tr_3": slot_of("acc_c")}
    assert slot_of("acc_a") != slot_of("acc_c") != 0


async def test_0010_every_existing_transfer_became_pending_when_it_was_accepted(
    tmp_path: Path,
) -> None:
    """Settlement orders by pending_since from 0010 on: transfers pending across the
    upgrade keep their place (their acceptance), and none is awaiting a passkey."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    await asyncio.to_thread(migrate.upgrade, url, "0008")
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        for sql in (
            "INSERT INTO users (id, username, username_lower, password_hash, created_at)"
            " VALUES ('usr_a', 'ann', 'ann', '!', 1), ('usr_c', 'cy', 'cy', '!', 1)",
            "INSERT INTO accounts (id, user_id, name, currency, kind, status, created_at)"
            " VALUES ('acc_a', 'usr_a', 'Main', 'USD', 'user', 'active', 1),"
            " ('acc_c', 'usr_c', 'Main', 'USD', 'user', 'active', 1)",
            "INSERT INTO transfers (id, from_account, to_account, amount, currency, memo,"
            " status, created_by, created_at, from_name, to_name, kind) VALUES"
            " ('tr_1', 'acc_a', 'acc_c', 100, 'USD', '', 'completed', 'usr_a', 10, 'ann',"
            " 'cy', 'transfer'),"
            " ('tr_2', 'acc_a', 'acc_c', 50, 'USD', '', 'pending', 'usr_a', 20, 'ann', 'cy',"
            " 'transfer')",
        ):
            conn.exec_driver_sql(sql)
    await asyncio.to_thread(migrate.upgrade, url)
    with engine.connect() as conn:
        rows = conn.exec_driver_sql(
            "SELECT id, pending_since, confirm_nonce FROM transfers ORDER BY id"
        ).fetchall()
        tables = set(sa.inspect(conn).get_table_names())
    engine.dispose()
    assert [tuple(r) for r in rows] == [("tr_1", 10, None), ("tr_2", 20, None)]
    assert {"passkeys", "passkey_challenges"} <= tables
