"""The use cases of a transfer: send, cancel, settle. Each does its whole job in one
place: validate, rate-limit, run the ledger's transaction, dispatch after the commit,
record metrics, hit the crash points. The API, the pages and the worker only parse,
call one of these, and render.

The path of one transfer: ``send`` → ``ledger.accept`` (one transaction) → enqueue its
settlement job and publish ``transfer.pending`` → the worker's job → ``settle`` →
``settlement.settle`` (one transaction, a batch) → publish ``transfer.completed`` or
``transfer.failed`` → each web process's ``Hub`` → the account's sockets.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from server import errors, faults, ledger, settlement, text
from server.dispatch import Dispatcher
from server.events import Event
from server.metrics import SETTLEMENT
from server.money import parse_amount
from server.schema import new_id, now_us
from server.services import Services
from server.settings import Settings
from server.store import Conn, Store, findable

MAX_MEMO = 500
MAX_KEY = 255
# The duplicate guard's window: the pages always ask for it (unless the user confirmed);
# API clients may, for up to an hour.
DUPLICATE_WINDOW_S = 120
MAX_GUARD_S = 3600


def idempotency_key(value: str | None) -> str | None:
    """The one rule for an idempotency key, from a header or a form's hidden field."""
    if value is None:
        return None
    if not 1 <= len(value) <= MAX_KEY or not value.isascii() or not value.isprintable():
        raise errors.InvalidField(
            f"Idempotency-Key must be 1 to {MAX_KEY} printable ASCII characters",
            "Idempotency-Key",
        )
    return value


def memo_text(value: str | None) -> str:
    """The one rule for a memo: optional, at most MAX_MEMO characters of text
    (``server.text``)."""
    return "" if value is None else text.check(value, "memo", MAX_MEMO)


def order(
    user_id: str,
    from_account: str,
    to_account: str,
    amount: object,
    memo: str | None = None,
    key: str | None = None,
    guard_s: int = 0,
) -> ledger.Order:
    """A transfer request checked against every rule that needs no database.
    ``guard_s``: refuse it (``possible_duplicate``) if the same amount went to the same
    account within that many seconds."""
    if not 0 <= guard_s <= MAX_GUARD_S:
        raise errors.InvalidField(
            f"guard_duplicates_s must be from 1 to {MAX_GUARD_S}", "guard_duplicates_s"
        )
    return ledger.Order(
        user_id,
        findable(from_account),
        findable(to_account),
        parse_amount(amount),
        memo_text(memo),
        idempotency_key(key),
        guard_s,
    )


@dataclasses.dataclass(frozen=True)
class Sent:
    transfer_id: str
    response: bytes  # the 202 body: the transfer and the sender's new balance
    replayed: bool  # the same key was sent before: no new transfer


async def send(app: Services, request: ledger.Order) -> Sent:
    """Accept a transfer as pending (or replay the response its key already got)."""
    await app.rate.check(request.user_id)
    transfer_id, at = new_id("tr"), now_us()
    expires_at = at + app.settings.pending_ttl_s * 1_000_000
    try:
        accepted = await app.store.transaction(
            lambda conn: ledger.accept(conn, request, transfer_id, at, expires_at)
        )
    except ledger.KeyTaken:
        # An identical request won the race for the key: answer what it answered.
        winner = await app.store.read(lambda conn: ledger.replay(conn, request))
        assert winner is not None
        accepted = winner
    if accepted.replayed:
        return Sent(accepted.transfer_id, accepted.response, replayed=True)
    app.metrics.accepted.inc()
    faults.crash_at(app.settings, "accept-after-commit")
    await app.dispatch.after_commit(accepted.events, settle=[transfer_id])
    return Sent(transfer_id, accepted.response, replayed=False)


@dataclasses.dataclass(frozen=True)
class Cancelled:
    transfer: dict[str, Any]
    events: list[Event]

    def event_of(self, account_id: str) -> Event:
        return next(e for e in self.events if e.account_id == account_id)


async def cancel(app: Services, user_id: str, transfer_id: str) -> Cancelled:
    """Cancel a pending transfer the user sent, releasing its reservation."""
    transfer, events = await app.store.transaction(
        lambda conn: ledger.cancel(conn, user_id, findable(transfer_id), now_us())
    )
    app.metrics.cancelled.inc()
    await app.dispatch.after_commit(events)
    return Cancelled(transfer, events)


async def settle(
    store: Store,
    dispatch: Dispatcher,
    settings: Settings,
    transfer_id: str,
    batch_size: int | None = None,
    ready_before: int | None = None,
    turn: asyncio.Lock | None = None,
) -> list[Event]:
    """Settle ``transfer_id`` and the other due pending transfers with it (one batch,
    one transaction), publish the outcomes, count them. Idempotent: a transfer that is
    no longer pending is simply not in the batch.

    ``turn`` (a worker's, on PostgreSQL): the process's settlements take turns on it and
    each waits for the database's settlement lock rather than raising Busy, so the
    next batch starts as soon as the one before commits (in this worker or another),
    with one connection waiting per worker. The events are published after the turn."""
    size = settings.settle_batch_size if batch_size is None else batch_size
    if ready_before is None:
        ready_before = now_us() - settings.settle_delay_ms * 1000 + 1

    def crash_point() -> None:
        faults.crash_at(settings, "settle-before-commit")

    async def body(conn: Conn) -> list[Event]:
        return await settlement.settle(
            conn, transfer_id, size, ready_before, now_us(), crash_point, wait=turn is not None
        )

    if turn is None:
        events = await store.transaction(body)
    else:
        async with turn:
            events = await store.transaction(body)
    await dispatch.publish(events)
    SETTLEMENT.record({e.transfer_id: e.transfer for e in events}.values())
    return events


async def expire(store: Store, dispatch: Dispatcher, limit: int = 500) -> list[Event]:
    """Fail, as "expired", the transfers still pending at their expiry (the sweeper's
    job): reservations released, events published, counted. Busy if a settlement runs."""
    events = await store.transaction(lambda conn: settlement.expire(conn, now_us(), limit))
    await dispatch.publish(events)
    SETTLEMENT.record({e.transfer_id: e.transfer for e in events}.values())
    return events


async def preview(app: Services, request: ledger.Order) -> ledger.Preview:
    """What sending ``request`` would leave on the sender's account, or why it would be
    refused. A read: nothing written, nothing reserved, no rate limit spent."""
    return await app.store.read(lambda conn: ledger.preview(conn, request))
