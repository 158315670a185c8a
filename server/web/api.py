"""The JSON API. Handlers parse (``server.web.fields``), authenticate, call a use case
(``server.usecases``) or a read (``server.store.reads``), and encode what it returns
(``server.domain.wire``); the rules live in those modules. Each route is declared with
its ``Operation``, from which ``/openapi.json`` is built."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from server.domain import errors, ledger, wire
from server.domain.money import format_amount
from server.domain.statements import this_month
from server.store import reads, statements
from server.usecases import transfers
from server.web import auth, middleware, shapes
from server.web.credentials import User
from server.web.fields import (
    Amount,
    Answer,
    Body,
    Endpoint,
    Operation,
    Query,
    Text,
    Whole,
    read_json,
)
from server.web.responses import JSONResponse
from server.web.services import services

MAX_PAGE = 200
MAX_EVENTS = 1000
MAX_ID = 64

CREDENTIALS = Body(
    [Text("username", 64), Text("password", 1024, controls=True)], name="Credentials"
)
NEW_TRANSFER = Body(
    [
        Text("from_account", MAX_ID),
        Text("to_account", MAX_ID),
        Amount(),
        Text("memo", ledger.MAX_MEMO, required=False),
        Whole(
            "guard_duplicates_s",
            1,
            ledger.MAX_GUARD_S,
            default=0,
            description="Refuse (409 possible_duplicate) if the same amount went to the"
            " same account within this many seconds",
        ),
    ],
    name="NewTransfer",
)
LIMIT = Query("limit", whole=Whole("limit", 1, MAX_PAGE, default=50))
BEFORE = Query("before", "next_before of the previous page", max_len=MAX_ID)
SINCE = Query("since", whole=Whole("since", 0, 10**18, default=0))
EVENTS_LIMIT = Query("limit", whole=Whole("limit", 1, MAX_EVENTS, default=100))
FROM = Query("from", "ISO 8601 instant with its offset (default: this month, UTC)", instant=True)
TO = Query("to", "ISO 8601 instant with its offset (default: next month, UTC)", instant=True)
FORMAT = Query(
    "format", "csv, or json (the default unless Accept asks for text/csv)", choices=("json", "csv")
)
AT = Query("at", required=True, instant=True)
IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "description": "Retrying with the same key and body never pays twice",
    "schema": {
        "type": "string",
        "maxLength": ledger.MAX_KEY,
        # Printable ASCII, no surrounding space (HTTP would strip it).
        "pattern": r"^[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?$",
    },
}
REPLAYED = {
    "Idempotent-Replayed": {
        "description": "Present on the replay of an earlier response",
        "schema": {"const": "true"},
    }
}
BODY_REFUSALS = (errors.InvalidJSON, errors.PayloadTooLarge, errors.InvalidField)
# Reads of the caller's own things: not signed in, or not theirs.
READ_REFUSALS = (errors.Unauthorized, errors.AccountNotFound)


async def current_user(request: Request) -> User:
    """The user a request authenticates as, or Unauthorized."""
    user = await auth.authenticate(request)
    if user is None:
        if auth.bearer_token(request) is not None:
            raise errors.Unauthorized("the token is unknown, expired or revoked")
        raise errors.Unauthorized("send Authorization: Bearer <token> (POST /api/tokens)")
    return user


async def create_token(request: Request) -> Response:
    data = CREDENTIALS.parse(await read_json(request))
    app = services(request)
    # The same throttle as the login form: a password is guessed as easily here.
    attempt = await app.throttle.attempt(request, data["username"])
    user_id = await auth.check_credentials(
        app.store, app.hasher, data["username"], data["password"]
    )
    await app.throttle.succeeded(attempt)
    token = await auth.issue_token(app.store, user_id, app.settings.token_ttl_s)
    return JSONResponse(shapes.TokenJSON(token, app.settings.token_ttl_s), status_code=201)


async def revoke_token(request: Request) -> Response:
    await current_user(request)
    token = auth.bearer_token(request)
    if token is None:
        raise errors.Unauthorized("send the token to revoke as Authorization: Bearer <token>")
    await auth.revoke_token(services(request), token)
    return Response(status_code=204)


async def list_accounts(request: Request) -> Response:
    user = await current_user(request)
    found = await reads.accounts_of(services(request).store, user.id)
    return JSONResponse(shapes.AccountsJSON([wire.account(a) for a in found]))


async def get_account(request: Request) -> Response:
    user = await current_user(request)
    account = await reads.owned_account(
        services(request).store, user.id, request.path_params["account_id"]
    )
    return JSONResponse(wire.account(account))


async def account_transfers(request: Request) -> Response:
    user = await current_user(request)
    page = await reads.history(
        services(request).store,
        user.id,
        request.path_params["account_id"],
        LIMIT.parse(request),
        BEFORE.parse(request),
    )
    body = shapes.TransfersPageJSON([wire.transfer(t) for t in page.transfers], page.next_before)
    return JSONResponse(body)


async def statement(request: Request) -> Response:
    """The account's statement between ``from`` and ``to`` (the current month, UTC, by
    default), as JSON or, with ``format=csv`` or ``Accept: text/csv``, CSV; streamed."""
    user = await current_user(request)
    app = services(request)
    account = await reads.owned_account(app.store, user.id, request.path_params["account_id"])
    start, end = this_month()
    if (asked := FROM.parse(request)) is not None:
        start = asked
    if (asked := TO.parse(request)) is not None:
        end = asked
    if end <= start:
        raise errors.InvalidField("to must be after from", "to")
    wanted = FORMAT.parse(request)
    as_csv = wanted == "csv" or (wanted is None and "text/csv" in request.headers.get("accept", ""))
    sheet = await statements.Statement(app.store, account, start, end).open()
    if as_csv:
        name = f"statement-{account.id}-{wire.iso(start)}-{wire.iso(end)}.csv"
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
    at = AT.parse(request)
    posted = await statements.balance_at(app.store, account.id, at)
    return JSONResponse(shapes.BalanceAtJSON(account.id, wire.iso(at), format_amount(posted)))


async def account_events(request: Request) -> Response:
    """The account's events after ``since``, as the stream sends them (for programs that
    cannot hold a socket)."""
    user = await current_user(request)
    since = SINCE.parse(request)
    rows = await reads.events_page(
        services(request).store,
        user.id,
        request.path_params["account_id"],
        since,
        EVENTS_LIMIT.parse(request),
    )
    next_since = rows[-1]["seq"] if rows else since
    # The logged payloads as they are: the same bytes the stream sent.
    body = b'{"events":[' + b",".join(r["payload"].encode() for r in rows) + b"]"
    return JSONResponse(body + b',"next_since":%d}' % next_since)


def _order(user: User, data: dict[str, object], key: str | None = None) -> ledger.Order:
    """A transfer's JSON body (and Idempotency-Key), checked: the same for a transfer and
    for its preview."""
    fields = NEW_TRANSFER.parse(data)
    return ledger.order(
        user.id,
        fields["from_account"],
        fields["to_account"],
        fields["amount"],
        fields["memo"],
        key,
        fields["guard_duplicates_s"],
    )


async def preview_transfer(request: Request) -> Response:
    """What sending this transfer would leave on the sender's account, or why it would be
    refused; nothing is written or reserved (a guard asked for is checked, not applied)."""
    user = await current_user(request)
    order = _order(user, await read_json(request))
    result = await transfers.preview(services(request).usecases, order)
    after = None if result.balance_after is None else wire.balance(result.balance_after)
    error = None if result.error is None else wire.error_detail(result.error)
    return JSONResponse(shapes.PreviewJSON(after, error, result.requires_passkey))


async def create_transfer(request: Request) -> Response:
    user = await current_user(request)
    order = _order(user, await read_json(request), request.headers.get("idempotency-key"))
    sent = await transfers.send(services(request).usecases, order)
    middleware.note(request, sent.transfer.id, accepted=not sent.replayed)
    headers = {"Idempotent-Replayed": "true"} if sent.replayed else None
    body = wire.accepted(sent.transfer, sent.balance)
    return JSONResponse(body, status_code=202, headers=headers)


async def get_transfer(request: Request) -> Response:
    user = await current_user(request)
    transfer = await reads.visible_transfer(
        services(request).store, user.id, request.path_params["transfer_id"]
    )
    middleware.note(request, transfer.id)
    return JSONResponse(wire.transfer(transfer))


async def cancel_transfer(request: Request) -> Response:
    user = await current_user(request)
    transfer, _ = await transfers.cancel(
        services(request).usecases, user.id, request.path_params["transfer_id"]
    )
    middleware.note(request, transfer.id)
    return JSONResponse(wire.transfer(transfer))


ENDPOINTS = [
    Endpoint(
        "/api/tokens",
        "POST",
        create_token,
        Operation(
            "Exchange a username and password for a bearer token",
            Answer(201, shapes.TokenJSON, "the token"),
            body=CREDENTIALS,
            refusals=(*BODY_REFUSALS, errors.Unauthorized, errors.RateLimited),
            authenticated=False,
        ),
    ),
    Endpoint(
        "/api/tokens",
        "DELETE",
        revoke_token,
        Operation(
            "Revoke the bearer token of this request",
            Answer(204, None, "revoked"),
            refusals=(errors.Unauthorized,),
        ),
    ),
    Endpoint(
        "/api/accounts",
        "GET",
        list_accounts,
        Operation(
            "The caller's accounts",
            Answer(200, shapes.AccountsJSON, "accounts"),
            refusals=(errors.Unauthorized,),
        ),
    ),
    Endpoint(
        "/api/accounts/{account_id}",
        "GET",
        get_account,
        Operation(
            "One of the caller's accounts",
            Answer(200, wire.AccountJSON, "account"),
            refusals=READ_REFUSALS,
        ),
    ),
    Endpoint(
        "/api/accounts/{account_id}/transfers",
        "GET",
        account_transfers,
        Operation(
            "The account's transfers, newest first",
            Answer(200, shapes.TransfersPageJSON, "a page of transfers"),
            query=(LIMIT, BEFORE),
            refusals=(*READ_REFUSALS, errors.InvalidField),
        ),
    ),
    Endpoint(
        "/api/accounts/{account_id}/statement",
        "GET",
        statement,
        Operation(
            "The account's statement: posted entries, oldest first, each with its running"
            " balance (streamed; CSV with format=csv or Accept: text/csv)",
            Answer(
                200,
                wire.StatementJSON,
                "the statement: opening + sum of amounts = closing",
                alternatives={"text/csv": {"type": "string"}},
            ),
            query=(FROM, TO, FORMAT),
            refusals=(*READ_REFUSALS, errors.InvalidField),
        ),
    ),
    Endpoint(
        "/api/accounts/{account_id}/balance",
        "GET",
        balance_at,
        Operation(
            "The account's posted balance at an instant",
            Answer(200, shapes.BalanceAtJSON, "the balance"),
            query=(AT,),
            refusals=(*READ_REFUSALS, errors.InvalidField),
        ),
    ),
    Endpoint(
        "/api/accounts/{account_id}/events",
        "GET",
        account_events,
        Operation(
            "The account's events after a seq, as the stream sends them",
            Answer(200, shapes.EventsPageJSON, "events in seq order"),
            query=(SINCE, EVENTS_LIMIT),
            refusals=(*READ_REFUSALS, errors.InvalidField),
        ),
    ),
    Endpoint(
        "/api/transfers",
        "POST",
        create_transfer,
        Operation(
            "Send money: accepted at once as pending, settled asynchronously (above"
            " SETTLE_CONFIRM_ABOVE: awaiting_confirmation until its sender's passkey"
            " confirms it, see next_action)",
            Answer(
                202,
                wire.AcceptedJSON,
                "accepted: pending, or awaiting_confirmation",
                headers=REPLAYED,
            ),
            body=NEW_TRANSFER,
            headers=(IDEMPOTENCY_KEY,),
            refusals=(
                *BODY_REFUSALS,
                errors.InvalidAmount,
                errors.Unauthorized,
                errors.AccountNotFound,
                errors.SameAccount,
                errors.RecipientUnavailable,
                errors.InsufficientFunds,
                errors.AccountFrozen,
                errors.IdempotencyKeyReused,
                errors.PossibleDuplicate,
                errors.PasskeyRequired,
                errors.RateLimited,
            ),
        ),
    ),
    Endpoint(
        "/api/transfers/preview",
        "POST",
        preview_transfer,
        Operation(
            "What sending this would leave on the sender's account, or why it would be"
            " refused; nothing is written",
            Answer(200, shapes.PreviewJSON, "the preview"),
            body=NEW_TRANSFER,
            refusals=(
                *BODY_REFUSALS,
                errors.InvalidAmount,
                errors.Unauthorized,
                errors.RateLimited,
            ),
        ),
    ),
    Endpoint(
        "/api/transfers/{transfer_id}",
        "GET",
        get_transfer,
        Operation(
            "A transfer the caller sent or received",
            Answer(200, wire.TransferJSON, "transfer"),
            refusals=(errors.Unauthorized, errors.TransferNotFound),
        ),
    ),
    Endpoint(
        "/api/transfers/{transfer_id}/cancel",
        "POST",
        cancel_transfer,
        Operation(
            "Cancel a pending or awaiting_confirmation transfer (sender only)",
            Answer(200, wire.TransferJSON, "cancelled"),
            refusals=(errors.Unauthorized, errors.TransferNotFound, errors.NotPending),
        ),
    ),
]
routes = [e.route() for e in ENDPOINTS]
