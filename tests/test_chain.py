"""The tamper-evident ledger (server/domain/chain.py): each account's entries form a hash chain
that ``settle audit`` walks, naming the first broken entry; a published chain head proves
the history up to it (``settle audit --verify-head``)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import msgspec
import pytest

from server.domain import chain
from server.domain.model import AccountKind, AccountStatus, LedgerAccount
from server.store.audit import audit
from tests.conftest import Stack, execute
from tests.fleet import Fleet
from tests.test_cli import settle


def account(name: str = "acc_a") -> LedgerAccount:
    return LedgerAccount(name, AccountStatus.ACTIVE, AccountKind.USER, 0, 0, 0, 0, 0, chain.GENESIS)


def test_appended_entries_link_each_to_the_one_before() -> None:
    a = account()
    first = chain.append(a, "tr_1", 500, 10)
    second = chain.append(a, "tr_2", -200, 20)
    assert (first.seq, first.balance_after, first.prev_hash) == (1, 500, chain.GENESIS)
    assert (second.seq, second.balance_after, second.prev_hash) == (2, 300, first.hash)
    assert a.chain_head == second.hash and a.posted == 300 and a.entries == 2
    walker = chain.Walker("acc_a")
    for entry in (first, second):
        walker.step(msgspec.structs.asdict(entry))
    assert walker.broken is None and walker.head == a.chain_head


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"amount": -100}, "does not match its contents"),
        ({"created_at": 21}, "does not match its contents"),
        ({"transfer_id": "tr_9"}, "does not match its contents"),
        ({"balance_after": 400}, "balance after 400"),
        ({"prev_hash": "f" * 64}, "previous hash"),
        ({"seq": 3}, "seq 3 where 2 was due"),
    ],
)
def test_any_rewrite_of_an_entry_is_found_and_named(change: dict[str, Any], why: str) -> None:
    a = account()
    entries = [msgspec.structs.asdict(chain.append(a, f"tr_{i}", 100, i)) for i in range(1, 4)]
    entries[1] = {**entries[1], **change}
    walker = chain.Walker("acc_a")
    for entry in entries:
        walker.step(entry)
    assert walker.broken is not None and walker.broken.seq == entries[1]["seq"]
    assert why in str(walker.broken) and "acc_a" in str(walker.broken)


async def test_a_rewritten_entry_fails_the_audit_naming_it(stack: Stack) -> None:
    """Someone with the database rewrites a settled transfer of 10.00 into 4.00 and
    adjusts every balance to match, so invariants 1-6 still hold: the chain tells."""
    alice, bob = await stack.customer("100.00"), await stack.customer("0")
    tid = (await stack.transfer(alice, bob.account, "10.00")).json()["id"]
    await stack.settle_all()
    r = await stack.client.get(f"/api/accounts/{alice.account}/statement", headers=alice.headers)
    published = r.json()["chain_head"]
    assert (
        settle(stack.settings, "audit", "--verify-head", alice.account, published).returncode == 0
    )

    entry = await stack.store.fetch_one(
        f"SELECT seq FROM ledger_entries WHERE transfer_id = '{tid}' AND account_id ="
        f" '{alice.account}'"
    )
    assert entry is not None
    tamper = [
        f"UPDATE transfers SET amount = 400 WHERE id = '{tid}'",
        f"UPDATE ledger_entries SET amount = -400 WHERE transfer_id = '{tid}' AND amount < 0",
        f"UPDATE ledger_entries SET amount = 400 WHERE transfer_id = '{tid}' AND amount > 0",
        f"UPDATE accounts SET posted = posted + 600 WHERE id = '{alice.account}'",
        f"UPDATE accounts SET posted = posted - 600 WHERE id = '{bob.account}'",
    ]
    restore = [
        f"UPDATE transfers SET amount = 1000 WHERE id = '{tid}'",
        f"UPDATE ledger_entries SET amount = -1000 WHERE transfer_id = '{tid}' AND amount < 0",
        f"UPDATE ledger_entries SET amount = 1000 WHERE transfer_id = '{tid}' AND amount > 0",
        f"UPDATE accounts SET posted = posted - 600 WHERE id = '{alice.account}'",
        f"UPDATE accounts SET posted = posted + 600 WHERE id = '{bob.account}'",
    ]
    await execute(stack.store, *tamper)
    try:
        audit = settle(stack.settings, "audit")
        assert audit.returncode == 1
        for n in range(1, 7):
            assert f"ok   {n}." in audit.stdout, audit.stdout
        assert "FAIL 7." in audit.stdout
        named = f"{alice.account} entry {entry['seq']} (transfer {tid}): its hash does not match"
        assert named in audit.stdout, audit.stdout
        proof = settle(stack.settings, "audit", "--verify-head", alice.account, published)
        assert proof.returncode == 1 and "rewritten" in proof.stdout, proof.stdout
    finally:
        await execute(stack.store, *restore)
    unknown = settle(stack.settings, "audit", "--verify-head", alice.account, "a" * 64)
    assert unknown.returncode == 1 and "is not an entry" in unknown.stdout


async def test_the_head_check_finds_a_chain_cut_short(stack: Stack) -> None:
    alice, bob = await stack.customer("100.00"), await stack.customer("0")
    await stack.transfer(alice, bob.account, "1.00")
    await stack.settle_all()
    head = await stack.store.fetch_val(
        f"SELECT chain_head FROM accounts WHERE id = '{alice.account}'"
    )
    await execute(
        stack.store, f"UPDATE accounts SET chain_head = '{'0' * 64}' WHERE id = '{alice.account}'"
    )
    try:
        audit = settle(stack.settings, "audit")
        assert audit.returncode == 1 and "is not its chain's last hash" in audit.stdout
    finally:
        await execute(
            stack.store, f"UPDATE accounts SET chain_head = '{head}' WHERE id = '{alice.account}'"
        )


async def test_chains_stay_linear_with_several_workers_settling_at_once(
    stack: Stack, fleet: Fleet
) -> None:
    """Three worker processes settle while deposits post to the same accounts: every
    chain stays one line (no two entries in one place, none skipped)."""
    for i in range(3):
        fleet.start(f"worker{i}", "worker")
    people = [await stack.customer("100.00") for _ in range(4)]
    sends = [
        stack.transfer(people[i % 4], people[(i + 1 + i // 4 % 3) % 4].account, "0.25")
        for i in range(60)
    ]
    deposits = [stack.deposit(people[i % 4].account, 100) for i in range(12)]
    answers = await asyncio.gather(*sends, *deposits)
    refused = [
        a.text for a in answers[:60] if isinstance(a, httpx.Response) and a.status_code != 202
    ]
    assert refused == []
    deadline = time.monotonic() + 60
    while await stack.store.fetch_val("SELECT count(*) FROM transfers WHERE status = 'pending'"):
        fleet.check_alive()
        assert time.monotonic() < deadline, "not all settled in 60 s"
        await asyncio.sleep(0.05)
    report = await audit(stack.store)
    assert report.ok, report.render()
    for who in people:
        rows = await stack.store.fetch_all(
            "SELECT seq, created_at FROM ledger_entries"
            f" WHERE account_id = '{who.account}' ORDER BY seq"
        )
        seqs = [r["seq"] for r in rows]
        assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) > 15
        # And in time order: statements and balances at a time read the chain by time.
        times = [r["created_at"] for r in rows]
        assert times == sorted(times)
