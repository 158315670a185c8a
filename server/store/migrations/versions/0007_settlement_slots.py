"""settlement slots: each transfer carries its sender's slot

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07 12:00:00.000000

Settlement runs in partitions (the slot modulo SETTLE_PARTITIONS) side by side instead
of one at a time. A transfer's slot is its sender's: crc32 of the sending account's id,
modulo 1024 (``server.domain.settlement.slot_of``, written out here as it was at this
revision). Transfers still pending get theirs, so that a sender's old pending transfers
settle in its partition, before its new ones; ended transfers keep 0 (never read).
"""

from __future__ import annotations

import zlib

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("transfers", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("slot", sa.SmallInteger(), server_default="0", nullable=False)
        )
        batch_op.create_index(
            "ix_transfers_status_slot_created",
            ["status", "slot", "created_at", "id"],
            unique=False,
        )
    conn = op.get_bind()
    transfers = sa.table(
        "transfers",
        sa.column("id", sa.String),
        sa.column("from_account", sa.String),
        sa.column("status", sa.String),
        sa.column("slot", sa.SmallInteger),
    )
    pending = conn.execute(
        sa.select(transfers.c.id, transfers.c.from_account).where(transfers.c.status == "pending")
    ).all()
    if pending:
        conn.execute(
            transfers.update()
            .where(transfers.c.id == sa.bindparam("tid"))
            .values(slot=sa.bindparam("new_slot")),
            [
                {"tid": tid, "new_slot": zlib.crc32(sender.encode()) % 1024}
                for tid, sender in pending
            ],
        )


def downgrade() -> None:
    with op.batch_alter_table("transfers", schema=None) as batch_op:
        batch_op.drop_index("ix_transfers_status_slot_created")
        batch_op.drop_column("slot")
