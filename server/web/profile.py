"""A person's own settings that the pages keep: their time zone, which their browser
says on a first visit (``Intl``; static/settle.js), so that statements cut months where
the person lives them. Without JavaScript it stays unset, and months are UTC."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from server.domain import people
from server.store import accounts
from server.web import sessions
from server.web.services import services


async def time_zone(request: Request) -> Response:
    """Keep the browser's time zone as the user's, if they have none yet (or, with
    ``replace=1``, instead of theirs): 204, or 422 for a zone this server does not
    know."""
    session = await sessions.require(request)
    data = await request.form()
    sessions.check_csrf(request, session.csrf_token, data)
    zone = people.time_zone(str(data.get("time_zone", "")))
    replace = data.get("replace") == "1"
    await accounts.set_time_zone(services(request).store, session.user_id, zone, replace)
    return Response(status_code=204)


routes = [Route("/settings/time-zone", time_zone, methods=["POST"])]
