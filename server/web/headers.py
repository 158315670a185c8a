"""The headers every response carries, set in one place (``secure``).

- Every response: ``X-Content-Type-Options: nosniff``, ``Referrer-Policy: same-origin``.
- Everything but ``/static``: ``Cache-Control: no-store`` (pages and API answers show
  balances: never keep them in a shared or back-button cache).
- HTML: a strict Content-Security-Policy (only our own files run: no inline script, no
  eval, no third-party origin) and ``X-Frame-Options: DENY``.
- Over HTTPS (directly, or behind a proxy that says so): ``Strict-Transport-Security``.

uvicorn's ``server`` header is switched off, and the protocol's own answers (``431``,
``408``, ``503``, ``400``: ``server.web.protocol``) carry ``EVERY_RESPONSE`` and
``no-store`` too.
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import Message, Scope

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; "
    "object-src 'none'"
)
HSTS = "max-age=31536000; includeSubDomains"


# What every response carries, the HTTP protocol's own refusals (server.web.protocol)
# included.
EVERY_RESPONSE = (("X-Content-Type-Options", "nosniff"), ("Referrer-Policy", "same-origin"))
NOT_CACHED = ("Cache-Control", "no-store")


def secure(message: Message, scope: Scope) -> None:
    """Add the headers above to a response's ``http.response.start`` message (called by
    the request middleware, ``server.web.middleware.Observe``, which wraps every response)."""
    headers = MutableHeaders(scope=message)
    for name, value in EVERY_RESPONSE:
        headers.setdefault(name, value)
    if not scope["path"].startswith("/static/"):
        headers.setdefault(*NOT_CACHED)
    if headers.get("content-type", "").startswith("text/html"):
        headers.setdefault("Content-Security-Policy", CSP)
        headers.setdefault("X-Frame-Options", "DENY")
    if scope.get("scheme") == "https":
        headers.setdefault("Strict-Transport-Security", HSTS)
