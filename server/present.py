"""How the pages word a transfer: who the other party is, from which side it is seen,
when it happened, whether money actually moved, and in what time.

Plain functions of the transfer object (``views.transfer_of``, as the API and the
stream carry it) and the account that is looking at it, so a page render and a live
event say exactly the same thing. Amounts stay decimal strings: no float touches money.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from server import statements

SYMBOLS = {"USD": "$", "EUR": "€", "GBP": "£"}
BANK_DEPOSIT = statements.BANK_DEPOSIT
# Why a transfer failed, from each side: (the sender reads, the recipient reads).
REASONS: dict[str, tuple[str, str]] = {
    "account_frozen": ("the recipient's account is frozen", "your account is frozen"),
    "expired": (
        "it was not settled in time and expired",
        "it was not settled in time and expired",
    ),
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


def reason_text(reason: str | None, outgoing: bool = True) -> str:
    """Why a transfer failed, as the sender (or the recipient) should read it."""
    if reason is None:
        return "the transfer could not be settled"
    sender, recipient = REASONS.get(reason, (reason.replace("_", " "),) * 2)
    return sender if outgoing else recipient


def when(iso: str | None) -> str:
    """An instant as the server writes it (UTC); the browser rewrites it to local time."""
    if iso is None:
        return ""
    return datetime.fromisoformat(iso).strftime("%-d %b %Y, %H:%M UTC")


def exact_when(iso: str | None) -> str:
    if iso is None:
        return ""
    return datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M:%S UTC")


def window(ms: float | None) -> str:
    """The consistency window as a person says it: "arrived in 1.5 s"."""
    if ms is None:
        return ""
    if ms < 1000:
        return "arrived in under a second"
    if ms < 60_000:
        seconds = f"{ms / 1000:.1f}".removesuffix(".0")
        return f"arrived in {seconds} s"
    minutes = round(ms / 60_000)
    if minutes < 120:
        return f"arrived in {minutes} min"
    return f"arrived in {round(ms / 3_600_000)} h"


def ago(seconds: int) -> str:
    if seconds < 60:
        return f"{seconds} s ago"
    return f"{seconds // 60} min ago"


def counterparty(t: Mapping[str, Any], outgoing: bool) -> str:
    """The other party's name: a username, "Bank deposit" for funding, or (for
    transfers recorded before names were kept) a shortened account id."""
    if not outgoing and t.get("kind") == "deposit":
        return BANK_DEPOSIT
    name = t.get("to_name") if outgoing else t.get("from_name")
    if name:
        return str(name)
    account = str(t["to_account"] if outgoing else t["from_account"])
    return account if len(account) <= 12 else account[:10] + "…"


def transfer(t: Mapping[str, Any], account_id: str) -> dict[str, Any]:
    """A transfer as ``account_id``'s holder reads it."""
    outgoing = t["from_account"] == account_id
    status = str(t["status"])
    who = counterparty(t, outgoing)
    deposit = not outgoing and t.get("kind") == "deposit"
    moved = status in ("pending", "completed")
    if deposit:
        title = BANK_DEPOSIT
    else:
        title = f"To {who}" if outgoing else f"From {who}"
    if status == "completed":
        detail = window(t.get("settled_in_ms"))
    elif status == "pending":
        detail = "on its way" if outgoing else "on its way to you"
    elif status == "failed":
        verb = "not delivered" if outgoing else "could not be delivered"
        detail = f"{verb}: {reason_text(t.get('failure_reason'), outgoing)}"
    elif status == "cancelled":
        detail = "you cancelled it" if outgoing else "cancelled by the sender"
    else:
        detail = status
    return {
        "outgoing": outgoing,
        "who": who,
        "title": title,
        "amount": money(t["amount"], t["currency"]),
        "sign": ("\N{MINUS SIGN}" if outgoing else "+") if moved else "",
        "void": not moved,
        "void_text": "not charged" if outgoing else "not received",
        "detail": detail,
        "expires_at": t.get("expires_at") if status == "pending" else None,
        "created_at": t.get("created_at"),
        "can_cancel": outgoing and status == "pending",
    }


def change_note(kind: str, t: Mapping[str, Any], account_id: str) -> dict[str, str]:
    """What an event did to this account, in words, naming who and how much: shown on
    the balance card and announced to screen readers."""
    outgoing = t["from_account"] == account_id
    amount = money(t["amount"], t["currency"])
    who = counterparty(t, outgoing)
    outcome = kind.removeprefix("transfer.")
    window_text = window(t.get("settled_in_ms"))
    arrived = f" — {window_text}" if window_text else ""
    reason = reason_text(t.get("failure_reason"), outgoing)
    if not outgoing and t.get("kind") == "deposit":
        source = "a bank deposit"
    else:
        source = who
    notes = {
        ("pending", True): ("held", f"{amount} held for a pending transfer to {who}"),
        ("pending", False): ("incoming", f"{amount} from {source} incoming, pending"),
        ("completed", True): ("settled", f"{amount} sent to {who}{arrived}"),
        ("completed", False): ("settled", f"{amount} received from {source}{arrived}"),
        (
            "failed",
            True,
        ): ("rollback", f"Rolled back: {amount} returned — transfer to {who} failed, {reason}"),
        (
            "failed",
            False,
        ): ("rollback", f"{amount} from {source} could not be delivered: {reason}"),
        ("cancelled", True): ("rollback", f"Cancelled: {amount} released — not sent to {who}"),
        ("cancelled", False): ("rollback", f"Incoming {amount} from {source} was cancelled"),
    }
    tone, text = notes.get((outcome, outgoing), ("info", f"{amount}: {outcome}"))
    return {"tone": tone, "text": text}


def status_line(t: Mapping[str, Any]) -> dict[str, str]:
    """The send form's status line for the transfer it sent, at each of its states."""
    amount = money(t["amount"], t["currency"])
    who = counterparty(t, True)
    status = t["status"]
    if status == "pending":
        return {"tone": "sent", "text": f"Sending {amount} to {who}: pending until it settles."}
    if status == "completed":
        arrived = window(t.get("settled_in_ms"))
        return {"tone": "done", "text": f"Done: {amount} reached {who} ({arrived})."}
    if status == "failed":
        reason = reason_text(t.get("failure_reason"), True)
        return {"tone": "failed", "text": f"Failed: {amount} not sent to {who}, {reason}."}
    return {"tone": "failed", "text": f"Cancelled: {amount} not sent to {who}."}
