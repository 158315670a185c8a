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
from datetime import tzinfo

import msgspec
import sqlalchemy as sa

from server.domain import chain, wire
from server.domain import statements as rules
from server.domain.model import Account, TransferKind
from server.domain.money import format_amount
from server.domain.people import called
from server.store import Store
from server.store.schema import ledger_entries, transfers

# Entries read and written out per step: each step formats its rows on the event loop,
# so a step must stay well under a millisecond or two for every other socket's sake.
CHUNK = 200

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
        transfers.c.from_display_name,
        transfers.c.to_display_name,
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


async def balance_at(store: Store, account_id: str, at: int) -> int:
    """The account's posted balance at ``at``: after every entry posted then or before."""
    row = await store.fetch_one(_AT_OR_BEFORE, {"acct": account_id, "at": at})
    return 0 if row is None else int(row["balance_after"])


@dataclasses.dataclass
class Statement:
    """One account's statement between ``start`` and ``end`` (microseconds), its entries
    read as they are written out (``lines``); the totals are known once they are."""

    store: Store
    account: Account  # the owned account
    start: int
    end: int
    opening: int = 0
    closing: int = 0
    head: str = chain.GENESIS
    # What came in and went out over the period, in cents (known once read, like closing).
    total_in: int = 0
    total_out: int = 0

    async def open(self) -> Statement:
        before = await self.store.fetch_one(_BEFORE, {"acct": self.account.id, "at": self.start})
        if before is not None:
            self.opening = self.closing = int(before["balance_after"])
            self.head = str(before["hash"])
        return self

    async def lines(self) -> AsyncIterator[list[rules.Line]]:
        """The entries, oldest first, a chunk at a time; keeps the closing balance and
        the chain head up to date as they pass."""
        values = {"acct": self.account.id, "start": self.start, "end": self.end}
        async for chunk in self.store.chunks(_ENTRIES, values, size=CHUNK):
            out = []
            for r in chunk:
                amount = int(r["amount"])
                self.closing += amount
                if amount > 0:
                    self.total_in += amount
                else:
                    self.total_out -= amount
                self.head = r["hash"]
                kind = TransferKind(r["kind"])
                who = rules.counterparty(amount, kind, r["from_name"], r["to_name"])
                shown = rules.counterparty(
                    amount,
                    kind,
                    called(r["from_name"], r["from_display_name"]),
                    called(r["to_name"], r["to_display_name"]),
                )
                line = rules.Line(
                    r["created_at"],
                    r["transfer_id"],
                    who,
                    r["memo"],
                    amount,
                    r["balance_after"],
                    shown,
                )
                out.append(line)
            yield out

    async def json(self) -> AsyncIterator[bytes]:
        """The statement as one JSON object (``wire.StatementJSON``), written as it is
        read."""
        head = {
            "account": self.account.id,
            "currency": self.account.currency,
            "from": wire.iso(self.start),
            "to": wire.iso(self.end),
            "opening_balance": format_amount(self.opening),
        }
        yield wire.encode(head)[:-1] + b',"entries":['
        first = True
        async for chunk in self.lines():
            if chunk:
                part = b",".join(wire.encode(wire.statement_line(line)) for line in chunk)
                yield part if first else b"," + part
                first = False
        tail = {"closing_balance": format_amount(self.closing), "chain_head": self.head}
        yield b"]," + wire.encode(tail)[1:]

    async def bank_csv(self, zone: tzinfo, zone_name: str, holder: str) -> AsyncIterator[bytes]:
        """The statement as a bank customer's spreadsheet expects it (the page's
        download; the API's CSV is ``csv``): who, which account and currency, the period
        in the reader's zone, then an opening row, each entry at its local time with
        money out and money in apart, the totals, and a closing row."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\r\n")
        first = rules.local_time(self.start, zone)[:10]
        last = rules.local_time(self.end - 1, zone)[:10]
        money, text = format_amount, rules.neutral  # names and memos are others' words
        writer.writerows(
            (
                ("Account holder", text(holder)),
                ("Account", text(self.account.name), self.account.id),
                ("Currency", self.account.currency),
                ("Period", f"{first} to {last}"),
                ("Time zone", zone_name),
                (),
                ("Date", "Description", "Memo", "Money out", "Money in", "Balance", "Reference"),
                (first, "Opening balance", "", "", "", money(self.opening), ""),
            )
        )
        async for chunk in self.lines():
            for line in chunk:
                out, in_ = (
                    (money(-line.amount), "") if line.amount < 0 else ("", money(line.amount))
                )
                writer.writerow(
                    (
                        rules.local_time(line.at, zone),
                        text(line.counterparty_called or line.counterparty),
                        text(line.memo),
                        out,
                        in_,
                        money(line.balance_after),
                        line.transfer_id,
                    )
                )
            yield buffer.getvalue().encode()
            buffer.seek(0)
            buffer.truncate()
        writer.writerow(("", "Total", "", money(self.total_out), money(self.total_in), "", ""))
        writer.writerow((last, "Closing balance", "", "", "", money(self.closing), ""))
        yield buffer.getvalue().encode()

    async def csv(self) -> AsyncIterator[bytes]:
        """The entries as CSV (RFC 4180: a header row, CRLF, quoted where needed)."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\r\n")
        writer.writerow(rules.CSV_COLUMNS)
        async for chunk in self.lines():
            for line in chunk:
                cells = msgspec.structs.asdict(wire.statement_line(line))
                writer.writerow([rules.cell(c, cells[c]) for c in rules.CSV_COLUMNS])
            yield buffer.getvalue().encode()
            buffer.seek(0)
            buffer.truncate()
        yield buffer.getvalue().encode()
