"""settle's typed values: the states a transfer and an account can be in, and the
transfer, account and balance themselves.

Money is an exact integer of minor units (cents) and an instant is an integer of
microseconds since the epoch, everywhere below the edges; the JSON shapes that carry
them as decimal strings and ISO 8601 text are ``server.domain.wire``.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from typing import Any

import msgspec


class Status(enum.StrEnum):
    """Where a transfer is: accepted and held (``PENDING``), then exactly one ending. A
    large one is first held while its sender confirms it with a passkey
    (``AWAITING``): only the sender knows of it until then."""

    AWAITING = "awaiting_confirmation"
    PENDING = "pending"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        return self not in (Status.PENDING, Status.AWAITING)

    @property
    def moved(self) -> bool:
        """Whether money moved (or is on its way): not failed, not cancelled."""
        return self in (Status.AWAITING, Status.PENDING, Status.COMPLETED)


class FailureReason(enum.StrEnum):
    """Why a transfer failed (``failure_reason``)."""

    # The recipient's account could not take it (frozen meanwhile): the sender is not
    # told why, the recipient's own pages say so.
    RECIPIENT_UNAVAILABLE = "recipient_unavailable"
    # Transfers that failed before 0.2.0 said so to both sides.
    ACCOUNT_FROZEN = "account_frozen"
    EXPIRED = "expired"
    # Cancelled: its sender did not confirm it with a passkey in time.
    NOT_CONFIRMED = "not_confirmed"


class TransferKind(enum.StrEnum):
    TRANSFER = "transfer"  # between users
    DEPOSIT = "deposit"  # from the bank's funding account, completed at once


class AccountStatus(enum.StrEnum):
    ACTIVE = "active"
    FROZEN = "frozen"


class AccountKind(enum.StrEnum):
    USER = "user"  # never below zero
    FUNDING = "funding"  # the bank's, one per currency; may go below zero


class EventType(enum.StrEnum):
    """What an event in an account's log says happened."""

    AWAITING = "transfer.awaiting_confirmation"  # in the sender's log only
    PENDING = "transfer.pending"
    COMPLETED = "transfer.completed"
    FAILED = "transfer.failed"
    CANCELLED = "transfer.cancelled"
    FROZEN = "account.frozen"
    UNFROZEN = "account.unfrozen"

    @classmethod
    def of(cls, status: Status) -> EventType:
        """The event a transfer reaching ``status`` appends."""
        return _EVENT_OF_STATUS[status]

    @property
    def status(self) -> Status | None:
        """The transfer status this event announces (None: an account event)."""
        return _STATUS_OF_EVENT.get(self)

    @property
    def is_transfer(self) -> bool:
        return self in _STATUS_OF_EVENT


_EVENT_OF_STATUS = {
    Status.AWAITING: EventType.AWAITING,
    Status.PENDING: EventType.PENDING,
    Status.COMPLETED: EventType.COMPLETED,
    Status.FAILED: EventType.FAILED,
    Status.CANCELLED: EventType.CANCELLED,
}
_STATUS_OF_EVENT = {event: status for status, event in _EVENT_OF_STATUS.items()}


class Balance(msgspec.Struct, frozen=True):
    """An account's balances, in cents. ``available`` and ``projected`` are computed
    here, and only here."""

    posted: int = 0
    pending_debits: int = 0
    pending_credits: int = 0

    @property
    def available(self) -> int:
        """What can be spent now: never negative for a user account."""
        return self.posted - self.pending_debits

    @property
    def projected(self) -> int:
        """What it will be once every pending transfer settles."""
        return self.posted - self.pending_debits + self.pending_credits

    def holding(self, amount: int) -> Balance:
        """The balance with ``amount`` more held for an outgoing transfer."""
        return msgspec.structs.replace(self, pending_debits=self.pending_debits + amount)

    def expecting(self, amount: int) -> Balance:
        """The balance with ``amount`` more on its way in (an incoming transfer)."""
        return msgspec.structs.replace(self, pending_credits=self.pending_credits + amount)

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> Balance:
        return cls(int(row["posted"]), int(row["pending_debits"]), int(row["pending_credits"]))


class Account(msgspec.Struct, frozen=True):
    """An account as its owner sees it."""

    id: str
    name: str
    owner: str  # the owner's username ("" where it was not read)
    currency: str
    status: AccountStatus
    kind: AccountKind
    balance: Balance
    seq: int  # its last event's
    # The name its owner goes by ("" where it was not read).
    owner_display_name: str = ""

    @property
    def active(self) -> bool:
        return self.status is AccountStatus.ACTIVE

    @property
    def party_name(self) -> str:
        """How a person reads this account as a transfer's party: its owner's
        username, or for the bank's funding accounts their own name."""
        return self.owner if self.kind is AccountKind.USER else self.name

    @property
    def party_display_name(self) -> str:
        """The name the party goes by: its owner's display name (their username if
        unknown), or for the bank's funding accounts their own name."""
        if self.kind is not AccountKind.USER:
            return self.name
        return self.owner_display_name or self.owner

    @classmethod
    def of(cls, row: Mapping[str, Any], owner: str = "") -> Account:
        """From an ``accounts`` row (with ``username`` and ``display_name`` joined in,
        or ``owner`` given)."""
        return cls(
            id=row["id"],
            name=row["name"],
            owner=owner or row.get("username") or "",
            currency=row["currency"],
            status=AccountStatus(row["status"]),
            kind=AccountKind(row["kind"]),
            balance=Balance.of(row),
            seq=int(row["seq"]),
            owner_display_name=row.get("display_name") or "",
        )


class Transfer(msgspec.Struct, frozen=True):
    """A transfer between two accounts of one currency."""

    id: str
    kind: TransferKind
    from_account: str
    from_name: str  # the parties as people read them, kept as they were then
    to_account: str
    to_name: str
    amount: int  # cents, > 0
    currency: str
    memo: str
    status: Status
    failure_reason: FailureReason | None
    created_at: int  # microseconds since the epoch
    settled_at: int | None
    # Still pending then, it fails as "expired" (SETTLE_PENDING_TTL_S); None for deposits.
    expires_at: int | None
    # The consistency window it went through, acceptance to settlement (shown to users
    # as "arrived in 1.5 s"); None until it settles.
    settled_in_ms: float | None = None
    # The names the parties go by, kept as they were then; "" in what was recorded
    # before they were kept (events in a log, the answers kept with a key).
    from_display_name: str = ""
    to_display_name: str = ""

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> Transfer:
        """From a ``transfers`` row."""
        created, settled = int(row["created_at"]), row["settled_at"]
        reason = row["failure_reason"]
        return cls(
            id=row["id"],
            kind=TransferKind(row["kind"]),
            from_account=row["from_account"],
            from_name=row["from_name"],
            to_account=row["to_account"],
            to_name=row["to_name"],
            amount=int(row["amount"]),
            currency=row["currency"],
            memo=row["memo"],
            status=Status(row["status"]),
            failure_reason=None if reason is None else FailureReason(reason),
            created_at=created,
            settled_at=None if settled is None else int(settled),
            expires_at=None if row["expires_at"] is None else int(row["expires_at"]),
            settled_in_ms=window_ms(created, settled),
            from_display_name=row.get("from_display_name") or "",
            to_display_name=row.get("to_display_name") or "",
        )

    def ended(self, status: Status, at: int, reason: FailureReason | None = None) -> Transfer:
        """This transfer, having reached ``status`` at ``at``."""
        return msgspec.structs.replace(
            self,
            status=status,
            failure_reason=reason,
            settled_at=at,
            settled_in_ms=window_ms(self.created_at, at),
        )

    def sent_from(self, account_id: str) -> bool:
        return self.from_account == account_id


def window_ms(created_at: int, settled_at: int | None) -> float | None:
    """Acceptance to settlement in milliseconds, to a tenth."""
    return None if settled_at is None else round((settled_at - created_at) / 1000, 1)


@dataclasses.dataclass(slots=True)
class LedgerAccount:
    """An account as a transaction that holds its row lock changes it: balances, event
    seq and hash chain (``server.domain.chain``) moving as each transfer is applied."""

    id: str
    status: AccountStatus
    kind: AccountKind
    posted: int
    pending_debits: int
    pending_credits: int
    seq: int
    entries: int  # ledger entries in its chain
    chain_head: str  # the last one's hash

    @property
    def balance(self) -> Balance:
        return Balance(self.posted, self.pending_debits, self.pending_credits)

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> LedgerAccount:
        return cls(
            id=row["id"],
            status=AccountStatus(row["status"]),
            kind=AccountKind(row["kind"]),
            posted=int(row["posted"]),
            pending_debits=int(row["pending_debits"]),
            pending_credits=int(row["pending_credits"]),
            seq=int(row["seq"]),
            entries=int(row["entries"]),
            chain_head=row["chain_head"],
        )
