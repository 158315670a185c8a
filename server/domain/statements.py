"""The rules of a statement, with no database in sight: who an entry's other party is,
what counts as an instant, where a month starts and ends, and how a cell is written so
that a spreadsheet never runs it. Reading and streaming one: ``server.store.statements``.
"""

from __future__ import annotations

import unicodedata
from datetime import UTC, datetime, timedelta, tzinfo

import msgspec

from server.domain import errors
from server.domain.model import TransferKind

# Who an account's holder reads as the other party of a deposit into it.
BANK_DEPOSIT = "Bank deposit"
MAX_INSTANT = 40
CSV_COLUMNS = ("at", "transfer_id", "counterparty", "memo", "amount", "balance_after")
# A text cell a spreadsheet would run as a formula gets a leading apostrophe (CSV
# injection): people open statements in spreadsheets, and memos are others' words.
# Spreadsheets skip what comes before the formula's first sign (spaces, a byte-order
# mark, zero-width characters) and read full-width signs as the plain ones, so the
# first sign is looked for past those, in its compatibility form (NFKC).
_FORMULA = ("=", "+", "-", "@", "\t", "\r")
_IGNORED_LEAD = " \u00a0\ufeff\u200b\u200c\u200d\u2060\u3000\n"

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def counterparty(amount: int, kind: TransferKind, from_name: str, to_name: str) -> str:
    """The other party of an entry of ``amount`` (negative: it left the account): a
    username, or "Bank deposit" for funding. The same rule names them by their display
    names for the pages (``server.domain.people.called``)."""
    if amount < 0:
        return to_name
    return BANK_DEPOSIT if kind is TransferKind.DEPOSIT else from_name


def instant(value: str, field: str) -> int:
    """An ISO 8601 instant (with its offset, or Z) as microseconds since the epoch."""
    try:
        if len(value) > MAX_INSTANT:
            raise ValueError(value)
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise errors.InvalidField(
            f"{field} must be an ISO 8601 instant, like 2026-12-01T00:00:00Z", field
        ) from None
    if moment.tzinfo is None:
        raise errors.InvalidField(
            f"{field} must say its offset from UTC, like 2026-12-01T00:00:00Z", field
        )
    try:
        # Years 1 to 9999 once in UTC: 0001-01-01T00:00:00+01:00 is in year 0.
        moment.astimezone(UTC)
    except OverflowError:
        raise errors.InvalidField(
            f"{field} must fall within the years 1 to 9999 in UTC", field
        ) from None
    return micros(moment)


def micros(moment: datetime) -> int:
    return (moment - _EPOCH) // _MICROSECOND


def this_month(now: datetime | None = None) -> tuple[int, int]:
    """The current calendar month, UTC: its first instant and the next month's."""
    now = now or datetime.now(UTC)
    return month_bounds(now.year, now.month, UTC)


def month_bounds(year: int, month: int, zone: tzinfo) -> tuple[int, int]:
    """A calendar month as someone in ``zone`` lives it: the instants of midnight on its
    first day and on the next month's, there (a New York evening on the 31st is in
    that month, not the next)."""
    start = datetime(year, month, 1, tzinfo=zone)
    end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=zone)
    return micros(start), micros(end)


def month_of(now: datetime, zone: tzinfo) -> tuple[int, int]:
    """The (year, month) it is at ``now`` in ``zone``."""
    local = now.astimezone(zone)
    return local.year, local.month


def local_time(us: int, zone: tzinfo, seconds: bool = True) -> str:
    """An instant as a bank statement writes it, in the reader's zone:
    "2026-12-03 14:05:09" (no offset, no milliseconds)."""
    moment = (_EPOCH + us * _MICROSECOND).astimezone(zone)
    return moment.strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")


def cell(column: str, value: str) -> str:
    """A CSV cell, neutralized where a spreadsheet would run it as a formula."""
    if column not in ("counterparty", "memo"):
        return value
    return neutral(value)


def neutral(value: str) -> str:
    """Text for a spreadsheet cell: with a leading apostrophe where it would otherwise
    run as a formula (CSV injection)."""
    if value.startswith(_FORMULA):
        return "'" + value
    first = value.lstrip(_IGNORED_LEAD)[:1]
    if unicodedata.normalize("NFKC", first).startswith(_FORMULA):
        return "'" + value
    return value


class Line(msgspec.Struct, frozen=True):
    """One posted entry of a statement, with the balance right after it."""

    at: int
    transfer_id: str
    counterparty: str
    memo: str
    amount: int  # cents: negative left the account
    balance_after: int
    # The other party as the pages name them ("Bob Martin (@bob)"); not in the API.
    counterparty_called: str = ""
