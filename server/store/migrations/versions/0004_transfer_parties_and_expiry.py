"""transfer parties and expiry: from_name, to_name, kind, expires_at

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 11:40:00.000000

A transfer names its two parties as a person reads them (the owner's username, or the
account's display name for the bank's funding accounts), says whether it is a transfer
between users or a deposit from the bank, and when it expires if still pending. Existing
rows are filled in from the accounts and users they refer to; they expire a day after
they were accepted (the default SETTLE_PENDING_TTL_S).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

DAY_US = 86_400 * 1_000_000


def upgrade() -> None:
    with op.batch_alter_table("transfers", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("from_name", sa.String(100), server_default="", nullable=False)
        )
        batch_op.add_column(sa.Column("to_name", sa.String(100), server_default="", nullable=False))
        batch_op.add_column(
            sa.Column("kind", sa.String(10), server_default="transfer", nullable=False)
        )
        batch_op.add_column(sa.Column("expires_at", sa.BigInteger(), nullable=True))
    party = (
        "(SELECT CASE WHEN a.kind = 'user' THEN u.username ELSE a.name END"
        " FROM accounts a JOIN users u ON u.id = a.user_id WHERE a.id = transfers.{})"
    )
    op.execute(
        f"UPDATE transfers SET from_name = {party.format('from_account')},"
        f" to_name = {party.format('to_account')},"
        " kind = CASE WHEN (SELECT kind FROM accounts WHERE id = transfers.from_account)"
        " = 'funding' THEN 'deposit' ELSE 'transfer' END,"
        f" expires_at = created_at + {DAY_US}"
    )
    # The sweeper finds pending transfers past their expiry by this index.
    op.create_index("ix_transfers_status_expires", "transfers", ["status", "expires_at"])


def downgrade() -> None:
    op.drop_index("ix_transfers_status_expires", table_name="transfers")
    with op.batch_alter_table("transfers", schema=None) as batch_op:
        batch_op.drop_column("expires_at")
        batch_op.drop_column("kind")
        batch_op.drop_column("to_name")
        batch_op.drop_column("from_name")
