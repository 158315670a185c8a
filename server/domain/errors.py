"""Named domain exceptions. They are rendered in one place (``server.web.responses``) as the
spec's JSON error or an HTML page or fragment, so the rest of the code raises and never
builds error responses. An exception is never changed once raised."""

from __future__ import annotations

import enum
from collections.abc import Mapping

from server.domain.model import Transfer


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


class InvalidJSON(SettleError):
    status, code = 400, "invalid_json"


class InvalidField(SettleError):
    status, code = 422, "invalid_field"


class AmountProblem(enum.StrEnum):
    """What is wrong with an amount (``InvalidAmount.problem``): the pages word each."""

    MISSING = "missing"
    MALFORMED = "malformed"
    NOT_POSITIVE = "not_positive"
    TOO_LARGE = "too_large"


class InvalidAmount(SettleError):
    status, code = 422, "invalid_amount"

    def __init__(
        self, message: str, field: str = "amount", problem: AmountProblem = AmountProblem.MALFORMED
    ) -> None:
        super().__init__(message, field)
        self.problem = problem


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


class RecipientUnavailable(SettleError):
    """The other party's account cannot take this transfer (frozen, or in another
    currency). One code and one message for every reason: whether someone else's
    account is frozen, or what currency it holds, is theirs alone to know."""

    status, code = 422, "recipient_unavailable"

    def __init__(self, field: str = "to_account") -> None:
        super().__init__("this recipient cannot receive money right now", field)


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

    def __init__(self, message: str, earlier: Transfer) -> None:
        super().__init__(message, "amount")
        self.earlier = earlier


class PasskeyRequired(SettleError):
    """A transfer this large needs its sender's passkey, and they have none yet: ``url``
    is where to add one."""

    status, code = 403, "passkey_required"
    url = "/security"


class ConfirmationInvalid(SettleError):
    """A passkey assertion that does not confirm this transfer as it is (made for
    another one, or for other details, already used, or without user verification)."""

    status, code = 422, "confirmation_invalid"


class PasskeyInvalid(SettleError):
    """A passkey registration or assertion that does not check out."""

    status, code = 422, "passkey_invalid"


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
