"""Money as integer minor units (cents). Parsing is exact: no float ever touches an amount."""

from __future__ import annotations

import re

from server.errors import InvalidAmount

MAX_AMOUNT = 1_000_000_000_00  # 1,000,000,000.00 in cents
# Longer text is refused before any conversion: Python will not turn a string of over
# 4,300 digits into an int, and nothing that long is a valid amount anyway.
MAX_TEXT = 32

_DECIMAL = re.compile(r"(?P<units>[0-9]+)(?:\.(?P<frac>[0-9]{1,2}))?")


def parse_amount(value: object, field: str = "amount") -> int:
    """Parse an API amount into cents.

    Accepts a decimal string ("12.34") or a JSON number. JSON numbers arrive as the
    exact source text (see ``server.api.read_json``), so "1.234" and "1e309" are seen as
    written. Nothing else: no sign, no spaces, no thousands separators.
    """
    if isinstance(value, bool):
        raise InvalidAmount("amount must be a number or a decimal string", field)
    if isinstance(value, int):
        text = str(value)
    elif isinstance(value, str):
        text = value
    else:
        raise InvalidAmount("amount must be a number or a decimal string", field)
    match = _DECIMAL.fullmatch(text) if len(text) <= MAX_TEXT else None
    if match is None:
        raise InvalidAmount(
            'amount must be a positive decimal with at most 2 decimal places, like "12.34"',
            field,
        )
    units = int(match["units"])
    frac = (match["frac"] or "").ljust(2, "0")
    cents = units * 100 + int(frac)
    if cents <= 0:
        raise InvalidAmount("amount must be greater than zero", field)
    if cents > MAX_AMOUNT:
        raise InvalidAmount("amount must be at most 1000000000.00", field)
    return cents


def format_amount(cents: int) -> str:
    """Render cents as a decimal string with exactly two decimals ("-12.05")."""
    sign = "-" if cents < 0 else ""
    units, frac = divmod(abs(cents), 100)
    return f"{sign}{units}.{frac:02d}"
