"""Named domain exceptions. They are rendered in one place (``server.responses``) as the
spec's JSON error or an HTML page or fragment, so the rest of the code raises and never
builds error responses. An exception is never changed once raised."""

from __future__ import annotations

from collections.abc import Mapping


class SettleError(Exception):
    """A request settle refuses, with a machine-readable code and a human message."""

    status = 400
    code = "bad_request"

    def __init__(
        self, message: str, field: str | None = None, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self._headers = dict(headers or {})

    def headers(self) -> dict[str, str]:
        """The response headers this refusal comes with."""
        return dict(self._headers)

    def to_dict(self) -> dict[str, object]:
        error: dict[str, object] = {"code": self.code, "message": self.message}
        if self.field is not None:
            error["field"] = self.field
        return {"error": error}


class InvalidJSON(SettleError):
    status, code = 400, "invalid_json"


class InvalidField(SettleError):
    status, code = 422, "invalid_field"


class InvalidAmount(SettleError):
    status, code = 422, "invalid_amount"


class PayloadTooLarge(SettleError):
    status, code = 413, "payload_too_large"


class Unauthorized(SettleError):
    status, code = 401, "unauthorized"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": "Bearer", **super().headers()}  # RFC 6750


class NotFound(SettleError):
    status, code = 404, "not_found"


class MethodNotAllowed(SettleError):
    status, code = 405, "method_not_allowed"


class HTTPError(SettleError):
    """Any other status the HTTP layer answers on its own."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message, headers=headers)
        self.status = status


class AccountNotFound(SettleError):
    status, code = 404, "account_not_found"


class TransferNotFound(SettleError):
    status, code = 404, "transfer_not_found"


class SameAccount(SettleError):
    status, code = 422, "same_account"


class CurrencyMismatch(SettleError):
    status, code = 422, "currency_mismatch"


class InsufficientFunds(SettleError):
    status, code = 422, "insufficient_funds"


class AccountFrozen(SettleError):
    status, code = 422, "account_frozen"


class IdempotencyKeyReused(SettleError):
    status, code = 422, "idempotency_key_reused"


class NotPending(SettleError):
    status, code = 409, "not_pending"


class PossibleDuplicate(SettleError):
    """The same amount went to the same recipient a moment ago (the duplicate guard):
    not sent; send again to confirm."""

    status, code = 409, "possible_duplicate"

    def __init__(self, message: str, earlier: Mapping[str, object]) -> None:
        super().__init__(message, "amount")
        self.earlier = dict(earlier)  # the transfer object of the earlier one

    def to_dict(self) -> dict[str, object]:
        body = super().to_dict()
        error = body["error"]
        assert isinstance(error, dict)
        error["duplicate_of"] = self.earlier
        return body


class RateLimited(SettleError):
    status, code = 429, "rate_limited"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})
        self.retry_after = retry_after


class CsrfFailed(SettleError):
    status, code = 403, "csrf_failed"


class ServiceUnavailable(SettleError):
    status, code = 503, "service_unavailable"


class InternalError(SettleError):
    status, code = 500, "internal_error"
