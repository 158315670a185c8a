"""The monthly statement page of an account, and the same statement as CSV, under the
browser session: the API's statement (``server.statements``) for one calendar month
(UTC), with its running balances, opening and closing balances and chain head."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from server import errors, fragments, reads, sessions, statements, views
from server.money import format_amount
from server.services import services

_MONTH = re.compile(r"(?P<year>[0-9]{4})-(?P<month>0[1-9]|1[0-2])")


def month_of(request: Request, now: datetime | None = None) -> tuple[int, int]:
    """The ``month`` query (YYYY-MM), the current month (UTC) by default."""
    raw = request.query_params.get("month")
    if raw is None or raw == "":
        now = now or datetime.now(UTC)
        return now.year, now.month
    match = _MONTH.fullmatch(raw)
    if match is None or not 1970 <= int(match["year"]) <= 9998:
        raise errors.InvalidField("month must look like 2026-12", "month")
    return int(match["year"]), int(match["month"])


def bounds(year: int, month: int) -> tuple[int, int]:
    """The month's first instant and the next month's, in microseconds."""
    return statements.this_month(datetime(year, month, 1, tzinfo=UTC))


def shift(year: int, month: int, by: int) -> str:
    index = year * 12 + (month - 1) + by
    return f"{index // 12:04d}-{index % 12 + 1:02d}"


async def _open(request: Request) -> tuple[Any, Any, int, int]:
    session = await sessions.require(request)
    app = services(request)
    account = await reads.owned_account(
        app.store, session.user_id, request.path_params["account_id"]
    )
    year, month = month_of(request)
    start, end = bounds(year, month)
    sheet = await statements.Statement(app.store, account, start, end).open()
    return session, sheet, year, month


async def statement_page(request: Request) -> Response:
    session, sheet, year, month = await _open(request)
    entries: list[dict[str, Any]] = []
    async for chunk in sheet.rows():
        entries.extend(chunk)
    account = views.account_of(sheet.account, session.username)
    label = datetime(year, month, 1, tzinfo=UTC).strftime("%B %Y")
    this = datetime.now(UTC)
    return fragments.render(
        request,
        "statement.html",
        session=session,
        account=account,
        entries=entries,
        label=label,
        month=f"{year:04d}-{month:02d}",
        previous=shift(year, month, -1),
        following=None if (year, month) >= (this.year, this.month) else shift(year, month, 1),
        opening=format_amount(sheet.opening),
        closing=format_amount(sheet.closing),
        chain_head=sheet.head,
        start=views.iso(sheet.start),
        end=views.iso(sheet.end),
    )


async def statement_csv(request: Request) -> Response:
    """The same statement as CSV (the API's format), for the download link."""
    _, sheet, year, month = await _open(request)
    name = f"statement-{sheet.account['id']}-{year:04d}-{month:02d}.csv"
    return StreamingResponse(
        sheet.csv(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


routes = [
    Route("/accounts/{account_id}/statement", statement_page, methods=["GET"]),
    Route("/accounts/{account_id}/statement.csv", statement_csv, methods=["GET"]),
]
