"""Fields of a posted form (login, logout, send, preview, cancel), read one way: as
text, or refused.

A form may come as ``multipart/form-data``, where any field can be a file: a file where
text is expected is refused (``422 invalid_field``; the CSRF field's refusal is
``403 csrf_failed``, ``server.web.sessions.check_csrf``), never passed on (it was a 500
where the code took it for a string, and the text "UploadFile(...)" where it made it
one). ``field`` checks a field by the one text rule (``server.domain.text``) as it is
read; ``typed`` leaves that to the field's own rule where it is used (the send form's,
whose refusals are worded for a person there). The body itself is limited before any of
this (``server.web.middleware``).
"""

from __future__ import annotations

from starlette.datastructures import FormData
from starlette.requests import Request

from server.domain import errors, text


async def read(request: Request) -> FormData:
    """The posted form. Any file in it is closed at once: no field of ours is a file
    (``field`` refuses one), and Starlette would leave its spooled copy open."""
    form = await request.form()
    await form.close()
    return form


def typed(form: FormData, name: str) -> str:
    """What was typed in field ``name`` ("" when absent), as text: a file is refused
    (InvalidField). For a field whose own rule is applied where it is used, with its own
    words for a person (an amount, a memo, a recipient, an idempotency key: each goes
    through ``server.domain.text`` or a stricter rule there)."""
    value = form.get(name, "")
    if not isinstance(value, str):
        raise errors.InvalidField(f"{name} must be text, not a file", name)
    return value


def field(form: FormData, name: str, max_len: int, *, controls: bool = False) -> str:
    """The text of field ``name`` ("" when absent), checked by the text rule
    (``server.domain.text``: at most ``max_len`` characters, valid Unicode, no NUL and,
    unless ``controls``, no control characters); else InvalidField."""
    return text.check(typed(form, name), name, max_len, controls=controls)
