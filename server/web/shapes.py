"""The JSON bodies only the web answers (tokens, pages of results, previews, health),
beside the domain's shapes (``server.domain.wire``): ``/openapi.json`` describes both."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from server.domain.wire import (
    AccountJSON,
    BalanceJSON,
    ErrorDetailJSON,
    Instant,
    Money,
    TransferJSON,
)


class TokenJSON(msgspec.Struct):
    token: str
    expires_in: Annotated[int, msgspec.Meta(ge=0)]


class AccountsJSON(msgspec.Struct):
    accounts: list[AccountJSON]


class TransfersPageJSON(msgspec.Struct):
    transfers: list[TransferJSON]
    # The last transfer's id, to pass as ``before`` for the next page (null: the last).
    next_before: str | None


class BalanceAtJSON(msgspec.Struct):
    account: str
    at: Instant
    posted: Money


class EventsPageJSON(msgspec.Struct):
    # The stream's messages, byte for byte.
    events: list[dict[str, Any]]
    next_since: Annotated[int, msgspec.Meta(ge=0)]


class PreviewJSON(msgspec.Struct):
    # The sender's balance as sending would leave it (null: it would be refused first).
    balance_after: BalanceJSON | None
    # Why it would be refused (insufficient_funds, recipient_unavailable, ...), or null.
    error: ErrorDetailJSON | None
    # Sending it would be accepted awaiting the sender's passkey (SETTLE_CONFIRM_ABOVE).
    requires_passkey: bool


class HealthJSON(msgspec.Struct):
    status: Literal["ok"]


class ReadinessJSON(msgspec.Struct):
    status: Literal["ready", "unavailable"]
    checks: dict[str, str]


class ConfirmationJSON(msgspec.Struct):
    """What confirming an awaiting transfer takes: the transfer as it will be confirmed,
    and the options to pass to ``navigator.credentials.get`` (their challenge bound to
    exactly this transfer)."""

    transfer: TransferJSON
    publicKey: dict[str, Any]


class PasskeyJSON(msgspec.Struct):
    id: str
    name: str
    created_at: Instant
    last_used_at: Instant | None


class PasskeysJSON(msgspec.Struct):
    passkeys: list[PasskeyJSON]


class RegistrationJSON(msgspec.Struct):
    """The options to pass to ``navigator.credentials.create`` for a new passkey."""

    publicKey: dict[str, Any]
