"""Named domain exceptions. They are rendered in one place (``server.app``) as the
spec's JSON error, so the rest of the code raises and never builds responses."""

from __future__ import annotations


class SettleError(Exception):
    """A request settle refuses, with a machine-readable code and a human message."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

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


class NotFound(SettleError):
    status, code = 404, "not_found"


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


class RateLimited(SettleError):
    status, code = 429, "rate_limited"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ServiceUnavailable(SettleError):
    status, code = 503, "service_unavailable"
