"""The typed values (server/domain/model.py): balances computed once, statuses and
event types mapped both ways without string surgery, transfers ending."""

from __future__ import annotations

import pytest

from server.domain.model import (
    Balance,
    EventType,
    FailureReason,
    Status,
    Transfer,
    TransferKind,
    window_ms,
)


def transfer(**changes: object) -> Transfer:
    base = Transfer(
        "tr_1", TransferKind.TRANSFER, "acc_a", "ann", "acc_b", "bo", 1234, "USD", "",
        Status.PENDING, None, 1_000_000, None, 2_000_000,
    )  # fmt: skip
    return Transfer(**{**{f: getattr(base, f) for f in base.__struct_fields__}, **changes})


@pytest.mark.parametrize(
    ("posted", "debits", "credits", "available", "projected"),
    [(0, 0, 0, 0, 0), (10_000, 2_500, 0, 7_500, 7_500), (100, 100, 50, 0, 50), (-5, 0, 7, -5, 2)],
)
def test_available_and_projected_follow_from_posted_and_the_pending_sums(
    posted: int, debits: int, credits: int, available: int, projected: int
) -> None:
    balance = Balance(posted, debits, credits)
    assert (balance.available, balance.projected) == (available, projected)
    held = balance.holding(25)
    assert (held.pending_debits, held.available) == (debits + 25, available - 25)


@pytest.mark.parametrize("status", list(Status))
def test_every_status_has_its_event_and_back(status: Status) -> None:
    event = EventType.of(status)
    assert event.is_transfer and event.status is status
    assert event.value == f"transfer.{status.value}"


@pytest.mark.parametrize("event", [EventType.FROZEN, EventType.UNFROZEN])
def test_account_events_announce_no_transfer_status(event: EventType) -> None:
    assert not event.is_transfer and event.status is None


def test_only_awaiting_and_pending_are_not_final_and_failed_or_cancelled_moved_nothing() -> None:
    assert [s for s in Status if not s.final] == [Status.AWAITING, Status.PENDING]
    assert [s for s in Status if s.moved] == [Status.AWAITING, Status.PENDING, Status.COMPLETED]


def test_a_transfer_that_ends_keeps_its_window_to_a_tenth_of_a_millisecond() -> None:
    done = transfer().ended(Status.FAILED, 1_001_234, FailureReason.EXPIRED)
    assert (done.status, done.failure_reason, done.settled_at) == (
        Status.FAILED,
        FailureReason.EXPIRED,
        1_001_234,
    )
    assert done.settled_in_ms == 1.2 == window_ms(1_000_000, 1_001_234)
    assert transfer().settled_in_ms is None and window_ms(5, None) is None
