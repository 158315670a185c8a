"""The JSON shapes of accounts, balances and transfers: what the API answers, the stream
sends and the pages render. Plain functions of database rows."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from server.money import format_amount

Row = Mapping[str, Any]


def iso(us: int | None) -> str | None:
    """Microseconds since the epoch as an ISO 8601 instant (UTC, milliseconds)."""
    if us is None:
        return None
    return datetime.fromtimestamp(us / 1_000_000, tz=UTC).isoformat(timespec="milliseconds")


def balance_of(row: Row) -> dict[str, str]:
    posted, debits, credits = row["posted"], row["pending_debits"], row["pending_credits"]
    return {
        "posted": format_amount(posted),
        "pending_debits": format_amount(debits),
        "pending_credits": format_amount(credits),
        "available": format_amount(posted - debits),
        "projected": format_amount(posted - debits + credits),
    }


def account_of(row: Row, owner: str) -> dict[str, Any]:
    return {
        "id": row["id"],
        "name": row["name"],
        "owner": owner,
        "currency": row["currency"],
        "status": row["status"],
        "balance": balance_of(row),
        "seq": row["seq"],
    }


def party_name(account: Row) -> str:
    """How a person reads an account's name: its owner's username (the row joined with
    ``users.username``), or for the bank's funding accounts their own name."""
    return str(account["username"] if account["kind"] == "user" else account["name"])


def transfer_of(row: Row) -> dict[str, Any]:
    created, settled = row["created_at"], row["settled_at"]
    return {
        "id": row["id"],
        "kind": row["kind"],
        "from_account": row["from_account"],
        "from_name": row["from_name"],
        "to_account": row["to_account"],
        "to_name": row["to_name"],
        "amount": format_amount(row["amount"]),
        "currency": row["currency"],
        "memo": row["memo"],
        "status": row["status"],
        "failure_reason": row["failure_reason"],
        "created_at": iso(created),
        "settled_at": iso(settled),
        # Still pending then, it fails as "expired" (SETTLE_PENDING_TTL_S).
        "expires_at": iso(row["expires_at"]),
        # The consistency window this transfer went through, shown to users as
        # "settled in 4 ms".
        "settled_in_ms": None if settled is None else round((settled - created) / 1000, 1),
    }
