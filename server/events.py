"""The messages of an account's event stream, and their encoding.

Every change to an account appends one ``Event`` to its log (``account_events``) with
the account's next ``seq``, in the same transaction as the change; after the commit it
is published on Redis, and the web processes hand it to the account's sockets. The log
holds the exact bytes that were sent live, so a replay is identical to the stream.

Besides transfer events the stream sends a ``snapshot`` (the whole account, instead of
a replay too long to send) and ``ping`` heartbeats.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import orjson

from server import views

PENDING = "transfer.pending"
COMPLETED = "transfer.completed"
FAILED = "transfer.failed"
CANCELLED = "transfer.cancelled"
SNAPSHOT = "snapshot"
PING = '{"type":"ping"}'
TRANSFER_TYPES = (PENDING, COMPLETED, FAILED, CANCELLED)


@dataclasses.dataclass(frozen=True)
class Event:
    """One transfer event of one account: what happened to the transfer, and the
    account's balance right after it (so a client can render from the event alone)."""

    type: str
    account_id: str
    seq: int
    transfer: Mapping[str, Any]  # views.transfer_of
    balance: Mapping[str, str]  # views.balance_of
    at: int  # microseconds since the epoch

    @classmethod
    def of(
        cls, type_: str, account: Mapping[str, Any], transfer: Mapping[str, Any], at: int
    ) -> Event:
        """The event of ``account`` (a row whose ``seq`` is already this event's, and
        whose balances are already after it)."""
        return cls(type_, account["id"], account["seq"], transfer, views.balance_of(account), at)

    @property
    def transfer_id(self) -> str:
        return str(self.transfer["id"])

    def message(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "account": self.account_id,
            "seq": self.seq,
            "transfer": self.transfer,
            "balance": self.balance,
        }

    @functools.cached_property
    def payload(self) -> bytes:
        """The message as the stream sends it and the log keeps it, encoded once."""
        return orjson.dumps(self.message())

    def log_row(self) -> dict[str, Any]:
        """Its ``account_events`` row."""
        return {
            "account_id": self.account_id,
            "seq": self.seq,
            "type": self.type,
            "transfer_id": self.transfer_id,
            "payload": self.payload.decode(),
            "created_at": self.at,
        }


def snapshot(account: Mapping[str, Any], owner: str) -> bytes:
    """The whole account as one message, sent instead of a replay that is too long (or
    after a ``since`` the account never reached)."""
    return orjson.dumps(
        {
            "type": SNAPSHOT,
            "account": account["id"],
            "seq": account["seq"],
            "account_state": views.account_of(account, owner),
            "balance": views.balance_of(account),
        }
    )


def decode(payload: bytes | str) -> dict[str, Any] | None:
    """A published or logged message, or None if it is not one (a corrupt publish)."""
    try:
        message = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(message, dict) or not isinstance(message.get("seq"), int):
        return None
    return message
