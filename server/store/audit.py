"""The ledger invariants of the spec, checked against the database (``settle audit``)."""

from __future__ import annotations

import dataclasses
from typing import Any

import sqlalchemy as sa

from server.domain import chain
from server.domain.model import Status
from server.domain.money import format_amount
from server.store import Conn, Store
from server.store.schema import account_events, accounts, ledger_entries, transfers

INVARIANTS = {
    1: "each account's posted balance equals the sum of its ledger entries",
    2: "all ledger entries together sum to zero",
    3: "pending debits equal the sums over pending and awaiting transfers, pending credits"
    " over pending ones",
    4: "each completed transfer has exactly two entries, -amount and +amount; others none",
    5: "no user account has a negative available balance",
    6: "each account's events have seq 1..N with no gap or duplicate",
    7: "each account's ledger entries form an unbroken hash chain ending at its head",
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
    """Check every invariant. Reads only, safe on a live system, off the event loop:
    invariants 1-6 and each chain's head on one snapshot of the database; the chains
    themselves streamed past in one statement (its own snapshot, never all in memory)."""
    report = await store.read(_check)
    walker: chain.Walker | None = None
    async for rows in store.chunks(_CHAIN, size=5000):
        for row in rows:  # one account's entries after another's, each in seq order
            if walker is None or row["account_id"] != walker.account_id:
                _broken(report, walker)
                walker = chain.Walker(row["account_id"])
            walker.step(row)
    _broken(report, walker)
    return report


def _broken(report: Report, walker: chain.Walker | None) -> None:
    if walker is not None and walker.broken is not None:
        report.violations[7].append(str(walker.broken))


_CHAIN = sa.select(
    ledger_entries.c.account_id,
    ledger_entries.c.seq,
    ledger_entries.c.transfer_id,
    ledger_entries.c.amount,
    ledger_entries.c.created_at,
    ledger_entries.c.balance_after,
    ledger_entries.c.prev_hash,
    ledger_entries.c.hash,
).order_by(ledger_entries.c.account_id, ledger_entries.c.seq)


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

    pending = transfers.c.status == Status.PENDING.value
    # An awaiting transfer holds its amount on the sender's side only.
    held = sa.or_(pending, transfers.c.status == Status.AWAITING.value)
    debit = (
        sa.select(sa.func.coalesce(_sum(transfers.c.amount), 0))
        .where(held, transfers.c.from_account == accounts.c.id)
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
                    transfers.c.status == Status.COMPLETED.value,
                    sa.or_(
                        per_transfer.c.n.is_(None),
                        per_transfer.c.n != 2,
                        per_transfer.c.out != -transfers.c.amount,
                        per_transfer.c.inn != transfers.c.amount,
                    ),
                ),
                sa.and_(
                    transfers.c.status != Status.COMPLETED.value, per_transfer.c.n.is_not(None)
                ),
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
    # 7, the part that needs one snapshot: each account's chain ends at its head.
    last = ledger_entries.alias("last")
    heads = await store.fetch_all(
        sa.select(accounts.c.id, accounts.c.entries, accounts.c.chain_head, last.c.hash)
        .select_from(
            accounts.outerjoin(
                last, sa.and_(last.c.account_id == accounts.c.id, last.c.seq == accounts.c.entries)
            )
        )
        .where(
            sa.or_(
                sa.and_(accounts.c.entries == 0, accounts.c.chain_head != chain.GENESIS),
                sa.and_(
                    accounts.c.entries > 0,
                    sa.or_(last.c.hash.is_(None), last.c.hash != accounts.c.chain_head),
                ),
            )
        )
    )
    report.violations[7] += [
        f"{r['id']}: the head of its {r['entries']} entries is not its chain's last hash"
        for r in heads
    ]
    more = await store.fetch_all(
        sa.select(
            ledger_entries.c.account_id,
            accounts.c.entries,
            sa.func.max(ledger_entries.c.seq).label("top"),
        )
        .select_from(ledger_entries.join(accounts, accounts.c.id == ledger_entries.c.account_id))
        .group_by(ledger_entries.c.account_id, accounts.c.entries)
        .having(sa.func.max(ledger_entries.c.seq) != accounts.c.entries)
    )
    report.violations[7] += [
        f"{r['account_id']}: entries up to seq {r['top']}, but a recorded length of {r['entries']}"
        for r in more
    ]
    return report


@dataclasses.dataclass(frozen=True)
class HeadCheck:
    ok: bool
    message: str


async def verify_head(store: Store, account_id: str, head: str) -> HeadCheck:
    """Whether the account's history up to the entry whose hash is ``head`` (a chain
    head published earlier, e.g. a statement's ``chain_head``) is the history it was:
    every entry from the first to that one recomputes to exactly the same hashes."""
    if head == chain.GENESIS:
        return HeadCheck(True, f"{account_id}: the empty history (nothing to prove)")
    walker = chain.Walker(account_id)
    query = _CHAIN.where(ledger_entries.c.account_id == account_id)
    async for rows in store.chunks(query, size=5000):
        for row in rows:
            walker.step(row)
            if walker.broken is not None:
                return HeadCheck(False, f"rewritten: {walker.broken}")
            if row["hash"] == head:
                return HeadCheck(
                    True,
                    f"{account_id}: entries 1 to {row['seq']} are unchanged since the head"
                    f" {head} was published",
                )
    return HeadCheck(False, f"{head} is not an entry of {account_id}'s chain")
