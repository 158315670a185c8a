"""The ledger invariants of the spec, checked against the database (``settle audit``)."""

from __future__ import annotations

import dataclasses
from typing import Any

import sqlalchemy as sa

from server.money import format_amount
from server.schema import account_events, accounts, ledger_entries, transfers
from server.store import Conn, Store

INVARIANTS = {
    1: "each account's posted balance equals the sum of its ledger entries",
    2: "all ledger entries together sum to zero",
    3: "pending debits and credits equal the sums over pending transfers",
    4: "each completed transfer has exactly two entries, -amount and +amount; others none",
    5: "no user account has a negative available balance",
    6: "each account's events have seq 1..N with no gap or duplicate",
}


def _sum(column: sa.ColumnElement[Any]) -> sa.ColumnElement[int]:
    # PostgreSQL sums BIGINT as NUMERIC; keep money an exact integer on both backends.
    return sa.cast(sa.func.sum(column), sa.BigInteger)


@dataclasses.dataclass
class Report:
    violations: dict[int, list[str]] = dataclasses.field(
        default_factory=lambda: {n: [] for n in INVARIANTS}
    )

    @property
    def ok(self) -> bool:
        return not any(self.violations.values())

    def render(self) -> str:
        lines = []
        for n, text in INVARIANTS.items():
            found = self.violations[n]
            lines.append(f"{'ok  ' if not found else 'FAIL'} {n}. {text}")
            lines += [f"       {v}" for v in found[:20]]
            if len(found) > 20:
                lines.append(f"       ... and {len(found) - 20} more")
        lines.append("all invariants hold" if self.ok else "LEDGER INVARIANTS VIOLATED")
        return "\n".join(lines)


async def audit(store: Store) -> Report:
    """Check all six invariants. Reads only, on one snapshot of the database: safe and
    exact on a live system, and off the event loop."""
    return await store.read(_check)


async def _check(store: Conn) -> Report:
    report = Report()
    entry_sums = (
        sa.select(ledger_entries.c.account_id, _sum(ledger_entries.c.amount).label("s"))
        .group_by(ledger_entries.c.account_id)
        .subquery()
    )
    rows = await store.fetch_all(
        sa.select(accounts.c.id, accounts.c.posted, sa.func.coalesce(entry_sums.c.s, 0).label("s"))
        .select_from(accounts.outerjoin(entry_sums, entry_sums.c.account_id == accounts.c.id))
        .where(accounts.c.posted != sa.func.coalesce(entry_sums.c.s, 0))
    )
    report.violations[1] = [
        f"{r['id']}: posted {format_amount(r['posted'])}, entries sum {format_amount(r['s'])}"
        for r in rows
    ]

    total = await store.fetch_val(sa.select(sa.func.coalesce(_sum(ledger_entries.c.amount), 0)))
    if int(total) != 0:
        report.violations[2] = [f"entries sum to {format_amount(int(total))}"]

    pending = transfers.c.status == "pending"
    debit = (
        sa.select(sa.func.coalesce(_sum(transfers.c.amount), 0))
        .where(pending, transfers.c.from_account == accounts.c.id)
        .scalar_subquery()
    )
    credit = (
        sa.select(sa.func.coalesce(_sum(transfers.c.amount), 0))
        .where(pending, transfers.c.to_account == accounts.c.id)
        .scalar_subquery()
    )
    rows = await store.fetch_all(
        sa.select(
            accounts.c.id,
            accounts.c.pending_debits,
            accounts.c.pending_credits,
            debit.label("d"),
            credit.label("c"),
        ).where(sa.or_(accounts.c.pending_debits != debit, accounts.c.pending_credits != credit))
    )
    report.violations[3] = [
        f"{r['id']}: pending debits {format_amount(r['pending_debits'])} vs "
        f"{format_amount(r['d'])}, credits {format_amount(r['pending_credits'])} vs "
        f"{format_amount(r['c'])}"
        for r in rows
    ]

    e = ledger_entries.c
    per_transfer = (
        sa.select(
            e.transfer_id,
            sa.func.count().label("n"),
            _sum(sa.case((e.account_id == transfers.c.from_account, e.amount), else_=0)).label(
                "out"
            ),
            _sum(sa.case((e.account_id == transfers.c.to_account, e.amount), else_=0)).label("inn"),
        )
        .select_from(ledger_entries.join(transfers, transfers.c.id == e.transfer_id))
        .group_by(e.transfer_id)
        .subquery()
    )
    rows = await store.fetch_all(
        sa.select(
            transfers.c.id,
            transfers.c.status,
            transfers.c.amount,
            per_transfer.c.n,
            per_transfer.c.out,
            per_transfer.c.inn,
        )
        .select_from(
            transfers.outerjoin(per_transfer, per_transfer.c.transfer_id == transfers.c.id)
        )
        .where(
            sa.or_(
                sa.and_(
                    transfers.c.status == "completed",
                    sa.or_(
                        per_transfer.c.n.is_(None),
                        per_transfer.c.n != 2,
                        per_transfer.c.out != -transfers.c.amount,
                        per_transfer.c.inn != transfers.c.amount,
                    ),
                ),
                sa.and_(transfers.c.status != "completed", per_transfer.c.n.is_not(None)),
            )
        )
    )
    report.violations[4] = [
        f"{r['id']} ({r['status']}, {format_amount(r['amount'])}): {r['n'] or 0} entries"
        for r in rows
    ]

    rows = await store.fetch_all(
        sa.select(accounts.c.id, accounts.c.posted, accounts.c.pending_debits).where(
            accounts.c.kind == "user", accounts.c.posted - accounts.c.pending_debits < 0
        )
    )
    report.violations[5] = [
        f"{r['id']}: available {format_amount(r['posted'] - r['pending_debits'])}" for r in rows
    ]

    ev = account_events.c
    stats = (
        sa.select(
            ev.account_id,
            sa.func.count().label("n"),
            sa.func.min(ev.seq).label("lo"),
            sa.func.max(ev.seq).label("hi"),
        )
        .group_by(ev.account_id)
        .subquery()
    )
    rows = await store.fetch_all(
        sa.select(accounts.c.id, accounts.c.seq, stats.c.n, stats.c.lo, stats.c.hi)
        .select_from(accounts.outerjoin(stats, stats.c.account_id == accounts.c.id))
        .where(
            sa.or_(
                sa.and_(stats.c.n.is_(None), accounts.c.seq != 0),
                sa.and_(
                    stats.c.n.is_not(None),
                    sa.or_(stats.c.lo != 1, stats.c.hi != stats.c.n, stats.c.hi != accounts.c.seq),
                ),
            )
        )
    )
    report.violations[6] = [
        f"{r['id']}: {r['n'] or 0} events, seq {r['lo']}..{r['hi']}, account seq {r['seq']}"
        for r in rows
    ]
    return report
