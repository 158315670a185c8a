"""The OpenAPI 3.1 description of the JSON API, served at /openapi.json."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from server.api import JSONResponse

_money = {"type": "string", "pattern": r"^-?[0-9]+\.[0-9]{2}$", "examples": ["12.34"]}
_nullable_str = {"type": ["string", "null"]}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    return {str(s): _json(_ref("Error"), "error") for s in statuses}


_account_id = {"name": "account_id", "in": "path", "required": True, "schema": {"type": "string"}}
_transfer_id = {"name": "transfer_id", "in": "path", "required": True, "schema": {"type": "string"}}
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
                "properties": {
                    "error": {
                        "type": "object",
                        "required": ["code", "message"],
                        "properties": {
                            "code": {"type": "string"},
                            "message": {"type": "string"},
                            "field": {"type": "string"},
                        },
                    }
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
                    "from_account",
                    "to_account",
                    "amount",
                    "currency",
                    "memo",
                    "status",
                    "failure_reason",
                    "created_at",
                    "settled_at",
                ],
                "properties": {
                    "id": {"type": "string"},
                    "from_account": {"type": "string"},
                    "to_account": {"type": "string"},
                    "amount": _money,
                    "currency": {"type": "string"},
                    "memo": {"type": "string"},
                    "status": {"enum": ["pending", "completed", "failed", "cancelled"]},
                    "failure_reason": _nullable_str,
                    "created_at": {"type": "string"},
                    "settled_at": _nullable_str,
                    "settled_in_ms": {"type": ["number", "null"]},
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
                    "from_account": {"type": "string", "maxLength": 64},
                    "to_account": {"type": "string", "maxLength": 64},
                    "amount": {
                        "oneOf": [
                            {"type": "string", "pattern": r"^[0-9]+(\.[0-9]{1,2})?$"},
                            {"type": "number", "exclusiveMinimum": 0, "maximum": 1000000000},
                        ]
                    },
                    "memo": {"type": "string", "maxLength": 500},
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
                                "properties": {
                                    "username": {"type": "string"},
                                    "password": {"type": "string"},
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "201": _json(
                        {
                            "type": "object",
                            "required": ["token"],
                            "properties": {
                                "token": {"type": "string"},
                                "expires_in": {"type": "integer"},
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
                        "schema": {"type": "integer", "minimum": 1, "maximum": 200},
                    },
                    {"name": "before", "in": "query", "schema": {"type": "string"}},
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
        "/api/transfers": {
            "post": {
                "summary": "Send money: accepted at once as pending, settled asynchronously",
                "security": _bearer,
                "parameters": [
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "schema": {"type": "string", "maxLength": 255},
                    }
                ],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("NewTransfer")}},
                },
                "responses": {
                    "202": _json(_ref("AcceptedTransfer"), "accepted, pending"),
                    **_errors(400, 401, 404, 413, 422, 429),
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
            "get": {"summary": "Liveness", "responses": {"200": {"description": "alive"}}}
        },
        "/readyz": {
            "get": {
                "summary": "Readiness: database and Redis reachable",
                "responses": {"200": {"description": "ready"}, "503": {"description": "not ready"}},
            }
        },
    },
}


async def endpoint(request: Request) -> Response:
    return JSONResponse(SCHEMA)
