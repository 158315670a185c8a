"""The events of an account's stream, and their encoding.

Every change to an account appends one ``Event`` to its log (``account_events``) with
the account's next ``seq``, in the same transaction as the change; after the commit it
is published on Redis, and the web processes hand it to the account's sockets. The log
holds the exact bytes that were sent live (``Event.payload``), so a replay is identical
to the stream.

Transfer events carry the transfer; account events (``account.frozen``,
``account.unfrozen``) the account's new state. Besides events the stream sends a
``snapshot`` (the whole account, instead of a replay too long to send) and ``ping``
heartbeats.
"""

from __future__ import annotations

import dataclasses

import msgspec

from server.domain import wire
from server.domain.model import Account, Balance, EventType, Transfer

SNAPSHOT = "snapshot"
PING = '{"type":"ping"}'


@dataclasses.dataclass(frozen=True, slots=True)
class Event:
    """One event of one account: what happened, and the account's balance right after
    it (so a client can render from the event alone). ``payload``: its message, encoded
    once, as the stream sends it and the log keeps it."""

    type: EventType
    account_id: str
    seq: int
    balance: Balance
    at: int  # microseconds since the epoch
    transfer: Transfer | None = None  # transfer events
    account: Account | None = None  # account events: the account's new state
    payload: bytes = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "payload", wire.encode(self.message()))

    @classmethod
    def of_transfer(
        cls, transfer: Transfer, account_id: str, seq: int, balance: Balance, at: int
    ) -> Event:
        """The event of ``transfer`` reaching its status, in ``account_id``'s log (the
        account's ``seq`` and ``balance`` already after it)."""
        return cls(EventType.of(transfer.status), account_id, seq, balance, at, transfer=transfer)

    @classmethod
    def of_account(cls, type_: EventType, account: Account, at: int) -> Event:
        """An account event (``account.frozen``, ``account.unfrozen``) with the
        account's state after it."""
        return cls(type_, account.id, account.seq, account.balance, at, account=account)

    @property
    def transfer_id(self) -> str | None:
        return None if self.transfer is None else self.transfer.id

    def message(self) -> wire.EventJSON:
        return wire.EventJSON(
            type=self.type,
            account=self.account_id,
            seq=self.seq,
            transfer=None if self.transfer is None else wire.transfer(self.transfer),
            account_state=None if self.account is None else wire.account(self.account),
            balance=wire.balance(self.balance),
        )

    def log_row(self) -> dict[str, object]:
        """Its ``account_events`` row."""
        return {
            "account_id": self.account_id,
            "seq": self.seq,
            "type": str(self.type),
            "transfer_id": self.transfer_id,
            "payload": self.payload.decode(),
            "created_at": self.at,
        }


def snapshot(account: Account) -> bytes:
    """The whole account as one message, sent instead of a replay that is too long (or
    after a ``since`` the account never reached)."""
    message = wire.EventJSON(
        type=SNAPSHOT,
        account=account.id,
        seq=account.seq,
        account_state=wire.account(account),
        balance=wire.balance(account.balance),
    )
    return wire.encode(message)


class _Times(msgspec.Struct):
    created_at: str | None = None
    settled_at: str | None = None


class Header(msgspec.Struct):
    """What fan-out reads of a published message: its seq, and when its change
    committed (the rest is passed on as it is)."""

    seq: int
    transfer: _Times | None = None

    @property
    def committed_at(self) -> str | None:
        t = self.transfer
        return None if t is None else t.settled_at or t.created_at


_decoder = msgspec.json.Decoder(wire.EventJSON)
_header = msgspec.json.Decoder(Header)


def header(payload: bytes | str) -> Header | None:
    """A published message's ``Header``, or None if it is not a message (corrupt)."""
    try:
        return _header.decode(payload)
    except msgspec.DecodeError:
        return None


def decode(payload: bytes | str) -> wire.EventJSON | None:
    """A published or logged message, or None if it is not one (a corrupt publish)."""
    try:
        return _decoder.decode(payload)
    except msgspec.DecodeError:
        return None


def parse(message: wire.EventJSON) -> Event | None:
    """A decoded message as the typed event it encodes (None: a snapshot, or a type
    this version does not know)."""
    kind = wire.event_type(message)
    if kind is None or message.balance is None:
        return None
    balance = wire.balance_from(message.balance)
    if kind.is_transfer:
        if message.transfer is None:
            return None
        transfer = wire.transfer_from(message.transfer)
        return Event(kind, message.account, message.seq, balance, 0, transfer=transfer)
    if message.account_state is None:
        return None
    account = wire.account_from(message.account_state)
    return Event(kind, message.account, message.seq, balance, 0, account=account)
