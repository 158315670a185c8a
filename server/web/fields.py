"""What a request may carry, declared once: each field and query parameter both checks
what a client sent (``parse``, raising the spec's refusal) and describes itself in
``/openapi.json`` (``schema``), so a limit is changed in one place and the document
cannot promise what the server refuses.

The rules themselves live in the domain (``server.domain.text``, ``money``, ``ledger``,
``statements``); these declarations only say which rule applies to which field.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from server.domain import errors, money, statements, text

# Text the API stores or looks up: PostgreSQL text cannot hold NUL (the text rule
# refuses control characters too; the document promises only what no client needs).
NO_NUL = r"^[^\x00]*$"


class JsonNumber(str):
    """A JSON number with a fraction or exponent, kept as its exact source text."""


def _reject_constant(name: str) -> None:
    raise errors.InvalidJSON(f"{name} is not valid JSON")


async def read_json(request: Request) -> dict[str, Any]:
    """The request body as a JSON object, numbers kept exact. Its size is limited
    (``MAX_BODY``) for every route by ``server.web.middleware`` before this reads it."""
    body = await request.body()
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


class Field(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def required(self) -> bool: ...

    def parse(self, data: Mapping[str, Any]) -> Any:
        """The field's value in a JSON body, checked; refused as the spec says."""
        ...

    def schema(self) -> dict[str, Any]: ...


@dataclasses.dataclass(frozen=True)
class Text:
    """A string of text (``server.domain.text``): at most ``max_len`` characters,
    non-empty when required; ``controls``: control characters allowed (passwords)."""

    name: str
    max_len: int
    required: bool = True
    controls: bool = False
    description: str = ""

    def parse(self, data: Mapping[str, Any]) -> str:
        value = data.get(self.name)
        if value is None and not self.required:
            return ""
        if value is None:
            raise errors.InvalidField(f"{self.name} is required", self.name)
        if not isinstance(value, str) or isinstance(value, JsonNumber):
            raise errors.InvalidField(f"{self.name} must be a string", self.name)
        if self.required and not value:
            raise errors.InvalidField(f"{self.name} must not be empty", self.name)
        return text.check(value, self.name, self.max_len, controls=self.controls)

    def schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "string", "maxLength": self.max_len, "pattern": NO_NUL}
        if self.required:
            out["minLength"] = 1
        else:
            out["type"] = ["string", "null"]
        return _described(out, self.description)


@dataclasses.dataclass(frozen=True)
class Object:
    """A JSON object, checked by whoever reads it (a WebAuthn credential's response)."""

    name: str
    required: bool = True
    description: str = ""

    def parse(self, data: Mapping[str, Any]) -> dict[str, Any]:
        value = data.get(self.name)
        if not isinstance(value, dict):
            raise errors.InvalidField(f"{self.name} must be an object", self.name)
        return value

    def schema(self) -> dict[str, Any]:
        return _described({"type": "object"}, self.description)


@dataclasses.dataclass(frozen=True)
class Amount:
    """An amount as ``money.parse_amount`` takes it: a decimal string or a JSON number,
    exact (checked by the use case, which owns the rule)."""

    name: str = "amount"
    required: bool = True

    def parse(self, data: Mapping[str, Any]) -> object:
        if self.name not in data:
            raise errors.InvalidAmount(
                f"{self.name} is required", self.name, errors.AmountProblem.MISSING
            )
        return data[self.name]

    def schema(self) -> dict[str, Any]:
        most = money.format_amount(money.MAX_AMOUNT)
        return {
            "description": f"More than 0, at most {most}, at most 2 decimals",
            "oneOf": [
                {"type": "string", "pattern": money.AMOUNT_PATTERN},
                {
                    "type": "number",
                    "exclusiveMinimum": 0,
                    "maximum": money.MAX_AMOUNT // 100,
                    "multipleOf": 0.01,
                },
            ],
        }


@dataclasses.dataclass(frozen=True)
class Whole:
    """A whole number from ``least`` to ``most`` (a JSON number in a body, digits in a
    query), bounded in length before any conversion."""

    name: str
    least: int
    most: int
    default: int | None = None
    description: str = ""

    @property
    def required(self) -> bool:
        return False

    def _refusal(self) -> errors.InvalidField:
        return errors.InvalidField(
            f"{self.name} must be a whole number from {self.least} to {self.most}", self.name
        )

    def check(self, raw: str) -> int:
        if not (raw.isascii() and raw.isdigit() and len(raw) <= len(str(self.most))):
            raise self._refusal()
        value = int(raw)
        if not self.least <= value <= self.most:
            raise self._refusal()
        return value

    def parse(self, data: Mapping[str, Any]) -> int | None:
        if self.name not in data:
            return self.default
        value = data[self.name]
        return self.check(value if isinstance(value, JsonNumber) else "")

    def query(self, request: Request) -> int | None:
        raw = request.query_params.get(self.name)
        return self.default if raw is None else self.check(raw)

    def schema(self) -> dict[str, Any]:
        return _described(
            {"type": "integer", "minimum": self.least, "maximum": self.most}, self.description
        )


@dataclasses.dataclass(frozen=True)
class Body:
    """A JSON request body: its fields, checked in order."""

    fields: Sequence[Field]
    name: str  # its schema's name in the document

    def parse(self, data: Mapping[str, Any]) -> dict[str, Any]:
        return {f.name: f.parse(data) for f in self.fields}

    def schema(self) -> dict[str, Any]:
        return {
            "type": "object",
            "required": [f.name for f in self.fields if f.required],
            "properties": {f.name: f.schema() for f in self.fields},
        }


@dataclasses.dataclass(frozen=True)
class Query:
    """A query parameter: text (``max_len``), one of ``choices``, an ISO 8601 instant,
    or a ``Whole`` number."""

    name: str
    description: str = ""
    required: bool = False
    max_len: int = 64
    choices: tuple[str, ...] = ()
    instant: bool = False
    whole: Whole | None = None

    def parse(self, request: Request) -> Any:
        if self.whole is not None:
            return self.whole.query(request)
        raw = request.query_params.get(self.name)
        if raw is None:
            if self.required:
                what = "an ISO 8601 instant" if self.instant else "a value"
                raise errors.InvalidField(f"{self.name} is required: {what}", self.name)
            return None
        if self.instant:
            return statements.instant(raw, self.name)
        if self.choices and raw not in self.choices:
            raise errors.InvalidField(f"{self.name} must be {' or '.join(self.choices)}", self.name)
        return raw

    def schema(self) -> dict[str, Any]:
        if self.whole is not None:
            schema = self.whole.schema()
        elif self.instant:
            schema = {"type": "string", "format": "date-time", "maxLength": statements.MAX_INSTANT}
        elif self.choices:
            schema = {"enum": list(self.choices)}
        else:
            schema = {"type": "string", "minLength": 1, "maxLength": self.max_len}
        out: dict[str, Any] = {"name": self.name, "in": "query", "schema": schema}
        if self.required:
            out["required"] = True
        return _described(out, self.description)


def _described(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {**schema, "description": description} if description else schema


@dataclasses.dataclass(frozen=True)
class Answer:
    """A successful answer: its status, its body's type (a msgspec Struct; None: no
    body), what it means, and its headers, as the document describes them."""

    status: int
    type: Any
    description: str
    headers: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    # Other media types the same answer can come in (name -> schema).
    alternatives: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Operation:
    """One API operation as ``/openapi.json`` describes it; the handler uses the same
    ``body`` and ``query`` declarations to check what it is sent."""

    summary: str
    answer: Answer
    body: Body | None = None
    query: Sequence[Query] = ()
    headers: Sequence[Mapping[str, Any]] = ()
    # The refusals it can answer (each error's status and code); 500 and 503 always.
    refusals: Sequence[type[errors.SettleError]] = ()
    authenticated: bool = True
    # Other answers with a body of their own (readiness: 503 with what is down).
    others: Sequence[Answer] = ()
    # Whether it reads or writes storage: then it may answer 500 and 503 too.
    storage: bool = True


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """A route and the operation it is (``/openapi.json``)."""

    path: str
    method: str
    handler: Callable[[Request], Awaitable[Response]]
    operation: Operation

    def route(self) -> Route:
        return Route(self.path, self.handler, methods=[self.method])
