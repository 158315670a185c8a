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

from server.domain import errors, people
from server.domain.model import Account, Status, Transfer
from server.store import Conn, Row, Store, findable
from server.store.schema import account_events, accounts, idempotency_keys, transfers, users

# Accounts with their owner's username and display name (``Account.owner``).
_WITH_OWNER = sa.select(accounts, users.c.username, users.c.display_name).join(
    users, users.c.id == accounts.c.user_id
)
_ACCOUNTS_OF = _WITH_OWNER.where(accounts.c.user_id == sa.bindparam("uid")).order_by(
    accounts.c.created_at
)
_OWNED_ACCOUNT = _WITH_OWNER.where(
    accounts.c.id == sa.bindparam("acct"), accounts.c.user_id == sa.bindparam("uid")
)
_OWNED_SEQ = sa.select(accounts.c.seq).where(
    accounts.c.id == sa.bindparam("acct"), accounts.c.user_id == sa.bindparam("uid")
)
_MINE = sa.select(accounts.c.id).where(accounts.c.user_id == sa.bindparam("uid")).scalar_subquery()
# The recipient knows nothing of a transfer until it is pending: not while it awaits its
# sender's passkey, nor after it was cancelled unconfirmed (it never was pending).
_NOT_AWAITING = transfers.c.pending_since.is_not(None)
_VISIBLE_TRANSFER = sa.select(transfers).where(
    transfers.c.id == sa.bindparam("tid"),
    sa.or_(
        transfers.c.from_account.in_(_MINE),
        sa.and_(transfers.c.to_account.in_(_MINE), _NOT_AWAITING),
    ),
)
_ACCOUNT_TRANSFER = sa.select(transfers.c.created_at, transfers.c.id).where(
    transfers.c.id == sa.bindparam("tid"),
    sa.or_(
        transfers.c.from_account == sa.bindparam("acct"),
        transfers.c.to_account == sa.bindparam("acct"),
    ),
)
_PAYEE = sa.select(accounts.c.id, users.c.username, users.c.display_name).join(
    users, users.c.id == accounts.c.user_id
)
_USER_ACCOUNT_ID = _PAYEE.where(accounts.c.id == sa.bindparam("to"), accounts.c.kind == "user")
_ACCOUNT_OF_USERNAME = (
    _PAYEE.where(users.c.username_lower == sa.bindparam("to"), accounts.c.kind == "user")
    # Their account in the sender's currency first, then their oldest.
    .order_by(accounts.c.currency != sa.bindparam("currency"), accounts.c.created_at)
    .limit(1)
)
_SLOTS_PENDING_BEFORE = (
    sa.select(transfers.c.slot)
    .where(
        transfers.c.status == Status.PENDING.value,
        transfers.c.pending_since < sa.bindparam("before"),
    )
    .distinct()
)
_ACCOUNT = _WITH_OWNER.where(accounts.c.id == sa.bindparam("acct"))
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
_PAID_BEFORE = (
    sa.select(transfers.c.id)
    .where(
        transfers.c.from_account == sa.bindparam("src"),
        transfers.c.to_account == sa.bindparam("dst"),
        sa.or_(
            transfers.c.status == Status.PENDING.value,
            transfers.c.status == Status.COMPLETED.value,
        ),
    )
    .limit(1)
)
# An account's pending transfers, both ways, newest first (few: they settle in seconds).
# Not those awaiting a passkey: a statement lists what is on its way.
_PENDING_OF = (
    sa.select(transfers)
    .where(
        transfers.c.status == Status.PENDING.value,
        sa.or_(
            transfers.c.from_account == sa.bindparam("acct"),
            transfers.c.to_account == sa.bindparam("acct"),
        ),
    )
    .order_by(transfers.c.created_at.desc())
    .limit(sa.bindparam("n"))
)
_TIME_ZONE = sa.select(users.c.time_zone).where(users.c.id == sa.bindparam("uid"))
_DISPLAY_NAME = sa.select(users.c.display_name).where(users.c.id == sa.bindparam("uid"))
_PENDING_COUNT = sa.select(sa.func.count()).where(transfers.c.status == Status.PENDING.value)
_EXPIRED_SLOTS = (
    sa.select(transfers.c.slot)
    .where(
        sa.or_(
            transfers.c.status == Status.PENDING.value,
            transfers.c.status == Status.AWAITING.value,
        ),
        transfers.c.expires_at <= sa.bindparam("at"),
    )
    .distinct()
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
        if column is transfers.c.to_account:
            query = query.where(_NOT_AWAITING)
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


async def accounts_of(store: Store, user_id: str) -> list[Account]:
    return [Account.of(r) for r in await store.fetch_all(_ACCOUNTS_OF, {"uid": user_id})]


async def _owned(conn: Conn, user_id: str, account_id: str) -> Account:
    row = await conn.fetch_one(_OWNED_ACCOUNT, {"acct": findable(account_id), "uid": user_id})
    if row is None:
        raise errors.AccountNotFound("no such account")
    return Account.of(row)


async def owned_account(store: Store, user_id: str, account_id: str) -> Account:
    """The account, if ``user_id`` owns it; AccountNotFound otherwise."""
    return await store.read(lambda conn: _owned(conn, user_id, account_id))


async def owned_account_seq(store: Store, user_id: str, account_id: str) -> int | None:
    """The account's last event seq, if ``user_id`` owns it."""
    seq = await store.fetch_val(_OWNED_SEQ, {"acct": findable(account_id), "uid": user_id})
    return None if seq is None else int(seq)


async def visible_transfer(store: Store, user_id: str, transfer_id: str) -> Transfer:
    """A transfer ``user_id`` sent or received; TransferNotFound otherwise."""
    row = await store.fetch_one(_VISIBLE_TRANSFER, {"tid": findable(transfer_id), "uid": user_id})
    if row is None:
        raise errors.TransferNotFound("no such transfer")
    return Transfer.of(row)


@dataclasses.dataclass(frozen=True)
class History:
    """An account and one page of its transfers, read on one snapshot: the account's
    ``seq`` is exactly the state the page shows, so a stream resumed from it misses
    nothing and repeats nothing."""

    account: Account
    transfers: list[Transfer]
    next_before: str | None


async def history(
    store: Store, user_id: str, account_id: str, limit: int, before: str | None = None
) -> History:
    """The owned account and its transfers, newest first, ``limit`` of them; ``before``
    is the id of the last transfer of the previous page."""

    async def body(conn: Conn) -> History:
        account = await _owned(conn, user_id, account_id)
        values: dict[str, Any] = {"acct": account.id, "n": limit + 1}
        query = _HISTORY
        if before is not None:
            cursor = await conn.fetch_one(
                _ACCOUNT_TRANSFER, {"tid": findable(before), "acct": account.id}
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
        page = [Transfer.of(r) for r in rows[:limit]]
        return History(account, page, page[-1].id if more else None)

    return await store.read(body)


@dataclasses.dataclass(frozen=True)
class Payee:
    """Whom a sender means: the account, and the person as the pages name them."""

    account_id: str
    username: str
    display_name: str

    @property
    def called(self) -> str:
        return people.called(self.username, self.display_name)


async def recipient(store: Store, to: str, currency: str) -> Payee:
    """The account a sender means by ``to``: a user account id, or a username in any
    letter case (their account in ``currency`` first)."""
    to = findable(to)
    found = await store.fetch_one(_USER_ACCOUNT_ID, {"to": to})
    if found is None:
        key = people.username_key(to)
        found = await store.fetch_one(_ACCOUNT_OF_USERNAME, {"to": key, "currency": currency})
    if found is None:
        raise errors.AccountNotFound("no user or account by that name", "to_account")
    return Payee(str(found["id"]), str(found["username"]), str(found["display_name"]))


async def paid_before(store: Store, from_account: str, to_account: str) -> bool:
    """Whether money ever went (or is on its way) from one account to the other: a
    transfer that was not failed or cancelled (the first payment asks to confirm)."""
    found = await store.fetch_val(_PAID_BEFORE, {"src": from_account, "dst": to_account})
    return found is not None


async def pending_of(store: Store, account_id: str, limit: int = 100) -> list[Transfer]:
    """An account's transfers still on their way, out and in, newest first."""
    rows = await store.fetch_all(_PENDING_OF, {"acct": account_id, "n": limit})
    return [Transfer.of(r) for r in rows]


async def display_name(store: Store, user_id: str) -> str:
    """The name a user goes by ("" if unknown)."""
    return str(await store.fetch_val(_DISPLAY_NAME, {"uid": user_id}) or "")


async def time_zone(store: Store, user_id: str) -> str:
    """The time zone a user's months and times are read in ("": not set, UTC)."""
    return str(await store.fetch_val(_TIME_ZONE, {"uid": user_id}) or "")


async def is_sender(store: Store, user_id: str, transfer: Transfer) -> bool:
    """Whether ``user_id`` owns the account ``transfer`` was sent from."""
    seq = await store.fetch_val(_OWNED_SEQ, {"acct": transfer.from_account, "uid": user_id})
    return seq is not None


async def pending_slots_older_than(store: Store, before_us: int) -> list[int]:
    """The settlement slots of the transfers pending since before ``before_us``."""
    rows = await store.fetch_all(_SLOTS_PENDING_BEFORE, {"before": before_us})
    return [int(r["slot"]) for r in rows]


async def sent_with_key(store: Store, user_id: str, key: str) -> Transfer | None:
    """The transfer this user's idempotency key was first used for, if any."""
    found = await store.fetch_val(_KEY_TRANSFER, {"uid": user_id, "key": key})
    if found is None:
        return None
    row = await store.fetch_one(_VISIBLE_TRANSFER, {"tid": found, "uid": user_id})
    return None if row is None else Transfer.of(row)


async def events_page(
    store: Store, user_id: str, account_id: str, since: int, limit: int
) -> list[Row]:
    """The owned account's logged events after ``since``, at most ``limit``, in seq order
    (``seq``, ``payload``: the very bytes the stream sent)."""

    async def body(conn: Conn) -> list[Row]:
        account = await _owned(conn, user_id, account_id)
        values = {"acct": account.id, "after": since, "n": limit}
        return list(await conn.fetch_all(_EVENTS_PAGE, values))

    return await store.read(body)


async def expired_slots(store: Store, at: int) -> list[int]:
    """The settlement slots of the pending transfers that reached their expiry."""
    rows = await store.fetch_all(_EXPIRED_SLOTS, {"at": at})
    return [int(r["slot"]) for r in rows]


async def pending_count(store: Store) -> int:
    return int(await store.fetch_val(_PENDING_COUNT, {}))


@dataclasses.dataclass(frozen=True)
class Backlog:
    """What a subscriber missed: the account now, and its logged events after a seq."""

    account: Account | None
    events: list[Row]  # (seq, payload), in seq order


async def backlog(store: Store, account_id: str, after: int, cap: int) -> Backlog:
    """The account and its events after ``after``, on one snapshot; no events when
    there are more than ``cap`` of them (the caller sends a snapshot instead)."""

    async def body(conn: Conn) -> Backlog:
        row = await conn.fetch_one(_ACCOUNT, {"acct": account_id})
        if row is None:
            return Backlog(None, [])
        account = Account.of(row)
        if not 0 < account.seq - after <= cap:
            return Backlog(account, [])
        rows = await conn.fetch_all(_EVENTS_AFTER, {"acct": account_id, "after": after})
        return Backlog(account, list(rows))

    return await store.read(body)
