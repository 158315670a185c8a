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

from server.domain import people, wording
from server.domain.events import Event
from server.domain.wire import iso
from server.web.services import services

# The header navigation of every page, for a signed-in person: (path, label).
NAV_LINKS = (("/accounts", "Accounts"), ("/webhooks", "Webhooks"), ("/security", "Security"))
TEMPLATES_DIR = Path(__file__).resolve().parents[2] / "templates"
STATIC_DIR = Path(__file__).resolve().parents[2] / "static"


def environment(support_url: str = "/support") -> jinja2.Environment:
    """The template environment: every variable is HTML-escaped unless marked safe.
    ``support_url``: where every "Contact support" leads (``SETTLE_SUPPORT_URL``)."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        money=wording.money,
        when=wording.when,
        exact_when=wording.exact_when,
        local=wording.local_when,
        iso=iso,
    )
    env.globals.update(
        present=wording.transfer,
        status_line=wording.status_line,
        called=people.called,
        nav_links=NAV_LINKS,
        support_url=support_url,
    )
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
    """An HTML response (a page or htmx fragments); ``server.web.headers`` adds the security
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
    return services(request).templates


def event_key(event: Event) -> str:
    """What an announcement is about: the same key, the same event (said once)."""
    if event.transfer is not None:
        return f"{event.transfer.id}:{event.type}"
    return f"{event.account_id}:{event.seq}"


def event_fragments(
    env: jinja2.Environment,
    event: Event,
    csrf_token: str = "",
    announce: str | None = None,
    silent: bool = False,
) -> str:
    """The out-of-band fragments that repaint every page for one event of one account
    (a page applies those it has and ignores the rest): for a transfer event its
    balance card (account page, dashboard, transfer page), the transfer's history row
    and detail card, the send form's status line (the sender's side), and the
    announcement; for an account event the balance card, the frozen notice, the Send
    button and the announcement. ``silent``: the announcement keeps only which event it
    is about (the answer to a send, whose status line gets the focus)."""
    if event.transfer is None:
        return _account_fragments(env, event)
    t, account_id = event.transfer, event.account_id
    note = wording.change_note(event.type, t, account_id)
    context = {
        "account_id": account_id,
        "currency": t.currency,
        "balance": event.balance,
        "seq": event.seq,
        "note": note,
        "t": t,
        "csrf_token": csrf_token,
        "oob": True,
    }
    available = wording.money(event.balance.available, t.currency)
    parts = [
        env.get_template("_balance.html").render(context),
        env.get_template("_row.html").render(context),
        env.get_template("_detail.html").render(context),
    ]
    if t.sent_from(account_id):
        parts.append(env.get_template("_status.html").render(context))
    text = announce or f"{note.text}. Available balance {available}."
    parts.append(
        env.get_template("_announce.html").render(
            text="" if silent else text,
            oob=True,
            tone="error" if announce else "",
            event="" if announce else event_key(event),
        )
    )
    return "".join(parts)


def _account_fragments(env: jinja2.Environment, event: Event) -> str:
    """One clear notice: the frozen notice says it on screen (the balance card carries
    no note of it), and the announcement, for screen readers only, says what changed."""
    account = event.account
    assert account is not None
    note = wording.account_note(event.type)
    context = {
        "account": account,
        "account_id": account.id,
        "currency": account.currency,
        "balance": event.balance,
        "seq": event.seq,
        "note": None,
        "oob": True,
    }
    return "".join(
        [
            env.get_template("_balance.html").render(context),
            env.get_template("_frozen.html").render(context),
            env.get_template("_send_button.html").render(context),
            env.get_template("_announce.html").render(
                text=f"{note.text}.", oob=True, tone="sr-only", event=event_key(event)
            ),
        ]
    )


def content_renderer(env: jinja2.Environment) -> Callable[[Event], str]:
    """The ``content`` of a stream message for htmx pages: the fragments that repaint the
    account's pages for that event (the hub renders it once per event)."""

    def render_content(event: Event) -> str:
        return event_fragments(env, event)

    return render_content
