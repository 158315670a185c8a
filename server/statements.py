"""Statements and balances at a time: "was I charged?", answered on paper.

A statement lists an account's posted ledger entries between two instants, oldest first,
each with the balance right after it, between an opening and a closing balance
(``opening + sum of amounts = closing``), and the account's chain head at its end: the
hash that ``settle audit --verify-head`` later proves the history up to it by.

Statements are streamed: a year of a busy account is read a chunk at a time and written
out as it is read, never held in memory at once.
"""

from __future__ import annotations

import csv
import dataclasses
import io
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import orjson
import sqlalchemy as sa

from server import chain, errors
from server.money import format_amount
from server.schema import ledger_entries, transfers
from server.store import Row, Store
from server.views import iso

MAX_INSTANT = 40
# Entries read and written out per step: each step formats its rows on the event loop,
# so a step must stay well under a millisecond or two for every other socket's sake.
CHUNK = 200
CSV_COLUMNS = ("at", "transfer_id", "counterparty", "memo", "amount", "balance_after")
# A text cell a spreadsheet would run as a formula gets a leading apostrophe (CSV
# injection): people open statements in spreadsheets, and memos are others' words.
_FORMULA = ("=", "+", "-", "@", "\t", "\r")

# The entry at or before an instant (the balance then), newest first, by the index
# (account_id, created_at, seq).
_AT_OR_BEFORE = (
    sa.select(ledger_entries.c.balance_after, ledger_entries.c.hash)
    .where(
        ledger_entries.c.account_id == sa.bindparam("acct"),
        ledger_entries.c.created_at <= sa.bindparam("at"),
    )
    .order_by(ledger_entries.c.created_at.desc(), ledger_entries.c.seq.desc())
    .limit(1)
)
_BEFORE = (
    sa.select(ledger_entries.c.balance_after, ledger_entries.c.hash)
    .where(
        ledger_entries.c.account_id == sa.bindparam("acct"),
        ledger_entries.c.created_at < sa.bindparam("at"),
    )
    .order_by(ledger_entries.c.created_at.desc(), ledger_entries.c.seq.desc())
    .limit(1)
)
_ENTRIES = (
    sa.select(
        ledger_entries.c.created_at,
        ledger_entries.c.transfer_id,
        ledger_entries.c.amount,
        ledger_entries.c.balance_after,
        ledger_entries.c.hash,
        transfers.c.memo,
        transfers.c.from_name,
        transfers.c.to_name,
        transfers.c.kind,
    )
    .join(transfers, transfers.c.id == ledger_entries.c.transfer_id)
    .where(
        ledger_entries.c.account_id == sa.bindparam("acct"),
        ledger_entries.c.created_at >= sa.bindparam("start"),
        ledger_entries.c.created_at < sa.bindparam("end"),
    )
    .order_by(ledger_entries.c.created_at, ledger_entries.c.seq)
)


# Who an account's holder reads as the other party of a deposit into it.
BANK_DEPOSIT = "Bank deposit"


def counterparty(entry: Row) -> str:
    """The other party's name: a username, or "Bank deposit" for funding."""
    if entry["amount"] < 0:
        return str(entry["to_name"])
    return BANK_DEPOSIT if entry["kind"] == "deposit" else str(entry["from_name"])


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
    return _us(moment)


def _us(moment: datetime) -> int:
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // _MICROSECOND


_MICROSECOND = datetime(1970, 1, 1, 0, 0, 0, 1, tzinfo=UTC) - datetime(1970, 1, 1, tzinfo=UTC)


def this_month(now: datetime | None = None) -> tuple[int, int]:
    """The current calendar month, UTC: its first instant and the next month's."""
    now = now or datetime.now(UTC)
    start = datetime(now.year, now.month, 1, tzinfo=UTC)
    end = datetime(now.year + now.month // 12, now.month % 12 + 1, 1, tzinfo=UTC)
    return _us(start), _us(end)


async def balance_at(store: Store, account_id: str, at: int) -> int:
    """The account's posted balance at ``at``: after every entry posted then or before."""
    row = await store.fetch_one(_AT_OR_BEFORE, {"acct": account_id, "at": at})
    return 0 if row is None else int(row["balance_after"])


@dataclasses.dataclass
class Statement:
    """One account's statement between ``start`` and ``end`` (microseconds), its entries
    read as they are written out (``rows``); the totals are known once they are."""

    store: Store
    account: Row  # the owned account
    start: int
    end: int
    opening: int = 0
    closing: int = 0
    head: str = chain.GENESIS

    async def open(self) -> Statement:
        before = await self.store.fetch_one(_BEFORE, {"acct": self.account["id"], "at": self.start})
        if before is not None:
            self.opening = self.closing = int(before["balance_after"])
            self.head = str(before["hash"])
        return self

    async def rows(self) -> AsyncIterator[list[dict[str, Any]]]:
        """The entries, oldest first, a chunk at a time; keeps the closing balance and
        the chain head up to date as they pass."""
        values = {"acct": self.account["id"], "start": self.start, "end": self.end}
        async for chunk in self.store.chunks(_ENTRIES, values, size=CHUNK):
            out = []
            for r in chunk:
                self.closing += r["amount"]
                self.head = r["hash"]
                out.append(
                    {
                        "at": iso(r["created_at"]),
                        "transfer_id": r["transfer_id"],
                        "counterparty": counterparty(r),
                        "memo": r["memo"],
                        "amount": format_amount(r["amount"]),
                        "balance_after": format_amount(r["balance_after"]),
                    }
                )
            yield out

    async def json(self) -> AsyncIterator[bytes]:
        """The statement as one JSON object, written as it is read."""
        head = {
            "account": self.account["id"],
            "currency": self.account["currency"],
            "from": iso(self.start),
            "to": iso(self.end),
            "opening_balance": format_amount(self.opening),
        }
        yield orjson.dumps(head)[:-1] + b',"entries":['
        first = True
        async for chunk in self.rows():
            if chunk:
                part = b",".join(orjson.dumps(entry) for entry in chunk)
                yield part if first else b"," + part
                first = False
        tail = {"closing_balance": format_amount(self.closing), "chain_head": self.head}
        yield b"]," + orjson.dumps(tail)[1:]

    async def csv(self) -> AsyncIterator[bytes]:
        """The entries as CSV (RFC 4180: a header row, CRLF, quoted where needed)."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\r\n")
        writer.writerow(CSV_COLUMNS)
        async for chunk in self.rows():
            for entry in chunk:
                writer.writerow([_cell(c, entry[c]) for c in CSV_COLUMNS])
            yield buffer.getvalue().encode()
            buffer.seek(0)
            buffer.truncate()
        yield buffer.getvalue().encode()


def _cell(column: str, value: str) -> str:
    if column in ("counterparty", "memo") and value.startswith(_FORMULA):
        return "'" + value
    return value
