"""The ledger's rules for a transfer entering it: acceptance (the reservation), a
passkey's confirmation of a large one, and cancellation, as transaction bodies
(``server.store``).

They know nothing of HTTP, arq or Redis. Each changes balances, appends one event per
touched account with the account's next ``seq``, and returns those events, which the
caller publishes after the commit. Settlement is in ``server.store.settlement``; creating and
funding accounts in ``server.accounts``.

Locking: account rows are locked (or updated) in ascending id order within a
transaction, so two transactions touching the same two accounts on PostgreSQL queue
instead of deadlocking.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import msgspec
import sqlalchemy as sa

from server.domain import errors
from server.domain.clock import now_us
from server.domain.events import Event
from server.domain.ledger import (
    Order,
    Preview,
    can_spend,
    check_parties,
    insufficient,
    possible_duplicate,
)
from server.domain.ledger import preview as domain_preview
from server.domain.model import Account, Balance, Status, Transfer, TransferKind
from server.domain.settlement import slot_of
from server.store import Conn, Row, findable
from server.store.base import Write
from server.store.schema import (
    account_events,
    accounts,
    idempotency_keys,
    ledger_entries,
    passkeys,
    transfers,
    users,
)

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
INSERT_EVENT = account_events.insert()
INSERT_ENTRY = ledger_entries.insert()
_INSERT_TRANSFER = transfers.insert()
_ACCOUNT = sa.select(accounts).where(accounts.c.id == sa.bindparam("acct"))
# Both parties' accounts, with their owners' usernames and display names (a transfer
# keeps its parties' names). Two plain parameters, not an expanding IN: the statement
# is prepared once.
_PARTIES = (
    sa.select(accounts, users.c.username, users.c.display_name)
    .join(users, users.c.id == accounts.c.user_id)
    .where(accounts.c.id.in_([sa.bindparam("src"), sa.bindparam("dst")]))
)
_IDEMPOTENCY_KEY = sa.select(idempotency_keys).where(
    idempotency_keys.c.user_id == sa.bindparam("uid"), idempotency_keys.c.key == sa.bindparam("key")
)
# What acceptance reads, in one statement: the parties (to be locked in id order) and,
# on each row, what the order's idempotency key was already used for, if anything.
_ACCEPTING = _PARTIES.add_columns(
    _IDEMPOTENCY_KEY.with_only_columns(idempotency_keys.c.request_hash)
    .scalar_subquery()
    .label("key_hash"),
    _IDEMPOTENCY_KEY.with_only_columns(idempotency_keys.c.response)
    .scalar_subquery()
    .label("key_response"),
).order_by(accounts.c.id)
_HOLD = (
    accounts.update()
    .where(accounts.c.id == sa.bindparam("acct"))
    .values(
        pending_debits=accounts.c.pending_debits + sa.bindparam("amount"),
        seq=accounts.c.seq + 1,
    )
)
_EXPECT = (
    accounts.update()
    .where(accounts.c.id == sa.bindparam("acct"))
    .values(
        pending_credits=accounts.c.pending_credits + sa.bindparam("amount"),
        seq=accounts.c.seq + 1,
    )
)
# The latest transfer of this amount between these accounts since a time, that did not
# fail or get cancelled (from the sender's history index).
_RECENT_SAME = (
    sa.select(transfers)
    .where(
        transfers.c.from_account == sa.bindparam("src"),
        transfers.c.created_at >= sa.bindparam("since"),
        transfers.c.to_account == sa.bindparam("dst"),
        transfers.c.amount == sa.bindparam("amount"),
        # Not IN (...): a statement prepared once takes no expanding parameter.
        sa.or_(
            transfers.c.status == Status.AWAITING.value,
            transfers.c.status == Status.PENDING.value,
            transfers.c.status == Status.COMPLETED.value,
        ),
    )
    .order_by(transfers.c.created_at.desc())
    .limit(1)
)
_SENT_TRANSFER = (
    sa.select(transfers.c.id, transfers.c.status)
    .join(accounts, accounts.c.id == transfers.c.from_account)
    .where(transfers.c.id == sa.bindparam("tid"), accounts.c.user_id == sa.bindparam("uid"))
)
# Only from the status it was read in: a transfer confirmed or settled meanwhile is not
# cancelled as if it were still what it was.
_CANCEL = (
    transfers.update()
    .where(transfers.c.id == sa.bindparam("tid"), transfers.c.status == sa.bindparam("was"))
    .values(status=Status.CANCELLED.value, settled_at=sa.bindparam("at"), confirm_nonce=None)
    .returning(*transfers.c)
)
_HAS_PASSKEY = sa.select(passkeys.c.id).where(passkeys.c.user_id == sa.bindparam("uid")).limit(1)
# The nonce is single use: a confirmation spends it, so a replayed assertion finds none.
_CONFIRM = (
    transfers.update()
    .where(
        transfers.c.id == sa.bindparam("tid"),
        transfers.c.status == Status.AWAITING.value,
        transfers.c.confirm_nonce == sa.bindparam("nonce"),
    )
    .values(
        status=Status.PENDING.value,
        pending_since=sa.bindparam("at"),
        expires_at=sa.bindparam("expires"),
        confirm_nonce=None,
    )
    .returning(*transfers.c)
)


async def move(conn: Conn, account_id: str, change: Mapping[str, int]) -> Row:
    """Add ``change`` (posted / pending_debits / pending_credits deltas) to an account's
    balances and take its next event seq, in one atomic UPDATE: the row after it."""
    values = {
        "acct": account_id,
        "d_posted": change.get("posted", 0),
        "d_debits": change.get("pending_debits", 0),
        "d_credits": change.get("pending_credits", 0),
    }
    return await conn.fetch_one(_MOVE, values)


async def move_pair(
    conn: Conn, src: str, dst: str, src_change: Mapping[str, int], dst_change: Mapping[str, int]
) -> tuple[Row, Row]:
    """Apply both account changes in ascending id order (the deadlock-free order)."""
    if src < dst:
        src_row = await move(conn, src, src_change)
        return src_row, await move(conn, dst, dst_change)
    dst_row = await move(conn, dst, dst_change)
    return await move(conn, src, src_change), dst_row


@dataclasses.dataclass(frozen=True)
class Confirming:
    """When a transfer waits for its sender's passkey: above ``above`` minor units; then
    it is cancelled unconfirmed at ``expires_at``, and its challenge is derived from
    ``nonce`` (single use)."""

    above: int
    expires_at: int
    nonce: str


class Accepted(msgspec.Struct, frozen=True):
    """An accepted transfer and the sender's balance right after it (what the 202
    says), or the replay of one accepted earlier with the same key (no events)."""

    transfer: Transfer
    balance: Balance
    events: list[Event] = msgspec.field(default_factory=list)
    replayed: bool = False


class _Kept(msgspec.Struct, frozen=True):
    """What an idempotency key keeps of its transfer: the typed answer, encoded."""

    transfer: Transfer
    balance: Balance


_kept = msgspec.json.Decoder(_Kept)


class KeyTaken(Exception):
    """Another request with the same idempotency key committed first (PostgreSQL only:
    SQLite runs one writer at a time). Its transaction is rolled back; the caller
    replays the winner's response."""


async def replay(conn: Conn, order: Order) -> Accepted | None:
    """The earlier answer to the same key, if there is one."""
    if order.idempotency_key is None:
        return None
    row = await conn.fetch_one(
        _IDEMPOTENCY_KEY, {"uid": order.user_id, "key": order.idempotency_key}
    )
    if row is None:
        return None
    return _replayed(order, row["request_hash"], row["response"])


def _replayed(order: Order, request_hash: str | None, response: str | None) -> Accepted | None:
    """The answer kept for the order's key (None: the key is new)."""
    if request_hash is None or response is None:
        return None
    if request_hash != order.digest:
        raise errors.IdempotencyKeyReused(
            "this Idempotency-Key was already used for a different transfer", "Idempotency-Key"
        )
    kept = _kept.decode(response)
    return Accepted(kept.transfer, kept.balance, replayed=True)


async def parties(conn: Conn, order: Order) -> tuple[Account | None, Account | None]:
    """The sender's own account and the recipient's, as they are now (None: not found,
    or for the sender, not the user's): one read for both."""
    src_id, dst_id = findable(order.from_account), findable(order.to_account)
    rows = await conn.fetch_all(_PARTIES, {"src": src_id, "dst": dst_id})
    return _parties_of(order, rows)


def _parties_of(order: Order, rows: Sequence[Row]) -> tuple[Account | None, Account | None]:
    src_id, dst_id = findable(order.from_account), findable(order.to_account)
    src = next((r for r in rows if r["id"] == src_id and r["user_id"] == order.user_id), None)
    dst = next((r for r in rows if r["id"] == dst_id), None)
    return (
        None if src is None else Account.of(src),
        None if dst is None else Account.of(dst),
    )


def locked_by(order: Order) -> tuple[str, str]:
    """The accounts ``accept`` locks (and no other row): its transaction may commit
    together with others (``Store.transaction``)."""
    return findable(order.from_account), findable(order.to_account)


async def accept(
    conn: Conn,
    order: Order,
    transfer_id: str,
    at: int,
    expires_at: int | None = None,
    confirming: Confirming | None = None,
) -> Accepted:
    """Accept a transfer as pending: reserve the amount on the sender's account and log
    the events of both accounts, atomically; or replay the key's earlier answer.

    Above ``confirming.above`` it is accepted awaiting its sender's passkey instead (or
    refused, PasskeyRequired, if they have none): the amount is held all the same, but
    only the sender's log and balance know of it until it is confirmed (``confirm``).

    Three statements: the parties are read and locked (in id order: the deadlock-free
    order) with what the key was used for; the rules are checked here, on the locked
    rows, which no one else can change until the commit; then every write goes as one
    (``Conn.write_all``: one round trip on PostgreSQL). The duplicate guard, when asked
    for, is one more read."""
    rows = await conn.fetch_all(
        conn.locking(_ACCEPTING, of=accounts),
        {
            "src": findable(order.from_account),
            "dst": findable(order.to_account),
            "uid": order.user_id,
            "key": order.idempotency_key,
        },
    )
    if rows:
        earlier = _replayed(order, rows[0]["key_hash"], rows[0]["key_response"])
    else:  # no party found: the key may still have been used (for other accounts)
        earlier = await replay(conn, order)
    if earlier is not None:
        return earlier
    src, dst = _parties_of(order, rows)
    check_parties(order, src, dst)
    assert src is not None and dst is not None
    # Its time is read once the parties are locked: two of one sender's requests racing
    # on PostgreSQL then become pending in the order they commit, which is the order
    # settlement takes them in (a time read before the lock may be the later commit's).
    # Its expiry keeps its distance from it.
    locked_at = max(at, now_us())
    later = locked_at - at
    at = locked_at
    if expires_at is not None:
        expires_at += later
    if confirming is not None:
        confirming = dataclasses.replace(confirming, expires_at=confirming.expires_at + later)
    await _guard(conn, order, at)
    if not can_spend(src, order.amount):
        raise insufficient(src.balance)
    awaiting = confirming is not None and order.amount > confirming.above
    if awaiting and await conn.fetch_val(_HAS_PASSKEY, {"uid": order.user_id}) is None:
        raise _passkey_required()
    transfer = Transfer(
        id=transfer_id,
        kind=TransferKind.TRANSFER,
        from_account=order.from_account,
        from_name=src.party_name,
        to_account=order.to_account,
        to_name=dst.party_name,
        from_display_name=src.party_display_name,
        to_display_name=dst.party_display_name,
        amount=order.amount,
        currency=src.currency,
        memo=order.memo,
        status=Status.AWAITING if awaiting else Status.PENDING,
        failure_reason=None,
        created_at=at,
        settled_at=None,
        expires_at=confirming.expires_at if awaiting and confirming else expires_at,
    )
    balance = src.balance.holding(order.amount)
    events = [Event.of_transfer(transfer, src.id, src.seq + 1, balance, at)]
    nonce = confirming.nonce if awaiting and confirming else None
    row = {**transfer_row(transfer), "created_by": order.user_id, "confirm_nonce": nonce}
    writes: list[Write] = [(_HOLD, {"acct": src.id, "amount": order.amount})]
    if not awaiting:
        expecting = dst.balance.expecting(order.amount)
        events.append(Event.of_transfer(transfer, dst.id, dst.seq + 1, expecting, at))
        writes.append((_EXPECT, {"acct": dst.id, "amount": order.amount}))
    key = None
    if order.idempotency_key is not None:
        key = (
            idempotency_keys,
            {
                "user_id": order.user_id,
                "key": order.idempotency_key,
                "request_hash": order.digest,
                "transfer_id": transfer_id,
                "response": msgspec.json.encode(_Kept(transfer, balance)).decode(),
                "created_at": at,
            },
        )
    writes += [(_INSERT_TRANSFER, row), (INSERT_EVENT, [e.log_row() for e in events])]
    claimed = await conn.write_all(writes, key)
    if not claimed:
        raise KeyTaken
    return Accepted(transfer, balance, events)


async def _guard(conn: Conn, order: Order, at: int) -> None:
    """The duplicate guard, when the order asks for it: refuse it if the same amount
    went the same way within ``order.guard_s`` seconds (and was not failed or
    cancelled)."""
    if not order.guard_s:
        return
    recent = await conn.fetch_one(
        _RECENT_SAME,
        {
            "src": order.from_account,
            "dst": order.to_account,
            "amount": order.amount,
            "since": at - order.guard_s * 1_000_000,
        },
    )
    if recent is not None:
        raise possible_duplicate(Transfer.of(recent), at)


def transfer_row(t: Transfer) -> dict[str, object]:
    """A new transfer's ``transfers`` row (but ``created_by``)."""
    return {
        "id": t.id,
        "from_account": t.from_account,
        "to_account": t.to_account,
        "amount": t.amount,
        "currency": t.currency,
        "memo": t.memo,
        "status": t.status.value,
        "failure_reason": t.failure_reason,
        "created_at": t.created_at,
        "settled_at": t.settled_at,
        "from_name": t.from_name,
        "to_name": t.to_name,
        "from_display_name": t.from_display_name,
        "to_display_name": t.to_display_name,
        "kind": t.kind.value,
        "expires_at": t.expires_at,
        "slot": slot_of(t.from_account),
        "pending_since": None if t.status is Status.AWAITING else t.created_at,
    }


async def cancel(
    conn: Conn, user_id: str, transfer_id: str, at: int
) -> tuple[Transfer, list[Event]]:
    """Cancel a pending (or awaiting) transfer on behalf of its sender, releasing the
    reservation. An awaiting one was only ever the sender's: only its log is told."""
    sent = await conn.fetch_one(_SENT_TRANSFER, {"tid": transfer_id, "uid": user_id})
    if sent is None:
        raise errors.TransferNotFound("no such transfer of yours")
    was = Status(sent["status"])
    claimed = None
    if not was.final:
        claimed = await conn.fetch_one(_CANCEL, {"tid": transfer_id, "at": at, "was": was.value})
    if claimed is None:
        raise errors.NotPending("the transfer is no longer pending")
    transfer = Transfer.of(claimed)
    if was is Status.AWAITING:
        row = await move(conn, transfer.from_account, {"pending_debits": -transfer.amount})
        event = Event.of_transfer(transfer, row["id"], row["seq"], Balance.of(row), at)
        await conn.execute_many(INSERT_EVENT, [event.log_row()])
        return transfer, [event]
    src_row, dst_row = await move_pair(
        conn,
        transfer.from_account,
        transfer.to_account,
        {"pending_debits": -transfer.amount},
        {"pending_credits": -transfer.amount},
    )
    assert src_row is not None and dst_row is not None
    events = [
        Event.of_transfer(transfer, row["id"], row["seq"], Balance.of(row), at)
        for row in (src_row, dst_row)
    ]
    await conn.execute_many(INSERT_EVENT, [e.log_row() for e in events])
    return transfer, events


async def confirm(
    conn: Conn, transfer_id: str, nonce: str, at: int, expires_at: int
) -> tuple[Transfer, list[Event]]:
    """A passkey confirmed the awaiting transfer whose challenge came from ``nonce``: it
    becomes pending now (``pending_since``, and its expiry counted from it), the
    recipient expects it, and both logs say ``transfer.pending``. ConfirmationInvalid if
    it is no longer awaiting or the nonce was already spent: nothing changes."""
    claimed = await conn.fetch_one(
        _CONFIRM, {"tid": transfer_id, "nonce": nonce, "at": at, "expires": expires_at}
    )
    if claimed is None:
        raise errors.ConfirmationInvalid("this transfer is no longer awaiting this confirmation")
    transfer = Transfer.of(claimed)
    src_row, dst_row = await move_pair(
        conn, transfer.from_account, transfer.to_account, {}, {"pending_credits": transfer.amount}
    )
    events = [
        Event.of_transfer(transfer, row["id"], row["seq"], Balance.of(row), at)
        for row in (src_row, dst_row)
    ]
    await conn.execute_many(INSERT_EVENT, [e.log_row() for e in events])
    return transfer, events


def _passkey_required() -> errors.PasskeyRequired:
    return errors.PasskeyRequired(
        "a transfer this large is confirmed with a passkey: add one on the Security page"
    )


async def preview(conn: Conn, order: Order, at: int, confirm_above: int | None) -> Preview:
    """What accepting ``order`` at ``at`` would leave on the sender's account, or the
    rule that would refuse it, the duplicate guard and the passkey a large transfer needs
    included (``confirm_above``, as ``accept`` gets it); a read: nothing is written,
    nothing reserved."""
    src, dst = await parties(conn, order)
    seen = domain_preview(order, src, dst)
    if seen.error is not None or src is None:
        return seen
    try:
        await _guard(conn, order, at)
    except errors.PossibleDuplicate as exc:
        return Preview(seen.balance_after, exc)
    if confirm_above is None or order.amount <= confirm_above:
        return seen
    if await conn.fetch_val(_HAS_PASSKEY, {"uid": order.user_id}) is None:
        return Preview(seen.balance_after, _passkey_required())
    return Preview(seen.balance_after, None, requires_passkey=True)
