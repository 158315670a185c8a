"""The database schema as SQLAlchemy Core tables. Amounts are BIGINT cents; timestamps
are BIGINT microseconds since the epoch (exact, portable, and cheap to order by)."""

from __future__ import annotations

import secrets
import time

import sqlalchemy as sa

metadata = sa.MetaData()

Money = sa.BigInteger
Micros = sa.BigInteger


def new_id(prefix: str) -> str:
    """An opaque, unguessable id: the creation time in milliseconds (12 hex digits),
    then 128 random bits, URL-safe. The time first makes new rows land at the end of
    the primary-key index instead of on random pages: with a million rows, inserting a
    settlement batch is ~12x cheaper than with purely random ids."""
    return f"{prefix}_{time.time_ns() // 1_000_000:012x}{secrets.token_urlsafe(16)}"


def now_us() -> int:
    return time.time_ns() // 1000


users = sa.Table(
    "users",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("username", sa.String(64), nullable=False, unique=True),
    sa.Column("password_hash", sa.String(255), nullable=False),
    sa.Column("created_at", Micros, nullable=False),
)

api_tokens = sa.Table(
    "api_tokens",
    metadata,
    # sha256 of the token: a leaked table does not leak usable tokens.
    sa.Column("token_hash", sa.String(64), primary_key=True),
    sa.Column("user_id", sa.String(40), sa.ForeignKey("users.id"), nullable=False),
    sa.Column("created_at", Micros, nullable=False),
    sa.Column("expires_at", Micros, nullable=False),
    sa.Column("revoked_at", Micros, nullable=True),
)

accounts = sa.Table(
    "accounts",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("user_id", sa.String(40), sa.ForeignKey("users.id"), nullable=False, index=True),
    sa.Column("name", sa.String(100), nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    # "user" accounts may never go below zero; the bank's "funding" account may.
    sa.Column("kind", sa.String(10), nullable=False, server_default="user"),
    sa.Column("status", sa.String(10), nullable=False, server_default="active"),
    sa.Column("posted", Money, nullable=False, server_default="0"),
    sa.Column("pending_debits", Money, nullable=False, server_default="0"),
    sa.Column("pending_credits", Money, nullable=False, server_default="0"),
    # Last event seq appended for this account; bumped in the same transaction as the event.
    sa.Column("seq", sa.BigInteger, nullable=False, server_default="0"),
    # The account's ledger entries as a hash chain (server/chain.py): how many, and the
    # last one's hash.
    sa.Column("entries", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("chain_head", sa.String(64), nullable=False, server_default="0" * 64),
    sa.Column("created_at", Micros, nullable=False),
)

transfers = sa.Table(
    "transfers",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("from_account", sa.String(40), sa.ForeignKey("accounts.id"), nullable=False),
    sa.Column("to_account", sa.String(40), sa.ForeignKey("accounts.id"), nullable=False),
    sa.Column("amount", Money, nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("memo", sa.String(500), nullable=False, server_default=""),
    sa.Column("status", sa.String(10), nullable=False),
    sa.Column("failure_reason", sa.String(40), nullable=True),
    sa.Column("created_by", sa.String(40), sa.ForeignKey("users.id"), nullable=False),
    sa.Column("created_at", Micros, nullable=False),
    sa.Column("settled_at", Micros, nullable=True),
    # The two parties as a person reads them (the owner's username; the account's name for
    # the bank's funding accounts), kept as they were when the transfer was made.
    sa.Column("from_name", sa.String(100), nullable=False, server_default=""),
    sa.Column("to_name", sa.String(100), nullable=False, server_default=""),
    # "transfer" between users, or "deposit" from the bank's funding account.
    sa.Column("kind", sa.String(10), nullable=False, server_default="transfer"),
    # Still pending at this time, it fails with failure_reason "expired" (bounded pending).
    sa.Column("expires_at", Micros, nullable=True),
    sa.Index("ix_transfers_status_created", "status", "created_at"),
    sa.Index("ix_transfers_status_expires", "status", "expires_at"),
    # An account's history, newest first, one index-ordered scan per side
    # (``ledger.history_query``): ``id`` is in the key because it breaks created_at ties.
    sa.Index("ix_transfers_from_created_id", "from_account", "created_at", "id"),
    sa.Index("ix_transfers_to_created_id", "to_account", "created_at", "id"),
)

ledger_entries = sa.Table(
    "ledger_entries",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("transfer_id", sa.String(40), sa.ForeignKey("transfers.id"), nullable=False),
    sa.Column("account_id", sa.String(40), sa.ForeignKey("accounts.id"), nullable=False),
    sa.Column("amount", Money, nullable=False),
    sa.Column("created_at", Micros, nullable=False),
    # The entry's place in its account's hash chain (server/chain.py): its position, the
    # account's posted balance after it, the previous entry's hash and its own.
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("balance_after", Money, nullable=False),
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
    # A second settlement of one transfer cannot post twice, whatever the code above does.
    sa.UniqueConstraint("transfer_id", "account_id", name="uq_ledger_transfer_account"),
    # One chain per account: no two entries in the same place.
    sa.UniqueConstraint("account_id", "seq", name="uq_ledger_account_seq"),
    # Statements and balance-at-a-time: an account's entries by time.
    sa.Index("ix_ledger_account_created_seq", "account_id", "created_at", "seq"),
)

account_events = sa.Table(
    "account_events",
    metadata,
    sa.Column("account_id", sa.String(40), sa.ForeignKey("accounts.id"), primary_key=True),
    sa.Column("seq", sa.BigInteger, primary_key=True),
    sa.Column("type", sa.String(30), nullable=False),
    sa.Column("transfer_id", sa.String(40), nullable=True),
    # The whole stream message as JSON, so that a replay sends exactly what was sent live.
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("created_at", Micros, nullable=False),
)

idempotency_keys = sa.Table(
    "idempotency_keys",
    metadata,
    sa.Column("user_id", sa.String(40), sa.ForeignKey("users.id"), primary_key=True),
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("request_hash", sa.String(64), nullable=False),
    sa.Column("transfer_id", sa.String(40), nullable=False),
    sa.Column("response", sa.Text, nullable=False),
    sa.Column("created_at", Micros, nullable=False, index=True),
)

sessions = sa.Table(
    "sessions",
    metadata,
    # HMAC-SHA256 (keyed with settings.secret_key) of the random id in the browser's
    # cookie: a leaked table does not leak usable sessions.
    sa.Column("id_hash", sa.String(64), primary_key=True),
    sa.Column("user_id", sa.String(40), sa.ForeignKey("users.id"), nullable=False, index=True),
    # Per-session CSRF token, sent back in every state-changing form and htmx request.
    sa.Column("csrf_token", sa.String(64), nullable=False),
    sa.Column("created_at", Micros, nullable=False),
    sa.Column("expires_at", Micros, nullable=False, index=True),
)
