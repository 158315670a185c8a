"""The monthly statement page of an account, and its CSV download, under the browser
session: the API's statement (``server.store.statements``) for one calendar month as the
account holder lives it (their time zone, ``server.web.profile``; UTC until their
browser has said), with its running balances, totals in and out, what is still on its
way apart (and what that leaves available), and the proof folded away.

The page follows the account's stream: any event repaints its body (the htmx request
for the same URL answers ``_statement_body.html`` alone)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, tzinfo
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from server.domain import errors, people
from server.domain.statements import Line, month_bounds
from server.domain.statements import month_of as month_in
from server.store import reads, statements
from server.web import fragments, sessions
from server.web.services import services
from server.web.sessions import Session

_MONTH = re.compile(r"(?P<year>[0-9]{4})-(?P<month>0[1-9]|1[0-2])")


def month_of(request: Request, zone: tzinfo = UTC, now: datetime | None = None) -> tuple[int, int]:
    """The ``month`` query (YYYY-MM), by default the current month in ``zone``."""
    raw = request.query_params.get("month")
    if raw is None or raw == "":
        return month_in(now or datetime.now(UTC), zone)
    match = _MONTH.fullmatch(raw)
    if match is None or not 1970 <= int(match["year"]) <= 9998:
        raise errors.InvalidField("month must look like 2026-12", "month")
    return int(match["year"]), int(match["month"])


def shift(year: int, month: int, by: int) -> str:
    index = year * 12 + (month - 1) + by
    return f"{index // 12:04d}-{index % 12 + 1:02d}"


class _Opened:
    """A statement opened for the page: whose, which month, in which zone."""

    def __init__(self, session: Session, sheet: statements.Statement, year: int, month: int):
        self.session, self.sheet, self.year, self.month = session, sheet, year, month
        self.zone_name = session.time_zone or "UTC"
        self.zone = people.zone(session.time_zone)

    @property
    def holder(self) -> str:
        return people.called(self.session.username, self.session.display_name)


async def _open(request: Request) -> _Opened:
    session = await sessions.require(request)
    app = services(request)
    account = await reads.owned_account(
        app.store, session.user_id, request.path_params["account_id"]
    )
    zone = people.zone(session.time_zone)
    year, month = month_of(request, zone)
    start, end = month_bounds(year, month, zone)
    sheet = await statements.Statement(app.store, account, start, end).open()
    return _Opened(session, sheet, year, month)


async def statement_page(request: Request) -> Response:
    opened = await _open(request)
    context = await _context(request, opened)
    if fragments.is_htmx(request):
        # A live repaint: the body alone.
        return fragments.html(
            fragments.templates(request).get_template("_statement_body.html").render(context)
        )
    return fragments.render(request, "statement.html", **context)


async def _context(request: Request, opened: _Opened) -> dict[str, Any]:
    entries: list[Line] = []
    async for chunk in opened.sheet.lines():
        entries.extend(chunk)
    sheet, year, month = opened.sheet, opened.year, opened.month
    account = sheet.account
    now = month_in(datetime.now(UTC), opened.zone)
    pending = await reads.pending_of(services(request).store, account.id)
    return {
        "session": opened.session,
        "account": account,
        "holder": opened.holder,
        "entries": entries,
        "pending": pending,
        "label": datetime(year, month, 1).strftime("%B %Y"),
        "month": f"{year:04d}-{month:02d}",
        "previous": shift(year, month, -1),
        "following": None if (year, month) >= now else shift(year, month, 1),
        "current": (year, month) == now,
        "opening": sheet.opening,
        "closing": sheet.closing,
        "total_in": sheet.total_in,
        "total_out": sheet.total_out,
        "chain_head": sheet.head,
        "start": sheet.start,
        "end": sheet.end,
        "zone": opened.zone,
        "zone_name": opened.zone_name,
        "zone_known": bool(opened.session.time_zone),
        "csrf_token": opened.session.csrf_token,
    }


async def statement_csv(request: Request) -> Response:
    """The statement as a bank customer's spreadsheet expects it: account, currency,
    period, opening and closing rows, local times (the API's CSV is the contract's)."""
    opened = await _open(request)
    sheet = opened.sheet
    name = f"statement-{sheet.account.id}-{opened.year:04d}-{opened.month:02d}.csv"
    return StreamingResponse(
        sheet.bank_csv(opened.zone, opened.zone_name, opened.holder),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


routes = [
    Route("/accounts/{account_id}/statement", statement_page, methods=["GET"]),
    Route("/accounts/{account_id}/statement.csv", statement_csv, methods=["GET"]),
]
