"""The passkey pages: Security (a person's passkeys: add, name, list, remove) and the
confirm page of a transfer awaiting its sender's passkey. The ceremonies run in the
browser (static/passkeys.js) against the JSON API (``server.web.api``); without
JavaScript these pages say so, and the confirm page still offers Cancel.

Passkeys belong to ``SETTLE_PUBLIC_URL``'s host: a page reached under another host says
where they work instead of failing in the browser's words."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from server.domain import errors
from server.domain.passkeys import MAX_NAME
from server.store import passkeys as keys
from server.store import reads
from server.web import forms, fragments, passkeys_api, sessions
from server.web.services import services


def _elsewhere(request: Request) -> str:
    """Where passkeys work, if this page was reached under another host ("" if here)."""
    settings = services(request).settings
    host = request.headers.get("host", "").rsplit(":", 1)[0].strip("[]")
    return "" if host == settings.rp_id else settings.public_url


async def security(request: Request) -> Response:
    session = await sessions.require(request)
    found = await keys.of_user(services(request).store, session.user_id)
    notice = {"removed": "Passkey removed.", "renamed": "Passkey renamed."}.get(
        request.query_params.get("done", ""), ""
    )
    return fragments.render(
        request,
        "security.html",
        session=session,
        passkeys=found,
        elsewhere=_elsewhere(request),
        notice=notice,
        error="",
        max_name=MAX_NAME,
    )


async def rename(request: Request) -> Response:
    session = await sessions.require(request)
    data = await forms.read(request)
    sessions.check_csrf(request, session.csrf_token, data)
    name = forms.field(data, "name", MAX_NAME).strip() or "Passkey"
    await keys.rename(
        services(request).store, session.user_id, request.path_params["passkey_id"], name
    )
    return RedirectResponse("/security?done=renamed", status_code=303)


async def remove(request: Request) -> Response:
    """Remove a passkey: the password must be given again (a stolen session alone cannot
    take away its owner's passkeys)."""
    session = await sessions.require(request)
    data = await forms.read(request)
    sessions.check_csrf(request, session.csrf_token, data)
    app = services(request)
    password = forms.field(data, "password", 1024, controls=True)
    try:
        await passkeys_api.password_again(request, session.username, password)
    except errors.InvalidField:
        found = await keys.of_user(app.store, session.user_id)
        return fragments.render(
            request,
            "security.html",
            status_code=403,
            session=session,
            passkeys=found,
            elsewhere=_elsewhere(request),
            notice="",
            error="That is not your password: the passkey was not removed.",
            max_name=MAX_NAME,
        )
    passkey_id = request.path_params["passkey_id"]
    await app.store.transaction(lambda conn: keys.remove(conn, session.user_id, passkey_id))
    return RedirectResponse("/security?done=removed", status_code=303)


async def confirm_page(request: Request) -> Response:
    """What the sender is about to confirm, before the browser's passkey prompt: the
    amount, the payee's name and username, the account it leaves from."""
    session = await sessions.require(request)
    store = services(request).store
    sent = await keys.sent(store, session.user_id, request.path_params["transfer_id"])
    t = sent.transfer
    account = await reads.owned_account(store, session.user_id, t.from_account)
    return fragments.render(
        request,
        "confirm.html",
        session=session,
        t=t,
        account=account,
        awaiting=sent.awaiting,
        elsewhere=_elsewhere(request),
        csrf_token=session.csrf_token,
    )


routes = [
    Route("/security", security, methods=["GET"]),
    Route("/security/passkeys/{passkey_id}/name", rename, methods=["POST"]),
    Route("/security/passkeys/{passkey_id}/remove", remove, methods=["POST"]),
    Route("/transfers/{transfer_id}/confirm", confirm_page, methods=["GET"]),
]
