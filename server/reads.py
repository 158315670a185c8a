"""Every read the API, the pages, the stream and the worker make, in one place.

Ownership is decided here: "the account owned by this user" and "a transfer this user
sent or received" are each written once. What is not the caller's is reported exactly
as what does not exist (404), so ids cannot be probed.

Statements are built once at import time with bind parameters: the hot paths never pay
for building or compiling SQL.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import sqlalchemy as sa

from server import errors
from server.schema import account_events, accounts, idempotency_keys, transfers, users
from server.store import Conn, Row, Store, findable

_ACCOUNTS_OF = (
    sa.select(accounts)
    .where(accounts.c.user_id == sa.bindparam("uid"))
    .order_by(accounts.c.created_at)
)
_OWNED_ACCOUNT = sa.select(accounts).where(
    accounts.c.id == sa.bindparam("acct"), accounts.c.user_id == sa.bindparam("uid")
)
_MINE = sa.select(accounts.c.id).where(accounts.c.user_id == sa.bindparam("uid")).scalar_subquery()
_VISIBLE_TRANSFER = sa.select(transfers).where(
    transfers.c.id == sa.bindparam("tid"),
    sa.or_(transfers.c.from_account.in_(_MINE), transfers.c.to_account.in_(_MINE)),
)
_ACCOUNT_TRANSFER = sa.select(transfers.c.created_at, transfers.c.id).where(
    transfers.c.id == sa.bindparam("tid"),
    sa.or_(
        transfers.c.from_account == sa.bindparam("acct"),
        transfers.c.to_account == sa.bindparam("acct"),
    ),
)
_USER_ACCOUNT_ID = sa.select(accounts.c.id).where(
    accounts.c.id == sa.bindparam("to"), accounts.c.kind == "user"
)
_ACCOUNT_OF_USERNAME = (
    sa.select(accounts.c.id)
    .join(users, users.c.id == accounts.c.user_id)
    .where(users.c.username == sa.bindparam("to"), accounts.c.kind == "user")
    # Their account in the sender's currency first, then their oldest.
    .order_by(accounts.c.currency != sa.bindparam("currency"), accounts.c.created_at)
    .limit(1)
)
_PENDING_BEFORE = (
    sa.select(transfers.c.id)
    .where(transfers.c.status == "pending", transfers.c.created_at < sa.bindparam("before"))
    .order_by(transfers.c.created_at)
    .limit(sa.bindparam("n"))
)
_ACCOUNT = sa.select(accounts).where(accounts.c.id == sa.bindparam("acct"))
_EVENTS_AFTER = (
    sa.select(account_events.c.seq, account_events.c.payload)
    .where(
        account_events.c.account_id == sa.bindparam("acct"),
        account_events.c.seq > sa.bindparam("after"),
    )
    .order_by(account_events.c.seq)
)
_EVENTS_PAGE = _EVENTS_AFTER.limit(sa.bindparam("n"))
_KEY_TRANSFER = sa.select(idempotency_keys.c.transfer_id).where(
    idempotency_keys.c.user_id == sa.bindparam("uid"),
    idempotency_keys.c.key == sa.bindparam("key"),
)
_PENDING_COUNT = sa.select(sa.func.count()).where(transfers.c.status == "pending")
_EXPIRED_ONE = (
    sa.select(transfers.c.id)
    .where(transfers.c.status == "pending", transfers.c.expires_at <= sa.bindparam("at"))
    .limit(1)
)


def _history(before: bool) -> sa.Select[Any]:
    """An account's transfers, newest first (``created_at DESC, id DESC``), at most
    ``:n``; with ``before``, only those after the ``(:before_at, :before_id)`` transfer
    in that order.

    Not ``from_account = X OR to_account = X``: no index serves that and its order, so
    the database sorted every transfer of the account for each page. Instead one
    index-ordered scan per side (``ix_transfers_from_created_id``,
    ``ix_transfers_to_created_id``), each stopping after ``:n`` rows, merged: the same
    rows, since no transfer is from and to the same account."""

    def side(column: sa.Column[str]) -> sa.Select[Any]:
        query = sa.select(transfers).where(column == sa.bindparam("acct"))
        if before:
            query = query.where(
                sa.tuple_(transfers.c.created_at, transfers.c.id)
                < sa.tuple_(sa.bindparam("before_at"), sa.bindparam("before_id"))
            )
        newest = query.order_by(transfers.c.created_at.desc(), transfers.c.id.desc()).limit(
            sa.bindparam("n")
        )
        # Wrapped: SQLite takes no ORDER BY / LIMIT on a bare member of a UNION.
        return sa.select(newest.subquery())

    both = sa.union_all(side(transfers.c.from_account), side(transfers.c.to_account)).subquery(
        "history"
    )
    return (
        sa.select(both)
        .order_by(both.c.created_at.desc(), both.c.id.desc())
        .limit(sa.bindparam("n"))
    )


_HISTORY = _history(before=False)
_HISTORY_BEFORE = _history(before=True)


async def accounts_of(store: Store, user_id: str) -> list[Row]:
    return await store.fetch_all(_ACCOUNTS_OF, {"uid": user_id})


async def _owned(conn: Conn, user_id: str, account_id: str) -> Row:
    row = await conn.fetch_one(_OWNED_ACCOUNT, {"acct": findable(account_id), "uid": user_id})
    if row is None:
        raise errors.AccountNotFound("no such account")
    return row


async def owned_account(store: Store, user_id: str, account_id: str) -> Row:
    """The account, if ``user_id`` owns it; AccountNotFound otherwise."""
    return await store.read(lambda conn: _owned(conn, user_id, account_id))


async def owned_account_seq(store: Store, user_id: str, account_id: str) -> int | None:
    """The account's last event seq, if ``user_id`` owns it."""
    row = await store.fetch_one(_OWNED_ACCOUNT, {"acct": findable(account_id), "uid": user_id})
    return None if row is None else int(row["seq"])


async def visible_transfer(store: Store, user_id: str, transfer_id: str) -> Row:
    """A transfer ``user_id`` sent or received; TransferNotFound otherwise."""
    row = await store.fetch_one(_VISIBLE_TRANSFER, {"tid": findable(transfer_id), "uid": user_id})
    if row is None:
        raise errors.TransferNotFound("no such transfer")
    return row


@dataclasses.dataclass(frozen=True)
class History:
    """An account and one page of its transfers, read on one snapshot: the account's
    ``seq`` is exactly the state the page shows, so a stream resumed from it misses
    nothing and repeats nothing."""

    account: Row
    transfers: list[Row]
    next_before: str | None


async def history(
    store: Store, user_id: str, account_id: str, limit: int, before: str | None = None
) -> History:
    """The owned account and its transfers, newest first, ``limit`` of them; ``before``
    is the id of the last transfer of the previous page."""

    async def body(conn: Conn) -> History:
        account = await _owned(conn, user_id, account_id)
        values: dict[str, Any] = {"acct": account["id"], "n": limit + 1}
        query = _HISTORY
        if before is not None:
            cursor = await conn.fetch_one(
                _ACCOUNT_TRANSFER, {"tid": findable(before), "acct": account["id"]}
            )
            if cursor is None:
                raise errors.InvalidField(
                    "before must be the id of a transfer of this account", "before"
                )
            values.update(before_at=cursor["created_at"], before_id=cursor["id"])
            query = _HISTORY_BEFORE
        # One more than asked for: whether there is a next page.
        rows = list(await conn.fetch_all(query, values))
        more = len(rows) > limit
        rows = rows[:limit]
        return History(account, rows, rows[-1]["id"] if more else None)

    return await store.read(body)


async def recipient(store: Store, to: str, currency: str) -> str:
    """The account a sender means by ``to``: a user account id, or a username (their
    account in ``currency`` first)."""
    to = findable(to)
    found = await store.fetch_val(_USER_ACCOUNT_ID, {"to": to})
    if found is None:
        found = await store.fetch_val(_ACCOUNT_OF_USERNAME, {"to": to, "currency": currency})
    if found is None:
        raise errors.AccountNotFound("no user or account by that name", "to_account")
    return str(found)


async def is_sender(store: Store, user_id: str, transfer: Row) -> bool:
    """Whether ``user_id`` owns the account ``transfer`` was sent from."""
    row = await store.fetch_one(_OWNED_ACCOUNT, {"acct": transfer["from_account"], "uid": user_id})
    return row is not None


async def pending_older_than(store: Store, before_us: int, limit: int = 1000) -> list[str]:
    rows = await store.fetch_all(_PENDING_BEFORE, {"before": before_us, "n": limit})
    return [r["id"] for r in rows]


async def sent_with_key(store: Store, user_id: str, key: str) -> Row | None:
    """The transfer this user's idempotency key was first used for, if any."""
    found = await store.fetch_val(_KEY_TRANSFER, {"uid": user_id, "key": key})
    if found is None:
        return None
    return await store.fetch_one(_VISIBLE_TRANSFER, {"tid": found, "uid": user_id})


async def events_page(
    store: Store, user_id: str, account_id: str, since: int, limit: int
) -> list[Row]:
    """The owned account's logged events after ``since``, at most ``limit``, in seq order
    (``seq``, ``payload``: the very bytes the stream sent)."""

    async def body(conn: Conn) -> list[Row]:
        account = await _owned(conn, user_id, account_id)
        values = {"acct": account["id"], "after": since, "n": limit}
        return list(await conn.fetch_all(_EVENTS_PAGE, values))

    return await store.read(body)


async def any_expired(store: Store, at: int) -> bool:
    """Whether a pending transfer has reached its expiry (an index lookup)."""
    return await store.fetch_val(_EXPIRED_ONE, {"at": at}) is not None


async def pending_count(store: Store) -> int:
    return int(await store.fetch_val(_PENDING_COUNT, {}))


@dataclasses.dataclass(frozen=True)
class Backlog:
    """What a subscriber missed: the account now, and its logged events after a seq."""

    account: Row | None
    events: list[Row]  # (seq, payload), in seq order


async def backlog(store: Store, account_id: str, after: int, cap: int) -> Backlog:
    """The account and its events after ``after``, on one snapshot; no events when
    there are more than ``cap`` of them (the caller sends a snapshot instead)."""

    async def body(conn: Conn) -> Backlog:
        account = await conn.fetch_one(_ACCOUNT, {"acct": account_id})
        if account is None or not 0 < account["seq"] - after <= cap:
            return Backlog(account, [])
        rows = await conn.fetch_all(_EVENTS_AFTER, {"acct": account_id, "after": after})
        return Backlog(account, list(rows))

    return await store.read(body)
