"""The OpenAPI 3.1 description of the JSON API, served at /openapi.json.

It is the contract clients build against, so it declares every status an operation can
answer, error bodies and headers included; tests/test_openapi_fuzz.py holds the running
server to it."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from server.api import MAX_EVENTS, MAX_PAGE
from server.openapi_components import (
    ACCOUNT_ID,
    BEARER,
    COMPONENTS,
    ID,
    INSTANT,
    MONEY,
    NULLABLE_STR,
    TIMESTAMP,
    TRANSFER_ID,
    error_responses,
    json_body,
    ref,
    text_schema,
)
from server.responses import JSONResponse

SCHEMA: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "settle",
        "version": "0.1.0",
        "description": "Transfers accepted as pending, settled into a double-entry ledger.",
    },
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": COMPONENTS,
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
                                "properties": {
                                    "username": text_schema(64),
                                    "password": text_schema(1024),
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "201": json_body(
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
                    **error_responses(400, 401, 413, 422, 429),
                },
            },
            "delete": {
                "summary": "Revoke the bearer token of this request",
                "security": BEARER,
                "responses": {"204": {"description": "revoked"}, **error_responses(401)},
            },
        },
        "/api/accounts": {
            "get": {
                "summary": "The caller's accounts",
                "security": BEARER,
                "responses": {
                    "200": json_body(
                        {
                            "type": "object",
                            "required": ["accounts"],
                            "properties": {"accounts": {"type": "array", "items": ref("Account")}},
                        },
                        "accounts",
                    ),
                    **error_responses(401),
                },
            }
        },
        "/api/accounts/{account_id}": {
            "get": {
                "summary": "One of the caller's accounts",
                "security": BEARER,
                "parameters": [ACCOUNT_ID],
                "responses": {
                    "200": json_body(ref("Account"), "account"),
                    **error_responses(401, 404),
                },
            }
        },
        "/api/accounts/{account_id}/transfers": {
            "get": {
                "summary": "The account's transfers, newest first",
                "security": BEARER,
                "parameters": [
                    ACCOUNT_ID,
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE},
                    },
                    {
                        "name": "before",
                        "in": "query",
                        "description": "next_before of the previous page",
                        "schema": ID,
                    },
                ],
                "responses": {
                    "200": json_body(
                        {
                            "type": "object",
                            "required": ["transfers", "next_before"],
                            "properties": {
                                "transfers": {"type": "array", "items": ref("Transfer")},
                                "next_before": NULLABLE_STR,
                            },
                        },
                        "a page of transfers",
                    ),
                    **error_responses(401, 404, 422),
                },
            }
        },
        "/api/accounts/{account_id}/statement": {
            "get": {
                "summary": "The account's statement: posted entries, oldest first, each with"
                " its running balance (streamed; CSV with format=csv or Accept: text/csv)",
                "security": BEARER,
                "parameters": [
                    ACCOUNT_ID,
                    {
                        "name": "from",
                        "in": "query",
                        "description": "ISO 8601 instant with offset (default: this month, UTC)",
                        "schema": INSTANT,
                    },
                    {"name": "to", "in": "query", "schema": INSTANT},
                    {"name": "format", "in": "query", "schema": {"enum": ["json", "csv"]}},
                ],
                "responses": {
                    "200": {
                        "description": "the statement: opening + sum of amounts = closing",
                        "content": {
                            "application/json": {"schema": ref("Statement")},
                            "text/csv": {"schema": {"type": "string"}},
                        },
                    },
                    **error_responses(401, 404, 422),
                },
            }
        },
        "/api/accounts/{account_id}/balance": {
            "get": {
                "summary": "The account's posted balance at an instant",
                "security": BEARER,
                "parameters": [
                    ACCOUNT_ID,
                    {"name": "at", "in": "query", "required": True, "schema": INSTANT},
                ],
                "responses": {
                    "200": json_body(
                        {
                            "type": "object",
                            "required": ["account", "at", "posted"],
                            "properties": {
                                "account": {"type": "string"},
                                "at": TIMESTAMP,
                                "posted": MONEY,
                            },
                        },
                        "the balance",
                    ),
                    **error_responses(401, 404, 422),
                },
            }
        },
        "/api/accounts/{account_id}/events": {
            "get": {
                "summary": "The account's events after a seq, as the stream sends them",
                "security": BEARER,
                "parameters": [
                    ACCOUNT_ID,
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
                    "200": json_body(
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
                    **error_responses(401, 404, 422),
                },
            }
        },
        "/api/transfers": {
            "post": {
                "summary": "Send money: accepted at once as pending, settled asynchronously",
                "security": BEARER,
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
                    "content": {"application/json": {"schema": ref("NewTransfer")}},
                },
                "responses": {
                    "202": {
                        **json_body(ref("AcceptedTransfer"), "accepted, pending"),
                        "headers": {
                            "Idempotent-Replayed": {
                                "description": "Present on the replay of an earlier response",
                                "schema": {"const": "true"},
                            }
                        },
                    },
                    **error_responses(400, 401, 404, 409, 413, 422, 429),
                },
            }
        },
        "/api/transfers/preview": {
            "post": {
                "summary": "What sending this would leave on the sender's account, or why it"
                " would be refused; nothing is written",
                "security": BEARER,
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": ref("NewTransfer")}},
                },
                "responses": {
                    "200": json_body(
                        {
                            "type": "object",
                            "required": ["balance_after", "error"],
                            "properties": {
                                "balance_after": {"oneOf": [ref("Balance"), {"type": "null"}]},
                                "error": {
                                    "description": "why it would be refused (insufficient"
                                    "_funds, account_frozen, ...), or null",
                                    "oneOf": [{"type": "null"}, ref("ErrorDetail")],
                                },
                            },
                        },
                        "the preview",
                    ),
                    **error_responses(400, 401, 413, 422),
                },
            }
        },
        "/api/transfers/{transfer_id}": {
            "get": {
                "summary": "A transfer the caller sent or received",
                "security": BEARER,
                "parameters": [TRANSFER_ID],
                "responses": {
                    "200": json_body(ref("Transfer"), "transfer"),
                    **error_responses(401, 404),
                },
            }
        },
        "/api/transfers/{transfer_id}/cancel": {
            "post": {
                "summary": "Cancel a pending transfer (sender only)",
                "security": BEARER,
                "parameters": [TRANSFER_ID],
                "responses": {
                    "200": json_body(ref("Transfer"), "cancelled"),
                    **error_responses(401, 404, 409),
                },
            }
        },
        "/healthz": {
            "get": {
                "summary": "Liveness",
                "responses": {
                    "200": json_body(
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
                    "200": json_body(ref("Readiness"), "ready"),
                    "503": json_body(ref("Readiness"), "not ready"),
                },
            }
        },
    },
}


async def endpoint(request: Request) -> Response:
    return JSONResponse(SCHEMA)
