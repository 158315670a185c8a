"""The building blocks of ``server.openapi``: shared field schemas, the error
responses, and the component schemas (the JSON objects the API sends and takes)."""

from __future__ import annotations

from typing import Any

from server.api import MAX_BODY, MAX_MEMO

MONEY = {"type": "string", "pattern": r"^-?[0-9]+\.[0-9]{2}$", "examples": ["12.34"]}
NULLABLE_STR = {"type": ["string", "null"]}
TIMESTAMP = {"type": "string", "format": "date-time"}
# What statements.instant takes: ISO 8601 with its offset from UTC.
INSTANT = {"type": "string", "format": "date-time", "maxLength": 40}
# Text the API stores or looks up: PostgreSQL text cannot hold NUL.
NO_NUL = r"^[^\x00]*$"
# A decimal string as ``server.money.parse_amount`` takes it: more than 0, at most
# 1000000000.00, at most 2 decimals, at most 32 characters (leading zeros included).
AMOUNT = (
    r"^(?=.{1,32}$)0*(?:[1-9][0-9]{0,8}(?:\.[0-9]{1,2})?|1000000000(?:\.0{1,2})?"
    r"|0\.(?:0?[1-9]|[1-9][0-9]))$"
)


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def json_body(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def text_schema(max_len: int) -> dict[str, Any]:
    return {"type": "string", "minLength": 1, "maxLength": max_len, "pattern": NO_NUL}


# What each error status means; the body is always the Error schema.
ERROR_TEXTS = {
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
RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before retrying",
        "required": True,
        "schema": {"type": "integer", "minimum": 1},
    }
}


def error_responses(*statuses: int) -> dict[str, Any]:
    """Error responses; 500 and 503 can come from any operation that touches storage."""
    responses: dict[str, Any] = {}
    for status in sorted({*statuses, 500, 503}):
        responses[str(status)] = json_body(ref("Error"), ERROR_TEXTS[status])
        if status == 429:
            responses[str(status)]["headers"] = RETRY_AFTER
    return responses


ID = {"type": "string", "minLength": 1}
ACCOUNT_ID = {"name": "account_id", "in": "path", "required": True, "schema": ID}
TRANSFER_ID = {"name": "transfer_id", "in": "path", "required": True, "schema": ID}
BEARER: list[dict[str, list[str]]] = [{"bearer": []}]


COMPONENTS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": ref("ErrorDetail")},
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
                **ref("Transfer"),
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
            k: MONEY
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
            "balance": ref("Balance"),
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
            "amount": MONEY,
            "currency": {"type": "string"},
            "memo": {"type": "string"},
            "status": {"enum": ["pending", "completed", "failed", "cancelled"]},
            "failure_reason": NULLABLE_STR,
            "created_at": TIMESTAMP,
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
            ref("Transfer"),
            {
                "type": "object",
                "required": ["balance"],
                "properties": {"balance": ref("Balance")},
            },
        ],
    },
    "NewTransfer": {
        "type": "object",
        "required": ["from_account", "to_account", "amount"],
        "properties": {
            "from_account": text_schema(64),
            "to_account": text_schema(64),
            "amount": {
                "description": "More than 0, at most 1000000000.00, at most 2 decimals",
                "oneOf": [
                    {"type": "string", "pattern": AMOUNT},
                    {
                        "type": "number",
                        "exclusiveMinimum": 0,
                        "maximum": 1000000000,
                        "multipleOf": 0.01,
                    },
                ],
            },
            "memo": {"type": ["string", "null"], "maxLength": MAX_MEMO, "pattern": NO_NUL},
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
            "from": TIMESTAMP,
            "to": TIMESTAMP,
            "opening_balance": MONEY,
            "closing_balance": MONEY,
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
                        "at": TIMESTAMP,
                        "transfer_id": {"type": "string"},
                        "counterparty": {"type": "string"},
                        "memo": {"type": "string"},
                        "amount": MONEY,
                        "balance_after": MONEY,
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
}
