"""ledger hash chain: seq, balance_after, prev_hash, hash on every entry

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 12:10:00.000000

Each account's ledger entries become a hash chain (server/domain/chain.py). Existing entries
are chained in the order they were posted (time, then id), with the running balance
after each; every account gets its chain's length and head.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from server.domain.chain import GENESIS, entry_hash

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

CHUNK = 10_000


def upgrade() -> None:
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("entries", sa.BigInteger(), server_default="0", nullable=False)
        )
        batch_op.add_column(
            sa.Column("chain_head", sa.String(64), server_default=GENESIS, nullable=False)
        )
    with op.batch_alter_table("ledger_entries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("seq", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("balance_after", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("prev_hash", sa.String(64), nullable=True))
        batch_op.add_column(sa.Column("hash", sa.String(64), nullable=True))
    _chain_existing_entries(op.get_bind())
    with op.batch_alter_table("ledger_entries", schema=None) as batch_op:
        for column in ("seq", "balance_after", "prev_hash", "hash"):
            batch_op.alter_column(column, nullable=False)
        batch_op.create_unique_constraint("uq_ledger_account_seq", ["account_id", "seq"])
        batch_op.create_index(
            "ix_ledger_account_created_seq", ["account_id", "created_at", "seq"], unique=False
        )
        batch_op.drop_index("ix_ledger_account")


def _chain_existing_entries(conn: sa.Connection) -> None:
    """Chain every account's entries in the order they were posted, a page at a time
    (keyset pages: no cursor stays open into the ALTERs that follow)."""
    page = sa.text(
        "SELECT id, account_id, transfer_id, amount, created_at FROM ledger_entries"
        " WHERE account_id > :a OR (account_id = :a AND (created_at > :t OR"
        " (created_at = :t AND id > :i))) ORDER BY account_id, created_at, id LIMIT :n"
    )
    set_entry = sa.text(
        "UPDATE ledger_entries SET seq = :seq, balance_after = :balance_after,"
        " prev_hash = :prev_hash, hash = :hash WHERE id = :id"
    )
    heads: dict[str, tuple[int, str]] = {}
    account, seq, balance, head = "", 0, 0, GENESIS
    after = {"a": "", "t": -1, "i": -1}
    while rows := conn.execute(page, {**after, "n": CHUNK}).fetchall():
        updates = []
        for row in rows:
            if row.account_id != account:
                account, seq, balance, head = row.account_id, 0, 0, GENESIS
            seq += 1
            balance += row.amount
            digest = entry_hash(
                head, account, seq, row.transfer_id, row.amount, row.created_at, balance
            )
            updates.append(
                {
                    "id": row.id,
                    "seq": seq,
                    "balance_after": balance,
                    "prev_hash": head,
                    "hash": digest,
                }
            )
            head = digest
            heads[account] = (seq, head)
        conn.execute(set_entry, updates)
        last = rows[-1]
        after = {"a": last.account_id, "t": last.created_at, "i": last.id}
    if heads:
        conn.execute(
            sa.text("UPDATE accounts SET entries = :n, chain_head = :head WHERE id = :id"),
            [{"id": a, "n": n, "head": h} for a, (n, h) in heads.items()],
        )


def downgrade() -> None:
    with op.batch_alter_table("ledger_entries", schema=None) as batch_op:
        batch_op.create_index("ix_ledger_account", ["account_id"], unique=False)
        batch_op.drop_index("ix_ledger_account_created_seq")
        batch_op.drop_constraint("uq_ledger_account_seq", type_="unique")
        for column in ("hash", "prev_hash", "balance_after", "seq"):
            batch_op.drop_column(column)
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.drop_column("chain_head")
        batch_op.drop_column("entries")
