"""people: display names, case-insensitive usernames, a time zone per user

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-08 09:00:00.000000

A user gets the name they go by (``display_name``; existing users go by their username)
and a time zone for their statements ("" until their browser says, read as UTC).
Usernames become case-insensitive: ``username_lower`` with a unique index. Two existing
usernames that differ only in case would make that impossible, so the upgrade refuses,
naming them, before it changes anything. Transfers keep their parties' display names as
they were, like their usernames; existing ones get the names their parties go by now.
The rule is written out here (``str.lower``, as ``server.domain.people``), not imported.
"""

from __future__ import annotations

from collections import defaultdict

import sqlalchemy as sa
from alembic import op

from server.store.migrate import MigrationRefused

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def _refuse_collisions(conn: sa.Connection) -> dict[str, str]:
    """Each user id's lower-cased username, or MigrationRefused naming every group."""
    groups: dict[str, list[str]] = defaultdict(list)
    lowered: dict[str, str] = {}
    for user_id, name in conn.execute(sa.text("SELECT id, username FROM users ORDER BY username")):
        groups[name.lower()].append(name)
        lowered[user_id] = name.lower()
    clashes = [sorted(names) for names in groups.values() if len(names) > 1]
    if clashes:
        named = "; ".join(", ".join(repr(n) for n in names) for names in clashes)
        raise MigrationRefused(
            "usernames must differ by more than letter case from now on, and these do not: "
            f"{named}. Rename all but one of each (UPDATE users SET username = ...), "
            "then run the migration again."
        )
    return lowered


def upgrade() -> None:
    conn = op.get_bind()
    lowered = _refuse_collisions(conn)
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(sa.Column("username_lower", sa.String(128), nullable=True))
        batch_op.add_column(
            sa.Column("display_name", sa.String(100), server_default="", nullable=False)
        )
        batch_op.add_column(
            sa.Column("time_zone", sa.String(64), server_default="", nullable=False)
        )
    fill = sa.text("UPDATE users SET username_lower = :lower WHERE id = :id")
    for user_id, lower in lowered.items():
        conn.execute(fill, {"lower": lower, "id": user_id})
    op.execute("UPDATE users SET display_name = username")
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.alter_column("username_lower", existing_type=sa.String(128), nullable=False)
        batch_op.create_index("uq_users_username_lower", ["username_lower"], unique=True)
    with op.batch_alter_table("transfers", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("from_display_name", sa.String(100), server_default="", nullable=False)
        )
        batch_op.add_column(
            sa.Column("to_display_name", sa.String(100), server_default="", nullable=False)
        )
    # Every existing user goes by their username, and the bank's accounts by their own
    # name: exactly the names the transfers already keep.
    op.execute("UPDATE transfers SET from_display_name = from_name, to_display_name = to_name")


def downgrade() -> None:
    with op.batch_alter_table("transfers", schema=None) as batch_op:
        batch_op.drop_column("to_display_name")
        batch_op.drop_column("from_display_name")
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_index("uq_users_username_lower")
        batch_op.drop_column("time_zone")
        batch_op.drop_column("display_name")
        batch_op.drop_column("username_lower")
