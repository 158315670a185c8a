"""The JSON API. Handlers parse, authenticate, call a use case (``server.transfers``) or a
read (``server.reads``), and render; the rules live in those modules."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from server import auth, errors, ledger, metrics, reads, statements, text, transfers, views
from server.auth import User
from server.money import format_amount
from server.responses import JSONResponse
from server.services import services

MAX_BODY = 64 * 1024
MAX_PAGE = 200
MAX_EVENTS = 1000
MAX_MEMO = transfers.MAX_MEMO


class JsonNumber(str):
    """A JSON number with a fraction or exponent, kept as its exact source text."""


def _reject_constant(name: str) -> None:
    raise errors.InvalidJSON(f"{name} is not valid JSON")


async def read_json(request: Request) -> dict[str, Any]:
    """The request body as a JSON object, at most 64 KiB, numbers kept exact."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY:
        raise errors.PayloadTooLarge("the request body is larger than 64 KiB")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise errors.PayloadTooLarge("the request body is larger than 64 KiB")
    try:
        # Numbers are kept as their source text: exact, and never converted to int or
        # float here (a 4,400-digit integer would raise inside the decoder).
        data = json.loads(
            body, parse_float=JsonNumber, parse_int=JsonNumber, parse_constant=_reject_constant
        )
    except (ValueError, RecursionError):
        raise errors.InvalidJSON("the request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise errors.InvalidJSON("the request body must be a JSON object")
    return data


def text_field(
    data: dict[str, Any],
    name: str,
    *,
    max_len: int,
    required: bool = True,
    controls: bool = False,
) -> str:
    """A string field of a JSON body, checked by the one text rule (``server.text``)."""
    value = data.get(name)
    if value is None and not required:
        return ""
    if value is None:
        raise errors.InvalidField(f"{name} is required", name)
    if not isinstance(value, str) or isinstance(value, JsonNumber):
        raise errors.InvalidField(f"{name} must be a string", name)
    if required and not value:
        raise errors.InvalidField(f"{name} must not be empty", name)
    return text.check(value, name, max_len, controls=controls)


async def current_user(request: Request) -> User:
    """The user a request authenticates as, or Unauthorized."""
    user = await auth.authenticate(request)
    if user is None:
        if auth.bearer_token(request) is not None:
            raise errors.Unauthorized("the token is unknown, expired or revoked")
        raise errors.Unauthorized("send Authorization: Bearer <token> (POST /api/tokens)")
    return user


async def create_token(request: Request) -> Response:
    data = await read_json(request)
    username = text_field(data, "username", max_len=64)
    password = text_field(data, "password", max_len=1024, controls=True)
    app = services(request)
    # The same throttle as the login form: a password is guessed as easily here.
    attempt = await app.throttle.attempt(request, username)
    user_id = await auth.check_credentials(app.store, app.hasher, username, password)
    await app.throttle.succeeded(attempt)
    token = await auth.issue_token(app.store, user_id, app.settings.token_ttl_s)
    return JSONResponse({"token": token, "expires_in": app.settings.token_ttl_s}, status_code=201)


async def revoke_token(request: Request) -> Response:
    await current_user(request)
    token = auth.bearer_token(request)
    if token is None:
        raise errors.Unauthorized("send the token to revoke as Authorization: Bearer <token>")
    await auth.revoke_token(services(request), token)
    return Response(status_code=204)


async def list_accounts(request: Request) -> Response:
    user = await current_user(request)
    rows = await reads.accounts_of(services(request).store, user.id)
    return JSONResponse({"accounts": [views.account_of(r, user.username) for r in rows]})


async def get_account(request: Request) -> Response:
    user = await current_user(request)
    row = await reads.owned_account(
        services(request).store, user.id, request.path_params["account_id"]
    )
    return JSONResponse(views.account_of(row, user.username))


def _page_limit(request: Request) -> int:
    return _whole(request, "limit", 50, 1, MAX_PAGE)


async def account_transfers(request: Request) -> Response:
    user = await current_user(request)
    page = await reads.history(
        services(request).store,
        user.id,
        request.path_params["account_id"],
        _page_limit(request),
        request.query_params.get("before"),
    )
    return JSONResponse(
        {
            "transfers": [views.transfer_of(r) for r in page.transfers],
            "next_before": page.next_before,
        }
    )


async def statement(request: Request) -> Response:
    """The account's statement between ``from`` and ``to`` (the current month, UTC, by
    default), as JSON or, with ``format=csv`` or ``Accept: text/csv``, CSV; streamed."""
    user = await current_user(request)
    app = services(request)
    account = await reads.owned_account(app.store, user.id, request.path_params["account_id"])
    start, end = statements.this_month()
    if (raw := request.query_params.get("from")) is not None:
        start = statements.instant(raw, "from")
    if (raw := request.query_params.get("to")) is not None:
        end = statements.instant(raw, "to")
    if end <= start:
        raise errors.InvalidField("to must be after from", "to")
    wanted = request.query_params.get("format")
    if wanted not in (None, "json", "csv"):
        raise errors.InvalidField("format must be json or csv", "format")
    as_csv = wanted == "csv" or (wanted is None and "text/csv" in request.headers.get("accept", ""))
    sheet = await statements.Statement(app.store, account, start, end).open()
    if as_csv:
        name = f"statement-{account['id']}-{views.iso(start)}-{views.iso(end)}.csv"
        disposition = f'attachment; filename="{name.replace(":", "")}"'
        return StreamingResponse(
            sheet.csv(),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": disposition},
        )
    return StreamingResponse(sheet.json(), media_type="application/json")


async def balance_at(request: Request) -> Response:
    """The account's posted balance at an instant."""
    user = await current_user(request)
    app = services(request)
    account = await reads.owned_account(app.store, user.id, request.path_params["account_id"])
    raw = request.query_params.get("at")
    if raw is None:
        raise errors.InvalidField("at is required: an ISO 8601 instant", "at")
    at = statements.instant(raw, "at")
    posted = await statements.balance_at(app.store, account["id"], at)
    return JSONResponse(
        {"account": account["id"], "at": views.iso(at), "posted": format_amount(posted)}
    )


async def account_events(request: Request) -> Response:
    """The account's events after ``since``, as the stream sends them (for programs that
    cannot hold a socket)."""
    user = await current_user(request)
    since = _whole(request, "since", 0, 0, 10**18)
    limit = _whole(request, "limit", 100, 1, MAX_EVENTS)
    rows = await reads.events_page(
        services(request).store, user.id, request.path_params["account_id"], since, limit
    )
    next_since = rows[-1]["seq"] if rows else since
    # The logged payloads as they are: the same bytes the stream sent.
    body = b'{"events":[' + b",".join(r["payload"].encode() for r in rows) + b"]"
    return JSONResponse(body + b',"next_since":%d}' % next_since)


def _whole(request: Request, name: str, default: int, least: int, most: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 18) or not least <= int(raw) <= most:
        raise errors.InvalidField(f"{name} must be a whole number from {least} to {most}", name)
    return int(raw)


def _order(user: User, data: dict[str, Any], key: str | None = None) -> ledger.Order:
    """A transfer's JSON body (and Idempotency-Key), checked: the same for a transfer and
    for its preview."""
    from_account = text_field(data, "from_account", max_len=64)
    to_account = text_field(data, "to_account", max_len=64)
    if "amount" not in data:
        raise errors.InvalidAmount("amount is required", "amount")
    return transfers.order(
        user.id,
        from_account,
        to_account,
        data["amount"],
        text_field(data, "memo", max_len=MAX_MEMO, required=False),
        key,
        _guard_seconds(data),
    )


async def preview_transfer(request: Request) -> Response:
    """What sending this transfer would leave on the sender's account, or why it would be
    refused; nothing is written or reserved (a guard asked for is checked, not applied)."""
    order = _order(await current_user(request), await read_json(request))
    result = await transfers.preview(services(request), order)
    error = None if result.error is None else result.error.to_dict()["error"]
    return JSONResponse({"balance_after": result.balance_after, "error": error})


async def create_transfer(request: Request) -> Response:
    user = await current_user(request)
    order = _order(user, await read_json(request), request.headers.get("idempotency-key"))
    sent = await transfers.send(services(request), order)
    metrics.note(request, sent.transfer_id, accepted=not sent.replayed)
    headers = {"Idempotent-Replayed": "true"} if sent.replayed else None
    return JSONResponse(sent.response, status_code=202, headers=headers)


def _guard_seconds(data: dict[str, Any]) -> int:
    """``guard_duplicates_s``: a whole number of seconds, if the client asks for the
    duplicate guard."""
    if "guard_duplicates_s" not in data:
        return 0
    value = data["guard_duplicates_s"]
    text = value if isinstance(value, JsonNumber) else ""
    if not (text.isascii() and text.isdigit() and len(text) <= 4 and int(text) >= 1):
        raise errors.InvalidField(
            f"guard_duplicates_s must be a whole number of seconds from 1 to"
            f" {transfers.MAX_GUARD_S}",
            "guard_duplicates_s",
        )
    return int(text)


async def get_transfer(request: Request) -> Response:
    user = await current_user(request)
    row = await reads.visible_transfer(
        services(request).store, user.id, request.path_params["transfer_id"]
    )
    metrics.note(request, row["id"])
    return JSONResponse(views.transfer_of(row))


async def cancel_transfer(request: Request) -> Response:
    user = await current_user(request)
    cancelled = await transfers.cancel(
        services(request), user.id, request.path_params["transfer_id"]
    )
    metrics.note(request, cancelled.transfer["id"])
    return JSONResponse(cancelled.transfer)


routes = [
    Route("/api/tokens", create_token, methods=["POST"]),
    Route("/api/tokens", revoke_token, methods=["DELETE"]),
    Route("/api/accounts", list_accounts, methods=["GET"]),
    Route("/api/accounts/{account_id}", get_account, methods=["GET"]),
    Route("/api/accounts/{account_id}/transfers", account_transfers, methods=["GET"]),
    Route("/api/accounts/{account_id}/statement", statement, methods=["GET"]),
    Route("/api/accounts/{account_id}/balance", balance_at, methods=["GET"]),
    Route("/api/accounts/{account_id}/events", account_events, methods=["GET"]),
    Route("/api/transfers", create_transfer, methods=["POST"]),
    Route("/api/transfers/preview", preview_transfer, methods=["POST"]),
    Route("/api/transfers/{transfer_id}", get_transfer, methods=["GET"]),
    Route("/api/transfers/{transfer_id}/cancel", cancel_transfer, methods=["POST"]),
]
