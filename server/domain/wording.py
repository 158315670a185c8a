"""How the pages word a transfer: who the other party is, from which side it is seen,
when it happened and when it will, whether money actually moved, and in what time.

Plain functions of the typed transfer (``server.domain.model.Transfer``) and the
account that is looking at it, so a page render and a live event say exactly the same
thing. Amounts are integer cents: no float touches money. People are named as they go
by, with their username ("Bob Martin (@bob)": ``server.domain.people.called``); times
are plain ("arrived in 1.6 s"), milliseconds are for the transfer page's technical
section only.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, tzinfo

from server.domain.model import EventType, FailureReason, Status, Transfer, TransferKind
from server.domain.money import format_amount
from server.domain.people import called
from server.domain.statements import BANK_DEPOSIT

SYMBOLS = {"USD": "$", "EUR": "€", "GBP": "£"}
# How long a transfer takes, as a promise a person can plan with: settlement is a
# background job of seconds, not the day a pending transfer may wait before expiring.
USUALLY = "usually arrives in seconds"
# Why a transfer failed, from each side: (the sender reads, the recipient reads). The
# sender is never told what about the recipient's account stopped it: that is theirs.
REASONS: dict[FailureReason, tuple[str, str]] = {
    FailureReason.RECIPIENT_UNAVAILABLE: (
        "this recipient cannot receive money right now",
        "your account is frozen",
    ),
    FailureReason.ACCOUNT_FROZEN: ("the recipient's account is frozen", "your account is frozen"),
    FailureReason.EXPIRED: (
        "it was not delivered in time",
        "it was not delivered in time",
    ),
    FailureReason.NOT_CONFIRMED: (
        "you did not confirm it with your passkey in time",
        "the sender did not confirm it",
    ),
}


@dataclasses.dataclass(frozen=True, slots=True)
class Note:
    """A line of words with its tone (a CSS class: held, incoming, settled, failed,
    neutral)."""

    tone: str
    text: str


@dataclasses.dataclass(frozen=True, slots=True)
class Seen:
    """A transfer as one account's holder reads it."""

    outgoing: bool
    who: str  # the other party: "Bob Martin (@bob)", or "Bank deposit"
    title: str  # "To Bob Martin (@bob)", "From …", "Bank deposit"
    amount: str  # "$12.34"
    sign: str  # a minus sign, "+" or "" (nothing moved)
    tone: str  # the amount's colour: out, in (arrived), incoming (on its way), void
    void: bool  # failed or cancelled: struck through
    void_text: str  # "not charged" / "not received"
    detail: str  # "on its way · usually arrives in seconds", "arrived in 1.6 s", …
    # Pending: when it is called off if still undelivered (the promise), else None.
    deadline: int | None
    promise: str  # what happens then, for this side ("" unless pending)
    created_at: int
    can_cancel: bool
    # Awaiting its sender's passkey: where they confirm it ("" otherwise).
    confirm_url: str = ""


def money(cents: int | None, currency: str = "USD") -> str:
    """Cents like -123450 as "-$1,234.50" with a true minus sign; exact, never floats."""
    if cents is None:
        return ""
    amount = format_amount(cents)
    sign = "\N{MINUS SIGN}" if amount.startswith("-") else ""
    units, _, frac = amount.lstrip("-").partition(".")
    symbol = SYMBOLS.get(currency)
    number = f"{int(units):,}.{(frac or '0').ljust(2, '0')[:2]}"
    return f"{sign}{symbol}{number}" if symbol else f"{sign}{number} {currency}"


def reason_text(reason: FailureReason | None, outgoing: bool = True) -> str:
    """Why a transfer failed, as the sender (or the recipient) should read it."""
    if reason is None:
        return "the transfer could not be settled"
    sender, recipient = REASONS[reason]
    return sender if outgoing else recipient


def _utc(us: int) -> datetime:
    return datetime.fromtimestamp(us / 1_000_000, tz=UTC)


def when(us: int | None) -> str:
    """An instant as the server writes it (UTC); the browser rewrites it to local time."""
    return "" if us is None else _utc(us).strftime("%-d %b %Y, %H:%M UTC")


def exact_when(us: int | None) -> str:
    return "" if us is None else _utc(us).strftime("%Y-%m-%d %H:%M:%S UTC")


def local_when(us: int, zone: tzinfo) -> str:
    """An instant in a person's own zone, to the minute ("3 Dec 2026, 14:05")."""
    return _utc(us).astimezone(zone).strftime("%-d %b %Y, %H:%M")


def window(ms: float | None) -> str:
    """The consistency window as a person says it: "arrived in 1.5 s"."""
    if ms is None:
        return ""
    if ms < 1000:
        return "arrived in under a second"
    if ms < 60_000:
        seconds = f"{ms / 1000:.1f}".removesuffix(".0")
        return f"arrived in {seconds} s"
    minutes = round(ms / 60_000)
    if minutes < 120:
        return f"arrived in {minutes} min"
    return f"arrived in {round(ms / 3_600_000)} h"


def ago(seconds: int) -> str:
    if seconds < 60:
        return f"{seconds} s ago"
    return f"{seconds // 60} min ago"


def counterparty(t: Transfer, outgoing: bool) -> str:
    """The other party as a person reads them: "Bob Martin (@bob)", their username
    alone when they go by it, or "Bank deposit" for funding."""
    if not outgoing and t.kind is TransferKind.DEPOSIT:
        return BANK_DEPOSIT
    if outgoing:
        return called(t.to_name, t.to_display_name)
    return called(t.from_name, t.from_display_name)


def _detail(t: Transfer, outgoing: bool, deposit: bool) -> str:
    if t.status is Status.COMPLETED:
        return "added by the bank" if deposit else window(t.settled_in_ms)
    if t.status is Status.AWAITING:
        return "held until you confirm it with your passkey"
    if t.status is Status.PENDING:
        return f"on its way · {USUALLY}" if outgoing else f"on its way to you · {USUALLY}"
    if t.status is Status.FAILED:
        verb = "not delivered" if outgoing else "could not be delivered"
        return f"{verb}: {reason_text(t.failure_reason, outgoing)}"
    if t.failure_reason is FailureReason.NOT_CONFIRMED:
        return "not sent: you did not confirm it with your passkey in time"
    return "you cancelled it" if outgoing else "cancelled by the sender"


def transfer(t: Transfer, account_id: str) -> Seen:
    """A transfer as ``account_id``'s holder reads it."""
    outgoing = t.sent_from(account_id)
    who = counterparty(t, outgoing)
    deposit = not outgoing and t.kind is TransferKind.DEPOSIT
    title = BANK_DEPOSIT if deposit else (f"To {who}" if outgoing else f"From {who}")
    moved = t.status.moved
    pending = t.status is Status.PENDING
    if not moved:
        tone = "void"
    elif outgoing:
        tone = "out"
    else:
        # Money on its way in is not the reader's yet: neutral, green once it arrives.
        tone = "incoming" if pending else "in"
    if outgoing:
        promise = "it is cancelled and you are not charged"
    else:
        promise = "it is cancelled and the money goes back to the sender"
    return Seen(
        outgoing=outgoing,
        who=who,
        title=title,
        amount=money(t.amount, t.currency),
        sign=("\N{MINUS SIGN}" if outgoing else "+") if moved else "",
        tone=tone,
        void=not moved,
        void_text="not charged" if outgoing else "not received",
        detail=_detail(t, outgoing, deposit),
        deadline=t.expires_at if pending else None,
        promise=promise if pending and t.expires_at is not None else "",
        created_at=t.created_at,
        can_cancel=outgoing and not t.status.final,
        confirm_url=confirm_url(t) if outgoing else "",
    )


def confirm_url(t: Transfer) -> str:
    """Where its sender confirms a transfer awaiting their passkey ("" otherwise)."""
    return f"/transfers/{t.id}/confirm" if t.status is Status.AWAITING else ""


def change_note(kind: EventType, t: Transfer, account_id: str) -> Note:
    """What an event did to this account, in words, naming who and how much: shown on
    the balance card and announced to screen readers."""
    outgoing = t.sent_from(account_id)
    amount = money(t.amount, t.currency)
    who = counterparty(t, outgoing)
    window_text = window(t.settled_in_ms)
    arrived = f" — {window_text}" if window_text else ""
    reason = reason_text(t.failure_reason, outgoing)
    deposit = not outgoing and t.kind is TransferKind.DEPOSIT
    source = "a bank deposit" if deposit else who
    unconfirmed = t.failure_reason is FailureReason.NOT_CONFIRMED
    notes = {
        (EventType.AWAITING, True): (
            "held",
            f"Confirm {amount} to {who}: held until you confirm it with your passkey",
        ),
        (EventType.PENDING, True): ("held", f"{amount} held for a pending transfer to {who}"),
        (EventType.PENDING, False): (
            "incoming",
            f"{amount} from {source} on its way to you, not available yet",
        ),
        (EventType.COMPLETED, True): ("settled", f"{amount} sent to {who}{arrived}"),
        (EventType.COMPLETED, False): (
            "settled",
            f"{amount} deposited by the bank"
            if deposit
            else f"{amount} received from {who}{arrived}",
        ),
        (EventType.FAILED, True): (
            "failed",
            f"{amount} released: the transfer to {who} failed, {reason}. You were not charged",
        ),
        (EventType.FAILED, False): (
            "failed",
            f"{amount} from {source} could not be delivered: {reason}",
        ),
        (EventType.CANCELLED, True): (
            "neutral",
            f"Not confirmed in time: {amount} released — not sent to {who}"
            if unconfirmed
            else f"Cancelled: {amount} released — not sent to {who}",
        ),
        (EventType.CANCELLED, False): (
            "neutral",
            f"Incoming {amount} from {source} was cancelled by the sender",
        ),
    }
    tone, text = notes.get((kind, outgoing), ("neutral", f"{amount}: {kind}"))
    return Note(tone, text)


def account_note(kind: EventType) -> Note:
    """What an account event did, in words (announced to screen readers; the frozen
    notice itself says what it means)."""
    if kind is EventType.FROZEN:
        return Note("failed", "This account was frozen: it cannot send or receive money")
    return Note("settled", "This account was unfrozen: it can send and receive again")


def status_line(t: Transfer) -> Note:
    """The send form's status line for the transfer it sent, at each of its states."""
    amount = money(t.amount, t.currency)
    who = counterparty(t, True)
    if t.status is Status.AWAITING:
        return Note("held", f"Confirm {amount} to {who} with your passkey: held until then.")
    if t.status is Status.PENDING:
        return Note("sent", f"Sent — pending: {amount} to {who}, {USUALLY}.")
    if t.status is Status.COMPLETED:
        return Note("done", f"Done: {amount} reached {who} ({window(t.settled_in_ms)}).")
    if t.status is Status.FAILED:
        reason = reason_text(t.failure_reason, True)
        return Note("failed", f"Failed: {amount} not sent to {who}, {reason}. Not charged.")
    if t.failure_reason is FailureReason.NOT_CONFIRMED:
        return Note("neutral", f"Not confirmed in time: {amount} not sent to {who}. Not charged.")
    return Note("neutral", f"Cancelled: {amount} not sent to {who}.")
