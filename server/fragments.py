"""Templates: the Jinja environment, HTML responses with security headers, and the
WebSocket ``content`` fragments.

Pages and live events render the same ``_partial.html`` templates (balance card,
transfer row, announcement), so an event repaints exactly what a reload would show.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse

from server.events import TRANSFER_TYPES

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"
STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

SYMBOLS = {"USD": "$", "EUR": "€", "GBP": "£"}
REASONS = {
    "account_frozen": "the recipient's account is frozen",
}


def money(amount: str | None, currency: str = "USD") -> str:
    """Decimal strings like "-1234.5" as "-$1,234.50" with a true minus sign; the
    amounts stay exact strings, never floats."""
    if amount is None:
        return ""
    sign = "\N{MINUS SIGN}" if amount.startswith("-") else ""
    units, _, frac = amount.lstrip("-").partition(".")
    symbol = SYMBOLS.get(currency)
    number = f"{int(units):,}.{(frac or '0').ljust(2, '0')[:2]}"
    return f"{sign}{symbol}{number}" if symbol else f"{sign}{number} {currency}"


def reason_text(reason: str | None) -> str:
    if reason is None:
        return "the transfer could not be settled"
    return REASONS.get(reason, reason.replace("_", " "))


def when(iso: str | None) -> str:
    if iso is None:
        return ""
    return datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M:%S UTC")


def short_id(value: str) -> str:
    return value if len(value) <= 12 else value[:10] + "…"


def environment() -> jinja2.Environment:
    """The template environment: every variable is HTML-escaped unless marked safe."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(money=money, reason=reason_text, when=when, short_id=short_id)
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


def change_note(kind: str, transfer: Mapping[str, Any], account_id: str) -> dict[str, str]:
    """What an event did to this account, in words: shown on the balance card and
    announced to screen readers."""
    outgoing = transfer["from_account"] == account_id
    amount = money(transfer["amount"], transfer["currency"])
    outcome = kind.removeprefix("transfer.")
    ms = transfer.get("settled_in_ms")
    settled = f" — settled in {ms:g} ms" if ms is not None else ""
    reason = reason_text(transfer.get("failure_reason"))
    notes = {
        ("pending", True): ("held", f"{amount} held for a pending transfer"),
        ("pending", False): ("incoming", f"{amount} incoming, pending"),
        ("completed", True): ("settled", f"{amount} sent{settled}"),
        ("completed", False): ("settled", f"{amount} received{settled}"),
        ("failed", True): ("rollback", f"Rolled back: {amount} returned — failed, {reason}"),
        ("failed", False): ("rollback", f"Incoming {amount} did not arrive — {reason}"),
        ("cancelled", True): ("rollback", f"Cancelled: {amount} released"),
        ("cancelled", False): ("rollback", f"Incoming {amount} was cancelled by the sender"),
    }
    tone, text = notes.get((outcome, outgoing), ("info", f"{amount}: {outcome}"))
    return {"tone": tone, "text": text}


def event_fragments(
    env: jinja2.Environment, message: Mapping[str, Any], csrf_token: str = ""
) -> str:
    """The out-of-band fragments that repaint a page for one transfer event."""
    account_id, transfer = message["account"], message["transfer"]
    note = change_note(message["type"], transfer, account_id)
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
    available = money(message["balance"]["available"], transfer["currency"])
    return "".join(
        [
            env.get_template("_balance.html").render(context),
            env.get_template("_row.html").render(context),
            env.get_template("_announce.html").render(
                text=f"{note['text']}. Available balance {available}.", oob=True
            ),
        ]
    )


def content_renderer(env: jinja2.Environment) -> Callable[[dict[str, Any]], str]:
    """The ``content`` of a stream message for htmx pages: the fragments that repaint the
    account's page for that event (the hub renders it once per event)."""

    def render_content(message: dict[str, Any]) -> str:
        if message.get("type") in TRANSFER_TYPES and "transfer" in message:
            return event_fragments(env, message)
        return ""

    return render_content
