"""idempotency keys keep the typed transfer and balance, not a response body

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07 09:00:00.000000

An idempotency key used to keep the 202 body the ledger built; it now keeps the typed
transfer and the sender's balance (cents and microseconds), which the API encodes the
same way whether it answers first or replays. Existing keys are converted; the
conversion is written out here, not imported, so that later code cannot change what
this migration does.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_BALANCE = ("posted", "pending_debits", "pending_credits")
_TRANSFER = (
    "id",
    "kind",
    "from_account",
    "from_name",
    "to_account",
    "to_name",
    "currency",
    "memo",
    "status",
    "failure_reason",
    "settled_in_ms",
)


def _cents(text: str) -> int:
    return int(text.replace(".", ""))


def _micros(text: str | None) -> int | None:
    if text is None:
        return None
    return (datetime.fromisoformat(text) - _EPOCH) // timedelta(microseconds=1)


def _typed(body: dict[str, Any]) -> dict[str, Any]:
    if "transfer" in body:  # already converted
        return body
    transfer = {name: body[name] for name in _TRANSFER}
    transfer["amount"] = _cents(body["amount"])
    for name in ("created_at", "settled_at", "expires_at"):
        transfer[name] = _micros(body[name])
    balance = {name: _cents(body["balance"][name]) for name in _BALANCE}
    return {"transfer": transfer, "balance": balance}


def upgrade() -> None:
    conn = op.get_bind()
    rows = conn.execute(sa.text("SELECT user_id, key, response FROM idempotency_keys"))
    update = sa.text(
        "UPDATE idempotency_keys SET response = :response WHERE user_id = :u AND key = :k"
    )
    for user_id, key, response in rows.fetchall():
        typed = json.dumps(_typed(json.loads(response)), separators=(",", ":"))
        conn.execute(update, {"response": typed, "u": user_id, "k": key})


def downgrade() -> None:
    raise NotImplementedError("the typed answers are not turned back into bodies")
