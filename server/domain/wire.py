"""The JSON shapes settle sends: what the API answers, the stream sends and the event
log keeps, as msgspec Structs, with the one conversion each way between them and the
typed values of ``server.domain.model``.

Amounts travel as decimal strings with exactly two decimals ("12.34"), instants as ISO
8601 text in UTC to the millisecond. ``/openapi.json`` describes these very Structs
(``server.web.openapi``), so the document and the bytes cannot drift apart.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import msgspec

from server.domain import errors, webhooks
from server.domain.model import (
    Account,
    AccountKind,
    AccountStatus,
    Balance,
    EventType,
    FailureReason,
    Status,
    Transfer,
    TransferKind,
)
from server.domain.money import format_amount, parse_money
from server.domain.statements import Line

Money = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^-?[0-9]+\.[0-9]{2}$",
        description="An exact amount: a decimal string with two decimals",
        examples=["12.34"],
    ),
]
Instant = Annotated[str, msgspec.Meta(extra_json_schema={"format": "date-time"})]
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


class BalanceJSON(msgspec.Struct):
    posted: Money
    pending_debits: Money
    pending_credits: Money
    available: Money
    projected: Money


class AccountJSON(msgspec.Struct):
    id: str
    name: str
    owner: str
    currency: str
    status: AccountStatus
    balance: BalanceJSON
    seq: Annotated[int, msgspec.Meta(ge=0)]


class NextActionJSON(msgspec.Struct):
    """What the sender must do before a transfer goes on: confirm it with a passkey
    (``url``: the page that does it)."""

    type: str
    url: str


class TransferJSON(msgspec.Struct, omit_defaults=True):
    """A transfer. ``from_display_name`` / ``to_display_name`` are left out only where
    they are not known: events logged, and answers kept with an idempotency key, before
    settle kept them (those replay byte for byte as first sent)."""

    id: str
    kind: TransferKind
    from_account: str
    from_name: str
    to_account: str
    to_name: str
    amount: Money
    currency: str
    memo: str
    status: Status
    failure_reason: FailureReason | None
    created_at: Instant
    settled_at: Instant | None
    expires_at: Instant | None
    settled_in_ms: float | None
    from_display_name: str = ""
    to_display_name: str = ""
    # Only while awaiting_confirmation.
    next_action: NextActionJSON | None = None


class AcceptedJSON(TransferJSON, kw_only=True):
    """The 202 to a transfer: the transfer, pending, and the sender's new balance."""

    balance: BalanceJSON


class EventJSON(msgspec.Struct, omit_defaults=True):
    """One message of an account's stream (and log): a transfer event carries the
    transfer, an account event and a snapshot the account's state; each the account's
    balance right after it."""

    type: str
    account: str
    seq: int
    transfer: TransferJSON | None = None
    account_state: AccountJSON | None = None
    balance: BalanceJSON | None = None


class ErrorDetailJSON(msgspec.Struct, omit_defaults=True):
    code: str
    message: str
    # The request field or header at fault.
    field: str | None = None
    # possible_duplicate: the earlier transfer.
    duplicate_of: TransferJSON | None = None
    # passkey_required: where to add a passkey.
    url: str | None = None


class ErrorJSON(msgspec.Struct):
    """Every refusal's body: ``{"error": {"code", "message", "field"?}}``."""

    error: ErrorDetailJSON


def error_detail(exc: errors.SettleError) -> ErrorDetailJSON:
    earlier = exc.earlier if isinstance(exc, errors.PossibleDuplicate) else None
    return ErrorDetailJSON(
        exc.code,
        exc.message,
        exc.field,
        None if earlier is None else transfer(earlier),
        exc.url if isinstance(exc, errors.PasskeyRequired) else None,
    )


def error(exc: errors.SettleError) -> ErrorJSON:
    return ErrorJSON(error_detail(exc))


_encoder = msgspec.json.Encoder()
encode = _encoder.encode


def iso(us: int) -> str:
    """Microseconds since the epoch as an ISO 8601 instant (UTC, milliseconds): exact,
    for any instant of the years 1 to 9999 (no float, no platform's time functions)."""
    return (_EPOCH + us * _MICROSECOND).isoformat(timespec="milliseconds")


def iso_or_none(us: int | None) -> str | None:
    return None if us is None else iso(us)


def micros(text: str) -> int:
    """An instant this module wrote, back as microseconds."""
    return (datetime.fromisoformat(text) - _EPOCH) // _MICROSECOND


def balance(b: Balance) -> BalanceJSON:
    return BalanceJSON(
        format_amount(b.posted),
        format_amount(b.pending_debits),
        format_amount(b.pending_credits),
        format_amount(b.available),
        format_amount(b.projected),
    )


def account(a: Account) -> AccountJSON:
    return AccountJSON(a.id, a.name, a.owner, a.currency, a.status, balance(a.balance), a.seq)


def transfer(t: Transfer) -> TransferJSON:
    return TransferJSON(
        id=t.id,
        kind=t.kind,
        from_account=t.from_account,
        from_name=t.from_name,
        to_account=t.to_account,
        to_name=t.to_name,
        amount=format_amount(t.amount),
        currency=t.currency,
        memo=t.memo,
        status=t.status,
        failure_reason=t.failure_reason,
        created_at=iso(t.created_at),
        settled_at=iso_or_none(t.settled_at),
        expires_at=iso_or_none(t.expires_at),
        settled_in_ms=t.settled_in_ms,
        from_display_name=t.from_display_name,
        to_display_name=t.to_display_name,
        next_action=next_action(t),
    )


def next_action(t: Transfer) -> NextActionJSON | None:
    if t.status is not Status.AWAITING:
        return None
    return NextActionJSON("confirm_with_passkey", f"/transfers/{t.id}/confirm")


def accepted(t: Transfer, b: Balance) -> AcceptedJSON:
    return AcceptedJSON(**msgspec.structs.asdict(transfer(t)), balance=balance(b))


def balance_from(b: BalanceJSON) -> Balance:
    return Balance(
        parse_money(b.posted), parse_money(b.pending_debits), parse_money(b.pending_credits)
    )


def account_from(a: AccountJSON, kind: AccountKind = AccountKind.USER) -> Account:
    return Account(
        a.id, a.name, a.owner, a.currency, a.status, kind, balance_from(a.balance), a.seq
    )


def transfer_from(t: TransferJSON) -> Transfer:
    """A transfer as this module encoded it, typed again (to the millisecond)."""
    return Transfer(
        id=t.id,
        kind=t.kind,
        from_account=t.from_account,
        from_name=t.from_name,
        to_account=t.to_account,
        to_name=t.to_name,
        amount=parse_money(t.amount),
        currency=t.currency,
        memo=t.memo,
        status=t.status,
        failure_reason=t.failure_reason,
        created_at=micros(t.created_at),
        settled_at=None if t.settled_at is None else micros(t.settled_at),
        expires_at=None if t.expires_at is None else micros(t.expires_at),
        settled_in_ms=t.settled_in_ms,
        from_display_name=t.from_display_name,
        to_display_name=t.to_display_name,
    )


def event_type(message: EventJSON) -> EventType | None:
    """The message's type, if it is an event (not a snapshot or something unknown)."""
    try:
        return EventType(message.type)
    except ValueError:
        return None


class StatementLineJSON(msgspec.Struct):
    at: Instant
    transfer_id: str
    counterparty: str
    memo: str
    amount: Money
    balance_after: Money


class StatementJSON(msgspec.Struct):
    """A statement: ``opening_balance + Σ amount = closing_balance`` (written out as its
    entries are read: ``server.store.statements``)."""

    account: str
    currency: str
    from_: Instant = msgspec.field(name="from")
    to: Instant
    opening_balance: Money
    entries: list[StatementLineJSON]
    closing_balance: Money
    chain_head: Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{64}$")]


def statement_line(line: Line) -> StatementLineJSON:
    return StatementLineJSON(
        iso(line.at),
        line.transfer_id,
        line.counterparty,
        line.memo,
        format_amount(line.amount),
        format_amount(line.balance_after),
    )


class WebhookJSON(msgspec.Struct, omit_defaults=True):
    """A webhook endpoint. ``secret`` only in the answers that make one (creation and
    rotation): it is shown once."""

    id: str
    url: str
    description: str
    events: list[str]
    status: webhooks.EndpointStatus
    # Why it was disabled ("" while enabled).
    disabled_reason: str
    created_at: Instant
    secret: str | None = None


class WebhooksJSON(msgspec.Struct):
    webhooks: list[WebhookJSON]


class AttemptJSON(msgspec.Struct):
    at: Instant
    # The receiver's HTTP status, or null with ``error`` (a timeout, a refused address).
    status_code: int | None
    error: str
    duration_ms: float
    next_attempt_at: Instant | None


class DeliveryJSON(msgspec.Struct):
    # Sent as webhook-id on every attempt.
    id: str
    type: str
    status: webhooks.DeliveryStatus
    created_at: Instant
    delivered_at: Instant | None
    next_attempt_at: Instant | None
    attempts: list[AttemptJSON]
    # The message as sent: the stream's message for the event.
    payload: dict[str, Any]


class DeliveriesPageJSON(msgspec.Struct):
    deliveries: list[DeliveryJSON]
    # The last delivery's id, to pass as ``before`` for the next page (null: the last).
    next_before: str | None


class DeliveryQueuedJSON(msgspec.Struct):
    id: str
    status: webhooks.DeliveryStatus


def webhook(e: webhooks.Endpoint, with_secret: bool = False) -> WebhookJSON:
    return WebhookJSON(
        id=e.id,
        url=e.url,
        description=e.description,
        events=list(e.events),
        status=e.status,
        disabled_reason=e.disabled_reason,
        created_at=iso(e.created_at),
        secret=e.secret if with_secret else None,
    )


def delivery(d: webhooks.Delivery) -> DeliveryJSON:
    return DeliveryJSON(
        id=d.id,
        type=d.type,
        status=d.status,
        created_at=iso(d.created_at),
        delivered_at=iso_or_none(d.delivered_at),
        next_attempt_at=iso_or_none(
            d.next_attempt_at if d.status is webhooks.DeliveryStatus.PENDING else None
        ),
        attempts=[
            AttemptJSON(
                at=iso(a.at),
                status_code=a.status_code,
                error=a.error,
                duration_ms=round(a.duration_us / 1000, 1),
                next_attempt_at=iso_or_none(a.next_attempt_at),
            )
            for a in d.tries
        ],
        payload=msgspec.json.decode(d.payload),
    )
