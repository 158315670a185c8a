"""The tamper-evident ledger: each account's entries form a hash chain.

Every ledger entry carries its position in its account's chain (``seq``, 1, 2, 3 …),
the account's posted balance right after it (``balance_after``), the hash of the entry
before it (``prev_hash``; the first one's is ``GENESIS``) and its own ``hash``: SHA-256
over a canonical encoding of the entry and ``prev_hash``. The account row keeps the
chain's length and head. An entry is appended in the transaction that posts it, with the
account row locked (SQLite's write lock; PostgreSQL's ``FOR NO KEY UPDATE``), so each chain
stays linear however many workers settle at once.

Rewriting any entry (its amount, time, transfer, balance) changes its hash and breaks
every link after it: ``settle audit`` finds the first broken entry, and a chain head
published earlier (a statement's ``chain_head``) proves the history up to it
(``settle audit --verify-head``).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from typing import Any

import msgspec

from server.domain.model import LedgerAccount

GENESIS = "0" * 64
VERSION = "settle-ledger-entry-v1"


def entry_hash(
    prev_hash: str,
    account_id: str,
    seq: int,
    transfer_id: str,
    amount: int,
    created_at: int,
    balance_after: int,
) -> str:
    """The hash of an entry: ids hold no "|", so the encoding is unambiguous."""
    fields = (VERSION, account_id, seq, transfer_id, amount, created_at, balance_after, prev_hash)
    return hashlib.sha256("|".join(map(str, fields)).encode()).hexdigest()


class Entry(msgspec.Struct, frozen=True):
    """One ledger entry: ``amount`` posted to an account by a transfer, and its link in
    the account's chain."""

    transfer_id: str
    account_id: str
    amount: int  # cents: negative leaves the account
    created_at: int
    seq: int  # its place in the account's chain: 1, 2, 3 ...
    balance_after: int  # the account's posted balance right after it
    prev_hash: str
    hash: str


def append(account: LedgerAccount, transfer_id: str, amount: int, at: int) -> Entry:
    """Post ``amount`` to ``account`` (its ``posted``, ``entries`` and ``chain_head``
    move on) and return the new entry."""
    account.posted += amount
    account.entries += 1
    digest = entry_hash(
        account.chain_head, account.id, account.entries, transfer_id, amount, at, account.posted
    )
    entry = Entry(
        transfer_id,
        account.id,
        amount,
        at,
        account.entries,
        account.posted,
        account.chain_head,
        digest,
    )
    account.chain_head = digest
    return entry


@dataclasses.dataclass(frozen=True)
class Break:
    """The first entry of a chain that does not check out, and why."""

    account_id: str
    seq: int
    transfer_id: str
    why: str

    def __str__(self) -> str:
        return f"{self.account_id} entry {self.seq} (transfer {self.transfer_id}): {self.why}"


class Walker:
    """Checks one account's entries, in ``seq`` order, as they stream past."""

    def __init__(self, account_id: str) -> None:
        self.account_id = account_id
        self.seq = 0
        self.balance = 0
        self.head = GENESIS
        self.broken: Break | None = None

    def step(self, entry: Mapping[str, Any]) -> None:
        if self.broken is not None:
            return
        self.seq += 1
        self.balance += entry["amount"]
        expected = entry_hash(
            self.head,
            self.account_id,
            self.seq,
            entry["transfer_id"],
            entry["amount"],
            entry["created_at"],
            self.balance,
        )
        why = None
        if entry["seq"] != self.seq:
            why = f"seq {entry['seq']} where {self.seq} was due"
        elif entry["prev_hash"] != self.head:
            why = "its previous hash is not the hash of the entry before"
        elif entry["hash"] != expected:
            why = "its hash does not match its contents (rewritten)"
        elif entry["balance_after"] != self.balance:
            why = f"balance after {entry['balance_after']} where the entries sum to {self.balance}"
        if why is not None:
            self.broken = Break(self.account_id, entry["seq"], entry["transfer_id"], why)
            return
        self.head = expected
