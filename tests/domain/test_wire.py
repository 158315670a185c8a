"""The JSON shapes (server/domain/wire.py) and events (server/domain/events.py): what is
encoded is what is read back, the stream's message is the log's payload, and the order of
keys is the contract's."""

from __future__ import annotations

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from server.domain import events, wire
from server.domain.events import Event
from server.domain.model import (
    Account,
    AccountKind,
    AccountStatus,
    Balance,
    EventType,
    FailureReason,
    Status,
    Transfer,
    TransferKind,
)
from server.domain.money import format_amount, parse_money

cents = st.integers(min_value=-(10**15), max_value=10**15)
# Instants the API writes: to the millisecond, years 2000 to 2100.
instants = st.integers(min_value=946_684_800_000, max_value=4_102_444_800_000).map(
    lambda ms: ms * 1000
)


@st.composite
def transfers(draw: st.DrawFn) -> Transfer:
    created = draw(instants)
    status = draw(st.sampled_from(list(Status)))
    settled = None if status is Status.PENDING else created + draw(st.integers(0, 10**9)) * 1000
    reason = draw(st.sampled_from(list(FailureReason))) if status is Status.FAILED else None
    t = Transfer(
        id=draw(st.text(min_size=1, max_size=40)),
        kind=draw(st.sampled_from(list(TransferKind))),
        from_account="acc_a",
        from_name=draw(st.text(max_size=20)),
        to_account="acc_b",
        to_name=draw(st.text(max_size=20)),
        amount=draw(st.integers(1, 10**11)),
        currency="USD",
        memo=draw(st.text(max_size=50)),
        status=Status.PENDING,
        failure_reason=None,
        created_at=created,
        settled_at=None,
        expires_at=draw(st.none() | instants),
    )
    return t if settled is None else t.ended(status, settled, reason)


@given(cents)
def test_amounts_read_back_as_written(amount: int) -> None:
    assert parse_money(format_amount(amount)) == amount


@given(transfers())
def test_a_transfer_reads_back_as_it_was_encoded(t: Transfer) -> None:
    encoded = wire.encode(wire.transfer(t))
    back = wire.transfer_from(msgspec.json.decode(encoded, type=wire.TransferJSON))
    assert back == t


def test_the_transfer_keys_come_in_the_contracts_order() -> None:
    t = Transfer(
        "tr_1", TransferKind.DEPOSIT, "acc_f", "Funding USD", "acc_a", "ann", 500, "USD",
        "hi", Status.COMPLETED, None, 1_000_000, 1_001_000, None, 1.0,
    )  # fmt: skip
    body = msgspec.json.decode(wire.encode(wire.accepted(t, Balance(500, 0, 0))))
    assert list(body) == [
        "id", "kind", "from_account", "from_name", "to_account", "to_name", "amount",
        "currency", "memo", "status", "failure_reason", "created_at", "settled_at",
        "expires_at", "settled_in_ms", "balance",
    ]  # fmt: skip
    assert body["amount"] == "5.00" and body["created_at"] == "1970-01-01T00:00:01.000+00:00"
    assert body["balance"] == {
        "posted": "5.00",
        "pending_debits": "0.00",
        "pending_credits": "0.00",
        "available": "5.00",
        "projected": "5.00",
    }


@given(transfers(), st.integers(1, 10**6), cents, st.integers(0, 10**9))
def test_a_transfer_event_is_its_own_payload_and_parses_back(
    t: Transfer, seq: int, posted: int, pending: int
) -> None:
    event = Event.of_transfer(t, "acc_a", seq, Balance(posted, pending, 0), 7)
    assert event.type is EventType.of(t.status)
    assert event.payload == wire.encode(event.message())
    assert event.log_row()["payload"] == event.payload.decode()
    decoded = events.decode(event.payload)
    assert decoded is not None and list(msgspec.json.decode(event.payload)) == [
        "type", "account", "seq", "transfer", "balance",
    ]  # fmt: skip
    back = events.parse(decoded)
    assert back is not None and (back.type, back.seq, back.transfer, back.balance) == (
        event.type,
        seq,
        t,
        event.balance,
    )
    header = events.header(event.payload)
    assert header is not None and header.seq == seq
    assert header.committed_at == wire.iso(t.settled_at or t.created_at)


def test_an_account_event_carries_the_account_and_no_transfer() -> None:
    account = Account(
        "acc_a", "Main", "ann", "USD", AccountStatus.FROZEN, AccountKind.USER,
        Balance(700, 200, 0), 9,
    )  # fmt: skip
    event = Event.of_account(EventType.FROZEN, account, 5)
    message = msgspec.json.decode(event.payload)
    assert list(message) == ["type", "account", "seq", "account_state", "balance"]
    assert message["type"] == "account.frozen" and message["seq"] == 9
    assert message["account_state"]["status"] == "frozen"
    assert message["balance"]["available"] == "5.00"
    decoded = events.decode(event.payload)
    assert decoded is not None
    back = events.parse(decoded)
    assert back is not None and back.account == account and back.transfer is None


def test_a_snapshot_and_garbage_are_not_events() -> None:
    account = Account(
        "acc_a", "Main", "ann", "USD", AccountStatus.ACTIVE, AccountKind.USER, Balance(), 3
    )
    snap = events.decode(events.snapshot(account))
    assert snap is not None and snap.type == events.SNAPSHOT and events.parse(snap) is None
    assert events.decode(b"{not json") is None and events.header(b'{"seq": "x"}') is None
