"""The database schema as SQLAlchemy Core tables. Amounts are BIGINT cents; timestamps
are BIGINT microseconds since the epoch (exact, portable, and cheap to order by)."""

from __future__ import annotations

import sqlalchemy as sa

from server.domain.clock import new_id, now_us

__all__ = ["metadata", "new_id", "now_us"]

metadata = sa.MetaData()

Money = sa.BigInteger
Micros = sa.BigInteger


users = sa.Table(
    "users",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("username", sa.String(64), nullable=False, unique=True),
    # The username lower-cased (``server.domain.people.username_key``): "BOB" is bob, and
    # no two users differ only in case. A stored column, not an index on lower(): SQLite
    # and Python lower-case differently, and expression indexes are not reflected.
    sa.Column("username_lower", sa.String(128), nullable=False),
    sa.Column("password_hash", sa.String(255), nullable=False),
    sa.Column("created_at", Micros, nullable=False),
    # The name a person goes by ("Bob Martin"), shown with the username everywhere.
    sa.Column("display_name", sa.String(100), nullable=False, server_default=""),
    # An IANA zone ("Europe/Paris") taken from the browser on a first visit; "" is UTC.
    sa.Column("time_zone", sa.String(64), nullable=False, server_default=""),
    sa.Index("uq_users_username_lower", "username_lower", unique=True),
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
    # The account's ledger entries as a hash chain (server/domain/chain.py): how many, and the
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
    sa.Column("status", sa.String(30), nullable=False),
    sa.Column("failure_reason", sa.String(40), nullable=True),
    sa.Column("created_by", sa.String(40), sa.ForeignKey("users.id"), nullable=False),
    sa.Column("created_at", Micros, nullable=False),
    sa.Column("settled_at", Micros, nullable=True),
    # The two parties as a person reads them (the owner's username; the account's name for
    # the bank's funding accounts), kept as they were when the transfer was made.
    sa.Column("from_name", sa.String(100), nullable=False, server_default=""),
    sa.Column("to_name", sa.String(100), nullable=False, server_default=""),
    # And the names those people go by, also as they were then.
    sa.Column("from_display_name", sa.String(100), nullable=False, server_default=""),
    sa.Column("to_display_name", sa.String(100), nullable=False, server_default=""),
    # "transfer" between users, or "deposit" from the bank's funding account.
    sa.Column("kind", sa.String(10), nullable=False, server_default="transfer"),
    # Still pending at this time, it fails with failure_reason "expired" (bounded pending).
    sa.Column("expires_at", Micros, nullable=True),
    # Its sender's settlement slot (``server.domain.settlement.slot_of``): it settles in
    # partition slot % SETTLE_PARTITIONS, after every earlier transfer of that sender.
    sa.Column("slot", sa.SmallInteger, nullable=False, server_default="0"),
    # When it became pending: at acceptance, or for one awaiting its sender's passkey at
    # confirmation (NULL until then). Settlement order and the due time count from it.
    sa.Column("pending_since", Micros, nullable=True),
    # Awaiting confirmation: the single-use nonce its passkey challenge is derived from
    # (``server.domain.passkeys.challenge``); NULL once used, and for every other transfer.
    sa.Column("confirm_nonce", sa.String(64), nullable=True),
    sa.Index("ix_transfers_status_created", "status", "created_at"),
    # A partition's due transfers, in the order they became pending (awaiting ones are
    # another status: never in the way).
    sa.Index("ix_transfers_status_slot_pending", "status", "slot", "pending_since", "id"),
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
    # The entry's place in its account's hash chain (server/domain/chain.py): its position, the
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

passkeys = sa.Table(
    "passkeys",
    metadata,
    # The credential id (base64url), unique across users: one credential, one user.
    sa.Column("id", sa.String(1400), primary_key=True),
    sa.Column("user_id", sa.String(40), sa.ForeignKey("users.id"), nullable=False, index=True),
    sa.Column("name", sa.String(64), nullable=False),
    # The COSE public key (base64url) and the authenticator's last sign counter.
    sa.Column("public_key", sa.Text, nullable=False),
    sa.Column("sign_count", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("created_at", Micros, nullable=False),
    sa.Column("last_used_at", Micros, nullable=True),
)

# A registration's (or a removal's) challenge, single use, until it expires.
passkey_challenges = sa.Table(
    "passkey_challenges",
    metadata,
    sa.Column("challenge", sa.String(64), primary_key=True),
    sa.Column("user_id", sa.String(40), sa.ForeignKey("users.id"), nullable=False),
    sa.Column("purpose", sa.String(20), nullable=False),
    sa.Column("expires_at", Micros, nullable=False, index=True),
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

webhook_endpoints = sa.Table(
    "webhook_endpoints",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("user_id", sa.String(40), sa.ForeignKey("users.id"), nullable=False, index=True),
    sa.Column("url", sa.String(2048), nullable=False),
    sa.Column("description", sa.String(200), nullable=False, server_default=""),
    # The event patterns it wants, space-separated ("transfer.* account.frozen").
    sa.Column("events", sa.String(1400), nullable=False, server_default="*"),
    sa.Column("status", sa.String(10), nullable=False, server_default="enabled"),
    # Why it was disabled, for its owner to read.
    sa.Column("disabled_reason", sa.String(300), nullable=False, server_default=""),
    sa.Column("secret", sa.String(100), nullable=False),
    # After a rotation the old secret keeps signing too, until old_secret_until.
    sa.Column("old_secret", sa.String(100), nullable=True),
    sa.Column("old_secret_until", Micros, nullable=True),
    # Since when every attempt failed (None: the last one succeeded).
    sa.Column("failing_since", Micros, nullable=True),
    sa.Column("created_at", Micros, nullable=False),
)

# How far each endpoint has read each account's event log: events after ``seq`` are yet
# to become deliveries. An account without a row is read from its start (an account
# opened after the endpoint).
webhook_cursors = sa.Table(
    "webhook_cursors",
    metadata,
    sa.Column(
        "endpoint_id", sa.String(40), sa.ForeignKey("webhook_endpoints.id"), primary_key=True
    ),
    sa.Column("account_id", sa.String(40), sa.ForeignKey("accounts.id"), primary_key=True),
    sa.Column("seq", sa.BigInteger, nullable=False),
)

webhook_deliveries = sa.Table(
    "webhook_deliveries",
    metadata,
    # Sent as webhook-id: the same on every attempt of this delivery.
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("endpoint_id", sa.String(40), sa.ForeignKey("webhook_endpoints.id"), nullable=False),
    # Its place in the endpoint's sending order (deliveries go out oldest first).
    sa.Column("position", sa.BigInteger, nullable=False),
    # "<account>:<seq>" for an event, the delivery's id for a test: never made twice.
    sa.Column("event_key", sa.String(100), nullable=False),
    sa.Column("type", sa.String(30), nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
    # pending → delivered, or failed (its retries spent).
    sa.Column("status", sa.String(10), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("next_attempt_at", Micros, nullable=True),
    sa.Column("created_at", Micros, nullable=False),
    sa.Column("delivered_at", Micros, nullable=True),
    sa.UniqueConstraint("endpoint_id", "event_key", name="uq_webhook_deliveries_event"),
    sa.UniqueConstraint("endpoint_id", "position", name="uq_webhook_deliveries_position"),
    sa.Index("ix_webhook_deliveries_status_next", "status", "next_attempt_at"),
)

webhook_attempts = sa.Table(
    "webhook_attempts",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column(
        "delivery_id",
        sa.String(40),
        sa.ForeignKey("webhook_deliveries.id"),
        nullable=False,
        index=True,
    ),
    sa.Column("at", Micros, nullable=False),
    # The receiver's HTTP status, or None with ``error`` (a timeout, a refused connection).
    sa.Column("status_code", sa.Integer, nullable=True),
    sa.Column("error", sa.String(300), nullable=False, server_default=""),
    sa.Column("duration_us", Micros, nullable=False),
    sa.Column("response", sa.Text, nullable=False, server_default=""),
    sa.Column("next_attempt_at", Micros, nullable=True),
)
