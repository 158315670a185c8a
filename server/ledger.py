"""The ledger's rules for a transfer entering it: acceptance (the reservation) and
cancellation, as transaction bodies (``server.store``).

They know nothing of HTTP, arq or Redis. Each changes balances, appends one event per
touched account with the account's next ``seq``, and returns those events, which the
caller publishes after the commit. Settlement is in ``server.settlement``; creating and
funding accounts in ``server.accounts``.

Locking: every account row is updated in ascending id order within a transaction, so two
transactions touching the same two accounts on PostgreSQL queue instead of deadlocking.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections.abc import Mapping
from typing import Any

import orjson
import sqlalchemy as sa

from server import errors, views
from server.events import CANCELLED, PENDING, Event
from server.money import format_amount
from server.schema import (
    account_events,
    accounts,
    idempotency_keys,
    ledger_entries,
    transfers,
    users,
)
from server.store import Conn, Row

BALANCE_COLUMNS = (
    accounts.c.id,
    accounts.c.posted,
    accounts.c.pending_debits,
    accounts.c.pending_credits,
    accounts.c.seq,
    accounts.c.status,
    accounts.c.kind,
    accounts.c.entries,
    accounts.c.chain_head,
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
    .returning(*BALANCE_COLUMNS)
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
INSERT_EVENT = account_events.insert()
INSERT_ENTRY = ledger_entries.insert()
_INSERT_TRANSFER = transfers.insert()
_ACCOUNT = sa.select(accounts).where(accounts.c.id == sa.bindparam("acct"))
# With its owner's username: a transfer keeps its parties' names.
_PARTY = (
    sa.select(accounts, users.c.username)
    .join(users, users.c.id == accounts.c.user_id)
    .where(accounts.c.id == sa.bindparam("acct"))
)
_OWN_PARTY = _PARTY.where(accounts.c.user_id == sa.bindparam("uid"))
# The latest transfer of this amount between these accounts since a time, that did not
# fail or get cancelled (from the sender's history index).
_RECENT_SAME = (
    sa.select(transfers)
    .where(
        transfers.c.from_account == sa.bindparam("src"),
        transfers.c.created_at >= sa.bindparam("since"),
        transfers.c.to_account == sa.bindparam("dst"),
        transfers.c.amount == sa.bindparam("amount"),
        sa.or_(transfers.c.status == "pending", transfers.c.status == "completed"),
    )
    .order_by(transfers.c.created_at.desc())
    .limit(1)
)
_IDEMPOTENCY_KEY = sa.select(idempotency_keys).where(
    idempotency_keys.c.user_id == sa.bindparam("uid"), idempotency_keys.c.key == sa.bindparam("key")
)
_SENT_TRANSFER = (
    sa.select(transfers.c.id)
    .join(accounts, accounts.c.id == transfers.c.from_account)
    .where(transfers.c.id == sa.bindparam("tid"), accounts.c.user_id == sa.bindparam("uid"))
)
_CANCEL = (
    transfers.update()
    .where(transfers.c.id == sa.bindparam("tid"), transfers.c.status == "pending")
    .values(status="cancelled", settled_at=sa.bindparam("at"))
    .returning(*transfers.c)
)


async def move(
    conn: Conn, account_id: str, change: Mapping[str, int], need: int | None = None
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


async def move_pair(
    conn: Conn,
    src: str,
    dst: str,
    src_change: Mapping[str, int],
    dst_change: Mapping[str, int],
    need: int | None = None,
) -> tuple[Row | None, Row | None]:
    """Apply both account changes in ascending id order (the deadlock-free order)."""
    if src < dst:
        src_row = await move(conn, src, src_change, need)
        if src_row is None:
            return None, None
        return src_row, await move(conn, dst, dst_change)
    dst_row = await move(conn, dst, dst_change)
    return await move(conn, src, src_change, need), dst_row


@dataclasses.dataclass(frozen=True)
class Order:
    """A transfer as its sender asked for it, already validated (``server.transfers``)."""

    user_id: str
    from_account: str
    to_account: str
    amount: int  # cents, > 0
    memo: str = ""
    idempotency_key: str | None = None
    # The duplicate guard: refuse if the same amount went from and to the same accounts
    # within this many seconds (0: no guard). Not part of what the key is bound to.
    guard_s: int = 0

    @functools.cached_property
    def digest(self) -> str:
        """What an idempotency key is bound to: the same key with another digest is a
        different request."""
        body = orjson.dumps([self.from_account, self.to_account, self.amount, self.memo])
        return hashlib.sha256(body).hexdigest()


@dataclasses.dataclass(frozen=True)
class Accepted:
    """An accepted transfer, or the replay of one accepted earlier with the same key."""

    transfer_id: str
    response: bytes  # the 202 body, exactly as first sent
    events: list[Event]
    replayed: bool = False


class KeyTaken(Exception):
    """Another request with the same idempotency key committed first (PostgreSQL only:
    SQLite runs one writer at a time). Its transaction is rolled back; the caller
    replays the winner's response."""


async def replay(conn: Conn, order: Order) -> Accepted | None:
    """The earlier response to the same key, if there is one."""
    if order.idempotency_key is None:
        return None
    row = await conn.fetch_one(
        _IDEMPOTENCY_KEY, {"uid": order.user_id, "key": order.idempotency_key}
    )
    if row is None:
        return None
    if row["request_hash"] != order.digest:
        raise errors.IdempotencyKeyReused(
            "this Idempotency-Key was already used for a different transfer", "Idempotency-Key"
        )
    return Accepted(row["transfer_id"], row["response"].encode(), [], replayed=True)


async def _parties(conn: Conn, order: Order) -> tuple[Row, Row]:
    """The sender's and the recipient's accounts, if the rules let money go between
    them (the sender's own; a user account; another; one currency; neither frozen)."""
    src = await conn.fetch_one(_OWN_PARTY, {"acct": order.from_account, "uid": order.user_id})
    if src is None:
        raise errors.AccountNotFound("no such account of yours", "from_account")
    dst = await conn.fetch_one(_PARTY, {"acct": order.to_account})
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
    return src, dst


@dataclasses.dataclass(frozen=True)
class Preview:
    """What sending would do: the sender's balance after it, or why it would be refused."""

    balance_after: dict[str, str] | None
    error: errors.SettleError | None


async def preview(conn: Conn, order: Order) -> Preview:
    """The sender's balance as accepting ``order`` would leave it, or the rule that
    would refuse it; a read: nothing is written, nothing reserved."""
    try:
        src, _ = await _parties(conn, order)
    except errors.SettleError as exc:
        return Preview(None, exc)
    after = {**src, "pending_debits": src["pending_debits"] + order.amount}
    balance = views.balance_of(after)
    if src["posted"] - src["pending_debits"] < order.amount and src["kind"] == "user":
        available = format_amount(src["posted"] - src["pending_debits"])
        refusal = errors.InsufficientFunds(
            f"the available balance ({available}) is lower than the amount", "amount"
        )
        return Preview(balance, refusal)
    return Preview(balance, None)


async def accept(
    conn: Conn, order: Order, transfer_id: str, at: int, expires_at: int | None = None
) -> Accepted:
    """Accept a transfer as pending: reserve the amount on the sender's account and log
    the events of both accounts, atomically; or replay the key's earlier response."""
    earlier = await replay(conn, order)
    if earlier is not None:
        return earlier
    src, dst = await _parties(conn, order)
    amount = order.amount
    if order.guard_s:
        earlier = await conn.fetch_one(
            _RECENT_SAME,
            {
                "src": order.from_account,
                "dst": order.to_account,
                "amount": amount,
                "since": at - order.guard_s * 1_000_000,
            },
        )
        if earlier is not None:
            ago = max(1, (at - earlier["created_at"]) // 1_000_000)
            raise errors.PossibleDuplicate(
                f"the same amount went to {earlier['to_name']} {ago} s ago; send again"
                " without the guard to send it twice",
                views.transfer_of(earlier),
            )
    src_row, dst_row = await move_pair(
        conn,
        order.from_account,
        order.to_account,
        {"pending_debits": amount},
        {"pending_credits": amount},
        need=amount,
    )
    if src_row is None or dst_row is None:
        # Re-read to say which rule refused it (a freeze may have raced us).
        now = await conn.fetch_one(_ACCOUNT, {"acct": order.from_account})
        if now is not None and now["status"] != "active":
            raise errors.AccountFrozen("the account is frozen", "from_account")
        raise errors.InsufficientFunds("the available balance is lower than the amount", "amount")
    if dst_row["status"] != "active":
        raise errors.AccountFrozen("the account is frozen", "to_account")
    values = {
        "id": transfer_id,
        "from_account": order.from_account,
        "to_account": order.to_account,
        "amount": amount,
        "currency": src["currency"],
        "memo": order.memo,
        "status": "pending",
        "failure_reason": None,
        "created_by": order.user_id,
        "created_at": at,
        "settled_at": None,
        "from_name": views.party_name(src),
        "to_name": views.party_name(dst),
        "kind": "transfer",
        "expires_at": expires_at,
    }
    await conn.execute(_INSERT_TRANSFER, values)
    transfer = views.transfer_of(values)
    events = [Event.of(PENDING, src_row, transfer, at), Event.of(PENDING, dst_row, transfer, at)]
    await conn.execute_many(INSERT_EVENT, [e.log_row() for e in events])
    response = orjson.dumps({**transfer, "balance": views.balance_of(src_row)})
    if order.idempotency_key is not None:
        claimed = await conn.insert_new(
            idempotency_keys,
            {
                "user_id": order.user_id,
                "key": order.idempotency_key,
                "request_hash": order.digest,
                "transfer_id": transfer_id,
                "response": response.decode(),
                "created_at": at,
            },
        )
        if not claimed:
            raise KeyTaken
    return Accepted(transfer_id, response, events)


async def cancel(
    conn: Conn, user_id: str, transfer_id: str, at: int
) -> tuple[dict[str, Any], list[Event]]:
    """Cancel a pending transfer on behalf of its sender, releasing the reservation."""
    if await conn.fetch_val(_SENT_TRANSFER, {"tid": transfer_id, "uid": user_id}) is None:
        raise errors.TransferNotFound("no such transfer of yours")
    claimed = await conn.fetch_one(_CANCEL, {"tid": transfer_id, "at": at})
    if claimed is None:
        raise errors.NotPending("the transfer is no longer pending")
    amount = claimed["amount"]
    src_row, dst_row = await move_pair(
        conn,
        claimed["from_account"],
        claimed["to_account"],
        {"pending_debits": -amount},
        {"pending_credits": -amount},
    )
    assert src_row is not None and dst_row is not None
    transfer = views.transfer_of(claimed)
    events = [
        Event.of(CANCELLED, src_row, transfer, at),
        Event.of(CANCELLED, dst_row, transfer, at),
    ]
    await conn.execute_many(INSERT_EVENT, [e.log_row() for e in events])
    return transfer, events
