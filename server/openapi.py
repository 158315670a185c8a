"""The OpenAPI 3.1 description of the JSON API, served at /openapi.json.

It is the contract clients build against, so it declares every status an operation can
answer, error bodies and headers included; tests/test_openapi_fuzz.py holds the running
server to it."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from server.api import MAX_BODY, MAX_EVENTS, MAX_MEMO, MAX_PAGE
from server.responses import JSONResponse

_money = {"type": "string", "pattern": r"^-?[0-9]+\.[0-9]{2}$", "examples": ["12.34"]}
_nullable_str = {"type": ["string", "null"]}
_timestamp = {"type": "string", "format": "date-time"}
# What statements.instant takes: ISO 8601 with its offset from UTC.
_instant = {"type": "string", "format": "date-time", "maxLength": 40}
# Text the API stores or looks up: PostgreSQL text cannot hold NUL.
_NO_NUL = r"^[^\x00]*$"
# A decimal string as ``server.money.parse_amount`` takes it: more than 0, at most
# 1000000000.00, at most 2 decimals, at most 32 characters (leading zeros included).
_AMOUNT = (
    r"^(?=.{1,32}$)0*(?:[1-9][0-9]{0,8}(?:\.[0-9]{1,2})?|1000000000(?:\.0{1,2})?"
    r"|0\.(?:0?[1-9]|[1-9][0-9]))$"
)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _text(max_len: int) -> dict[str, Any]:
    return {"type": "string", "minLength": 1, "maxLength": max_len, "pattern": _NO_NUL}


# What each error status means; the body is always the Error schema.
_ERRORS = {
    400: "invalid_json: the body is not a JSON object",
    401: "unauthorized: no valid bearer token (or wrong credentials)",
    404: "account_not_found, transfer_not_found (not the caller's, or no such id), not_found",
    409: "not_pending: the transfer is no longer pending; possible_duplicate: the same"
    " amount went to the same account within guard_duplicates_s (error.duplicate_of is it)",
    413: f"payload_too_large: the body is larger than {MAX_BODY // 1024} KiB",
    422: "invalid_field, invalid_amount, or a rule the request breaks (see the code)",
    429: "rate_limited: too many transfers, or login attempts; retry after Retry-After seconds",
    500: "internal_error: the server failed; nothing was lost, retry with the same key",
    503: "service_unavailable: the database or Redis is briefly unreachable, or the server"
    " is at capacity; retry",
}
_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before retrying",
        "required": True,
        "schema": {"type": "integer", "minimum": 1},
    }
}


def _errors(*statuses: int) -> dict[str, Any]:
    """Error responses; 500 and 503 can come from any operation that touches storage."""
    responses: dict[str, Any] = {}
    for status in sorted({*statuses, 500, 503}):
        responses[str(status)] = _json(_ref("Error"), _ERRORS[status])
        if status == 429:
            responses[str(status)]["headers"] = _RETRY_AFTER
    return responses


_id = {"type": "string", "minLength": 1}
_account_id = {"name": "account_id", "in": "path", "required": True, "schema": _id}
_transfer_id = {"name": "transfer_id", "in": "path", "required": True, "schema": _id}
_bearer: list[dict[str, list[str]]] = [{"bearer": []}]

SCHEMA: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "settle",
        "version": "0.1.0",
        "description": "Transfers accepted as pending, settled into a double-entry ledger.",
    },
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "Error": {
                "type": "object",
                "required": ["error"],
                "properties": {"error": _ref("ErrorDetail")},
            },
            "ErrorDetail": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": {"type": "string", "examples": ["invalid_amount"]},
                    "message": {"type": "string"},
                    "field": {
                        "type": "string",
                        "description": "The request field or header at fault",
                    },
                    "duplicate_of": {
                        **_ref("Transfer"),
                        "description": "possible_duplicate: the earlier transfer",
                    },
                },
            },
            "Balance": {
                "type": "object",
                "required": [
                    "posted",
                    "pending_debits",
                    "pending_credits",
                    "available",
                    "projected",
                ],
                "properties": {
                    k: _money
                    for k in (
                        "posted",
                        "pending_debits",
                        "pending_credits",
                        "available",
                        "projected",
                    )
                },
            },
            "Account": {
                "type": "object",
                "required": ["id", "name", "owner", "currency", "status", "balance", "seq"],
                "properties": {
                    "id": {"type": "string"},
                    "name": {"type": "string"},
                    "owner": {"type": "string"},
                    "currency": {"type": "string"},
                    "status": {"enum": ["active", "frozen"]},
                    "balance": _ref("Balance"),
                    "seq": {"type": "integer", "minimum": 0},
                },
            },
            "Transfer": {
                "type": "object",
                "required": [
                    "id",
                    "kind",
                    "from_account",
                    "from_name",
                    "to_account",
                    "to_name",
                    "amount",
                    "currency",
                    "memo",
                    "status",
                    "failure_reason",
                    "created_at",
                    "settled_at",
                    "expires_at",
                ],
                "properties": {
                    "id": {"type": "string"},
                    "kind": {"enum": ["transfer", "deposit"]},
                    "from_account": {"type": "string"},
                    "from_name": {"type": "string", "description": "The sender, as people read it"},
                    "to_account": {"type": "string"},
                    "to_name": {"type": "string", "description": "The recipient"},
                    "amount": _money,
                    "currency": {"type": "string"},
                    "memo": {"type": "string"},
                    "status": {"enum": ["pending", "completed", "failed", "cancelled"]},
                    "failure_reason": _nullable_str,
                    "created_at": _timestamp,
                    "settled_at": {"type": ["string", "null"], "format": "date-time"},
                    "expires_at": {
                        "type": ["string", "null"],
                        "format": "date-time",
                        "description": "Still pending then, it fails as expired",
                    },
                    "settled_in_ms": {"type": ["number", "null"], "minimum": 0},
                },
            },
            "AcceptedTransfer": {
                "allOf": [
                    _ref("Transfer"),
                    {
                        "type": "object",
                        "required": ["balance"],
                        "properties": {"balance": _ref("Balance")},
                    },
                ],
            },
            "NewTransfer": {
                "type": "object",
                "required": ["from_account", "to_account", "amount"],
                "properties": {
                    "from_account": _text(64),
                    "to_account": _text(64),
                    "amount": {
                        "description": "More than 0, at most 1000000000.00, at most 2 decimals",
                        "oneOf": [
                            {"type": "string", "pattern": _AMOUNT},
                            {
                                "type": "number",
                                "exclusiveMinimum": 0,
                                "maximum": 1000000000,
                                "multipleOf": 0.01,
                            },
                        ],
                    },
                    "memo": {"type": ["string", "null"], "maxLength": MAX_MEMO, "pattern": _NO_NUL},
                    "guard_duplicates_s": {
                        "description": "Refuse (409 possible_duplicate) if the same amount"
                        " went to the same account within this many seconds",
                        "type": "integer",
                        "minimum": 1,
                        "maximum": 3600,
                    },
                },
            },
            "Statement": {
                "type": "object",
                "required": [
                    "account",
                    "currency",
                    "from",
                    "to",
                    "opening_balance",
                    "entries",
                    "closing_balance",
                    "chain_head",
                ],
                "properties": {
                    "account": {"type": "string"},
                    "currency": {"type": "string"},
                    "from": _timestamp,
                    "to": _timestamp,
                    "opening_balance": _money,
                    "closing_balance": _money,
                    "chain_head": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                    "entries": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": [
                                "at",
                                "transfer_id",
                                "counterparty",
                                "memo",
                                "amount",
                                "balance_after",
                            ],
                            "properties": {
                                "at": _timestamp,
                                "transfer_id": {"type": "string"},
                                "counterparty": {"type": "string"},
                                "memo": {"type": "string"},
                                "amount": _money,
                                "balance_after": _money,
                            },
                        },
                    },
                },
            },
            "Readiness": {
                "type": "object",
                "required": ["status", "checks"],
                "properties": {
                    "status": {"enum": ["ready", "unavailable"]},
                    "checks": {
                        "type": "object",
                        "required": ["database", "redis"],
                        "additionalProperties": {"type": "string", "examples": ["ok"]},
                    },
                },
            },
        },
    },
    "paths": {
        "/api/tokens": {
            "post": {
                "summary": "Exchange a username and password for a bearer token",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["username", "password"],
                                "properties": {"username": _text(64), "password": _text(1024)},
                            }
                        }
                    },
                },
                "responses": {
                    "201": _json(
                        {
                            "type": "object",
                            "required": ["token", "expires_in"],
                            "properties": {
                                "token": {"type": "string"},
                                "expires_in": {"type": "integer", "minimum": 0},
                            },
                        },
                        "token",
                    ),
                    **_errors(400, 401, 413, 422, 429),
                },
            },
            "delete": {
                "summary": "Revoke the bearer token of this request",
                "security": _bearer,
                "responses": {"204": {"description": "revoked"}, **_errors(401)},
            },
        },
        "/api/accounts": {
            "get": {
                "summary": "The caller's accounts",
                "security": _bearer,
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["accounts"],
                            "properties": {"accounts": {"type": "array", "items": _ref("Account")}},
                        },
                        "accounts",
                    ),
                    **_errors(401),
                },
            }
        },
        "/api/accounts/{account_id}": {
            "get": {
                "summary": "One of the caller's accounts",
                "security": _bearer,
                "parameters": [_account_id],
                "responses": {"200": _json(_ref("Account"), "account"), **_errors(401, 404)},
            }
        },
        "/api/accounts/{account_id}/transfers": {
            "get": {
                "summary": "The account's transfers, newest first",
                "security": _bearer,
                "parameters": [
                    _account_id,
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE},
                    },
                    {
                        "name": "before",
                        "in": "query",
                        "description": "next_before of the previous page",
                        "schema": _id,
                    },
                ],
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["transfers", "next_before"],
                            "properties": {
                                "transfers": {"type": "array", "items": _ref("Transfer")},
                                "next_before": _nullable_str,
                            },
                        },
                        "a page of transfers",
                    ),
                    **_errors(401, 404, 422),
                },
            }
        },
        "/api/accounts/{account_id}/statement": {
            "get": {
                "summary": "The account's statement: posted entries, oldest first, each with"
                " its running balance (streamed; CSV with format=csv or Accept: text/csv)",
                "security": _bearer,
                "parameters": [
                    _account_id,
                    {
                        "name": "from",
                        "in": "query",
                        "description": "ISO 8601 instant with offset (default: this month, UTC)",
                        "schema": _instant,
                    },
                    {"name": "to", "in": "query", "schema": _instant},
                    {"name": "format", "in": "query", "schema": {"enum": ["json", "csv"]}},
                ],
                "responses": {
                    "200": {
                        "description": "the statement: opening + sum of amounts = closing",
                        "content": {
                            "application/json": {"schema": _ref("Statement")},
                            "text/csv": {"schema": {"type": "string"}},
                        },
                    },
                    **_errors(401, 404, 422),
                },
            }
        },
        "/api/accounts/{account_id}/balance": {
            "get": {
                "summary": "The account's posted balance at an instant",
                "security": _bearer,
                "parameters": [
                    _account_id,
                    {"name": "at", "in": "query", "required": True, "schema": _instant},
                ],
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["account", "at", "posted"],
                            "properties": {
                                "account": {"type": "string"},
                                "at": _timestamp,
                                "posted": _money,
                            },
                        },
                        "the balance",
                    ),
                    **_errors(401, 404, 422),
                },
            }
        },
        "/api/accounts/{account_id}/events": {
            "get": {
                "summary": "The account's events after a seq, as the stream sends them",
                "security": _bearer,
                "parameters": [
                    _account_id,
                    {
                        "name": "since",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 0, "maximum": 10**18},
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_EVENTS},
                    },
                ],
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["events", "next_since"],
                            "properties": {
                                "events": {"type": "array", "items": {"type": "object"}},
                                "next_since": {"type": "integer", "minimum": 0},
                            },
                        },
                        "events in seq order",
                    ),
                    **_errors(401, 404, 422),
                },
            }
        },
        "/api/transfers": {
            "post": {
                "summary": "Send money: accepted at once as pending, settled asynchronously",
                "security": _bearer,
                "parameters": [
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "description": "Retrying with the same key and body never pays twice",
                        "schema": {
                            "type": "string",
                            "maxLength": 255,
                            # Printable ASCII, no surrounding space (HTTP would strip it).
                            "pattern": r"^[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?$",
                        },
                    }
                ],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("NewTransfer")}},
                },
                "responses": {
                    "202": {
                        **_json(_ref("AcceptedTransfer"), "accepted, pending"),
                        "headers": {
                            "Idempotent-Replayed": {
                                "description": "Present on the replay of an earlier response",
                                "schema": {"const": "true"},
                            }
                        },
                    },
                    **_errors(400, 401, 404, 409, 413, 422, 429),
                },
            }
        },
        "/api/transfers/preview": {
            "post": {
                "summary": "What sending this would leave on the sender's account, or why it"
                " would be refused; nothing is written",
                "security": _bearer,
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("NewTransfer")}},
                },
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["balance_after", "error"],
                            "properties": {
                                "balance_after": {"oneOf": [_ref("Balance"), {"type": "null"}]},
                                "error": {
                                    "description": "why it would be refused (insufficient"
                                    "_funds, account_frozen, ...), or null",
                                    "oneOf": [{"type": "null"}, _ref("ErrorDetail")],
                                },
                            },
                        },
                        "the preview",
                    ),
                    **_errors(400, 401, 413, 422),
                },
            }
        },
        "/api/transfers/{transfer_id}": {
            "get": {
                "summary": "A transfer the caller sent or received",
                "security": _bearer,
                "parameters": [_transfer_id],
                "responses": {"200": _json(_ref("Transfer"), "transfer"), **_errors(401, 404)},
            }
        },
        "/api/transfers/{transfer_id}/cancel": {
            "post": {
                "summary": "Cancel a pending transfer (sender only)",
                "security": _bearer,
                "parameters": [_transfer_id],
                "responses": {
                    "200": _json(_ref("Transfer"), "cancelled"),
                    **_errors(401, 404, 409),
                },
            }
        },
        "/healthz": {
            "get": {
                "summary": "Liveness",
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["status"],
                            "properties": {"status": {"const": "ok"}},
                        },
                        "alive",
                    )
                },
            }
        },
        "/readyz": {
            "get": {
                "summary": "Readiness: database and Redis reachable",
                "responses": {
                    "200": _json(_ref("Readiness"), "ready"),
                    "503": _json(_ref("Readiness"), "not ready"),
                },
            }
        },
    },
}


async def endpoint(request: Request) -> Response:
    return JSONResponse(SCHEMA)
