"""Bulk seeding of a settle SQLite database, consistent with every ledger invariant
(``settle audit`` passes on the result).

The API accepts one transfer per transaction (a commit, an fsync each); a benchmark that
needs 20,000 pending transfers or a million ledger entries writes them here instead,
through sqlite3's executemany, one transaction per chunk. Each chunk re-reads the
accounts it starts from inside its own write transaction, so a running settle may share
the file. Event payloads come from the ledger's own builders, so a replay of a seeded
event is exactly what the live stream would have sent.
"""

from __future__ import annotations

import dataclasses
import functools
import random
import secrets
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec

from server.domain import chain
from server.domain.events import Event
from server.domain.model import Account, Balance, LedgerAccount, Transfer
from server.domain.settlement import slot_of
from server.store import Store, migrate
from server.store import accounts as admin
from server.store.schema import new_id, now_us
from server.web import auth, passwords

DEPOSIT = 1_000_000_00
TOKEN_TTL_US = 24 * 3600 * 1_000_000
PENDING_TTL_US = 24 * 3600 * 1_000_000

_INSERT = {
    "transfers": "INSERT INTO transfers (id, from_account, to_account, amount, currency, memo,"
    " status, failure_reason, created_by, created_at, settled_at, from_name, to_name, kind,"
    " expires_at, slot, pending_since) VALUES (:id, :from_account, :to_account, :amount,"
    " :currency, :memo, :status, :failure_reason, :created_by, :created_at, :settled_at,"
    " :from_name, :to_name, :kind, :expires_at, :slot, :created_at)",
    "ledger_entries": "INSERT INTO ledger_entries (transfer_id, account_id, amount, created_at,"
    " seq, balance_after, prev_hash, hash) VALUES (:transfer_id, :account_id, :amount,"
    " :created_at, :seq, :balance_after, :prev_hash, :hash)",
    "account_events": "INSERT INTO account_events (account_id, seq, type, transfer_id, payload,"
    " created_at) VALUES (:account_id, :seq, :type, :transfer_id, :payload, :created_at)",
}
_SAVE_ACCOUNT = (
    "UPDATE accounts SET posted = :posted, pending_debits = :pending_debits,"
    " pending_credits = :pending_credits, seq = :seq, entries = :entries,"
    " chain_head = :chain_head WHERE id = :id"
)


@dataclasses.dataclass(frozen=True)
class User:
    id: str
    name: str
    account: str
    token: str


def create(path: Path) -> None:
    """A new, empty database with settle's schema."""
    migrate.upgrade(f"sqlite:///{path}")


class Seeder:
    """Writes users, completed history and pending transfers straight into the file."""

    def __init__(self, path: Path, rng_seed: int = 7) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None, timeout=60)
        self.conn.row_factory = sqlite3.Row
        # Only this connection's commits skip the fsync; settle's own keep theirs.
        self.conn.execute("PRAGMA synchronous=OFF")
        self.conn.execute("PRAGMA cache_size=-200000")
        self.rng = random.Random(rng_seed)
        self.accounts: dict[str, dict[str, Any]] = {}
        self.rows: dict[str, list[dict[str, Any]]] = {table: [] for table in _INSERT}

    def close(self) -> None:
        self.conn.close()

    def users(self, n: int, prefix: str, deposit: int = DEPOSIT) -> list[User]:
        """n users with one funded account and an API token each."""
        password = passwords.hash_password(secrets.token_urlsafe(8))
        at = now_us()
        made = [
            User(new_id("usr"), f"{prefix}{i}", new_id("acc"), "stl_" + secrets.token_urlsafe(32))
            for i in range(n)
        ]
        self._begin()
        funding = self._funding(at)
        self.conn.executemany(
            "INSERT INTO users (id, username, username_lower, password_hash, created_at)"
            " VALUES (?, ?, ?, ?, ?)",
            [(u.id, u.name, u.name.lower(), password, at) for u in made],
        )
        self.conn.executemany(
            "INSERT INTO accounts (id, user_id, name, currency, kind, status, created_at)"
            " VALUES (?, ?, 'Main', 'USD', 'user', 'active', ?)",
            [(u.account, u.id, at) for u in made],
        )
        self.conn.executemany(
            "INSERT INTO api_tokens (token_hash, user_id, created_at, expires_at)"
            " VALUES (?, ?, ?, ?)",
            [(auth.token_digest(u.token), u.id, at, at + TOKEN_TTL_US) for u in made],
        )
        self._load_accounts()
        for u in made:
            self._transfer(funding, u.account, deposit, "completed", at, "Deposit")
        self._commit()
        return made

    def history(
        self,
        n: int,
        among: Sequence[str],
        hot: str | None = None,
        hot_share: float = 0.0,
        chunk: int = 50_000,
    ) -> None:
        """n completed transfers of 0.01 to 9.99 between random accounts of ``among``
        (a share of them into ``hot``), dated in the past, a microsecond apart."""
        at = now_us() - n
        for start in range(0, n, chunk):
            self._begin()
            for _ in range(min(chunk, n - start)):
                src, dst = self.rng.sample(among, 2)
                if hot is not None and self.rng.random() < hot_share and src != hot:
                    dst = hot
                self._transfer(src, dst, self.rng.randint(1, 999), "completed", at)
                at += 1
            self._commit()

    def pending(self, n: int, among: Sequence[str]) -> list[str]:
        """n pending transfers of 0.01 between random accounts of ``among``, as if just
        accepted (their settlement jobs are the caller's to enqueue)."""
        self._begin()
        at = now_us()
        ids = []
        for i in range(n):
            src, dst = self.rng.sample(among, 2)
            ids.append(self._transfer(src, dst, 1, "pending", at + i))
        self._commit()
        return ids

    def _begin(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")
        self._load_accounts()

    def _load_accounts(self) -> None:
        rows = self.conn.execute(
            "SELECT accounts.*, users.username FROM accounts JOIN users ON users.id = user_id"
        ).fetchall()
        self.accounts = {r["id"]: dict(r) for r in rows}

    def _commit(self) -> None:
        for table, rows in self.rows.items():
            self.conn.executemany(_INSERT[table], rows)
            rows.clear()
        self.conn.executemany(_SAVE_ACCOUNT, list(self.accounts.values()))
        self.conn.execute("COMMIT")

    def _funding(self, at: int) -> str:
        """The bank's USD funding account, created on first use (as the ledger does)."""
        found = self.conn.execute(
            "SELECT id FROM accounts WHERE kind = 'funding' AND currency = 'USD'"
        ).fetchone()
        if found is not None:
            return str(found["id"])
        bank = self.conn.execute("SELECT id FROM users WHERE username = ?", (admin.BANK_USERNAME,))
        row = bank.fetchone()
        bank_id = row["id"] if row is not None else new_id("usr")
        if row is None:
            self.conn.execute(
                "INSERT INTO users (id, username, username_lower, password_hash, created_at)"
                " VALUES (?, ?, ?, '!', ?)",
                (bank_id, admin.BANK_USERNAME, admin.BANK_USERNAME, at),
            )
        account = new_id("acc")
        self.conn.execute(
            "INSERT INTO accounts (id, user_id, name, currency, kind, status, created_at)"
            " VALUES (?, ?, 'Funding USD', 'USD', 'funding', 'active', ?)",
            (account, bank_id, at),
        )
        return account

    def _transfer(
        self, src: str, dst: str, amount: int, status: str, at: int, memo: str = ""
    ) -> str:
        """One transfer with its effects: balances, entries (if completed), two events."""
        row = {
            "id": new_id("tr"),
            "from_account": src,
            "to_account": dst,
            "amount": amount,
            "currency": "USD",
            "memo": memo,
            "status": status,
            "failure_reason": None,
            "created_by": self.accounts[src]["user_id"],
            "created_at": at,
            "settled_at": at + 2000 if status == "completed" else None,
            "from_name": Account.of(self.accounts[src]).party_name,
            "to_name": Account.of(self.accounts[dst]).party_name,
            "kind": "deposit" if self.accounts[src]["kind"] == "funding" else "transfer",
            "expires_at": at + PENDING_TTL_US,
            "slot": slot_of(src),
        }
        self.rows["transfers"].append(row)
        a, b = self.accounts[src], self.accounts[dst]
        if status == "completed":
            for account, change in ((a, -amount), (b, amount)):
                ledger_account = LedgerAccount.of(account)
                entry = chain.append(ledger_account, row["id"], change, row["settled_at"])
                account.update(
                    posted=ledger_account.posted,
                    entries=ledger_account.entries,
                    chain_head=ledger_account.chain_head,
                )
                self.rows["ledger_entries"].append(msgspec.structs.asdict(entry))
        else:
            a["pending_debits"] += amount
            b["pending_credits"] += amount
        transfer = Transfer.of(row)
        for account in (a, b):
            account["seq"] += 1
            event = Event.of_transfer(
                transfer, account["id"], account["seq"], Balance.of(account), at
            )
            self.rows["account_events"].append(event.log_row())
        return str(row["id"])


async def users_through(store: Store, n: int, prefix: str, deposit: int = DEPOSIT) -> list[User]:
    """n users with one funded account and an API token each, written through the store
    (PostgreSQL as much as SQLite), so slower than ``Seeder.users``."""
    made = []
    for i in range(n):
        user_id, account = await admin.create_user(store, f"{prefix}{i}", "-")
        await store.transaction(
            functools.partial(admin.deposit, account_id=account, amount=deposit)
        )
        made.append(
            User(user_id, f"{prefix}{i}", account, await auth.issue_token(store, user_id, 86_400))
        )
    return made
