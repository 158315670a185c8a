"""Webhooks in the database: endpoints (owner only: others' are 404, as in
``server.store.reads``), each endpoint's cursors over its owner's accounts' event logs,
the deliveries made from the events it wants, and their attempts.

Durability rests here, not on Redis: an event is in ``account_events`` from its commit,
and an endpoint's cursor moves past it only in the transaction that makes its delivery
(``fill``). A lost nudge delays a delivery until the sweeper; it never loses one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from server.domain import webhooks as rules
from server.domain.clock import new_id
from server.domain.webhooks import (
    Attempt,
    Delivery,
    DeliveryStatus,
    Endpoint,
    EndpointStatus,
    Outcome,
)
from server.store import Conn, Store, findable
from server.store.schema import (
    account_events,
    accounts,
    webhook_attempts,
    webhook_cursors,
    webhook_deliveries,
    webhook_endpoints,
)

_E, _D, _A, _C = webhook_endpoints, webhook_deliveries, webhook_attempts, webhook_cursors
_OWNED = sa.select(_E).where(_E.c.id == sa.bindparam("eid"), _E.c.user_id == sa.bindparam("uid"))
_BY_ID = sa.select(_E).where(_E.c.id == sa.bindparam("eid"))
_OF_USER = sa.select(_E).where(_E.c.user_id == sa.bindparam("uid")).order_by(_E.c.created_at)
_COUNT = sa.select(sa.func.count()).select_from(_E).where(_E.c.user_id == sa.bindparam("uid"))
_ACCOUNTS = sa.select(accounts.c.id, accounts.c.seq).where(
    accounts.c.user_id == sa.bindparam("uid")
)
_CURSORS = sa.select(_C.c.account_id, _C.c.seq).where(_C.c.endpoint_id == sa.bindparam("eid"))
_EVENTS = (
    sa.select(account_events.c.seq, account_events.c.type, account_events.c.payload)
    .where(
        account_events.c.account_id == sa.bindparam("acct"),
        account_events.c.seq > sa.bindparam("after"),
    )
    .order_by(account_events.c.seq)
    .limit(sa.bindparam("n"))
)
_LAST_POSITION = sa.select(sa.func.coalesce(sa.func.max(_D.c.position), 0)).where(
    _D.c.endpoint_id == sa.bindparam("eid")
)
_MOVE_CURSOR = (
    sa.update(_C)
    .where(_C.c.endpoint_id == sa.bindparam("eid"), _C.c.account_id == sa.bindparam("acct"))
    .values(seq=sa.bindparam("seq"))
)
_PENDING = (
    sa.select(_D)
    .where(_D.c.endpoint_id == sa.bindparam("eid"), _D.c.status == DeliveryStatus.PENDING.value)
    .order_by(_D.c.position)
    .limit(sa.bindparam("n"))
)
_DELIVERY = sa.select(_D).where(
    _D.c.id == sa.bindparam("did"), _D.c.endpoint_id == sa.bindparam("eid")
)


def _owned(user_id: str, endpoint_id: str) -> dict[str, str]:
    return {"eid": findable(endpoint_id), "uid": user_id}


async def _endpoint(conn: Conn, user_id: str, endpoint_id: str, lock: bool = False) -> Endpoint:
    query = conn.locking(_OWNED) if lock else _OWNED
    row = await conn.fetch_one(query, _owned(user_id, endpoint_id))
    if row is None:
        raise rules.WebhookNotFound("no such webhook endpoint")
    return Endpoint.of(row)


async def create(
    conn: Conn,
    user_id: str,
    url: str,
    description: str,
    events: Sequence[str],
    secret: str,
    at: int,
    most: int,
) -> Endpoint:
    """A new endpoint, reading its owner's accounts from their events to come (a cursor
    at each account's last seq); TooManyWebhooks past ``most``."""
    if int(await conn.fetch_val(_COUNT, {"uid": user_id})) >= most:
        raise rules.TooManyWebhooks(f"at most {most} webhook endpoints per user")
    endpoint_id = new_id("wh")
    row = {
        "id": endpoint_id,
        "user_id": user_id,
        "url": url,
        "description": description,
        "events": " ".join(events),
        "status": EndpointStatus.ENABLED.value,
        "disabled_reason": "",
        "secret": secret,
        "old_secret": None,
        "old_secret_until": None,
        "failing_since": None,
        "created_at": at,
    }
    await conn.execute(sa.insert(_E), row)
    owned = await conn.fetch_all(_ACCOUNTS, {"uid": user_id})
    if owned:
        cursors = [
            {"endpoint_id": endpoint_id, "account_id": r["id"], "seq": r["seq"]} for r in owned
        ]
        await conn.execute_many(sa.insert(_C), cursors)
    return Endpoint.of(row)


async def endpoints_of(store: Store, user_id: str) -> list[Endpoint]:
    return [Endpoint.of(r) for r in await store.fetch_all(_OF_USER, {"uid": user_id})]


async def owned(store: Store, user_id: str, endpoint_id: str) -> Endpoint:
    return await store.read(lambda conn: _endpoint(conn, user_id, endpoint_id))


async def endpoint(store: Store, endpoint_id: str) -> Endpoint | None:
    row = await store.fetch_one(_BY_ID, {"eid": endpoint_id})
    return None if row is None else Endpoint.of(row)


async def delete(conn: Conn, user_id: str, endpoint_id: str) -> None:
    """The endpoint, its cursors, deliveries and attempts: gone."""
    found = await _endpoint(conn, user_id, endpoint_id, lock=True)
    mine = sa.select(_D.c.id).where(_D.c.endpoint_id == found.id).scalar_subquery()
    await conn.execute(sa.delete(_A).where(_A.c.delivery_id.in_(mine)))
    await conn.execute(sa.delete(_D).where(_D.c.endpoint_id == found.id))
    await conn.execute(sa.delete(_C).where(_C.c.endpoint_id == found.id))
    await conn.execute(sa.delete(_E).where(_E.c.id == found.id))


async def rotate(conn: Conn, user_id: str, endpoint_id: str, secret: str, at: int) -> Endpoint:
    """A new secret; the one it replaces keeps signing beside it for the overlap."""
    found = await _endpoint(conn, user_id, endpoint_id, lock=True)
    until = at + rules.ROTATION_OVERLAP_S * 1_000_000
    values = {"secret": secret, "old_secret": found.secret, "old_secret_until": until}
    await conn.execute(sa.update(_E).where(_E.c.id == found.id).values(**values))
    return await _endpoint(conn, user_id, endpoint_id)


async def enable(conn: Conn, user_id: str, endpoint_id: str) -> Endpoint:
    """Enable an endpoint again (one disabled after failing): no failing time, no
    reason. Its cursors waited while it was disabled, so what its owner's accounts did
    meanwhile is delivered next, in order; deliveries whose retries were spent stay
    failed (each can be retried)."""
    found = await _endpoint(conn, user_id, endpoint_id, lock=True)
    values = {"status": EndpointStatus.ENABLED.value, "disabled_reason": "", "failing_since": None}
    await conn.execute(sa.update(_E).where(_E.c.id == found.id).values(**values))
    return await _endpoint(conn, user_id, endpoint_id)


async def _insert_deliveries(
    conn: Conn, endpoint_id: str, items: Sequence[tuple[str, str, str]], at: int
) -> list[str]:
    """Deliveries of (event key, type, payload), after the endpoint's last; their ids."""
    last = int(await conn.fetch_val(_LAST_POSITION, {"eid": endpoint_id}))
    rows = [
        {
            "id": new_id("msg"),
            "endpoint_id": endpoint_id,
            "position": last + n,
            "event_key": key,
            "type": type_,
            "payload": payload,
            "status": DeliveryStatus.PENDING.value,
            "attempts": 0,
            "next_attempt_at": at,
            "created_at": at,
            "delivered_at": None,
        }
        for n, (key, type_, payload) in enumerate(items, 1)
    ]
    if rows:
        await conn.execute_many(sa.insert(_D), rows)
    return [str(r["id"]) for r in rows]


async def add_test(conn: Conn, user_id: str, endpoint_id: str, at: int, stamp: str) -> str:
    """A ``webhook.test`` delivery, due now; its id."""
    found = await _endpoint(conn, user_id, endpoint_id, lock=True)
    key = new_id("test")
    payload = rules.ping_payload(found.id, key, stamp).decode()
    (delivery_id,) = await _insert_deliveries(
        conn, found.id, [(key, rules.TEST_EVENT, payload)], at
    )
    return delivery_id


async def fill(conn: Conn, endpoint_id: str, at: int, limit: int = 500) -> int:
    """Move the endpoint's cursors over its owner's new events (at most ``limit``),
    making a delivery of each one it wants, in this one transaction: how many events
    were read (``limit``: there may be more)."""
    row = await conn.fetch_one(conn.locking(_BY_ID), {"eid": endpoint_id})
    if row is None:
        return 0
    found = Endpoint.of(row)
    if found.status is not EndpointStatus.ENABLED:
        return 0
    cursors = {
        r["account_id"]: int(r["seq"]) for r in await conn.fetch_all(_CURSORS, {"eid": found.id})
    }
    read, items = 0, []
    for account in await conn.fetch_all(_ACCOUNTS, {"uid": found.user_id}):
        after = cursors.get(account["id"])
        if after is None:
            # An account opened after the endpoint: read from its start.
            after = 0
            await conn.insert_new(
                _C, {"endpoint_id": found.id, "account_id": account["id"], "seq": 0}
            )
        if int(account["seq"]) <= after or read >= limit:
            continue
        values = {"acct": account["id"], "after": after, "n": limit - read}
        events = await conn.fetch_all(_EVENTS, values)
        for event in events:
            if rules.wants(found.events, event["type"]):
                items.append((f"{account['id']}:{event['seq']}", event["type"], event["payload"]))
        read += len(events)
        if events:
            moved = {"eid": found.id, "acct": account["id"], "seq": int(events[-1]["seq"])}
            await conn.execute(_MOVE_CURSOR, moved)
    await _insert_deliveries(conn, found.id, items, at)
    return read


async def pending(store: Store, endpoint_id: str, limit: int = 100) -> list[Delivery]:
    """The endpoint's undelivered deliveries, in sending order."""
    rows = await store.fetch_all(_PENDING, {"eid": endpoint_id, "n": limit})
    return [Delivery.of(r) for r in rows]


async def record(
    conn: Conn,
    delivery: Delivery,
    outcome: Outcome,
    at: int,
    next_at: int | None,
    disable_after_us: int,
) -> str | None:
    """An attempt and what follows it: delivered; pending until ``next_at``; or failed
    (``next_at`` None: its retries are spent). The endpoint's failing time starts or
    ends; an endpoint failing for ``disable_after_us`` is disabled: the reason, or None."""
    await conn.execute(
        sa.insert(_A),
        {
            "delivery_id": delivery.id,
            "at": at,
            "status_code": outcome.status_code,
            "error": outcome.error[:300],
            "duration_us": outcome.duration_us,
            "response": outcome.response,
            "next_attempt_at": None if outcome.ok else next_at,
        },
    )
    if outcome.ok:
        status, due = DeliveryStatus.DELIVERED, None
    else:
        status = DeliveryStatus.PENDING if next_at is not None else DeliveryStatus.FAILED
        due = next_at
    changes: dict[str, Any] = {
        "status": status.value,
        "attempts": _D.c.attempts + 1,
        "next_attempt_at": due,
    }
    if outcome.ok:
        changes["delivered_at"] = at
    await conn.execute(sa.update(_D).where(_D.c.id == delivery.id).values(**changes))
    ep = _E.c.id == delivery.endpoint_id
    if outcome.ok:
        await conn.execute(
            sa.update(_E).where(ep, _E.c.failing_since.is_not(None)).values(failing_since=None)
        )
        return None
    row = await conn.fetch_one(conn.locking(_BY_ID), {"eid": delivery.endpoint_id})
    if row is None:
        return None
    found = Endpoint.of(row)
    since = found.failing_since
    if since is None:
        await conn.execute(sa.update(_E).where(ep).values(failing_since=at))
        return None
    if found.status is EndpointStatus.ENABLED and at - since >= disable_after_us:
        reason = (
            f"disabled after failing every attempt for {(at - since) // 3_600_000_000} h;"
            f" last: {outcome.error or f'HTTP {outcome.status_code}'}"
        )[:300]
        await conn.execute(
            sa.update(_E)
            .where(ep)
            .values(status=EndpointStatus.DISABLED.value, disabled_reason=reason)
        )
        return reason
    return None


async def retry_now(conn: Conn, user_id: str, endpoint_id: str, delivery_id: str, at: int) -> None:
    """Send this delivery again at once (also one whose retries were spent)."""
    found = await _endpoint(conn, user_id, endpoint_id, lock=True)
    row = await conn.fetch_one(_DELIVERY, {"did": findable(delivery_id), "eid": found.id})
    if row is None:
        raise rules.DeliveryNotFound("no such delivery of this endpoint")
    values = {"status": DeliveryStatus.PENDING.value, "next_attempt_at": at}
    await conn.execute(sa.update(_D).where(_D.c.id == row["id"]).values(**values))


async def deliveries(
    store: Store, user_id: str, endpoint_id: str, limit: int, before: str | None
) -> list[Delivery]:
    """The endpoint's deliveries, newest first, each with its attempts (oldest first);
    ``before``: the last delivery id of the previous page."""

    async def body(conn: Conn) -> list[Delivery]:
        found = await _endpoint(conn, user_id, endpoint_id)
        query = sa.select(_D).where(_D.c.endpoint_id == found.id)
        if before is not None:
            row = await conn.fetch_one(_DELIVERY, {"did": findable(before), "eid": found.id})
            if row is None:
                return []
            query = query.where(_D.c.position < row["position"])
        rows = await conn.fetch_all(query.order_by(_D.c.position.desc()).limit(limit))
        if not rows:
            return []
        ids = [r["id"] for r in rows]
        tries: dict[str, list[Attempt]] = {i: [] for i in ids}
        attempts = sa.select(_A).where(_A.c.delivery_id.in_(ids)).order_by(_A.c.id)
        for a in await conn.fetch_all(attempts):
            tries[a["delivery_id"]].append(Attempt.of(a))
        return [Delivery.of(r, tries[r["id"]]) for r in rows]

    return await store.read(body)


async def endpoints_for(store: Store, account_ids: Sequence[str]) -> list[str]:
    """The enabled endpoints whose owners hold these accounts."""
    if not account_ids:
        return []
    query = (
        sa.select(_E.c.id)
        .distinct()
        .join(accounts, accounts.c.user_id == _E.c.user_id)
        .where(
            accounts.c.id.in_(sorted(set(account_ids))), _E.c.status == EndpointStatus.ENABLED.value
        )
    )
    return [r["id"] for r in await store.fetch_all(query)]


async def behind(store: Store, at: int) -> list[str]:
    """The enabled endpoints with work: an account's events past its cursor, or a
    delivery due (the sweeper's list)."""
    lagging = (
        sa.select(_E.c.id.label("eid"))
        .join(accounts, accounts.c.user_id == _E.c.user_id)
        .outerjoin(_C, sa.and_(_C.c.endpoint_id == _E.c.id, _C.c.account_id == accounts.c.id))
        .where(
            _E.c.status == EndpointStatus.ENABLED.value,
            accounts.c.seq > sa.func.coalesce(_C.c.seq, 0),
        )
    )
    due = (
        sa.select(_D.c.endpoint_id.label("eid"))
        .join(_E, _E.c.id == _D.c.endpoint_id)
        .where(
            _E.c.status == EndpointStatus.ENABLED.value,
            _D.c.status == DeliveryStatus.PENDING.value,
            _D.c.next_attempt_at <= at,
        )
    )
    rows = await store.fetch_all(sa.union(lagging, due))
    return sorted({r["eid"] for r in rows})


async def any_enabled(store: Store) -> bool:
    query = sa.select(_E.c.id).where(_E.c.status == EndpointStatus.ENABLED.value).limit(1)
    return await store.fetch_one(query) is not None
