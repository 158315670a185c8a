"""Every field of every form (login, logout, send, preview, cancel) is read as text by the
one rule (server/web/forms.py): a file where text is expected is refused, 403 for the
CSRF field and 422 for the others, never a 500, never taken for its name."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import Customer, Stack
from tests.test_pages import KEY, sent_by
from tests.test_sessions import browser, csrf_of, login

A_FILE = ("a.txt", b"not text", "text/plain")


async def posted_with_a_file(
    client: httpx.AsyncClient, path: str, form: dict[str, str], file_field: str
) -> httpx.Response:
    """``form`` posted as multipart/form-data, with ``file_field`` sent as a file."""
    data = {k: v for k, v in form.items() if k != file_field}
    return await client.post(path, data=data, files={file_field: A_FILE})


async def test_a_file_in_any_login_field_is_refused_never_a_500(stack: Stack) -> None:
    """Before: a csrf_token file was a 500 ('UploadFile' object has no attribute
    'encode'), and a username file was tried as the username "UploadFile(...)"."""
    alice = await stack.customer()
    async with browser(stack) as client:
        page = (await client.get("/login")).text
        form = {
            "username": alice.username,
            "password": "pw-" + alice.username,
            "csrf_token": csrf_of(page),
            "next": "/accounts",
        }
        r = await posted_with_a_file(client, "/login", form, "csrf_token")
        assert r.status_code == 403 and "text/html" in r.headers["content-type"]
        for name in ("username", "password", "next"):
            r = await posted_with_a_file(client, "/login", form, name)
            assert r.status_code == 422, (name, r.status_code)
            assert f"{name.capitalize()} must be text, not a file." in r.text
            assert 'name="password"' in r.text, "the login form again, with what to fix"
        # The same form, all text, logs in.
        r = await client.post("/login", data=form, files={"unused": ("", b"", "text/plain")})
        assert r.status_code == 303 and r.headers["location"] == "/accounts"


async def logged_in(stack: Stack, client: httpx.AsyncClient, who: Customer) -> dict[str, str]:
    """The send form as a browser would post it, for ``who`` logged in on ``client``."""
    await login(client, who)
    page = (await client.get(f"/accounts/{who.account}")).text
    return {
        "csrf_token": csrf_of(page),
        "idempotency_key": KEY.findall(page)[0],
        "amount": "1.00",
        "memo": "lunch",
    }


@pytest.mark.parametrize(
    ("form_of", "file_field", "status"),
    [
        ("send", "csrf_token", 403),
        ("send", "to", 422),
        ("send", "amount", 422),
        ("send", "memo", 422),
        ("send", "idempotency_key", 422),
        ("send", "confirm_duplicate", 422),
        ("preview", "csrf_token", 403),
        ("preview", "amount", 422),
        ("preview", "to", 422),
        ("cancel", "csrf_token", 403),
        ("logout", "csrf_token", 403),
    ],
)
async def test_a_file_in_a_field_of_a_session_s_form_is_refused(
    stack: Stack, form_of: str, file_field: str, status: int
) -> None:
    """Before: a csrf_token file was a 500 on every form, and a file in the send form's
    other fields was taken for the text "UploadFile(...)" (an idempotency key that way
    sent the transfer)."""
    alice, bob = await stack.customer(), await stack.customer("0")
    async with browser(stack) as client:
        form = {**await logged_in(stack, client, alice), "to": bob.username}
        if form_of in ("send", "preview"):
            form["confirm_duplicate"] = "1"
            path = f"/accounts/{alice.account}/{'transfers' if form_of == 'send' else 'preview'}"
        elif form_of == "cancel":
            sent = await stack.transfer(alice, bob.account, "1.00")
            path = f"/transfers/{sent.json()['id']}/cancel"
        else:
            path = "/logout"
        r = await posted_with_a_file(client, path, form, file_field)
        assert r.status_code == status, r.text[:500]
        assert "text/html" in r.headers["content-type"]
        if status == 422:
            assert "must be text, not a file" in r.text
        # Nothing was sent, and the session still works.
        assert await sent_by(stack, alice) == (1 if form_of == "cancel" else 0)
        assert (await client.get("/accounts")).status_code == 200
    await stack.settle_all()
