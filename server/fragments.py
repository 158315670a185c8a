"""Templates: the Jinja environment, HTML responses with security headers, and the
WebSocket ``content`` fragments.

Pages and live events render the same ``_partial.html`` templates (balance card,
transfer row, announcement), so an event repaints exactly what a reload would show.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse

from server import present
from server.events import TRANSFER_TYPES

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"
STATIC_DIR = Path(__file__).resolve().parent.parent / "static"


def environment() -> jinja2.Environment:
    """The template environment: every variable is HTML-escaped unless marked safe."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        money=present.money,
        when=present.when,
        exact_when=present.exact_when,
    )
    env.globals.update(present=present.transfer, status_line=present.status_line)
    # Compiled now, at start-up: compiling a page on its first request takes ~20 ms,
    # all of it on the event loop, in front of every socket of the process.
    for name in env.list_templates(extensions=["html"]):
        env.get_template(name)
    return env


def page(
    env: jinja2.Environment,
    name: str,
    context: Mapping[str, Any],
    status_code: int = 200,
    headers: Mapping[str, str] | None = None,
) -> HTMLResponse:
    """Render a template as an HTML response."""
    return html(env.get_template(name).render(context), status_code, headers)


def html(
    content: str, status_code: int = 200, headers: Mapping[str, str] | None = None
) -> HTMLResponse:
    """An HTML response (a page or htmx fragments); ``server.headers`` adds the security
    headers."""
    return HTMLResponse(content, status_code, headers=headers)


def is_htmx(request: Request) -> bool:
    return request.headers.get("hx-request") == "true"


def render(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    """Render a page template with the app's environment (``session`` and ``note``
    default to None, for the base template)."""
    context.setdefault("session", None)
    context.setdefault("note", None)
    return page(templates(request), name, context, status_code)


def templates(request: Request) -> jinja2.Environment:
    """The app's template environment."""
    from server.services import services

    return services(request).templates


def event_fragments(
    env: jinja2.Environment,
    message: Mapping[str, Any],
    csrf_token: str = "",
    announce: str | None = None,
) -> str:
    """The out-of-band fragments that repaint every page for one transfer event of one
    account: its balance card (account page, dashboard, transfer page), the transfer's
    history row and detail card, the send form's status line (the sender's side), and
    the announcement. A page applies those it has and ignores the rest."""
    account_id, transfer = message["account"], message["transfer"]
    note = present.change_note(message["type"], transfer, account_id)
    context = {
        "account_id": account_id,
        "currency": transfer["currency"],
        "balance": message["balance"],
        "seq": message["seq"],
        "note": note,
        "t": transfer,
        "csrf_token": csrf_token,
        "oob": True,
    }
    available = present.money(message["balance"]["available"], transfer["currency"])
    parts = [
        env.get_template("_balance.html").render(context),
        env.get_template("_row.html").render(context),
        env.get_template("_detail.html").render(context),
    ]
    if transfer["from_account"] == account_id:
        parts.append(env.get_template("_status.html").render(context))
    text = announce or f"{note['text']}. Available balance {available}."
    parts.append(
        env.get_template("_announce.html").render(
            text=text, oob=True, tone="error" if announce else ""
        )
    )
    return "".join(parts)


def content_renderer(env: jinja2.Environment) -> Callable[[dict[str, Any]], str]:
    """The ``content`` of a stream message for htmx pages: the fragments that repaint the
    account's page for that event (the hub renders it once per event)."""

    def render_content(message: dict[str, Any]) -> str:
        if message.get("type") in TRANSFER_TYPES and "transfer" in message:
            return event_fragments(env, message)
        return ""

    return render_content
