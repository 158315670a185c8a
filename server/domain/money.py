"""Money as integer minor units (cents). Parsing is exact: no float ever touches an amount."""

from __future__ import annotations

import re

from server.domain.errors import AmountProblem, InvalidAmount

MAX_AMOUNT = 1_000_000_000_00  # 1,000,000,000.00 in cents
# Longer text is refused before any conversion: Python will not turn a string of over
# 4,300 digits into an int, and nothing that long is a valid amount anyway.
MAX_TEXT = 32

_DECIMAL = re.compile(r"(?P<units>[0-9]+)(?:\.(?P<frac>[0-9]{1,2}))?")
# What parse_amount takes, as a JSON Schema pattern (/openapi.json): the same digits and
# length; zero and amounts over MAX_AMOUNT match it and are refused (422) all the same.
AMOUNT_PATTERN = (
    f"^(?=.{{1,{MAX_TEXT}}}$){_DECIMAL.pattern.replace('?P<units>', '').replace('?P<frac>', '')}$"
)
_OWN = re.compile(r"-?[0-9]+\.[0-9]{2}")


def parse_amount(value: object, field: str = "amount") -> int:
    """Parse an API amount into cents.

    Accepts a decimal string ("12.34") or a JSON number. JSON numbers arrive as the
    exact source text (see ``server.web.api.read_json``), so "1.234" and "1e309" are seen as
    written. Nothing else: no sign, no spaces, no thousands separators.
    """
    if isinstance(value, bool):
        raise InvalidAmount(
            "amount must be a number or a decimal string", field, AmountProblem.MALFORMED
        )
    if isinstance(value, int):
        text = str(value)
    elif isinstance(value, str):
        text = value
    else:
        raise InvalidAmount(
            "amount must be a number or a decimal string", field, AmountProblem.MALFORMED
        )
    match = _DECIMAL.fullmatch(text) if len(text) <= MAX_TEXT else None
    if match is None:
        raise InvalidAmount(
            'amount must be a positive decimal with at most 2 decimal places, like "12.34"',
            field,
            AmountProblem.MALFORMED,
        )
    units = int(match["units"])
    frac = (match["frac"] or "").ljust(2, "0")
    cents = units * 100 + int(frac)
    if cents <= 0:
        raise InvalidAmount("amount must be greater than zero", field, AmountProblem.NOT_POSITIVE)
    if cents > MAX_AMOUNT:
        raise InvalidAmount(
            f"amount must be at most {format_amount(MAX_AMOUNT)}", field, AmountProblem.TOO_LARGE
        )
    return cents


def format_amount(cents: int) -> str:
    """Render cents as a decimal string with exactly two decimals ("-12.05")."""
    sign = "-" if cents < 0 else ""
    units, frac = divmod(abs(cents), 100)
    return f"{sign}{units}.{frac:02d}"


def parse_money(text: str) -> int:
    """An amount as ``format_amount`` wrote it ("-12.05"), back in cents."""
    if _OWN.fullmatch(text) is None:
        raise ValueError(f"not an amount settle wrote: {text!r}")
    return int(text.replace(".", ""))
