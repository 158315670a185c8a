"""Logging in and out: the login form (CSRF double-submit, rate limit, one generic
error), session rotation at login, and server-side invalidation at logout."""

from __future__ import annotations

import secrets

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from server.domain import errors
from server.web import auth, forms, fragments, sessions, throttle
from server.web.services import services

# A path of this site to go to after logging in.
MAX_NEXT = 2048


async def home(request: Request) -> Response:
    session = await sessions.current(request)
    return RedirectResponse("/accounts" if session else "/login", status_code=303)


def _safe_next(value: str | None) -> str:
    # Only our own paths: never redirect a fresh login to another site.
    if value and value.startswith("/") and not value.startswith(("//", "/\\")):
        return value
    return "/accounts"


async def login_form(request: Request) -> Response:
    return _login_page(request, error=None)


def _login_page(
    request: Request, error: str | None, status_code: int = 200, username: str = ""
) -> Response:
    token = request.cookies.get(sessions.LOGIN_CSRF_COOKIE) or secrets.token_urlsafe(32)
    response = fragments.render(
        request,
        "login.html",
        status_code,
        error=error,
        username=username,
        login_csrf=token,
        next=_safe_next(request.query_params.get("next")),
    )
    sessions.set_cookie(request, response, sessions.LOGIN_CSRF_COOKIE, token, 3600)
    return response


async def login(request: Request) -> Response:
    form = await forms.read(request)
    expected = request.cookies.get(sessions.LOGIN_CSRF_COOKIE, "")
    if not expected:
        typed = form.get("username")  # shown again as typed, if it is text
        name = typed[:64] if isinstance(typed, str) else ""
        return _login_page(request, "Your login form expired; please try again.", 403, name)
    sessions.check_csrf(request, expected, form)
    try:  # the rules of POST /api/tokens
        username = forms.field(form, "username", 64)
        password = forms.field(form, "password", 1024, controls=True)
        after = forms.field(form, "next", MAX_NEXT)
    except errors.InvalidField as exc:
        return _login_page(request, exc.message[:1].upper() + exc.message[1:] + ".", 422)
    app = services(request)
    try:
        attempt = await app.throttle.attempt(request, username)
    except errors.RateLimited as exc:
        wait = _wait_text(exc.retry_after)
        response = _login_page(request, f"Too many failed attempts. Try again in {wait}.", 429)
        response.headers["Retry-After"] = str(exc.retry_after)
        return response
    try:
        user_id = await auth.check_credentials(app.store, app.hasher, username, password)
    except errors.Unauthorized:
        # One message for unknown user and wrong password: never reveal which it was.
        return _login_page(request, "Wrong username or password.", 401, username)
    await app.throttle.succeeded(attempt)
    old = request.cookies.get(sessions.COOKIE)
    if old:
        await sessions.end(app, old)
    token, _ = await sessions.create(app.store, app.settings, user_id)
    response = RedirectResponse(_safe_next(after), status_code=303)
    sessions.set_cookie(request, response, sessions.COOKIE, token, sessions.SESSION_TTL_S)
    sessions.clear_cookie(response, sessions.LOGIN_CSRF_COOKIE)
    # This browser is now a known device of the account: strangers' failed attempts on
    # the account do not lock it out (server.web.throttle).
    device = throttle.device_token(app.settings, username)
    sessions.set_cookie(request, response, throttle.DEVICE_COOKIE, device, throttle.DEVICE_TTL_S)
    return response


def _wait_text(seconds: int) -> str:
    if seconds < 60:
        return f"{seconds} second{'s' if seconds != 1 else ''}"
    minutes = -(-seconds // 60)
    return f"{minutes} minute{'s' if minutes != 1 else ''}"


async def logout(request: Request) -> Response:
    session = await sessions.require(request)
    sessions.check_csrf(request, session.csrf_token, await forms.read(request))
    await sessions.end(services(request), request.cookies[sessions.COOKIE])
    response = RedirectResponse("/login", status_code=303)
    sessions.clear_cookie(response, sessions.COOKIE)
    return response


routes = [
    Route("/", home, methods=["GET"]),
    Route("/login", login_form, methods=["GET"]),
    Route("/login", login, methods=["POST"]),
    Route("/logout", logout, methods=["POST"]),
]
