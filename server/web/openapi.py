"""The OpenAPI 3.1 description of the JSON API, served at /openapi.json, derived from
the routes (``ENDPOINTS`` of ``server.web.api`` and ``server.web.passkeys_api``: each
route's ``Operation``), the request
declarations that check what clients send (``server.web.fields``), the msgspec Structs
the answers are encoded from (``server.domain.wire``, ``server.web.shapes``) and the
refusals each operation declares (``server.domain.errors``). Nothing is written twice:
a limit changes in one place, and tests/test_openapi_fuzz.py holds the running server
to the document."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from server.domain import errors, wire
from server.web import api, ops, passkeys_api, shapes, webhooks_api
from server.web.fields import Answer, Endpoint, Operation
from server.web.middleware import MAX_BODY
from server.web.responses import JSONResponse

VERSION = "0.2.0"
_PATH_PARAM = re.compile(r"\{([a-z_]+)\}")
_ID = {"type": "string", "minLength": 1}
_ALWAYS = (errors.InternalError, errors.ServiceUnavailable)
_MEANING = {
    400: "the body is not a JSON object",
    401: "no valid credential",
    403: "a transfer this large needs a passkey the caller has not added (error.url: where)",
    404: "not the caller's, or no such thing (the two are never told apart)",
    409: "the transfer's state forbids it, or it looks like a duplicate (error.duplicate_of)",
    413: f"the body is larger than {MAX_BODY // 1024} KiB",
    422: "a field breaks a rule (error.field names it)",
    429: "too many attempts; retry after Retry-After seconds",
    500: "the server failed; nothing was lost, retry with the same Idempotency-Key",
    503: "the database or Redis is briefly unreachable, or the server is at capacity; retry",
}
_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before retrying",
        "required": True,
        "schema": {"type": "integer", "minimum": 1},
    }
}
# Operations outside the API that the document describes too.
OPERATIONAL = [
    Endpoint(
        "/healthz",
        "GET",
        ops.healthz,
        Operation(
            "Liveness",
            Answer(200, shapes.HealthJSON, "alive"),
            authenticated=False,
            storage=False,
        ),
    ),
    Endpoint(
        "/readyz",
        "GET",
        ops.readyz,
        Operation(
            "Readiness: database and Redis reachable",
            Answer(200, shapes.ReadinessJSON, "ready"),
            others=(Answer(503, shapes.ReadinessJSON, "not ready"),),
            authenticated=False,
            storage=False,
        ),
    ),
]


def _name(name: str) -> str:
    """A Struct's name in the document: ``TransferJSON`` is ``Transfer``."""
    return name.removesuffix("JSON")


def _renamed(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _renamed_value(k, v) for k, v in node.items()}
    if isinstance(node, list):
        return [_renamed(v) for v in node]
    return node


def _renamed_value(key: str, value: Any) -> Any:
    if key == "$ref":
        return _REF.sub(lambda m: m[1] + _name(m[2]), value)
    if key == "title" and isinstance(value, str):
        return _name(value)
    return _renamed(value)


_REF = re.compile(r"^(#/components/schemas/)(.+)$")


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _answer(answer: Answer) -> dict[str, Any]:
    if answer.type is None:
        out: dict[str, Any] = {"description": answer.description}
    else:
        out = _json(_ref(_name(answer.type.__name__)), answer.description)
        out["content"].update({k: {"schema": v} for k, v in answer.alternatives.items()})
    if answer.headers:
        out["headers"] = dict(answer.headers)
    return out


def _refusals(kinds: Sequence[type[errors.SettleError]]) -> dict[str, Any]:
    by_status: dict[int, list[str]] = {}
    for kind in kinds:
        by_status.setdefault(kind.status, [])
        if kind.code not in by_status[kind.status]:
            by_status[kind.status].append(kind.code)
    out = {}
    for status in sorted(by_status):
        codes = ", ".join(by_status[status])
        body = _json(_ref("Error"), f"{codes}: {_MEANING.get(status, '')}".rstrip(": "))
        if status == 429:
            body["headers"] = _RETRY_AFTER
        out[str(status)] = body
    return out


def _operation(path: str, op: Operation) -> dict[str, Any]:
    params: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": _ID}
        for name in _PATH_PARAM.findall(path)
    ]
    params += [q.schema() for q in op.query]
    params += [dict(h) for h in op.headers]
    out: dict[str, Any] = {"summary": op.summary}
    if op.authenticated:
        out["security"] = [{"bearer": []}]
    if params:
        out["parameters"] = params
    if op.body is not None:
        out["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _ref(op.body.name)}},
        }
    refusals = (*op.refusals, *(_ALWAYS if op.storage else ()))
    out["responses"] = {
        **{str(a.status): _answer(a) for a in (op.answer, *op.others)},
        **_refusals(refusals),
    }
    return out


def document(endpoints: Iterable[Endpoint]) -> dict[str, Any]:
    """The OpenAPI document of ``endpoints``."""
    endpoints = list(endpoints)
    answers = [a for e in endpoints for a in (e.operation.answer, *e.operation.others)]
    types = [wire.ErrorJSON, *{a.type for a in answers} - {None}]
    _, components = msgspec.json.schema_components(
        sorted(types, key=lambda t: t.__name__), ref_template="#/components/schemas/{name}"
    )
    schemas = {_name(k): _renamed(v) for k, v in components.items()}
    for e in endpoints:
        if e.operation.body is not None:
            schemas[e.operation.body.name] = e.operation.body.schema()
    paths: dict[str, dict[str, Any]] = {}
    for e in endpoints:
        paths.setdefault(e.path, {})[e.method.lower()] = _operation(e.path, e.operation)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "settle",
            "version": VERSION,
            "description": "Transfers accepted as pending, settled into a double-entry ledger.",
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": dict(sorted(schemas.items())),
        },
        "paths": paths,
    }


SCHEMA = document([*api.ENDPOINTS, *webhooks_api.ENDPOINTS, *passkeys_api.ENDPOINTS, *OPERATIONAL])
_BODY = msgspec.json.encode(SCHEMA)


async def endpoint(request: Request) -> Response:
    return JSONResponse(_BODY)
