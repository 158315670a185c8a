"""The JSON API. Handlers are thin: parse and authorize, call a ledger operation,
dispatch its events after the commit, render."""

from __future__ import annotations

import json
from typing import Any

import orjson
import sqlalchemy as sa
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from server import auth, errors, faults, ledger, limits, metrics, sessions
from server.auth import User
from server.db import Store, findable
from server.dispatch import Dispatcher
from server.money import parse_amount
from server.schema import accounts, transfers
from server.settings import Settings

MAX_BODY = 64 * 1024
MAX_MEMO = 500
MAX_PAGE = 200


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return content if isinstance(content, bytes) else orjson.dumps(content)


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
        data = json.loads(body, parse_float=JsonNumber, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise errors.InvalidJSON("the request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise errors.InvalidJSON("the request body must be a JSON object")
    return data


def text_field(data: dict[str, Any], name: str, *, max_len: int, required: bool = True) -> str:
    value = data.get(name)
    if value is None and not required:
        return ""
    if value is None:
        raise errors.InvalidField(f"{name} is required", name)
    if not isinstance(value, str) or isinstance(value, JsonNumber):
        raise errors.InvalidField(f"{name} must be a string", name)
    if len(value) > max_len:
        raise errors.InvalidField(f"{name} must be at most {max_len} characters", name)
    if required and not value:
        raise errors.InvalidField(f"{name} must not be empty", name)
    if "\x00" in value:
        raise errors.InvalidField(f"{name} must not contain NUL characters", name)
    return value


def store_of(request: Request) -> Store:
    store: Store = request.state.store
    return store


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
    password = text_field(data, "password", max_len=1024)
    store = store_of(request)
    # The same guard as the login form: a password is guessed as easily here.
    await sessions.check_rate_limit(request, username)
    try:
        user_id = await auth.check_credentials(store, username, password)
    except errors.Unauthorized:
        await sessions.record_failure(request, username)
        raise
    await sessions.clear_failures(request, username)
    settings: Settings = request.state.settings
    token = await auth.issue_token(store, user_id, settings.token_ttl_s)
    return JSONResponse({"token": token, "expires_in": settings.token_ttl_s}, status_code=201)


async def revoke_token(request: Request) -> Response:
    await current_user(request)
    token = auth.bearer_token(request)
    if token is None:
        raise errors.Unauthorized("send the token to revoke as Authorization: Bearer <token>")
    await auth.revoke_token(store_of(request), token)
    return Response(status_code=204)


async def owned_account(store: Store, user: User, account_id: str) -> Any:
    row = await store.fetch_one(
        sa.select(accounts).where(
            accounts.c.id == findable(account_id), accounts.c.user_id == user.id
        )
    )
    if row is None:
        raise errors.AccountNotFound("no such account")
    return row


async def list_accounts(request: Request) -> Response:
    user = await current_user(request)
    rows = await store_of(request).fetch_all(
        sa.select(accounts).where(accounts.c.user_id == user.id).order_by(accounts.c.created_at)
    )
    return JSONResponse({"accounts": [ledger.account_of(r, user.username) for r in rows]})


async def get_account(request: Request) -> Response:
    user = await current_user(request)
    row = await owned_account(store_of(request), user, request.path_params["account_id"])
    return JSONResponse(ledger.account_of(row, user.username))


def _page_limit(request: Request) -> int:
    raw = request.query_params.get("limit", "50")
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_PAGE:
        raise errors.InvalidField(f"limit must be a whole number from 1 to {MAX_PAGE}", "limit")
    return int(raw)


async def account_transfers(request: Request) -> Response:
    user = await current_user(request)
    store = store_of(request)
    account = await owned_account(store, user, request.path_params["account_id"])
    limit = _page_limit(request)
    cursor = None
    before = request.query_params.get("before")
    if before is not None:
        cursor = await store.fetch_one(
            sa.select(transfers.c.created_at, transfers.c.id).where(
                transfers.c.id == findable(before),
                sa.or_(
                    transfers.c.from_account == account["id"],
                    transfers.c.to_account == account["id"],
                ),
            )
        )
        if cursor is None:
            raise errors.InvalidField(
                "before must be the id of a transfer of this account", "before"
            )
    # One more than asked for: whether there is a next page.
    query = ledger.history_query(
        account["id"],
        limit + 1,
        None if cursor is None else (cursor["created_at"], cursor["id"]),
    )
    rows = list(await store.fetch_all(query))
    more = len(rows) > limit
    rows = rows[:limit]
    return JSONResponse(
        {
            "transfers": [ledger.transfer_of(r) for r in rows],
            "next_before": rows[-1]["id"] if more else None,
        }
    )


def _idempotency_key(request: Request) -> str | None:
    key = request.headers.get("idempotency-key")
    if key is None:
        return None
    if not 1 <= len(key) <= 255 or not key.isprintable() or not key.isascii():
        raise errors.InvalidField(
            "Idempotency-Key must be 1 to 255 printable ASCII characters", "Idempotency-Key"
        )
    return key


async def create_transfer(request: Request) -> Response:
    user = await current_user(request)
    data = await read_json(request)
    from_account = text_field(data, "from_account", max_len=64)
    to_account = text_field(data, "to_account", max_len=64)
    if "amount" not in data:
        raise errors.InvalidAmount("amount is required", "amount")
    amount = parse_amount(data["amount"])
    memo = text_field(data, "memo", max_len=MAX_MEMO, required=False)
    key = _idempotency_key(request)
    dispatch: Dispatcher = request.state.dispatch
    await limits.check_transfer_rate(dispatch.redis, request.state.settings, user.id)
    result = await ledger.accept_transfer(
        store_of(request), user.id, from_account, to_account, amount, memo, key
    )
    if result.replayed:
        metrics.note(request, orjson.loads(result.response)["id"])
        return JSONResponse(
            result.response, status_code=202, headers={"Idempotent-Replayed": "true"}
        )
    metrics.note(request, result.transfer["id"], "accepted")
    faults.crash_at(request.state.settings, "accept-after-commit")
    await dispatch.after_commit(result.events, settle=[result.transfer["id"]])
    return JSONResponse(result.response, status_code=202)


async def visible_transfer(store: Store, user: User, transfer_id: str) -> Any:
    mine = sa.select(accounts.c.id).where(accounts.c.user_id == user.id)
    row = await store.fetch_one(
        sa.select(transfers).where(
            transfers.c.id == findable(transfer_id),
            sa.or_(transfers.c.from_account.in_(mine), transfers.c.to_account.in_(mine)),
        )
    )
    if row is None:
        raise errors.TransferNotFound("no such transfer")
    return row


async def get_transfer(request: Request) -> Response:
    user = await current_user(request)
    row = await visible_transfer(store_of(request), user, request.path_params["transfer_id"])
    metrics.note(request, row["id"])
    return JSONResponse(ledger.transfer_of(row))


async def cancel_transfer(request: Request) -> Response:
    user = await current_user(request)
    transfer, events = await ledger.cancel_transfer(
        store_of(request), user.id, findable(request.path_params["transfer_id"])
    )
    metrics.note(request, transfer["id"], "cancelled")
    dispatch: Dispatcher = request.state.dispatch
    await dispatch.after_commit(events)
    return JSONResponse(transfer)


routes = [
    Route("/api/tokens", create_token, methods=["POST"]),
    Route("/api/tokens", revoke_token, methods=["DELETE"]),
    Route("/api/accounts", list_accounts, methods=["GET"]),
    Route("/api/accounts/{account_id}", get_account, methods=["GET"]),
    Route("/api/accounts/{account_id}/transfers", account_transfers, methods=["GET"]),
    Route("/api/transfers", create_transfer, methods=["POST"]),
    Route("/api/transfers/{transfer_id}", get_transfer, methods=["GET"]),
    Route("/api/transfers/{transfer_id}/cancel", cancel_transfer, methods=["POST"]),
]
