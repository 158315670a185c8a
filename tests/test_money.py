from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.domain.errors import InvalidAmount
from server.domain.money import MAX_AMOUNT, format_amount, parse_amount
from server.web.fields import JsonNumber


@pytest.mark.parametrize(
    ("raw", "cents"),
    [
        ("12.34", 1234),
        ("0.01", 1),
        ("1", 100),
        ("1.5", 150),
        (7, 700),
        (JsonNumber("12.30"), 1230),
        ("1000000000.00", MAX_AMOUNT),
        (JsonNumber("7"), 700),
        ("0001.00", 100),
    ],
)
def test_valid_amounts_parse_exactly(raw: object, cents: int) -> None:
    assert parse_amount(raw) == cents


@pytest.mark.parametrize(
    "raw",
    [
        "-1.00",
        "0",
        "0.00",
        "1.234",
        "NaN",
        "nan",
        "Infinity",
        "1e309",
        "1e2",
        "",
        ".5",
        "1.",
        "1,00",
        "0x10",
        "1_000",
        "١٢",
        "1000000000.01",
        " 2.00 ",
        "\xa05.00",
        "5.00\n",
        "5" * 5001,
        JsonNumber("9" * 4400),
        JsonNumber("-" + "9" * 4400),
        -5,
        0,
        True,
        False,
        None,
        [],
        {},
        1.5,
        JsonNumber("1e309"),
        JsonNumber("1.234"),
        JsonNumber("-0.5"),
        10**30,
    ],
)
def test_invalid_amounts_are_refused(raw: object) -> None:
    with pytest.raises(InvalidAmount):
        parse_amount(raw)


@given(st.integers(min_value=1, max_value=MAX_AMOUNT))
def test_format_then_parse_round_trips(cents: int) -> None:
    assert parse_amount(format_amount(cents)) == cents


@given(st.integers(min_value=-(10**15), max_value=10**15))
def test_format_has_exactly_two_decimals(cents: int) -> None:
    text = format_amount(cents)
    assert text.split(".")[1].isdigit() and len(text.split(".")[1]) == 2
    assert int(text.replace(".", "")) == cents


@given(st.integers(min_value=0, max_value=10**12), st.integers(min_value=3, max_value=8))
def test_more_than_two_decimals_is_always_refused(units: int, places: int) -> None:
    with pytest.raises(InvalidAmount):
        parse_amount(f"{units}." + "1" * places)


@given(st.text(max_size=20))
def test_arbitrary_text_is_parsed_or_refused_never_crashes(text: str) -> None:
    try:
        cents = parse_amount(text)
    except InvalidAmount:
        return
    assert 1 <= cents <= MAX_AMOUNT
