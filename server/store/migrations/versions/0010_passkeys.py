"""passkeys: large transfers wait for their sender's passkey

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07 10:00:00.000000

Users get passkeys (``passkeys``) and the single-use challenges of registering and
removing them (``passkey_challenges``). A transfer can be ``awaiting_confirmation``
(longer than the status column allowed) with the nonce its passkey challenge is derived
from, and gets ``pending_since``: when it became pending, which settlement orders by
instead of ``created_at``. Every existing transfer became pending when it was accepted.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "passkeys",
        sa.Column("id", sa.String(1400), primary_key=True),
        sa.Column("user_id", sa.String(40), sa.ForeignKey("users.id"), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("public_key", sa.Text(), nullable=False),
        sa.Column("sign_count", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("last_used_at", sa.BigInteger(), nullable=True),
    )
    op.create_index("ix_passkeys_user_id", "passkeys", ["user_id"])
    op.create_table(
        "passkey_challenges",
        sa.Column("challenge", sa.String(64), primary_key=True),
        sa.Column("user_id", sa.String(40), sa.ForeignKey("users.id"), nullable=False),
        sa.Column("purpose", sa.String(20), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_passkey_challenges_expires_at", "passkey_challenges", ["expires_at"])
    with op.batch_alter_table("transfers", schema=None) as batch_op:
        batch_op.alter_column(
            "status", existing_type=sa.String(10), type_=sa.String(30), existing_nullable=False
        )
        batch_op.add_column(sa.Column("pending_since", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("confirm_nonce", sa.String(64), nullable=True))
        batch_op.drop_index("ix_transfers_status_slot_created")
    op.execute("UPDATE transfers SET pending_since = created_at")
    with op.batch_alter_table("transfers", schema=None) as batch_op:
        batch_op.create_index(
            "ix_transfers_status_slot_pending",
            ["status", "slot", "pending_since", "id"],
            unique=False,
        )


def downgrade() -> None:
    # Awaiting transfers have no earlier status: they end cancelled, unconfirmed, their
    # holds released (no event is logged for it: the earlier version would not know it).
    op.execute(
        "UPDATE accounts SET pending_debits = pending_debits - COALESCE(("
        "SELECT SUM(t.amount) FROM transfers t WHERE t.from_account = accounts.id "
        "AND t.status = 'awaiting_confirmation'), 0)"
    )
    op.execute(
        "UPDATE transfers SET status = 'cancelled', failure_reason = 'not_confirmed' "
        "WHERE status = 'awaiting_confirmation'"
    )
    with op.batch_alter_table("transfers", schema=None) as batch_op:
        batch_op.drop_index("ix_transfers_status_slot_pending")
        batch_op.create_index(
            "ix_transfers_status_slot_created",
            ["status", "slot", "created_at", "id"],
            unique=False,
        )
        batch_op.drop_column("confirm_nonce")
        batch_op.drop_column("pending_since")
        batch_op.alter_column(
            "status", existing_type=sa.String(30), type_=sa.String(10), existing_nullable=False
        )
    op.drop_index("ix_passkey_challenges_expires_at", "passkey_challenges")
    op.drop_table("passkey_challenges")
    op.drop_index("ix_passkeys_user_id", "passkeys")
    op.drop_table("passkeys")
