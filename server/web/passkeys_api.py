"""The passkey API: the request options and the assertion that confirm a transfer
awaiting its sender's passkey, and adding and listing a user's passkeys. Handlers parse,
authenticate (``server.web.api.current_user``), call ``server.usecases.passkeys`` and
encode; static/passkeys.js is their browser client. Declared like the rest of the API,
so ``/openapi.json`` describes them."""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response

from server.domain import errors, wire
from server.store import passkeys as keys
from server.store import reads
from server.usecases import passkeys
from server.web import auth, middleware, shapes
from server.web.api import BODY_REFUSALS, current_user
from server.web.fields import Answer, Body, Endpoint, Object, Operation, Text, read_json
from server.web.responses import JSONResponse
from server.web.services import services

# A passkey's answer, as the browser's PublicKeyCredential.toJSON() gives it (other
# members, like clientExtensionResults, are passed on as they are).
CREDENTIAL = Body(
    [
        Text("id", 1400),
        Text("rawId", 1400),
        Text("type", 20),
        Object("response", description="The authenticator's response, base64url members"),
    ],
    name="PublicKeyCredential",
)
NEW_PASSKEY = Body(
    [
        Text("name", 64, description='What its owner calls it ("Phone")'),
        Object("credential", description="PublicKeyCredential.toJSON() of the new passkey"),
        Text(
            "password",
            1024,
            controls=True,
            description="The caller's password again: a stolen token or cookie alone"
            " cannot add a passkey (which would confirm large transfers)",
        ),
    ],
    name="NewPasskey",
)


async def password_again(request: Request, username: str, password: str) -> None:
    """The signed-in user's password, asked again before a change a stolen credential
    must not make (under the login throttle); InvalidField if it is not theirs."""
    app = services(request)
    attempt = await app.throttle.attempt(request, username)
    try:
        await auth.check_credentials(app.store, app.hasher, username, password)
    except errors.Unauthorized:
        raise errors.InvalidField("that is not your password", "password") from None
    await app.throttle.succeeded(attempt)


async def confirmation(request: Request) -> Response:
    """The awaiting transfer and the passkey request options that confirm exactly it."""
    user = await current_user(request)
    transfer, options = await passkeys.confirmation_options(
        services(request).usecases, user.id, request.path_params["transfer_id"]
    )
    body = shapes.ConfirmationJSON(wire.transfer(transfer), orjson.loads(options))
    return JSONResponse(body)


async def confirm_transfer(request: Request) -> Response:
    """Confirm an awaiting transfer with the passkey assertion made for it."""
    user = await current_user(request)
    data = await read_json(request)
    CREDENTIAL.parse(data)
    transfer = await passkeys.confirm(
        services(request).usecases, user.id, request.path_params["transfer_id"], data
    )
    middleware.note(request, transfer.id)
    return JSONResponse(wire.transfer(transfer))


def passkey_json(key: keys.Passkey) -> shapes.PasskeyJSON:
    return shapes.PasskeyJSON(
        key.id, key.name, wire.iso(key.created_at), wire.iso_or_none(key.last_used_at)
    )


async def list_passkeys(request: Request) -> Response:
    user = await current_user(request)
    found = await keys.of_user(services(request).store, user.id)
    return JSONResponse(shapes.PasskeysJSON([passkey_json(k) for k in found]))


async def registration_options(request: Request) -> Response:
    user = await current_user(request)
    app = services(request)
    display_name = await reads.display_name(app.store, user.id)
    options = await passkeys.registration_options(
        app.usecases, user.id, user.username, display_name
    )
    return JSONResponse(shapes.RegistrationJSON(orjson.loads(options)))


async def add_passkey(request: Request) -> Response:
    user = await current_user(request)
    data = NEW_PASSKEY.parse(await read_json(request))
    await password_again(request, user.username, data["password"])
    key = await passkeys.register(
        services(request).usecases, user.id, data["name"], data["credential"]
    )
    return JSONResponse(passkey_json(key), status_code=201)


ENDPOINTS = [
    Endpoint(
        "/api/transfers/{transfer_id}/confirmation",
        "GET",
        confirmation,
        Operation(
            "The caller's transfer awaiting confirmation, and the passkey request options"
            " whose challenge is bound to it (amount, currency, both accounts, a nonce)",
            Answer(200, shapes.ConfirmationJSON, "the transfer and publicKey"),
            refusals=(errors.Unauthorized, errors.TransferNotFound, errors.NotPending),
        ),
    ),
    Endpoint(
        "/api/transfers/{transfer_id}/confirmation",
        "POST",
        confirm_transfer,
        Operation(
            "Confirm the caller's awaiting transfer with the passkey assertion made for it:"
            " it becomes pending",
            Answer(200, wire.TransferJSON, "confirmed: pending"),
            body=CREDENTIAL,
            refusals=(
                *BODY_REFUSALS,
                errors.Unauthorized,
                errors.TransferNotFound,
                errors.ConfirmationInvalid,
            ),
        ),
    ),
    Endpoint(
        "/api/passkeys",
        "GET",
        list_passkeys,
        Operation(
            "The caller's passkeys",
            Answer(200, shapes.PasskeysJSON, "passkeys"),
            refusals=(errors.Unauthorized,),
        ),
    ),
    Endpoint(
        "/api/passkeys/options",
        "POST",
        registration_options,
        Operation(
            "Options for navigator.credentials.create: a new passkey of the caller's",
            Answer(200, shapes.RegistrationJSON, "publicKey"),
            refusals=(errors.Unauthorized,),
        ),
    ),
    Endpoint(
        "/api/passkeys",
        "POST",
        add_passkey,
        Operation(
            "Add the passkey the browser created from those options",
            Answer(201, shapes.PasskeyJSON, "added"),
            body=NEW_PASSKEY,
            refusals=(
                *BODY_REFUSALS,
                errors.Unauthorized,
                errors.PasskeyInvalid,
                errors.RateLimited,
            ),
        ),
    ),
]
routes = [e.route() for e in ENDPOINTS]
