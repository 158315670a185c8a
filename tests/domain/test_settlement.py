"""A settlement's plan (server/domain/settlement.py), with no database: what completing,
failing and depositing do to each account's balances, chain and event seq."""

from __future__ import annotations

import msgspec

from server.domain import chain
from server.domain.model import (
    AccountKind,
    AccountStatus,
    EventType,
    FailureReason,
    LedgerAccount,
    Status,
    Transfer,
    TransferKind,
)
from server.domain.settlement import Plan


def ledger_account(id_: str, posted: int = 0, debits: int = 0, credits: int = 0) -> LedgerAccount:
    return LedgerAccount(
        id_, AccountStatus.ACTIVE, AccountKind.USER, posted, debits, credits, 4, 0, chain.GENESIS
    )


def pending(tid: str, amount: int, expires_at: int | None = 10**12) -> Transfer:
    return Transfer(
        tid, TransferKind.TRANSFER, "acc_a", "ann", "acc_b", "bo", amount, "USD", "",
        Status.PENDING, None, 1_000, None, expires_at,
    )  # fmt: skip


def plan() -> Plan:
    return Plan(
        {"acc_a": ledger_account("acc_a", 1000, 300), "acc_b": ledger_account("acc_b", 0, 0, 300)},
        5_000,
    )


def test_completing_posts_both_sides_in_order_each_event_with_the_balance_after_it() -> None:
    p = plan()
    p.settle(pending("tr_1", 100))
    p.settle(pending("tr_2", 200))
    a, b = p.accounts["acc_a"], p.accounts["acc_b"]
    assert (a.posted, a.pending_debits, b.posted, b.pending_credits) == (700, 0, 300, 0)
    assert [t.status for _, t in p.finished] == [Status.COMPLETED, Status.COMPLETED]
    assert [(e.account_id, e.seq, e.balance.posted) for e in p.events] == [
        ("acc_a", 5, 900), ("acc_b", 5, 100), ("acc_a", 6, 700), ("acc_b", 6, 300),
    ]  # fmt: skip
    assert {e.type for e in p.events} == {EventType.COMPLETED}
    first, second = [e for e in p.entries if e.account_id == "acc_a"]
    assert (first.seq, first.prev_hash, first.balance_after) == (1, chain.GENESIS, 900)
    assert (second.seq, second.prev_hash, second.balance_after) == (2, first.hash, 700)
    assert a.chain_head == second.hash and a.entries == 2
    fields = msgspec.structs.asdict(second)
    del fields["hash"]
    assert chain.entry_hash(**fields) == second.hash


def test_an_expired_or_frozen_destination_fails_and_posts_nothing() -> None:
    p = plan()
    p.accounts["acc_b"].status = AccountStatus.FROZEN
    p.settle(pending("tr_1", 100))
    p.settle(pending("tr_2", 200, expires_at=5_000))
    assert [t.failure_reason for _, t in p.finished] == [
        FailureReason.RECIPIENT_UNAVAILABLE,
        FailureReason.EXPIRED,
    ]
    a, b = p.accounts["acc_a"], p.accounts["acc_b"]
    assert (a.posted, a.pending_debits, b.posted, b.pending_credits) == (1000, 0, 0, 0)
    assert p.entries == [] and {e.type for e in p.events} == {EventType.FAILED}


def test_a_deposit_posts_without_touching_what_is_held() -> None:
    p = plan()
    p.deposit(pending("tr_1", 250).ended(Status.COMPLETED, 5_000))
    a, b = p.accounts["acc_a"], p.accounts["acc_b"]
    assert (a.posted, a.pending_debits, b.posted, b.pending_credits) == (750, 300, 250, 300)
    assert [e.amount for e in p.entries] == [-250, 250]
