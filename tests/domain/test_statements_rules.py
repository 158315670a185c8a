"""The rules of a statement and of wording (server/domain/statements.py, wording.py)."""

from __future__ import annotations

import zoneinfo
from datetime import UTC, datetime

import pytest

from server.domain import errors, statements, wording
from server.domain.model import FailureReason, TransferKind


@pytest.mark.parametrize(
    ("amount", "kind", "who"),
    [(-100, TransferKind.TRANSFER, "bo"), (100, TransferKind.TRANSFER, "ann"),
     (100, TransferKind.DEPOSIT, "Bank deposit")],
)  # fmt: skip
def test_the_other_party_of_an_entry(amount: int, kind: TransferKind, who: str) -> None:
    assert statements.counterparty(amount, kind, "ann", "bo") == who


def test_instants_need_their_offset_and_months_run_first_to_first() -> None:
    assert statements.instant("1970-01-01T00:00:01Z", "from") == 1_000_000
    assert statements.instant("1970-01-01T01:00:00+01:00", "from") == 0
    for bad in ("2026-12-01", "2026-12-01T00:00:00", "yesterday", "2" * 41):
        with pytest.raises(errors.InvalidField):
            statements.instant(bad, "from")
    start, end = statements.this_month(datetime(2026, 12, 7, tzinfo=UTC))
    assert (start, end) == (
        statements.instant("2026-12-01T00:00:00Z", "x"),
        statements.instant("2027-01-01T00:00:00Z", "x"),
    )


@pytest.mark.parametrize("value", ["=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx"])
def test_a_cell_a_spreadsheet_would_run_is_neutralized(value: str) -> None:
    assert statements.cell("memo", value) == "'" + value
    assert statements.cell("amount", "-1.00") == "-1.00"


@pytest.mark.parametrize(
    ("cents", "currency", "text"),
    [(0, "USD", "$0.00"), (123456, "USD", "$1,234.56"), (-5, "EUR", "\u2212€0.05"),
     (10**11, "CHF", "1,000,000,000.00 CHF")],
)  # fmt: skip
def test_money_is_written_for_people_exactly(cents: int, currency: str, text: str) -> None:
    assert wording.money(cents, currency) == text


def test_each_side_reads_its_own_reason() -> None:
    assert wording.reason_text(FailureReason.ACCOUNT_FROZEN, True).startswith("the recipient")
    assert wording.reason_text(FailureReason.ACCOUNT_FROZEN, False) == "your account is frozen"
    assert wording.window(4.2) == "arrived in under a second"


@pytest.mark.parametrize(
    "value", [" =1", "  +1", "\ufeff=1", "\u200b-1", "\u2060@x", "\uff1dSUM(A1)", "\uff0b1",
              "\uff20x", "\u3000=1", "\u00a0-2"],
)  # fmt: skip
def test_a_formula_behind_spaces_marks_or_full_width_signs_is_neutralized(value: str) -> None:
    assert statements.cell("counterparty", value) == "'" + value


@pytest.mark.parametrize("value", ["rent", "1 = 1", "naïve", "", "\u200brent"])
def test_other_cells_are_left_alone(value: str) -> None:
    assert statements.cell("memo", value) == value


def test_a_month_runs_midnight_to_midnight_where_its_reader_lives() -> None:
    """A New York evening at the end of November is in New York's November, though in
    UTC it is already December."""
    new_york = zoneinfo.ZoneInfo("America/New_York")
    evening = statements.instant("2026-11-30T23:30:00-05:00", "x")
    start, end = statements.month_bounds(2026, 11, new_york)
    assert start == statements.instant("2026-11-01T00:00:00-04:00", "x")  # still summer time
    assert end == statements.instant("2026-12-01T00:00:00-05:00", "x")
    assert start <= evening < end
    utc_start, _ = statements.month_bounds(2026, 12, UTC)
    assert evening >= utc_start, "in UTC it is December already"
    assert statements.month_of(datetime(2026, 12, 1, 4, 30, tzinfo=UTC), new_york) == (2026, 11)
    assert statements.local_time(evening, new_york) == "2026-11-30 23:30:00"
    assert wording.local_when(evening, new_york) == "30 Nov 2026, 23:30"


def test_any_text_cell_can_be_neutralized_but_numbers_are_left_alone() -> None:
    assert statements.neutral("=HYPERLINK(x)") == "'=HYPERLINK(x)"
    assert statements.neutral("Bob Martin (@bob)") == "Bob Martin (@bob)"
