"""Ledger operations: the transfer state machine and the double-entry rules.

Plain async functions over a ``Store``; they know nothing of HTTP, arq or Redis. Each
operation is one database transaction that changes balances, appends one event per
touched account (with the account's next ``seq``) and returns those events, which the
caller publishes after the commit.

Locking: every account row is updated in ascending id order within a transaction, so
two transactions touching the same two accounts on PostgreSQL queue instead of deadlocking.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects import sqlite as sqlite_dialect

from server import errors
from server.db import Conn, Store
from server.money import format_amount
from server.schema import (
    account_events,
    accounts,
    idempotency_keys,
    ledger_entries,
    new_id,
    now_us,
    transfers,
    users,
)

Row = Any  # a databases Record: mapping-like


@dataclasses.dataclass(frozen=True)
class Event:
    """One appended account event: what the stream sends, and the log replays."""

    account_id: str
    seq: int
    message: dict[str, Any]

    def to_json(self) -> bytes:
        return orjson.dumps(self.message)


@dataclasses.dataclass(frozen=True)
class Accepted:
    transfer: dict[str, Any]
    balance: dict[str, str]
    events: list[Event]
    replayed: bool = False
    response: bytes = b""


def iso(us: int | None) -> str | None:
    if us is None:
        return None
    return datetime.fromtimestamp(us / 1_000_000, tz=UTC).isoformat(timespec="milliseconds")


def balance_of(row: Row) -> dict[str, str]:
    posted, debits, credits = row["posted"], row["pending_debits"], row["pending_credits"]
    return {
        "posted": format_amount(posted),
        "pending_debits": format_amount(debits),
        "pending_credits": format_amount(credits),
        "available": format_amount(posted - debits),
        "projected": format_amount(posted - debits + credits),
    }


def account_of(row: Row, owner: str) -> dict[str, Any]:
    return {
        "id": row["id"],
        "name": row["name"],
        "owner": owner,
        "currency": row["currency"],
        "status": row["status"],
        "balance": balance_of(row),
        "seq": row["seq"],
    }


def transfer_of(row: Row) -> dict[str, Any]:
    created, settled = row["created_at"], row["settled_at"]
    return {
        "id": row["id"],
        "from_account": row["from_account"],
        "to_account": row["to_account"],
        "amount": format_amount(row["amount"]),
        "currency": row["currency"],
        "memo": row["memo"],
        "status": row["status"],
        "failure_reason": row["failure_reason"],
        "created_at": iso(created),
        "settled_at": iso(settled),
        # The consistency window this transfer went through, shown to users as
        # "settled in 4 ms".
        "settled_in_ms": None if settled is None else round((settled - created) / 1000, 1),
    }


_BALANCE_COLS = (
    accounts.c.id,
    accounts.c.posted,
    accounts.c.pending_debits,
    accounts.c.pending_credits,
    accounts.c.seq,
    accounts.c.status,
    accounts.c.kind,
)


_MOVE = (
    accounts.update()
    .where(accounts.c.id == sa.bindparam("acct"))
    .values(
        posted=accounts.c.posted + sa.bindparam("d_posted"),
        pending_debits=accounts.c.pending_debits + sa.bindparam("d_debits"),
        pending_credits=accounts.c.pending_credits + sa.bindparam("d_credits"),
        seq=accounts.c.seq + 1,
    )
    .returning(*_BALANCE_COLS)
)
# The reservation: applied only if the account is active and can spend ``need`` now,
# checked and applied in one statement (atomic on SQLite and PostgreSQL).
_RESERVE = _MOVE.where(
    accounts.c.status == "active",
    sa.or_(
        accounts.c.kind == "funding",
        accounts.c.posted - accounts.c.pending_debits >= sa.bindparam("need"),
    ),
)
# PostgreSQL: the advisory lock key of "settling now".
_SETTLE_LOCK = 0x5E771E
_INSERT_EVENT = account_events.insert()
_INSERT_TRANSFER = transfers.insert()
_INSERT_ENTRY = ledger_entries.insert()
_ACCOUNT = sa.select(accounts).where(accounts.c.id == sa.bindparam("acct"))
_OWN_ACCOUNT = _ACCOUNT.where(accounts.c.user_id == sa.bindparam("uid"))


async def _move(
    conn: Conn, account_id: str, change: dict[str, int], need: int | None = None
) -> Row | None:
    """Add ``change`` (posted / pending_debits / pending_credits deltas) to an account's
    balances and take its next event seq, in one atomic UPDATE.

    With ``need``, this is a reservation: it happens only if the account is active and
    its available balance covers ``need``; otherwise nothing changes and None is returned.
    """
    values = {
        "acct": account_id,
        "d_posted": change.get("posted", 0),
        "d_debits": change.get("pending_debits", 0),
        "d_credits": change.get("pending_credits", 0),
    }
    if need is None:
        return await conn.fetch_one(_MOVE, values)
    return await conn.fetch_one(_RESERVE, {**values, "need": need})


def _event(
    account: Row, type_: str, transfer: dict[str, Any], at: int
) -> tuple[Event, dict[str, Any]]:
    """An account's next event (its ``seq`` already taken), and its ``account_events`` row."""
    message = {
        "type": type_,
        "account": account["id"],
        "seq": account["seq"],
        "transfer": transfer,
        "balance": balance_of(account),
    }
    row = {
        "account_id": account["id"],
        "seq": account["seq"],
        "type": type_,
        "transfer_id": transfer["id"],
        "payload": orjson.dumps(message).decode(),
        "created_at": at,
    }
    return Event(account["id"], account["seq"], message), row


async def _append(conn: Conn, account: Row, type_: str, transfer: dict[str, Any], at: int) -> Event:
    event, row = _event(account, type_, transfer, at)
    await conn.execute(_INSERT_EVENT, row)
    return event


async def _move_pair(
    conn: Conn,
    src: str,
    dst: str,
    src_change: dict[str, int],
    dst_change: dict[str, int],
    need: int | None = None,
) -> tuple[Row | None, Row | None]:
    """Apply both account changes in ascending id order (the deadlock-free order)."""
    if src < dst:
        src_row = await _move(conn, src, src_change, need)
        if src_row is None:
            return None, None
        return src_row, await _move(conn, dst, dst_change)
    dst_row = await _move(conn, dst, dst_change)
    return await _move(conn, src, src_change, need), dst_row


def request_hash(from_account: str, to_account: str, amount: int, memo: str) -> str:
    body = orjson.dumps([from_account, to_account, amount, memo])
    return hashlib.sha256(body).hexdigest()


_IDEMPOTENCY_KEY = sa.select(idempotency_keys).where(
    idempotency_keys.c.user_id == sa.bindparam("uid"), idempotency_keys.c.key == sa.bindparam("key")
)
# Claim a key for this request; no row back: another request holds it.
_CLAIM_KEY = {
    dialect: dialect.insert(idempotency_keys)
    .on_conflict_do_nothing()
    .returning(idempotency_keys.c.key)
    for dialect in (sqlite_dialect, postgresql)
}


async def _replay(store: Store, user_id: str, key: str, digest: str) -> Accepted | None:
    row = await store.fetch_one(_IDEMPOTENCY_KEY, {"uid": user_id, "key": key})
    if row is None:
        return None
    if row["request_hash"] != digest:
        raise errors.IdempotencyKeyReused(
            "this Idempotency-Key was already used for a different transfer"
        )
    return Accepted({}, {}, [], replayed=True, response=row["response"].encode())


class _KeyTaken(Exception):
    """Another request with the same idempotency key committed first."""


async def accept_transfer(
    store: Store,
    user_id: str,
    from_account: str,
    to_account: str,
    amount: int,
    memo: str = "",
    idempotency_key: str | None = None,
) -> Accepted:
    """Accept a transfer as pending: reserve the amount and log the events, atomically."""
    digest = request_hash(from_account, to_account, amount, memo)
    if idempotency_key is not None:
        replay = await _replay(store, user_id, idempotency_key, digest)
        if replay is not None:
            return replay

    src = await store.fetch_one(_OWN_ACCOUNT, {"acct": from_account, "uid": user_id})
    if src is None:
        raise errors.AccountNotFound("no such account of yours", "from_account")
    dst = await store.fetch_one(_ACCOUNT, {"acct": to_account})
    if dst is None or dst["kind"] != "user":
        raise errors.AccountNotFound("no such recipient account", "to_account")
    if src["id"] == dst["id"]:
        raise errors.SameAccount("cannot transfer to the same account", "to_account")
    if src["currency"] != dst["currency"]:
        raise errors.CurrencyMismatch(
            f"accounts hold different currencies ({src['currency']} and {dst['currency']})",
            "to_account",
        )
    for row, field in ((src, "from_account"), (dst, "to_account")):
        if row["status"] != "active":
            raise errors.AccountFrozen("the account is frozen", field)

    at = now_us()
    transfer_id = new_id("tr")
    try:
        async with store.write() as conn:
            src_row, dst_row = await _move_pair(
                conn,
                from_account,
                to_account,
                {"pending_debits": amount},
                {"pending_credits": amount},
                need=amount,
            )
            if src_row is None or dst_row is None:
                # Re-read inside the transaction to say which rule refused it.
                now = await conn.fetch_one(sa.select(accounts).where(accounts.c.id == from_account))
                if now is not None and now["status"] != "active":
                    raise errors.AccountFrozen("the account is frozen", "from_account")
                raise errors.InsufficientFunds(
                    "the available balance is lower than the amount", "amount"
                )
            if dst_row["status"] != "active":
                raise errors.AccountFrozen("the account is frozen", "to_account")
            values = {
                "id": transfer_id,
                "from_account": from_account,
                "to_account": to_account,
                "amount": amount,
                "currency": src["currency"],
                "memo": memo,
                "status": "pending",
                "failure_reason": None,
                "created_by": user_id,
                "created_at": at,
                "settled_at": None,
            }
            await conn.execute(_INSERT_TRANSFER, values)
            transfer = transfer_of(values)
            events = [
                await _append(conn, src_row, "transfer.pending", transfer, at),
                await _append(conn, dst_row, "transfer.pending", transfer, at),
            ]
            balance = balance_of(src_row)
            response = orjson.dumps({**transfer, "balance": balance})
            if idempotency_key is not None:
                claim = _CLAIM_KEY[sqlite_dialect if store.is_sqlite else postgresql]
                taken = await conn.fetch_one(
                    claim,
                    {
                        "user_id": user_id,
                        "key": idempotency_key,
                        "request_hash": digest,
                        "transfer_id": transfer_id,
                        "response": response.decode(),
                        "created_at": at,
                    },
                )
                if taken is None:
                    raise _KeyTaken
    except _KeyTaken:
        # Lost the race to an identical request: everything above was rolled back.
        replay = await _replay(store, user_id, idempotency_key or "", digest)
        assert replay is not None
        return replay
    return Accepted(transfer, balance, events, response=response)


async def settle(
    store: Store,
    transfer_id: str,
    batch_size: int,
    ready_before: int,
    before_commit: Callable[[], None] | None = None,
) -> list[Event]:
    """Settle ``transfer_id`` and, in the same transaction, up to ``batch_size - 1`` other
    pending transfers accepted before ``ready_before`` (group commit), in acceptance order.

    Exactly once per transfer: the batch is read and locked (SQLite's write lock, or
    ``FOR UPDATE`` row locks on PostgreSQL) inside the transaction that posts its entries,
    and only transfers still pending are in it; a second run, or a run racing another
    worker, finds nothing to settle, and a run killed mid-way commits nothing.

    Set-based: the batch's new balances, entries and events are worked out in Python from
    the locked rows, then written with one statement per table (executemany), so a batch
    costs a handful of round trips however many transfers it holds.

    On PostgreSQL one settlement transaction runs at a time (an advisory lock), which
    keeps acceptance order per account across workers. A run that finds the lock taken
    settles nothing; the caller retries.
    """
    async with store.write() as conn:
        if not store.is_sqlite:
            got = await conn.fetch_val(_TRY_SETTLE_LOCK)
            if not got:
                return []
        # PostgreSQL: lock the batch's rows, skipping any a cancel is changing right now.
        own, due = (_OWN_PENDING, _DUE_PENDING) if store.is_sqlite else _PG_PENDING
        batch = list(await conn.fetch_all(own, {"tid": transfer_id}))
        if batch_size > 1:
            batch += await conn.fetch_all(
                due, {"tid": transfer_id, "before": ready_before, "n": batch_size - 1}
            )
        if not batch:
            return []
        batch.sort(key=lambda r: (r["created_at"], r["id"]))
        touched = sorted({r["from_account"] for r in batch} | {r["to_account"] for r in batch})
        # Lock every account the batch touches, in id order, before changing any.
        locked = await conn.fetch_all(
            store.for_update(
                sa.select(*_BALANCE_COLS).where(accounts.c.id.in_(touched)).order_by(accounts.c.id)
            )
        )
        plan = _SettlementPlan({r["id"]: dict(r) for r in locked}, now_us())
        for row in batch:
            plan.settle(row)
        await conn.execute_many(_FINISH, plan.finished)
        await conn.execute_many(_SET_BALANCES, plan.balances())
        await conn.execute_many(_INSERT_ENTRY, plan.entries)
        await conn.execute_many(_INSERT_EVENT, plan.event_rows)
        if before_commit is not None:
            before_commit()
        return plan.events


_TRY_SETTLE_LOCK = sa.select(sa.func.pg_try_advisory_xact_lock(_SETTLE_LOCK))
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
_PG_PENDING = (
    _OWN_PENDING.with_for_update(skip_locked=True),
    _DUE_PENDING.with_for_update(skip_locked=True),
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
    )
)


class _SettlementPlan:
    """A batch's effects, computed from its locked account rows, in acceptance order."""

    def __init__(self, accounts_by_id: dict[str, dict[str, Any]], at: int) -> None:
        self.accounts = accounts_by_id
        self.at = at
        self.finished: list[dict[str, Any]] = []
        self.entries: list[dict[str, Any]] = []
        self.event_rows: list[dict[str, Any]] = []
        self.events: list[Event] = []

    def settle(self, row: Row) -> None:
        """Complete the transfer, or fail it when its destination is frozen."""
        amount, src, dst = row["amount"], row["from_account"], row["to_account"]
        if self.accounts[dst]["status"] == "frozen":
            outcome, reason = "failed", "account_frozen"
            self._change(src, pending_debits=-amount)
            self._change(dst, pending_credits=-amount)
        else:
            outcome, reason = "completed", None
            self._change(src, posted=-amount, pending_debits=-amount)
            self._change(dst, posted=amount, pending_credits=-amount)
            self.entries += _entries(row, self.at)
        self.finished.append(
            {"tid": row["id"], "outcome": outcome, "reason": reason, "at": self.at}
        )
        transfer = transfer_of(
            {**row, "status": outcome, "failure_reason": reason, "settled_at": self.at}
        )
        for account_id in (src, dst):
            event, event_row = _event(
                self.accounts[account_id], f"transfer.{outcome}", transfer, self.at
            )
            self.events.append(event)
            self.event_rows.append(event_row)

    def _change(self, account_id: str, **deltas: int) -> None:
        account = self.accounts[account_id]
        for column, delta in deltas.items():
            account[column] += delta
        account["seq"] += 1

    def balances(self) -> list[dict[str, Any]]:
        return [
            {
                "acct": a["id"],
                "posted": a["posted"],
                "debits": a["pending_debits"],
                "credits": a["pending_credits"],
                "new_seq": a["seq"],
            }
            for a in self.accounts.values()
        ]


def _entries(transfer: Row, at: int) -> list[dict[str, Any]]:
    """A completed transfer's two ledger entries: -amount from the source, +amount to
    the destination."""
    amount = transfer["amount"]
    return [
        {
            "transfer_id": transfer["id"],
            "account_id": transfer["from_account"],
            "amount": -amount,
            "created_at": at,
        },
        {
            "transfer_id": transfer["id"],
            "account_id": transfer["to_account"],
            "amount": amount,
            "created_at": at,
        },
    ]


async def cancel_transfer(
    store: Store, user_id: str, transfer_id: str
) -> tuple[dict[str, Any], list[Event]]:
    """Cancel a pending transfer on behalf of its sender, releasing the reservation."""
    row = await store.fetch_one(
        sa.select(transfers)
        .join(accounts, accounts.c.id == transfers.c.from_account)
        .where(transfers.c.id == transfer_id, accounts.c.user_id == user_id)
    )
    if row is None:
        raise errors.TransferNotFound("no such transfer of yours")
    async with store.write() as conn:
        at = now_us()
        claimed = await conn.fetch_one(
            transfers.update()
            .where(transfers.c.id == transfer_id, transfers.c.status == "pending")
            .values(status="cancelled", settled_at=at)
            .returning(*transfers.c)
        )
        if claimed is None:
            raise errors.NotPending("the transfer is no longer pending")
        amount = claimed["amount"]
        src_row, dst_row = await _move_pair(
            conn,
            claimed["from_account"],
            claimed["to_account"],
            {"pending_debits": -amount},
            {"pending_credits": -amount},
        )
        assert src_row is not None and dst_row is not None
        transfer = transfer_of(claimed)
        events = [
            await _append(conn, src_row, "transfer.cancelled", transfer, at),
            await _append(conn, dst_row, "transfer.cancelled", transfer, at),
        ]
    return transfer, events


async def create_user(
    store: Store, username: str, password_hash: str, currency: str = "USD"
) -> tuple[str, str]:
    """Create a user and their first account; returns (user id, account id)."""
    user_id, account_id, at = new_id("usr"), new_id("acc"), now_us()
    async with store.write() as conn:
        exists = await conn.fetch_one(sa.select(users.c.id).where(users.c.username == username))
        if exists is not None:
            raise errors.InvalidField(f"user {username!r} already exists", "username")
        await conn.execute(
            users.insert().values(
                id=user_id, username=username, password_hash=password_hash, created_at=at
            )
        )
        await conn.execute(
            accounts.insert().values(
                id=account_id,
                user_id=user_id,
                name="Main",
                currency=currency,
                kind="user",
                status="active",
                created_at=at,
            )
        )
    return user_id, account_id


BANK_USERNAME = "bank"


async def funding_account(store: Store, currency: str) -> str:
    """The bank's funding account for a currency, created on first use."""
    query = sa.select(accounts.c.id).where(
        accounts.c.kind == "funding", accounts.c.currency == currency
    )
    found = await store.fetch_val(query)
    if found is not None:
        return str(found)
    async with store.write() as conn:
        found = await conn.fetch_val(query)
        if found is not None:
            return str(found)
        bank = await conn.fetch_val(sa.select(users.c.id).where(users.c.username == BANK_USERNAME))
        at = now_us()
        if bank is None:
            bank = new_id("usr")
            # "!" is never a valid scrypt hash: nobody can log in as the bank.
            await conn.execute(
                users.insert().values(
                    id=bank,
                    username=BANK_USERNAME,
                    password_hash="!",  # noqa: S106
                    created_at=at,
                )
            )
        account_id = new_id("acc")
        await conn.execute(
            accounts.insert().values(
                id=account_id,
                user_id=bank,
                name=f"Funding {currency}",
                currency=currency,
                kind="funding",
                status="active",
                created_at=at,
            )
        )
    return account_id


async def deposit(store: Store, account_id: str, amount: int, memo: str = "Deposit") -> list[Event]:
    """Fund a user account from the bank's funding account, through the ledger."""
    dst = await store.fetch_one(sa.select(accounts).where(accounts.c.id == account_id))
    if dst is None or dst["kind"] != "user":
        raise errors.AccountNotFound(f"no user account {account_id!r}")
    src_id = await funding_account(store, dst["currency"])
    bank = await store.fetch_val(sa.select(accounts.c.user_id).where(accounts.c.id == src_id))
    async with store.write() as conn:
        at = now_us()
        values = {
            "id": new_id("tr"),
            "from_account": src_id,
            "to_account": account_id,
            "amount": amount,
            "currency": dst["currency"],
            "memo": memo,
            "status": "completed",
            "failure_reason": None,
            "created_by": bank,
            "created_at": at,
            "settled_at": at,
        }
        await conn.execute(transfers.insert().values(**values))
        src_row, dst_row = await _move_pair(
            conn, src_id, account_id, {"posted": -amount}, {"posted": amount}
        )
        assert src_row is not None and dst_row is not None
        await conn.execute_many(_INSERT_ENTRY, _entries(values, at))
        transfer = transfer_of(values)
        return [
            await _append(conn, src_row, "transfer.completed", transfer, at),
            await _append(conn, dst_row, "transfer.completed", transfer, at),
        ]


async def set_status(store: Store, account_id: str, status: str) -> None:
    """Freeze or unfreeze an account. Pending transfers into a frozen account fail at
    settlement (``account_frozen``)."""
    async with store.write() as conn:
        changed = await conn.fetch_val(
            accounts.update()
            .where(accounts.c.id == account_id, accounts.c.kind == "user")
            .values(status=status)
            .returning(accounts.c.id)
        )
    if changed is None:
        raise errors.AccountNotFound(f"no user account {account_id!r}")


async def pending_older_than(store: Store, before_us: int, limit: int = 1000) -> Sequence[str]:
    rows = await store.fetch_all(
        sa.select(transfers.c.id)
        .where(transfers.c.status == "pending", transfers.c.created_at < before_us)
        .order_by(transfers.c.created_at)
        .limit(limit)
    )
    return [r["id"] for r in rows]


def history_query(
    account_id: str, limit: int, before: tuple[int, str] | None = None
) -> sa.Select[Any]:
    """An account's transfers, newest first (``created_at DESC, id DESC``), at most
    ``limit``; with ``before`` (the ``(created_at, id)`` of one of them) only those after
    it in that order. The API and the account page both read history through this.

    Not ``from_account = X OR to_account = X``: no index serves that and its order, so the
    database sorted every transfer of the account for each page. Instead one index-ordered
    scan per side (``ix_transfers_from_created_id``, ``ix_transfers_to_created_id``), each
    stopping after ``limit`` rows, merged: the same rows, since no transfer is from and to
    the same account."""

    def side(column: sa.Column[str]) -> sa.Select[Any]:
        query = sa.select(transfers).where(column == account_id)
        if before is not None:
            query = query.where(
                sa.tuple_(transfers.c.created_at, transfers.c.id)
                < sa.tuple_(
                    sa.literal(before[0], transfers.c.created_at.type),
                    sa.literal(before[1], transfers.c.id.type),
                )
            )
        newest = query.order_by(transfers.c.created_at.desc(), transfers.c.id.desc()).limit(limit)
        # Wrapped: SQLite takes no ORDER BY / LIMIT on a bare member of a UNION.
        return sa.select(newest.subquery())

    both = sa.union_all(side(transfers.c.from_account), side(transfers.c.to_account)).subquery(
        "history"
    )
    return sa.select(both).order_by(both.c.created_at.desc(), both.c.id.desc()).limit(limit)
