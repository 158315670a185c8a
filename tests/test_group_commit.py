"""Acceptances waiting together commit together (group commit), and each still succeeds
or fails on its own: on PostgreSQL in one transaction that locks the group's accounts up
front (``server.store.postgres``), on SQLite in the writer's batch (``server.store.sqlite``).
Real databases; the audit runs after each test (the ``store`` fixture)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import sqlalchemy as sa

from server.domain import errors
from server.domain.clock import new_id, now_us
from server.domain.ledger import Order
from server.store import Conn, Store, ledger
from server.store.accounts import create_user
from tests.conftest import fund


async def send(store: Store, order: Order) -> ledger.Accepted:
    return await store.transaction(
        lambda conn: ledger.accept(conn, order, new_id("tr"), now_us()),
        accounts=ledger.locked_by(order),
    )


async def people(store: Store, n: int, cents: int) -> list[tuple[str, str]]:
    """``n`` users, each with an account holding ``cents``: (user id, account id)."""
    made = []
    for _ in range(n):
        user_id, account = await create_user(store, new_id("user"), "hash")
        if cents:
            await fund(store, account, cents)
        made.append((user_id, account))
    return made


async def balance_of(store: Store, account: str) -> tuple[int, int]:
    row = await store.fetch_one(
        sa.text("SELECT pending_debits, pending_credits FROM accounts WHERE id = :a"),
        {"a": account},
    )
    assert row is not None
    return row["pending_debits"], row["pending_credits"]


async def test_acceptances_waiting_together_commit_together_each_with_its_own_answer(
    store: Store,
) -> None:
    """Eight senders pay one account at once, and a ninth who cannot afford it: eight
    transfers, in fewer transactions than transfers on PostgreSQL (rows written by one
    transaction share its ``xmin``); the ninth refused alone."""
    senders = await people(store, 8, 500)
    [(_, sink)] = await people(store, 1, 0)
    [(poor_user, poor)] = await people(store, 1, 0)
    orders = [Order(user, account, sink, 100) for user, account in senders]
    orders.append(Order(poor_user, poor, sink, 100))
    results = await asyncio.gather(*(send(store, o) for o in orders), return_exceptions=True)
    *accepted, refused = results
    assert isinstance(refused, errors.InsufficientFunds)
    assert all(isinstance(a, ledger.Accepted) and not a.replayed for a in accepted)
    ids = [a.transfer.id for a in accepted if isinstance(a, ledger.Accepted)]
    assert await balance_of(store, sink) == (0, 800)
    # Each acceptance took the next seq of the recipient's log: 8 in a row, none twice.
    seqs = await store.fetch_all(
        sa.text("SELECT seq FROM account_events WHERE account_id = :a ORDER BY seq"), {"a": sink}
    )
    assert [r["seq"] for r in seqs][-8:] == list(range(seqs[-1]["seq"] - 7, seqs[-1]["seq"] + 1))
    if not store.is_sqlite:
        rows = await store.fetch_all(
            sa.text("SELECT DISTINCT xmin::text AS x FROM transfers WHERE id = ANY(:ids)"),
            {"ids": ids},
        )
        assert len(rows) < len(ids), "some committed together"


async def test_a_body_failing_after_its_writes_takes_none_of_the_group_with_it(
    store: Store,
) -> None:
    """A body that wrote, then raised: its write is rolled back, and the bodies that
    waited with it are committed (each in a transaction of its own, on PostgreSQL)."""
    (alice, alice_acct), (bob, bob_acct), (_, sink) = await people(store, 3, 500)

    async def wrote_then_failed(conn: Conn) -> None:
        await conn.execute(
            sa.text("UPDATE accounts SET pending_debits = pending_debits + 1 WHERE id = :a"),
            {"a": alice_acct},
        )
        raise RuntimeError("after writing")

    results: tuple[Any, ...] = await asyncio.gather(
        send(store, Order(alice, alice_acct, sink, 100)),
        store.transaction(wrote_then_failed, accounts=[alice_acct]),
        send(store, Order(bob, bob_acct, sink, 200)),
        send(store, Order(alice, alice_acct, sink, 50)),
        return_exceptions=True,
    )
    assert isinstance(results[1], RuntimeError)
    assert [type(r) for r in results[::2]] == [ledger.Accepted, ledger.Accepted]
    assert isinstance(results[3], ledger.Accepted)
    assert await balance_of(store, alice_acct) == (150, 0)
    assert await balance_of(store, bob_acct) == (200, 0)
    assert await balance_of(store, sink) == (0, 350)


async def test_one_key_twice_in_one_group_is_one_transfer(store: Store) -> None:
    """The same request twice at once, with one Idempotency-Key: the second finds the
    first's key in the same transaction (or after its commit) and answers the same."""
    [(user, account)] = await people(store, 1, 500)
    [(_, sink)] = await people(store, 1, 0)
    order = Order(user, account, sink, 100, idempotency_key="pay-once")
    first, second = await asyncio.gather(send(store, order), send(store, order))
    assert first.transfer.id == second.transfer.id
    assert sorted([first.replayed, second.replayed]) == [False, True]
    assert await balance_of(store, account) == (100, 0)


async def test_a_group_whose_statement_fails_runs_each_body_alone(store: Store) -> None:
    """A statement failing in a grouped body aborts the group's transaction; every
    body then runs in a transaction of its own, and only the failing one fails."""
    if store.is_sqlite:
        pytest.skip("PostgreSQL's group transactions (SQLite rolls a body back alone)")
    (alice, alice_acct), (_, sink) = await people(store, 2, 500)

    async def bad_statement(conn: Conn) -> None:
        await conn.fetch_val(sa.text("SELECT 1 / 0"))

    results: tuple[Any, ...] = await asyncio.gather(
        send(store, Order(alice, alice_acct, sink, 100)),
        send(store, Order(alice, alice_acct, sink, 100)),
        store.transaction(bad_statement, accounts=[alice_acct]),
        send(store, Order(alice, alice_acct, sink, 100)),
        return_exceptions=True,
    )
    assert [isinstance(r, ledger.Accepted) for r in results] == [True, True, False, True]
    assert "division by zero" in str(results[2])
    assert await balance_of(store, alice_acct) == (300, 0)


async def test_a_group_chosen_to_break_a_deadlock_runs_each_body_alone(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """Another transaction holds the group's last account and then wants its first: a
    deadlock, which PostgreSQL breaks by failing the one that waited first, the group.
    Its bodies then run alone, once the other transaction ends: nothing is lost."""
    if store.is_sqlite:
        pytest.skip("PostgreSQL's row locks (SQLite's writer holds the file's lock)")
    import asyncpg

    (alice, alice_acct), (bob, bob_acct), (_, sink) = await people(store, 3, 500)
    outside = await asyncpg.connect(store.url)
    lock = "SELECT id FROM accounts WHERE id = $1 FOR NO KEY UPDATE"
    try:
        order = await outside.fetch(
            "SELECT id FROM accounts WHERE id = ANY($1::text[]) ORDER BY id",
            [alice_acct, bob_acct, sink],
        )
        first, last = order[0]["id"], order[-1]["id"]
        # The transaction that finds a deadlock is the one failed: the group's finds it
        # after PostgreSQL's default second, this one would after a minute.
        await outside.execute("SET deadlock_timeout = '60s'")
        other = outside.transaction()
        await other.start()
        await outside.execute(lock, last)
        group = asyncio.gather(
            send(store, Order(alice, alice_acct, sink, 100)),
            send(store, Order(bob, bob_acct, sink, 200)),
        )
        waiting = "SELECT count(*) FROM pg_locks WHERE NOT granted AND locktype = 'transactionid'"
        # The group locks up to ``last``, then waits; PostgreSQL tells nobody of a lock
        # wait, so its lock table is looked at until the wait shows.
        async with asyncio.timeout(30):
            while not await outside.fetchval(waiting):  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        with caplog.at_level("WARNING", logger="settle.store"):
            await outside.execute(lock, first)  # the deadlock: the group is failed
            await other.rollback()
            accepted = await group
    finally:
        await outside.close()
    assert all(isinstance(a, ledger.Accepted) for a in accepted)
    assert "each runs alone" in caplog.text
    assert await balance_of(store, sink) == (0, 300)
