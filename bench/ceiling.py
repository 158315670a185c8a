"""The ceiling: the smallest Starlette app that answers the benchmark's requests.

``POST /api/transfers`` parses the JSON body and answers 202 with a small JSON object,
and ``/ws`` accepts a WebSocket and waits for it to close. It is served exactly as
``settle web`` serves settle (``server.cli.serve``: same uvicorn, same options, one
process), so each settle figure can also be read as a fraction of what this machine,
uvicorn and Starlette allow at all.

    python -m bench.ceiling        # HOST, PORT from the environment
"""

from __future__ import annotations

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from server.cli import serve
from server.settings import Settings


async def accept(request: Request) -> Response:
    data = orjson.loads(await request.body())
    body = orjson.dumps({"id": "tr_ceiling", "status": "pending", **data})
    return Response(body, status_code=202, media_type="application/json")


async def idle(websocket: WebSocket) -> None:
    await websocket.accept()
    while (await websocket.receive())["type"] != "websocket.disconnect":
        pass


async def healthy(request: Request) -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")


def create_app() -> Starlette:
    return Starlette(
        routes=[
            Route("/api/transfers", accept, methods=["POST"]),
            Route("/readyz", healthy),
            WebSocketRoute("/ws", idle),
        ]
    )


if __name__ == "__main__":
    serve("bench.ceiling:create_app", Settings.from_env(), workers=1)
