"""Logging in and out: the login form (CSRF double-submit, rate limit, one generic
error), session rotation at login, and server-side invalidation at logout."""

from __future__ import annotations

import secrets

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from server import auth, errors, fragments, sessions
from server.services import services


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
    form = await request.form()
    username = str(form.get("username", ""))[:64]
    password = str(form.get("password", ""))[:1024]
    expected = request.cookies.get(sessions.LOGIN_CSRF_COOKIE, "")
    if not expected:
        return _login_page(request, "Your login form expired; please try again.", 403, username)
    sessions.check_csrf(request, expected, form)
    try:
        await sessions.check_rate_limit(request, username)
    except errors.RateLimited as exc:
        response = _login_page(request, "Too many failed attempts. Wait a few minutes.", 429)
        response.headers["Retry-After"] = str(exc.retry_after)
        return response
    app = services(request)
    store, settings = app.store, app.settings
    try:
        user_id = await auth.check_credentials(store, username, password)
    except errors.Unauthorized:
        await sessions.record_failure(request, username)
        # One message for unknown user and wrong password: never reveal which it was.
        return _login_page(request, "Wrong username or password.", 401, username)
    await sessions.clear_failures(request, username)
    old = request.cookies.get(sessions.COOKIE)
    if old:
        await sessions.delete(store, settings, old)
    token, _ = await sessions.create(store, settings, user_id)
    response = RedirectResponse(_safe_next(str(form.get("next", ""))), status_code=303)
    sessions.set_cookie(request, response, sessions.COOKIE, token, sessions.SESSION_TTL_S)
    sessions.clear_cookie(response, sessions.LOGIN_CSRF_COOKIE)
    return response


async def logout(request: Request) -> Response:
    session = await sessions.require(request)
    sessions.check_csrf(request, session.csrf_token, await request.form())
    app = services(request)
    await sessions.delete(app.store, app.settings, request.cookies[sessions.COOKIE])
    response = RedirectResponse("/login", status_code=303)
    sessions.clear_cookie(response, sessions.COOKIE)
    return response


routes = [
    Route("/", home, methods=["GET"]),
    Route("/login", login_form, methods=["GET"]),
    Route("/login", login, methods=["POST"]),
    Route("/logout", logout, methods=["POST"]),
]
