"""Settlement: pending transfers posted into the double-entry ledger, as one transaction
body (``server.store``) for a whole batch.

Exactly once per transfer: the batch is read and locked (SQLite's write lock, or
``FOR NO KEY UPDATE SKIP LOCKED`` row locks on PostgreSQL) inside the transaction that posts its
entries, and only transfers still pending are in it; a second run, or a run racing
another worker, finds nothing to settle, and a run killed mid-way commits nothing.

Set-based: the batch's new balances, entries and events are worked out in Python from
the locked rows (``Plan``), then written with one statement per table (executemany), so
a batch costs a handful of round trips however many transfers it holds.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import sqlalchemy as sa

from server import chain, views
from server.events import COMPLETED, FAILED, Event
from server.ledger import BALANCE_COLUMNS, INSERT_ENTRY, INSERT_EVENT
from server.schema import accounts, now_us, transfers
from server.store import Conn, Row

# The advisory lock key of "settling now" (PostgreSQL).
SETTLE_LOCK = 0x5E771E

_OWN_PENDING = sa.select(transfers).where(
    transfers.c.id == sa.bindparam("tid"), transfers.c.status == "pending"
)
_DUE_PENDING = (
    sa.select(transfers)
    .where(
        transfers.c.status == "pending",
        transfers.c.created_at < sa.bindparam("before"),
        transfers.c.id != sa.bindparam("tid"),
    )
    .order_by(transfers.c.created_at, transfers.c.id)
    .limit(sa.bindparam("n"))
)
_EXPIRED = (
    sa.select(transfers)
    .where(transfers.c.status == "pending", transfers.c.expires_at <= sa.bindparam("at"))
    .order_by(transfers.c.expires_at, transfers.c.id)
    .limit(sa.bindparam("n"))
)
# Only ever applied to transfers read as pending under the batch's locks.
_FINISH = (
    transfers.update()
    .where(transfers.c.id == sa.bindparam("tid"), transfers.c.status == "pending")
    .values(
        status=sa.bindparam("outcome"),
        failure_reason=sa.bindparam("reason"),
        settled_at=sa.bindparam("at"),
    )
)
_SET_BALANCES = (
    accounts.update()
    .where(accounts.c.id == sa.bindparam("acct"))
    .values(
        posted=sa.bindparam("posted"),
        pending_debits=sa.bindparam("debits"),
        pending_credits=sa.bindparam("credits"),
        seq=sa.bindparam("new_seq"),
        entries=sa.bindparam("entries"),
        chain_head=sa.bindparam("head"),
    )
)


class Busy(Exception):
    """Another settlement transaction holds the lock (PostgreSQL): nothing was settled;
    try again shortly."""


async def expire(conn: Conn, at: int, limit: int) -> list[Event]:
    """Fail, as "expired", up to ``limit`` transfers still pending at their expiry (the
    workers down for a day, say): reservations released, both accounts told. Under the
    same lock as settlement, so a transfer is settled or expired, never both."""
    if not await conn.try_lock(SETTLE_LOCK):
        raise Busy
    batch = list(await conn.fetch_all(conn.locking(_EXPIRED, True), {"at": at, "n": limit}))
    if not batch:
        return []
    plan = await locked_plan(conn, batch, at)
    for row in batch:
        plan.fail(row, "expired")
    await write(conn, plan)
    return plan.events


async def locked_plan(conn: Conn, batch: list[Row], at: int) -> Plan:
    """A plan for ``batch``, with every account it touches locked, in id order. Its time
    is read once they are locked (``at`` at the earliest): an entry appended after
    waiting for another transaction's locks is never dated before that one's, so each
    account's chain is in time order too (statements and balances at a time rely on it)."""
    touched = sorted({r["from_account"] for r in batch} | {r["to_account"] for r in batch})
    locked = await conn.fetch_all(
        conn.locking(
            sa.select(*BALANCE_COLUMNS).where(accounts.c.id.in_(touched)).order_by(accounts.c.id)
        )
    )
    return Plan({r["id"]: dict(r) for r in locked}, max(at, now_us()))


async def write(conn: Conn, plan: Plan) -> None:
    """A plan's effects, one statement per table."""
    await conn.execute_many(_FINISH, plan.finished)
    await conn.execute_many(_SET_BALANCES, plan.balances())
    await conn.execute_many(INSERT_ENTRY, plan.entries)
    await conn.execute_many(INSERT_EVENT, [e.log_row() for e in plan.events])


async def settle(
    conn: Conn,
    transfer_id: str,
    batch_size: int,
    ready_before: int,
    at: int,
    before_commit: Callable[[], None] | None = None,
    wait: bool = False,
) -> list[Event]:
    """Settle ``transfer_id`` and, in the same transaction, up to ``batch_size - 1`` other
    pending transfers accepted before ``ready_before`` (group commit), in acceptance
    order. Returns the events of every transfer it settled.

    On PostgreSQL one settlement transaction runs at a time (an advisory lock), which
    keeps acceptance order per account across workers. A run that finds the lock taken
    settles nothing and raises Busy (the caller retries), or with ``wait`` waits its turn
    and then settles what is due by then.
    """
    if not await conn.try_lock(SETTLE_LOCK, wait=wait):
        raise Busy
    # Lock the batch's rows, skipping any a cancel is changing right now.
    batch = list(await conn.fetch_all(conn.locking(_OWN_PENDING, True), {"tid": transfer_id}))
    if batch_size > 1:
        batch += await conn.fetch_all(
            conn.locking(_DUE_PENDING, True),
            {"tid": transfer_id, "before": ready_before, "n": batch_size - 1},
        )
    if not batch:
        return []
    batch.sort(key=lambda r: (r["created_at"], r["id"]))
    # Lock every account the batch touches, in id order, before changing any.
    plan = await locked_plan(conn, batch, at)
    for row in batch:
        plan.settle(row)
    await write(conn, plan)
    if before_commit is not None:
        before_commit()
    return plan.events


class Plan:
    """A batch's effects, computed from its locked account rows, in acceptance order."""

    def __init__(self, accounts_by_id: dict[str, dict[str, Any]], at: int) -> None:
        self.accounts = accounts_by_id
        self.at = at
        self.finished: list[dict[str, Any]] = []
        self.entries: list[dict[str, Any]] = []
        self.events: list[Event] = []

    def settle(self, row: Row) -> None:
        """Complete the transfer; fail it when it expired, or its destination is frozen."""
        if row["expires_at"] is not None and row["expires_at"] <= self.at:
            self.fail(row, "expired")
        elif self.accounts[row["to_account"]]["status"] == "frozen":
            self.fail(row, "account_frozen")
        else:
            amount, tid = row["amount"], row["id"]
            self._change(row["from_account"], tid, posted=-amount, pending_debits=-amount)
            self._change(row["to_account"], tid, posted=amount, pending_credits=-amount)
            self._finish(row, COMPLETED, None)

    def fail(self, row: Row, reason: str) -> None:
        """Fail the transfer: its reservation is released, nothing is posted."""
        amount, tid = row["amount"], row["id"]
        self._change(row["from_account"], tid, pending_debits=-amount)
        self._change(row["to_account"], tid, pending_credits=-amount)
        self._finish(row, FAILED, reason)

    def deposit(self, row: Row) -> None:
        """Post a transfer completed at once (a deposit: nothing was reserved)."""
        amount, tid = row["amount"], row["id"]
        self._change(row["from_account"], tid, posted=-amount)
        self._change(row["to_account"], tid, posted=amount)
        self._finish(row, COMPLETED, None)

    def _finish(self, row: Row, outcome: str, reason: str | None) -> None:
        src, dst = row["from_account"], row["to_account"]
        status = outcome.removeprefix("transfer.")
        self.finished.append({"tid": row["id"], "outcome": status, "reason": reason, "at": self.at})
        transfer = views.transfer_of(
            {**row, "status": status, "failure_reason": reason, "settled_at": self.at}
        )
        for account_id in (src, dst):
            self.events.append(Event.of(outcome, self.accounts[account_id], transfer, self.at))

    def _change(
        self,
        account_id: str,
        transfer_id: str,
        posted: int = 0,
        pending_debits: int = 0,
        pending_credits: int = 0,
    ) -> None:
        """One transfer's change to one account: its pending sums, a ledger entry
        appended to its chain if anything is posted, and its next event seq."""
        account = self.accounts[account_id]
        account["pending_debits"] += pending_debits
        account["pending_credits"] += pending_credits
        if posted:
            self.entries.append(chain.append(account, transfer_id, posted, self.at))
        account["seq"] += 1

    def balances(self) -> list[Mapping[str, Any]]:
        return [
            {
                "acct": a["id"],
                "posted": a["posted"],
                "debits": a["pending_debits"],
                "credits": a["pending_credits"],
                "new_seq": a["seq"],
                "entries": a["entries"],
                "head": a["chain_head"],
            }
            for a in self.accounts.values()
        ]
