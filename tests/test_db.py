"""Store.write on SQLite: writes that queue together share one transaction and one
COMMIT (group commit), and each still succeeds or fails on its own."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest
import sqlalchemy as sa

from server.db import Store
from server.schema import now_us, users


@pytest.fixture(autouse=True)
def sqlite_only(store: Store) -> None:
    if not store.is_sqlite:
        pytest.skip("group commit is how SQLite writes; PostgreSQL has a pool")


async def add_user(store: Store, name: str, fail: BaseException | None = None) -> int:
    """Insert a user in one write; the identity of the transaction it ran in."""
    async with store.write() as conn:
        row = {"id": name, "username": name, "password_hash": "!", "created_at": now_us()}
        await conn.execute(users.insert().values(**row))
        batch = id(store._batch)
        if fail is not None:
            raise fail
    return batch


async def names(store: Store) -> set[str]:
    return {r["username"] for r in await store.fetch_all(sa.select(users.c.username))}


async def test_a_write_is_committed_when_its_block_ends(store: Store) -> None:
    await add_user(store, "ann")
    # Another connection (another process, say) sees it at once.
    with sqlite3.connect(store.url.removeprefix("sqlite:///")) as other:
        assert other.execute("SELECT username FROM users").fetchall() == [("ann",)]


async def test_writes_queued_together_share_one_transaction(store: Store) -> None:
    batches = await asyncio.gather(*(add_user(store, f"u{i}") for i in range(10)))
    assert len(set(batches)) < 10
    assert await names(store) == {f"u{i}" for i in range(10)}


async def test_a_failed_write_rolls_back_only_itself(store: Store) -> None:
    results = await asyncio.gather(
        add_user(store, "ann"),
        add_user(store, "bob", fail=ValueError("no")),
        add_user(store, "cid"),
        return_exceptions=True,
    )
    assert isinstance(results[1], ValueError)
    assert results[0] == results[2]  # one transaction for the three
    assert await names(store) == {"ann", "cid"}


async def test_a_failed_write_raises_once_what_it_saw_is_committed(store: Store) -> None:
    """The idempotency race: the loser's INSERT conflicts with the winner's row, not yet
    committed; by the time the loser's error surfaces, a reader can see that row."""
    seen_after_failure: set[str] = set()

    async def loser() -> None:
        try:
            await add_user(store, "ann")
        except sa.exc.IntegrityError:
            seen_after_failure.update(await names(store))
            return
        raise AssertionError("the second insert of the same id must fail")

    await asyncio.gather(add_user(store, "ann"), loser())
    assert seen_after_failure == {"ann"}


async def test_a_transaction_lost_under_its_writes_fails_them_all(store: Store) -> None:
    """When SQLite itself rolls the transaction back (disk full, I/O error), the writes
    that had already run in it fail too; the next ones start a new transaction."""

    async def broken() -> None:
        async with store.write() as conn:
            await conn.execute("ROLLBACK")
            raise OSError("disk full")

    results = await asyncio.gather(
        add_user(store, "ann"), broken(), add_user(store, "cid"), return_exceptions=True
    )
    assert isinstance(results[0], sqlite3.OperationalError)
    assert isinstance(results[1], OSError)
    assert isinstance(results[2], int)
    assert await names(store) == {"cid"}
    await add_user(store, "dee")
    assert await names(store) == {"cid", "dee"}
