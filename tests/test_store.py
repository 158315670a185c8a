"""The store (``server.store``), on the database of the run.

Both backends: a transaction commits or rolls back as a whole, reads see a consistent
snapshot, a transaction body may await nothing but its connection, long reads come in
chunks. SQLite: writes that queue together share one transaction and one COMMIT (group
commit) on the writer's thread, and each still succeeds or fails on its own."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
from typing import Any

import asyncpg
import pytest
import sqlalchemy as sa

from server.store import BodyAwaited, Conn, Store
from server.store.schema import now_us, users
from server.store.sqlite import GIL_SWITCH_S, SqliteStore

sqlite_only = pytest.mark.usefixtures("sqlite_store")


@pytest.fixture
def sqlite_store(store: Store) -> None:
    if not store.is_sqlite:
        pytest.skip("SQLite's writer (PostgreSQL's group commit: tests/test_group_commit.py)")


def user(name: str) -> dict[str, Any]:
    return {
        "id": name,
        "username": name,
        "username_lower": name.lower(),
        "password_hash": "!",
        "created_at": now_us(),
    }


async def add_user(store: Store, name: str, fail: BaseException | None = None) -> int:
    """Insert a user in one transaction; the id of the transaction it ran in."""

    async def body(conn: Conn) -> int:
        await conn.execute(users.insert().values(**user(name)))
        if fail is not None:
            raise fail
        return int(getattr(conn, "transaction_id", 0))

    return await store.transaction(body)


async def names(store: Store) -> set[str]:
    return {r["username"] for r in await store.fetch_all(sa.select(users.c.username))}


async def test_a_transaction_commits_whole_or_not_at_all(store: Store) -> None:
    async def half(conn: Conn) -> None:
        await conn.execute(users.insert().values(**user("ann")))
        raise ValueError("changed my mind")

    with pytest.raises(ValueError, match="changed my mind"):
        await store.transaction(half)
    assert await names(store) == set()
    await add_user(store, "bob")
    assert await names(store) == {"bob"}


async def test_a_body_that_awaits_anything_but_its_connection_is_refused(store: Store) -> None:
    async def sleepy(conn: Conn) -> None:
        await conn.execute(users.insert().values(**user("ann")))
        await asyncio.sleep(0)

    if store.is_sqlite:
        with pytest.raises(BodyAwaited):
            await store.transaction(sleepy)
        assert await names(store) == set(), "the refused body was rolled back"


async def test_insert_new_tells_the_winner_of_a_key(store: Store) -> None:
    async def claim(conn: Conn) -> bool:
        return await conn.insert_new(users, user("ann"))

    assert await store.transaction(claim) is True
    assert await store.transaction(claim) is False
    assert await names(store) == {"ann"}


RENAME = users.update().where(users.c.id == sa.bindparam("uid")).values(username=sa.bindparam("to"))
INSERT_USER = users.insert()


async def test_write_all_writes_everything_and_tells_whether_the_new_row_was_claimed(
    store: Store,
) -> None:
    await add_user(store, "ann")

    async def writes(conn: Conn, rows: list[str], new: str) -> bool:
        return await conn.write_all(
            [
                (RENAME, {"uid": "ann", "to": f"ann{len(rows)}"}),
                (INSERT_USER, [user(name) for name in rows]),
            ],
            (users, user(new)),
        )

    # One shape, then another (more rows), then the first again: each answered right.
    assert await store.transaction(lambda conn: writes(conn, ["b1"], "bob")) is True
    assert await store.transaction(lambda conn: writes(conn, ["c1", "c2", "c3"], "cy")) is True
    assert await store.transaction(lambda conn: writes(conn, ["d1"], "bob")) is False
    assert await names(store) == {"ann1", "bob", "b1", "cy", "c1", "c2", "c3", "d1"}


async def test_write_all_without_a_new_row(store: Store) -> None:
    await add_user(store, "ann")

    async def rename(conn: Conn) -> bool:
        return await conn.write_all([(RENAME, {"uid": "ann", "to": "anna"})])

    assert await store.transaction(rename) is True
    assert await names(store) == {"anna"}


@sqlite_only
async def test_a_read_sees_one_snapshot(store: Store) -> None:
    await add_user(store, "ann")
    count = sa.select(sa.func.count()).select_from(users)

    async def body(conn: Conn) -> tuple[int, int]:
        first = int(await conn.fetch_val(count))
        # Another process commits a user meanwhile: this read does not see it.
        with sqlite3.connect(store.url.removeprefix("sqlite:///")) as other:
            other.execute(
                "INSERT INTO users (id, username, username_lower, password_hash, created_at) "
                "VALUES ('bob', 'bob', 'bob', '!', 0)"
            )
        return first, int(await conn.fetch_val(count))

    assert await store.read(body) == (1, 1)
    assert await names(store) == {"ann", "bob"}


async def test_long_reads_come_in_chunks(store: Store) -> None:
    async def many(conn: Conn) -> None:
        await conn.execute_many(users.insert(), [user(f"u{i:03}") for i in range(25)])

    await store.transaction(many)
    query = sa.select(users.c.username).order_by(users.c.username)
    chunks = [rows async for rows in store.chunks(query, size=10)]
    assert [len(c) for c in chunks] == [10, 10, 5]
    assert [r["username"] for c in chunks for r in c] == [f"u{i:03}" for i in range(25)]


@sqlite_only
async def test_a_write_is_committed_when_its_transaction_returns(store: Store) -> None:
    await add_user(store, "ann")
    # Another connection (another process, say) sees it at once.
    with sqlite3.connect(store.url.removeprefix("sqlite:///")) as other:
        assert other.execute("SELECT username FROM users").fetchall() == [("ann",)]


@sqlite_only
async def test_writes_queued_together_share_one_transaction(store: Store) -> None:
    batches = await asyncio.gather(*(add_user(store, f"u{i}") for i in range(10)))
    assert len(set(batches)) < 10
    assert await names(store) == {f"u{i}" for i in range(10)}


@sqlite_only
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


@sqlite_only
async def test_a_failed_write_raises_once_what_it_saw_is_committed(store: Store) -> None:
    """The idempotency race: the loser's INSERT conflicts with the winner's row, not yet
    committed; by the time the loser's error surfaces, a reader can see that row."""
    seen_after_failure: set[str] = set()

    async def loser() -> None:
        try:
            await add_user(store, "ann")
        except sqlite3.IntegrityError:
            seen_after_failure.update(await names(store))
            return
        raise AssertionError("the second insert of the same id must fail")

    await asyncio.gather(add_user(store, "ann"), loser())
    assert seen_after_failure == {"ann"}


@sqlite_only
async def test_a_transaction_lost_under_its_writes_fails_them_all(store: Store) -> None:
    """When SQLite itself rolls the transaction back (disk full, I/O error), the writes
    that had already run in it fail too; the next ones start a new transaction."""

    async def broken(conn: Conn) -> None:
        await conn.execute("ROLLBACK")
        raise OSError("disk full")

    results = await asyncio.gather(
        add_user(store, "ann"),
        store.transaction(broken),
        add_user(store, "cid"),
        return_exceptions=True,
    )
    assert isinstance(results[0], sqlite3.OperationalError)
    assert isinstance(results[1], OSError)
    assert isinstance(results[2], int)
    assert await names(store) == {"cid"}
    await add_user(store, "dee")
    assert await names(store) == {"cid", "dee"}


@sqlite_only
async def test_a_write_waits_for_another_process_holding_the_lock(store: Store) -> None:
    """Another process's write transaction: ours waits (on the loop, not in SQLite) and
    commits once the lock is free; the loop stays free meanwhile."""
    other = sqlite3.connect(store.url.removeprefix("sqlite:///"), isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    write = asyncio.create_task(add_user(store, "ann"))
    ticks = 0
    for _ in range(20):  # the loop keeps running while the write waits
        await asyncio.sleep(0.005)
        ticks += 1
    assert not write.done() and ticks == 20
    other.execute("COMMIT")
    other.close()
    await write
    assert await names(store) == {"ann"}


@sqlite_only
async def test_a_process_starting_while_another_holds_the_file_waits_for_it(
    store: Store,
) -> None:
    """Processes starting together (web and workers) may find the file held for a moment
    (one recovering the WAL, one checkpointing as it closes): opening waits, it does not
    fail with "database is locked"."""
    path = store.url.removeprefix("sqlite:///")
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("PRAGMA locking_mode=EXCLUSIVE")
    other.execute("BEGIN EXCLUSIVE")  # holds the file until it closes
    late = SqliteStore(store.url, readers=1)
    opening = asyncio.create_task(late.connect())
    await asyncio.sleep(0.1)  # time for a failing open to have failed
    assert not opening.done()
    other.execute("COMMIT")
    other.close()
    await opening
    try:
        await add_user(late, "ann")
        assert await names(store) == {"ann"}
    finally:
        await late.disconnect()


async def test_connections_whose_transaction_could_not_end_go_back_to_the_pool(
    store: Store,
) -> None:
    """A transaction whose connection the server ended cannot roll back; the connection
    still goes back to the pool (to be replaced), so more of them than the pool holds
    leave it working. (``databases``' own transactions kept each one checked out: the
    pool ran dry and the last read waited for good; the bound is not a speed assertion.)"""
    if store.is_sqlite:
        pytest.skip("PostgreSQL's connection pool")
    from server.store.postgres import POOL_MAX

    async def ended(conn: Any) -> None:
        await conn.fetch_val(sa.text("SELECT pg_terminate_backend(pg_backend_pid())"))

    for _ in range(POOL_MAX + 1):
        with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, OSError)):
            await store.transaction(ended)
    async with asyncio.timeout(60):
        assert await store.fetch_val("SELECT 1") == 1


async def test_a_connection_goes_back_to_the_pool_without_a_reset_round_trip(
    store: Store,
) -> None:
    """settle keeps no session state, so a PostgreSQL connection is handed back without
    asyncpg's default reset statement (one more round trip for every use); one whose
    transaction failed goes back idle, rolled back."""
    if store.is_sqlite:
        pytest.skip("PostgreSQL's connection pool")
    with pytest.raises(ZeroDivisionError):
        await add_user(store, "ann", fail=ZeroDivisionError())
    await store.fetch_val("SELECT 1 AS settle_probe")
    # What each of the pool's connections ran last, seen from outside the pool.
    outside = await asyncpg.connect(store.url)
    try:
        last = await outside.fetch(
            "SELECT query, state FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            " AND backend_type = 'client backend'"
        )
    finally:
        await outside.close()
    assert "SELECT 1 AS settle_probe" in [r["query"] for r in last]
    assert {r["state"] for r in last} == {"idle"}  # none left inside a transaction
    assert await names(store) == set()


@sqlite_only
async def test_the_writer_waits_for_the_gil_a_short_switch_at_most(store: Store) -> None:
    """The writer thread holds the file's write lock for every process while its
    statements wait for the GIL: the process switches threads every GIL_SWITCH_S at
    most, not Python's 5 ms, and a shorter interval set by the host is kept."""
    assert sys.getswitchinterval() <= GIL_SWITCH_S
    before = sys.getswitchinterval()
    sys.setswitchinterval(GIL_SWITCH_S / 5)
    try:
        other = SqliteStore(store.url, readers=1)
        await other.connect()
        assert sys.getswitchinterval() == pytest.approx(GIL_SWITCH_S / 5)
        await other.disconnect()
    finally:
        sys.setswitchinterval(before)
