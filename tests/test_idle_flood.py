"""10,000 TCP connections that never send a byte, held against a real ``settle web``: the
process stays answerable (``/healthz`` 200 throughout, through the reserve kept above
the connection cap) and closes each silent socket within seconds
(``server/web/protocol.py``).

The server and the idle clients run in separate processes, each with its own open-file
limit: this machine's hard limit (20,000) could not hold both sides of 10,000
connections in one. The figures are printed (run with ``-s`` to see them).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import sys
import time
from pathlib import Path

import httpx
import pytest

from server.settings import Settings
from tests.conftest import free_port
from tests.fleet import Fleet

SOCKETS = 10_000
SECONDS = 60
# What one process needs: the sockets, the reserve and spare descriptors of the server.
NEED = 10_300
# The promise: a silent socket is closed within this long of its opening.
MAX_AGE_S = 15


@pytest.mark.slow
@pytest.mark.timeout(SECONDS + 120)
async def test_ten_thousand_silent_sockets_leave_healthz_answering(
    settings: Settings, fleet: Fleet, tmp_path: Path
) -> None:
    """Before: /healthz answered 503 while they were held, and a silent socket stayed
    open for good (uvicorn's timers start only at a first byte or after an answer)."""
    if not settings.is_sqlite:
        pytest.skip("SQLite only: the flood tests the HTTP protocol, not the database")
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < NEED:
        pytest.skip(f"needs an open-file hard limit of {NEED} per process; this one is {hard}")
    port = free_port()
    fleet.start("web", "web", PORT=str(port), HOST="127.0.0.1")
    await fleet.ready(port)
    report = tmp_path / "idle-clients.json"
    clients = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.idle_clients",
        *("--port", str(port), "--sockets", str(SOCKETS), "--seconds", str(SECONDS)),
        *("--report", str(report)),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,  # a traceback, if it fails: small
    )
    answers: list[tuple[int | str, float]] = []
    # A health checker as load balancers run them: a new connection every 0.5 s.
    limits = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        while clients.returncode is None:
            began = time.monotonic()
            try:
                status: int | str = (
                    await client.get(f"http://127.0.0.1:{port}/healthz")
                ).status_code
            except httpx.TransportError as exc:
                status = repr(exc)
            answers.append((status, time.monotonic() - began))
            rest = 0.5 - (time.monotonic() - began)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(clients.wait(), max(rest, 0.0))
    _, failure = await clients.communicate()
    assert clients.returncode == 0, failure.decode()
    figures = json.loads(report.read_text())
    figures["healthz_answers"] = len(answers)
    figures["healthz_not_200"] = [a for a in answers if a[0] != 200]
    figures["healthz_worst_latency_s"] = round(max(s for _, s in answers), 3)
    print("\nidle flood:", json.dumps(figures, indent=1))
    fleet.check_alive()
    assert figures["healthz_not_200"] == [], figures
    assert len(answers) >= SECONDS, figures
    # The flood did fill the cap (10,000 held at once), and every socket, closed or
    # still open at the end, lived at most MAX_AGE_S. Not counted: the few the kernel
    # never handed the server (its accept queue was full as their handshake ended:
    # established on the client's side only, see tests/idle_clients.py); seen once in
    # CI, one of 116,139 connections, open 58.7 s.
    assert figures["held_max"] >= SOCKETS * 0.99, figures
    assert figures["closed_by_server"] >= SOCKETS, figures
    assert figures["max_age_closed_s"] <= MAX_AGE_S, figures
    assert figures["max_age_open_at_end_s"] <= MAX_AGE_S, figures
    assert figures["half_open_at_end"] <= SOCKETS // 100, figures
