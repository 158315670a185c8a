"""Statements, balances at a time and the events feed (server/store/statements.py, the API),
over real HTTP on the database of the run."""

from __future__ import annotations

import csv
import io
from typing import Any

import pytest

from server.domain import chain
from server.domain.model import AccountKind, AccountStatus, LedgerAccount
from server.domain.wire import iso
from server.store.schema import accounts, ledger_entries
from tests.conftest import Customer, Stack, execute
from tests.test_live import recv, seq_of, subscribe

T0 = 1_800_000_000_000_000  # 2027-01-15T08:00:00Z, in microseconds
MS = 1000  # instants go over the wire to the millisecond


async def dated(stack: Stack, who: Customer, times: list[int]) -> None:
    """As if ``who``'s ledger entries had been posted at ``times`` (oldest first): their
    times set, and their chain computed again for them, head included."""
    rows = await stack.store.fetch_all(
        f"SELECT * FROM ledger_entries WHERE account_id = '{who.account}' ORDER BY seq"
    )
    assert len(rows) == len(times)
    account = LedgerAccount(
        who.account, AccountStatus.ACTIVE, AccountKind.USER, 0, 0, 0, 0, 0, chain.GENESIS
    )
    updates = []
    for row, at in zip(rows, times, strict=True):
        entry = chain.append(account, row["transfer_id"], row["amount"], at)
        fields = ("created_at", "balance_after", "prev_hash", "hash")
        values = {name: getattr(entry, name) for name in fields}
        updates.append(
            ledger_entries.update().where(ledger_entries.c.id == row["id"]).values(**values)
        )
    head = (
        accounts.update().where(accounts.c.id == who.account).values(chain_head=account.chain_head)
    )
    await execute(stack.store, *updates, head)


async def statement(stack: Stack, who: Customer, **params: str) -> dict[str, Any]:
    r = await stack.client.get(
        f"/api/accounts/{who.account}/statement", params=params, headers=who.headers
    )
    assert r.status_code == 200, r.text
    data: dict[str, Any] = r.json()
    return data


async def history(stack: Stack) -> tuple[Customer, Customer]:
    """alice: +100.00 (deposit), -10.00 to bob, -2.50 to bob, +1.25 from bob; settled."""
    alice, bob = await stack.customer("100.00"), await stack.customer("50.00")
    for amount in ("10.00", "2.50"):
        await stack.transfer(alice, bob.account, amount, memo=f"=pay {amount}")
        await stack.settle_all()
    await stack.transfer(bob, alice.account, "1.25", memo='back, "with" quotes')
    await stack.settle_all()
    await dated(stack, alice, [T0, T0 + 10 * MS, T0 + 20 * MS, T0 + 30 * MS])
    return alice, bob


async def test_a_statement_lists_entries_with_running_balances_and_adds_up(stack: Stack) -> None:
    alice, bob = await history(stack)
    sheet = await statement(stack, alice, **{"from": iso(T0) or "", "to": iso(T0 + 31 * MS) or ""})
    assert sheet["account"] == alice.account and sheet["currency"] == "USD"
    assert [(e["amount"], e["balance_after"]) for e in sheet["entries"]] == [
        ("100.00", "100.00"),
        ("-10.00", "90.00"),
        ("-2.50", "87.50"),
        ("1.25", "88.75"),
    ]
    assert sheet["opening_balance"] == "0.00" and sheet["closing_balance"] == "88.75"
    assert [e["counterparty"] for e in sheet["entries"]] == [
        "Bank deposit",
        bob.username,
        bob.username,
        bob.username,
    ]
    head = await stack.store.fetch_val(
        f"SELECT chain_head FROM accounts WHERE id = '{alice.account}'"
    )
    assert sheet["chain_head"] == head


@pytest.mark.parametrize(
    ("start", "end", "opening", "amounts", "closing"),
    [
        (T0 + 10 * MS, T0 + 30 * MS, "100.00", ["-10.00", "-2.50"], "87.50"),  # [from, to)
        (T0 + 11 * MS, T0 + 20 * MS, "90.00", [], "90.00"),  # nothing in between
        (T0 - 5 * MS, T0, "0.00", [], "0.00"),  # before anything
        (T0 + 31 * MS, T0 + 99 * MS, "88.75", [], "88.75"),  # after everything
    ],
)
async def test_statement_range_edges(
    stack: Stack, start: int, end: int, opening: str, amounts: list[str], closing: str
) -> None:
    alice, _ = await history(stack)
    sheet = await statement(stack, alice, **{"from": iso(start) or "", "to": iso(end) or ""})
    assert sheet["opening_balance"] == opening and sheet["closing_balance"] == closing
    assert [e["amount"] for e in sheet["entries"]] == amounts


async def test_the_csv_statement_holds_the_json_entries(stack: Stack) -> None:
    alice, _ = await history(stack)
    span = {"from": iso(T0) or "", "to": iso(T0 + 31 * MS) or ""}
    sheet = await statement(stack, alice, **span)
    r = await stack.client.get(
        f"/api/accounts/{alice.account}/statement",
        params=span,
        headers={**alice.headers, "Accept": "text/csv"},
    )
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert "attachment" in r.headers["content-disposition"]
    assert r.text.startswith("at,transfer_id,counterparty,memo,amount,balance_after\r\n")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    # What a spreadsheet would run as a formula starts with an apostrophe.
    for row in rows:
        for column in ("memo", "counterparty"):
            if row[column].startswith("'="):
                row[column] = row[column][1:]
    assert rows == sheet["entries"]
    same = await stack.client.get(
        f"/api/accounts/{alice.account}/statement",
        params={**span, "format": "csv"},
        headers=alice.headers,
    )
    assert same.text == r.text


async def test_the_default_statement_is_this_month(stack: Stack) -> None:
    alice = await stack.customer("5.00")
    sheet = await statement(stack, alice)
    assert sheet["from"].endswith("-01T00:00:00.000+00:00")
    assert [e["amount"] for e in sheet["entries"]] == ["5.00"]


@pytest.mark.parametrize(
    "params",
    [
        {"from": "yesterday"},
        {"from": "2026-12-01T00:00:00"},  # no offset: which midnight?
        {"from": "2026-12-02T00:00:00Z", "to": "2026-12-01T00:00:00Z"},
        {"format": "xml"},
        {"from": "9" * 5000},
    ],
)
async def test_bad_statement_ranges_are_422(stack: Stack, params: dict[str, str]) -> None:
    alice = await stack.customer("5.00")
    r = await stack.client.get(
        f"/api/accounts/{alice.account}/statement", params=params, headers=alice.headers
    )
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_field", r.text


async def test_statements_and_balances_are_the_owners_alone(stack: Stack) -> None:
    alice, mallory = await stack.customer("5.00"), await stack.customer("5.00")
    for path in ("statement", "balance?at=2027-01-01T00:00:00Z", "events"):
        r = await stack.client.get(f"/api/accounts/{alice.account}/{path}", headers=mallory.headers)
        assert r.status_code == 404, (path, r.text)


async def test_the_balance_at_a_time_before_between_and_after_entries(stack: Stack) -> None:
    alice, _ = await history(stack)
    expected = {
        T0 - MS: "0.00",
        T0: "100.00",
        T0 + 15 * MS: "90.00",
        T0 + 20 * MS: "87.50",
        T0 + 29 * MS: "87.50",
        T0 + 10**9: "88.75",
    }
    for at, posted in expected.items():
        r = await stack.client.get(
            f"/api/accounts/{alice.account}/balance",
            params={"at": iso(at)},
            headers=alice.headers,
        )
        assert r.status_code == 200, r.text
        assert r.json() == {"account": alice.account, "at": iso(at), "posted": posted}


async def test_the_events_feed_is_the_streams_replay(stack: Stack) -> None:
    alice, bob = await stack.customer("20.00"), await stack.customer("0")
    start = await seq_of(stack, alice)
    async with subscribe(stack.base_url, alice, start) as ws:
        for amount in ("1.00", "2.00"):
            await stack.transfer(alice, bob.account, amount)
        await stack.settle_all()
        streamed = [await recv(ws) for _ in range(4)]
    r = await stack.client.get(
        f"/api/accounts/{alice.account}/events",
        params={"since": str(start), "limit": "3"},
        headers=alice.headers,
    )
    first = r.json()
    assert first["events"] == streamed[:3] and first["next_since"] == start + 3
    r = await stack.client.get(
        f"/api/accounts/{alice.account}/events",
        params={"since": str(first["next_since"])},
        headers=alice.headers,
    )
    rest = r.json()
    assert rest["events"] == streamed[3:] and rest["next_since"] == start + 4
    empty = await stack.client.get(
        f"/api/accounts/{alice.account}/events",
        params={"since": str(start + 4)},
        headers=alice.headers,
    )
    assert empty.json() == {"events": [], "next_since": start + 4}
