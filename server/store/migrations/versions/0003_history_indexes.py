"""history indexes: (from_account | to_account, created_at, id)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24 01:35:00.000000

An account's history is read as one index-ordered scan per side, newest first by
(created_at, id); with ``id`` in the key neither side needs a sort. The new indexes
replace (from_account, created_at) and (to_account, created_at), of which they are
extensions, so transfers do not maintain both.
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("transfers", schema=None) as batch_op:
        batch_op.create_index(
            "ix_transfers_from_created_id", ["from_account", "created_at", "id"], unique=False
        )
        batch_op.create_index(
            "ix_transfers_to_created_id", ["to_account", "created_at", "id"], unique=False
        )
        batch_op.drop_index("ix_transfers_from_created")
        batch_op.drop_index("ix_transfers_to_created")


def downgrade() -> None:
    with op.batch_alter_table("transfers", schema=None) as batch_op:
        batch_op.create_index(
            "ix_transfers_from_created", ["from_account", "created_at"], unique=False
        )
        batch_op.create_index("ix_transfers_to_created", ["to_account", "created_at"], unique=False)
        batch_op.drop_index("ix_transfers_to_created_id")
        batch_op.drop_index("ix_transfers_from_created_id")
