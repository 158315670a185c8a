"""The use cases of a transfer: send, cancel, settle, expire, preview. Each does its
whole job in one place: validate, rate-limit, run the ledger's transaction, dispatch
after the commit, record metrics, hit the crash points. The API, the pages and the
worker only parse, call one of these, and render.

The path of one transfer: ``send`` → ``store.ledger.accept`` (one transaction) → ring
its partition's drainer and publish ``transfer.pending`` → the drainer (``jobs.drainer``)
→ ``settle`` → ``store.settlement.settle`` (one transaction, a batch of the partition)
→ publish ``transfer.completed`` or ``transfer.failed`` → each web process's ``Hub`` →
the account's sockets.
"""

from __future__ import annotations

import secrets

from server import faults
from server.domain import errors
from server.domain.clock import new_id, now_us
from server.domain.events import Event
from server.domain.ledger import Order, Preview
from server.domain.model import Status, Transfer
from server.domain.settlement import partition_of_account
from server.metrics import SETTLEMENT
from server.store import Conn, findable, ledger, settlement
from server.usecases.context import Context


async def send(ctx: Context, order: Order) -> ledger.Accepted:
    """Accept a transfer as pending (or replay the answer its key already got: a replay
    is never counted against the rate limit)."""
    try:
        await ctx.rate.check(order.user_id, "transfers")
    except errors.RateLimited:
        earlier = await ctx.store.read(lambda conn: ledger.replay(conn, order))
        if earlier is None:
            raise
        return earlier
    settings = ctx.settings
    transfer_id, at = new_id("tr"), now_us()
    expires_at = at + settings.pending_ttl_s * 1_000_000
    confirming = None
    if settings.confirm_above is not None:
        confirming = ledger.Confirming(
            settings.confirm_above, at + settings.confirm_ttl_s * 1_000_000, secrets.token_hex(32)
        )
    try:
        accepted = await ctx.store.transaction(
            lambda conn: ledger.accept(conn, order, transfer_id, at, expires_at, confirming),
            accounts=ledger.locked_by(order),
        )
    except ledger.KeyTaken:
        # An identical request won the race for the key: answer what it answered.
        winner = await ctx.store.read(lambda conn: ledger.replay(conn, order))
        assert winner is not None
        accepted = winner
    if accepted.replayed:
        return accepted
    if ctx.metrics is not None:
        ctx.metrics.accepted.inc()
    faults.crash_at(settings, "accept-after-commit")
    if accepted.transfer.status is Status.AWAITING:  # nothing to settle until confirmed
        await ctx.dispatch.after_commit(accepted.events)
        return accepted
    partition = partition_of_account(order.from_account, settings.settle_partitions)
    await ctx.dispatch.after_commit(accepted.events, settle=[partition])
    return accepted


async def cancel(ctx: Context, user_id: str, transfer_id: str) -> tuple[Transfer, list[Event]]:
    """Cancel a pending (or awaiting) transfer the user sent, releasing its reservation:
    the transfer, and the events of the accounts that knew of it."""
    transfer, events = await ctx.store.transaction(
        lambda conn: ledger.cancel(conn, user_id, findable(transfer_id), now_us())
    )
    if ctx.metrics is not None:
        ctx.metrics.cancelled.inc()
    await ctx.dispatch.after_commit(events)
    return transfer, events


async def settle(
    ctx: Context, partition: int, ready_before: int | None = None, wait: bool = True
) -> settlement.Settled:
    """Settle one batch of a partition's due transfers (one transaction), publish the
    outcomes, count them. Idempotent: a transfer no longer pending is simply not in it.
    ``wait``: wait for the partition's lock (PostgreSQL) instead of raising Busy."""
    settings = ctx.settings
    if ready_before is None:
        ready_before = now_us() - settings.settle_delay_ms * 1000 + 1

    def crash_point() -> None:
        faults.crash_at(settings, "settle-before-commit")

    async def body(conn: Conn) -> settlement.Settled:
        return await settlement.settle(
            conn,
            partition,
            settings.settle_partitions,
            settings.settle_batch_size,
            ready_before,
            now_us(),
            crash_point,
            wait=wait,
        )

    done = await ctx.store.transaction(body)
    await ctx.dispatch.publish(done.events)
    SETTLEMENT.record(_ended(done.events))
    return done


async def expire(ctx: Context, partition: int, limit: int = 500) -> list[Event]:
    """Fail, as "expired", a partition's transfers still pending at their expiry, and
    cancel, as "not_confirmed", those still awaiting their sender's passkey at theirs
    (the sweeper's job): reservations released, events published, counted. Busy if the
    partition is being settled."""
    partitions = ctx.settings.settle_partitions
    events = await ctx.store.transaction(
        lambda conn: settlement.expire(conn, partition, partitions, now_us(), limit)
    )
    await ctx.dispatch.publish(events)
    # Those never confirmed never went through settlement: not in its outcomes or window.
    SETTLEMENT.record(t for t in _ended(events) if t.status is not Status.CANCELLED)
    return events


def _ended(events: list[Event]) -> list[Transfer]:
    """The transfers these events ended, each once."""
    return list({e.transfer.id: e.transfer for e in events if e.transfer is not None}.values())


async def replayed(ctx: Context, order: Order) -> ledger.Accepted | None:
    """What sending ``order`` again would answer from its idempotency key: the transfer
    it already made (a replay: no money moves), or None if the key is unused;
    IdempotencyKeyReused if the key went with other details. A read."""
    return await ctx.store.read(lambda conn: ledger.replay(conn, order))


async def preview(ctx: Context, order: Order) -> Preview:
    """What sending ``order`` would leave on the sender's account, or exactly why
    sending it would be refused. A read: nothing written, nothing reserved; limited
    per user like sends (its own count), since it reads the recipient's account."""
    await ctx.rate.check(order.user_id, "previews")
    above = ctx.settings.confirm_above
    return await ctx.store.read(lambda conn: ledger.preview(conn, order, now_us(), above))
