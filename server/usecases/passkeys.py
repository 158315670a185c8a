"""The passkey ceremonies (WebAuthn, with the ``webauthn`` package): registering a
user's passkey, and confirming a transfer awaiting it with an assertion whose challenge
is bound to that transfer (``server.domain.passkeys.challenge``).

The relying party is ``SETTLE_PUBLIC_URL``: its host is the RP id, it is the only
origin accepted. User verification is required in both ceremonies."""

from __future__ import annotations

import json
import secrets
from typing import Any

import webauthn
from webauthn.helpers import (
    base64url_to_bytes,
    bytes_to_base64url,
    parse_authentication_credential_json,
    parse_client_data_json,
    parse_registration_credential_json,
)
from webauthn.helpers.exceptions import WebAuthnException
from webauthn.helpers.structs import (
    AuthenticatorSelectionCriteria,
    PublicKeyCredentialDescriptor,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)

from server.domain import errors
from server.domain.clock import now_us
from server.domain.events import Event
from server.domain.model import Transfer
from server.domain.passkeys import CEREMONY_MS, challenge
from server.domain.settlement import partition_of_account
from server.store import Conn, ledger
from server.store import passkeys as keys
from server.usecases.context import Context

REGISTER = "register"
# What a hostile or broken credential makes the parsing and checking raise: a refusal,
# never a 500.
MALFORMED = (WebAuthnException, ValueError, TypeError, KeyError, IndexError)


async def registration_options(ctx: Context, user_id: str, username: str, display_name: str) -> str:
    """The ``PublicKeyCredentialCreationOptionsJSON`` for a new passkey of this user (a
    discoverable credential, user verification required), its challenge kept to be
    spent once."""
    settings = ctx.settings
    existing = await keys.of_user(ctx.store, user_id)
    options = webauthn.generate_registration_options(
        rp_id=settings.rp_id,
        rp_name="settle",
        user_name=username,
        user_id=user_id.encode(),
        user_display_name=display_name or username,
        # 32 bytes, base64url in 43 characters (passkey_challenges.challenge).
        challenge=secrets.token_bytes(32),
        timeout=CEREMONY_MS,
        authenticator_selection=AuthenticatorSelectionCriteria(
            resident_key=ResidentKeyRequirement.REQUIRED,
            user_verification=UserVerificationRequirement.REQUIRED,
        ),
        exclude_credentials=[
            PublicKeyCredentialDescriptor(id=base64url_to_bytes(k.id)) for k in existing
        ],
    )
    at = now_us()
    await keys.new_challenge(
        ctx.store,
        user_id,
        REGISTER,
        bytes_to_base64url(options.challenge),
        at + CEREMONY_MS * 1000,
        at,
    )
    return webauthn.options_to_json(options)


async def register(
    ctx: Context, user_id: str, name: str, credential: dict[str, Any]
) -> keys.Passkey:
    """Keep the passkey the browser created (``PublicKeyCredential.toJSON()``) for this
    user, named ``name``: PasskeyInvalid unless it answers a registration challenge of
    theirs, unused and unexpired, from this origin, with user verification."""
    settings = ctx.settings
    try:
        parsed = parse_registration_credential_json(json.dumps(credential))
        client = parse_client_data_json(parsed.response.client_data_json)
    except MALFORMED as exc:
        raise errors.PasskeyInvalid(f"not a passkey registration: {exc}") from None
    at = now_us()
    expected = bytes_to_base64url(client.challenge)
    try:
        verified = webauthn.verify_registration_response(
            credential=parsed,
            expected_challenge=client.challenge,
            expected_rp_id=settings.rp_id,
            expected_origin=settings.origin,
            require_user_verification=True,
        )
    except MALFORMED as exc:
        raise errors.PasskeyInvalid(f"the passkey did not check out: {exc}") from None
    key = keys.Passkey(
        id=bytes_to_base64url(verified.credential_id),
        user_id=user_id,
        name=name,
        public_key=bytes_to_base64url(verified.credential_public_key),
        sign_count=verified.sign_count,
        created_at=at,
        last_used_at=None,
    )

    async def body(conn: Conn) -> None:
        await keys.take_challenge(conn, user_id, REGISTER, expected, at)
        await keys.add(conn, key)

    await ctx.store.transaction(body)
    return key


async def confirmation_options(
    ctx: Context, user_id: str, transfer_id: str
) -> tuple[Transfer, str]:
    """The user's awaiting transfer and the ``PublicKeyCredentialRequestOptionsJSON``
    that confirms it: its challenge derived from the transfer and its nonce, for the
    user's own passkeys, user verification required. NotPending if it no longer awaits."""
    sent = await keys.sent(ctx.store, user_id, transfer_id)
    if not sent.awaiting or sent.nonce is None:
        raise errors.NotPending("the transfer is no longer awaiting confirmation")
    mine = await keys.of_user(ctx.store, user_id)
    options = webauthn.generate_authentication_options(
        rp_id=ctx.settings.rp_id,
        challenge=challenge(sent.transfer, sent.nonce),
        timeout=CEREMONY_MS,
        allow_credentials=[
            PublicKeyCredentialDescriptor(id=base64url_to_bytes(k.id)) for k in mine
        ],
        user_verification=UserVerificationRequirement.REQUIRED,
    )
    return sent.transfer, webauthn.options_to_json(options)


async def confirm(
    ctx: Context, user_id: str, transfer_id: str, credential: dict[str, Any]
) -> Transfer:
    """Confirm the user's awaiting transfer with a passkey assertion
    (``PublicKeyCredential.toJSON()``): checked against the challenge of this transfer as
    it is, with this nonce, from one of the user's passkeys, user verified, its sign
    counter moving forward; then, in one transaction, the counter is kept, the nonce
    spent and the transfer pending, and its partition rung. ConfirmationInvalid, with
    nothing changed, otherwise."""
    settings = ctx.settings
    sent = await keys.sent(ctx.store, user_id, transfer_id)
    if not sent.awaiting or sent.nonce is None:
        raise errors.ConfirmationInvalid("the transfer is no longer awaiting confirmation")
    nonce = sent.nonce
    try:
        parsed = parse_authentication_credential_json(json.dumps(credential))
    except MALFORMED as exc:
        raise errors.ConfirmationInvalid(f"not a passkey assertion: {exc}") from None
    key = await keys.by_id(ctx.store, bytes_to_base64url(parsed.raw_id))
    if key is None or key.user_id != user_id:
        raise errors.ConfirmationInvalid("not one of your passkeys")
    try:
        verified = webauthn.verify_authentication_response(
            credential=parsed,
            expected_challenge=challenge(sent.transfer, nonce),
            expected_rp_id=settings.rp_id,
            expected_origin=settings.origin,
            credential_public_key=base64url_to_bytes(key.public_key),
            credential_current_sign_count=key.sign_count,
            require_user_verification=True,
        )
    except MALFORMED as exc:
        raise errors.ConfirmationInvalid(
            f"the assertion does not confirm this transfer: {exc}"
        ) from None
    at = now_us()
    expires_at = at + settings.pending_ttl_s * 1_000_000

    async def body(conn: Conn) -> tuple[Transfer, list[Event]]:
        await keys.used(conn, key, verified.new_sign_count, at)
        return await ledger.confirm(conn, sent.transfer.id, nonce, at, expires_at)

    transfer, events = await ctx.store.transaction(body)
    partition = partition_of_account(transfer.from_account, settings.settle_partitions)
    await ctx.dispatch.after_commit(events, settle=[partition])
    return transfer
