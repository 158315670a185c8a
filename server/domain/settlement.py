"""A settlement's plan: what posting (or failing) a batch of transfers does to their
accounts, worked out from the accounts as their locked rows say, with no database in
sight. ``server.store.settlement`` reads and locks the batch, then writes the plan with
one statement per table.

Every change goes through ``Plan._change``: an account's pending sums, a ledger entry
appended to its hash chain when money is posted, and its next event seq.
"""

from __future__ import annotations

import zlib

from server.domain import chain
from server.domain.events import Event
from server.domain.model import (
    AccountStatus,
    FailureReason,
    LedgerAccount,
    Status,
    Transfer,
)
from server.settings import SLOTS


class Plan:
    """A batch's effects, in the order its transfers are applied: the transfers as they
    end, the ledger entries, the events, and the accounts' new state."""

    def __init__(self, accounts: dict[str, LedgerAccount], at: int) -> None:
        self.accounts = accounts
        self.at = at
        # Each transfer as it ended, with the status it ended from.
        self.finished: list[tuple[Status, Transfer]] = []
        self.entries: list[chain.Entry] = []
        self.events: list[Event] = []

    def settle(self, t: Transfer) -> None:
        """Complete the transfer; fail it when it expired, or its destination is frozen."""
        if t.expires_at is not None and t.expires_at <= self.at:
            self.fail(t, FailureReason.EXPIRED)
        elif self.accounts[t.to_account].status is AccountStatus.FROZEN:
            self.fail(t, FailureReason.RECIPIENT_UNAVAILABLE)
        else:
            self._change(t.from_account, t.id, posted=-t.amount, pending_debits=-t.amount)
            self._change(t.to_account, t.id, posted=t.amount, pending_credits=-t.amount)
            self._finish(t, t.ended(Status.COMPLETED, self.at))

    def fail(self, t: Transfer, reason: FailureReason) -> None:
        """Fail the transfer: its reservation is released, nothing is posted."""
        self._change(t.from_account, t.id, pending_debits=-t.amount)
        self._change(t.to_account, t.id, pending_credits=-t.amount)
        self._finish(t, t.ended(Status.FAILED, self.at, reason))

    def unconfirmed(self, t: Transfer) -> None:
        """Cancel a transfer its sender did not confirm in time: the hold released. Only
        the sender's account hears of it, as only it ever did."""
        self._change(t.from_account, t.id, pending_debits=-t.amount)
        self._finish(t, t.ended(Status.CANCELLED, self.at, FailureReason.NOT_CONFIRMED))

    def deposit(self, t: Transfer) -> None:
        """Post a transfer completed at once (a deposit: nothing was reserved)."""
        self._change(t.from_account, t.id, posted=-t.amount)
        self._change(t.to_account, t.id, posted=t.amount)
        self._finish(t, t)

    def _finish(self, was: Transfer, t: Transfer) -> None:
        self.finished.append((was.status, t))
        told = [t.from_account] if was.status is Status.AWAITING else [t.from_account, t.to_account]
        for account_id in told:
            account = self.accounts[account_id]
            self.events.append(
                Event.of_transfer(t, account_id, account.seq, account.balance, self.at)
            )

    def _change(
        self,
        account_id: str,
        transfer_id: str,
        posted: int = 0,
        pending_debits: int = 0,
        pending_credits: int = 0,
    ) -> None:
        """One transfer's change to one account: its pending sums, a ledger entry
        appended to its chain if anything is posted, and its next event seq."""
        account = self.accounts[account_id]
        account.pending_debits += pending_debits
        account.pending_credits += pending_credits
        if posted:
            self.entries.append(chain.append(account, transfer_id, posted, self.at))
        account.seq += 1


def slot_of(account_id: str) -> int:
    """The settlement slot of a sender's account: every transfer it sends settles in
    the same partition, so one sender's transfers settle in the order they were
    accepted, however many drainers run side by side."""
    return zlib.crc32(account_id.encode()) % SLOTS


def partition_of(slot: int, partitions: int) -> int:
    return slot % partitions


def partition_of_account(account_id: str, partitions: int) -> int:
    """The partition a sender's transfers settle in."""
    return partition_of(slot_of(account_id), partitions)
