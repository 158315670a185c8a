"""Settlement: pending transfers posted into the double-entry ledger, as one transaction
body (``server.store``) for a whole batch; the plan itself is ``server.domain.settlement``.

Transfers settle in partitions (their sender's slot modulo ``SETTLE_PARTITIONS``): one
transaction at a time per partition, partitions side by side.

Exactly once per transfer: the batch is read and locked (SQLite's write lock, or
``FOR NO KEY UPDATE SKIP LOCKED`` row locks on PostgreSQL) inside the transaction that
posts its entries, and only transfers still pending are in it; a second run, or a run
racing another worker, finds nothing to settle, and a run killed mid-way commits nothing.

Set-based: the batch's new balances, entries and events are worked out from the locked
rows (``Plan``), then written with one statement per table (executemany), so a batch
costs a handful of round trips however many transfers it holds.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import msgspec
import sqlalchemy as sa

from server.domain.clock import now_us
from server.domain.events import Event
from server.domain.model import FailureReason, LedgerAccount, Status, Transfer
from server.domain.settlement import Plan
from server.store import Conn, Row
from server.store.ledger import BALANCE_COLUMNS, INSERT_ENTRY, INSERT_EVENT
from server.store.schema import accounts, transfers

# PostgreSQL's advisory lock of "settling partition P now" is this plus P.
SETTLE_LOCK = 0x5E771E00


def _in_partition(status: Status = Status.PENDING) -> sa.ColumnElement[bool]:
    return sa.and_(
        transfers.c.status == status.value,
        transfers.c.slot % sa.bindparam("parts") == sa.bindparam("part"),
    )


# In the order they became pending, which is when they fall due: a transfer awaiting its
# sender's passkey is another status, so it neither settles nor holds back the ones
# its sender made after it.
_DUE_PENDING = (
    sa.select(transfers)
    .where(_in_partition(), transfers.c.pending_since < sa.bindparam("before"))
    .order_by(transfers.c.pending_since, transfers.c.id)
    .limit(sa.bindparam("n"))
)
_NEXT_DUE = sa.select(sa.func.min(transfers.c.pending_since)).where(
    _in_partition(), transfers.c.pending_since >= sa.bindparam("before")
)


def _expired(status: Status) -> sa.Select[Any]:
    return (
        sa.select(transfers)
        .where(_in_partition(status), transfers.c.expires_at <= sa.bindparam("at"))
        .order_by(transfers.c.expires_at, transfers.c.id)
        .limit(sa.bindparam("n"))
    )


_EXPIRED = _expired(Status.PENDING)
_UNCONFIRMED = _expired(Status.AWAITING)
# Only ever applied to transfers read as pending (or awaiting) under the batch's locks.
_FINISH = (
    transfers.update()
    .where(transfers.c.id == sa.bindparam("tid"), transfers.c.status == sa.bindparam("was"))
    .values(
        status=sa.bindparam("outcome"),
        failure_reason=sa.bindparam("reason"),
        settled_at=sa.bindparam("at"),
        confirm_nonce=None,
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
    """Another transaction is settling this partition (PostgreSQL): nothing was done."""


@dataclasses.dataclass(frozen=True)
class Settled:
    """What one settlement transaction did: its events, whether its batch was full
    (more may be due), and when the partition's next transfer falls due (None: none
    is pending there)."""

    events: list[Event]
    full: bool
    next_due: int | None


async def expire(conn: Conn, partition: int, partitions: int, at: int, limit: int) -> list[Event]:
    """Fail, as "expired", up to ``limit`` transfers of a partition still pending at
    their expiry (the workers down for a day, say): reservations released, both accounts
    told; and cancel, as "not_confirmed", up to ``limit`` still awaiting their sender's
    passkey at theirs (only the sender is told: the recipient never knew). Under the
    partition's lock, so a transfer is settled or expired, never both; a transfer
    confirmed meanwhile is no longer awaiting, and is left alone."""
    if not await conn.try_lock(SETTLE_LOCK + partition):
        raise Busy
    where = {"at": at, "n": limit, "parts": partitions, "part": partition}
    expired = [Transfer.of(r) for r in await conn.fetch_all(conn.locking(_EXPIRED, True), where)]
    unconfirmed = [
        Transfer.of(r) for r in await conn.fetch_all(conn.locking(_UNCONFIRMED, True), where)
    ]
    if not expired and not unconfirmed:
        return []
    plan = await locked_plan(conn, expired + unconfirmed, at)
    for t in expired:
        plan.fail(t, FailureReason.EXPIRED)
    for t in unconfirmed:
        plan.unconfirmed(t)
    await write(conn, plan)
    return plan.events


# Accounts locked by one statement at most: a batch touching more locks them a chunk
# at a time, still in id order.
LOCK_CHUNK = 1024


@functools.cache
def _balances_of(size: int) -> sa.Select[Any]:
    """The balances of ``size`` accounts (parameters ``a0``, ``a1``, ...), in id order.
    One statement per size, and only powers of two are asked for: each is compiled once
    per process (and prepared once per PostgreSQL connection), not once per batch."""
    ids: list[sa.BindParameter[str]] = [sa.bindparam(f"a{i}") for i in range(size)]
    return sa.select(*BALANCE_COLUMNS).where(accounts.c.id.in_(ids)).order_by(accounts.c.id)


async def locked_plan(conn: Conn, batch: list[Transfer], at: int) -> Plan:
    """A plan for ``batch``, with every account it touches locked, in id order. Its time
    is read once they are locked (``at`` at the earliest): an entry appended after
    waiting for another transaction's locks is never dated before that one's, so each
    account's chain is in time order too (statements and balances at a time rely on it)."""
    touched = sorted({t.from_account for t in batch} | {t.to_account for t in batch})
    locked: list[Row] = []
    for start in range(0, len(touched), LOCK_CHUNK):
        chunk = touched[start : start + LOCK_CHUNK]
        # Up to the next power of two, the last id repeated (an IN list may repeat).
        size = 1 << (len(chunk) - 1).bit_length()
        ids = {f"a{i}": chunk[min(i, len(chunk) - 1)] for i in range(size)}
        locked += await conn.fetch_all(conn.locking(_balances_of(size)), ids)
    return Plan({r["id"]: LedgerAccount.of(r) for r in locked}, max(at, now_us()))


async def write(conn: Conn, plan: Plan) -> None:
    """A plan's effects, one statement per table."""
    finished = [
        {
            "tid": t.id,
            "was": was.value,
            "outcome": t.status.value,
            "reason": t.failure_reason,
            "at": t.settled_at,
        }
        for was, t in plan.finished
    ]
    await conn.execute_many(_FINISH, finished)
    await conn.execute_many(_SET_BALANCES, [_balances(a) for a in plan.accounts.values()])
    await conn.execute_many(INSERT_ENTRY, [msgspec.structs.asdict(e) for e in plan.entries])
    await conn.execute_many(INSERT_EVENT, [e.log_row() for e in plan.events])


def _balances(a: LedgerAccount) -> dict[str, object]:
    return {
        "acct": a.id,
        "posted": a.posted,
        "debits": a.pending_debits,
        "credits": a.pending_credits,
        "new_seq": a.seq,
        "entries": a.entries,
        "head": a.chain_head,
    }


async def settle(
    conn: Conn,
    partition: int,
    partitions: int,
    batch_size: int,
    ready_before: int,
    at: int,
    before_commit: Callable[[], None] | None = None,
    wait: bool = True,
) -> Settled:
    """Settle up to ``batch_size`` of a partition's transfers accepted before
    ``ready_before``, in acceptance order, in one transaction.

    One transaction settles a partition at a time (PostgreSQL: its advisory lock, which
    ``wait`` waits for, or else raises Busy; SQLite: the write lock), so a sender's
    transfers, all in its partition, settle in the order they were accepted; other
    partitions settle side by side. Each account's row is locked before its chain grows,
    so every chain stays one line.
    """
    if not await conn.try_lock(SETTLE_LOCK + partition, wait=wait):
        raise Busy
    where = {"before": ready_before, "n": batch_size, "parts": partitions, "part": partition}
    # Lock the batch's rows, skipping any a cancel is changing right now.
    rows = await conn.fetch_all(conn.locking(_DUE_PENDING, True), where)
    if not rows:
        nxt = await conn.fetch_val(_NEXT_DUE, where)
        return Settled([], False, None if nxt is None else int(nxt))
    batch = [Transfer.of(r) for r in rows]
    # Lock every account the batch touches, in id order, before changing any.
    plan = await locked_plan(conn, batch, at)
    for t in batch:
        plan.settle(t)
    await write(conn, plan)
    if before_commit is not None:
        before_commit()
    return Settled(plan.events, len(rows) == batch_size, None)
