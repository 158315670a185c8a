"""settle subprocesses for the multi-process tests (``test_scale``, the chaos suite):
started, killed, awaited and stopped by name, each logging to a file."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from server.settings import Settings
from tests.conftest import settings_env


@dataclasses.dataclass(frozen=True)
class Holder:
    """An account and a token of its owner, as the driving clients hold them."""

    account: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


class Fleet:
    """Named ``python -m server.cli ...`` processes; all stopped at teardown."""

    def __init__(self, settings: Settings, logs: Path) -> None:
        self.settings = settings
        self.logs = logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.expected_dead: set[str] = set()

    def start(self, name: str, *args: str, **env: str) -> None:
        with open(self.logs / f"{name}.log", "ab") as log:
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", "server.cli", *args],
                env=settings_env(self.settings, **env),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.expected_dead.discard(name)

    def kill(self, name: str) -> None:
        proc = self.procs[name]
        self.expected_dead.add(name)
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()

    async def crashed(self, name: str, within: float = 30) -> None:
        """Wait for ``name`` to die by its own hand (a SETTLE_CRASH_POINT)."""
        proc = self.procs[name]
        self.expected_dead.add(name)
        code = await asyncio.wait_for(asyncio.to_thread(proc.wait), within)
        assert code == -signal.SIGKILL, f"{name} exited with {code}, not by its crash point"

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if name not in self.expected_dead and proc.poll() is not None:
                tail = self.tail(name, 3000)
                raise AssertionError(f"{name} exited with {proc.returncode}:\n{tail}")

    def tail(self, name: str, chars: int) -> str:
        """The end of ``name``'s log."""
        return (self.logs / f"{name}.log").read_text(errors="replace")[-chars:]

    def tails(self, chars: int = 2000) -> str:
        """The end of each process's log, for a failure's message."""
        return "\n".join(f"--- {name}.log:\n{self.tail(name, chars)}" for name in self.procs)

    def stop_all(self) -> None:
        """SIGTERM each process; one that does not stop within 15 s fails the test."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        hung = []
        for name, proc in self.procs.items():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                hung.append(name)
                proc.kill()
                proc.wait()
        assert not hung, f"did not stop within 15 s of SIGTERM: {hung}"

    async def ready(self, port: int, within: float = 30) -> None:
        """Until the web server on ``port`` answers /readyz with 200."""
        deadline = time.monotonic() + within
        async with httpx.AsyncClient(timeout=2) as client:
            while True:
                self.check_alive()
                with contextlib.suppress(httpx.TransportError):
                    url = f"http://127.0.0.1:{port}/readyz"
                    if (await client.get(url)).status_code == 200:
                        return
                assert time.monotonic() < deadline, f"web on port {port} not ready in {within} s"
                await asyncio.sleep(0.05)
