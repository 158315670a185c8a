"""A client that tries to hold N silent TCP connections open against a server for a
while, reopening each one the server closes, and reports what it saw as JSON:

    python -m tests.idle_clients --port 8000 --sockets 10000 --seconds 60 --report out.json

Its own process (``tests/test_idle_flood.py`` runs it), so that it and the server each
have a whole open-file limit: it raises its soft limit to what it needs. It never sends
a byte. Times are taken when a connection is established (the kernel completes the
handshake before the server accepts it, so a socket's age includes any wait in the
server's accept queue).

A connection this side holds open at the end is counted as the server's only if the
server's side of it exists (``/proc/net/tcp``). One whose handshake's last ACK the kernel
dropped because the server's accept queue was full (``ListenDrops`` in
``/proc/net/netstat``; with SYN cookies the server keeps no trace of it at all) looks
established here but never reached the server, which cannot close what it never had:
those are reported apart, as half-open.
"""

from __future__ import annotations

import argparse
import errno
import json
import resource
import selectors
import socket
import statistics
import time
from pathlib import Path
from typing import Any

SPARE = 300  # descriptors beyond the sockets: the interpreter, the selector, a margin


def raise_file_limit(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            raise SystemExit(f"needs {need} open files, the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


class Flood:
    def __init__(self, port: int, sockets: int) -> None:
        self.address = ("127.0.0.1", port)
        self.target = sockets
        self.selector = selectors.DefaultSelector()
        self.open = 0  # established, as far as this side knows
        self.wanted = 0  # closed by the server or failed, to reopen
        self.opened = 0
        self.failed = 0  # connects that did not complete
        self.answered = 0  # connections the server wrote to before closing them
        self.ages: list[float] = []  # lifetimes of the connections the server closed

    def connect(self) -> bool:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        code = sock.connect_ex(self.address)
        if code not in (0, errno.EINPROGRESS):
            sock.close()
            self.failed += 1
            return False
        self.selector.register(sock, selectors.EVENT_WRITE, ("connecting", 0.0))
        return True

    def ended(self, sock: socket.socket) -> None:
        self.selector.unregister(sock)
        sock.close()
        self.wanted += 1

    def handle(self, key: selectors.SelectorKey, now: float) -> None:
        sock = key.fileobj
        assert isinstance(sock, socket.socket)
        state, since = key.data
        if state == "connecting":
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                self.failed += 1
                self.ended(sock)
                return
            self.open += 1
            self.opened += 1
            self.selector.modify(sock, selectors.EVENT_READ, ("open", now))
            return
        try:
            data = sock.recv(65536)
        except OSError:  # reset
            data = b""
        if data:
            if state == "open":
                self.answered += 1
                self.selector.modify(sock, selectors.EVENT_READ, ("answered", since))
            return
        self.ages.append(now - since)
        self.open -= 1
        self.ended(sock)

    def run(self, seconds: float) -> dict[str, Any]:
        start = time.monotonic()
        self.wanted = self.target
        held: list[int] = []
        next_sample = start + 1
        while (now := time.monotonic()) < start + seconds:
            while self.wanted and self.connect():
                self.wanted -= 1
            for key, _ in self.selector.select(timeout=0.1):
                self.handle(key, time.monotonic())
            if now >= next_sample:
                held.append(self.open)
                next_sample += 1
        now = time.monotonic()
        servers = server_side_ports(self.address[1])
        still: list[float] = []
        half_open: list[float] = []
        for key in self.selector.get_map().values():
            if key.data[0] == "connecting":
                continue
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            known = sock.getsockname()[1] in servers
            (still if known else half_open).append(now - key.data[1])
        for key in list(self.selector.get_map().values()):
            self.selector.unregister(key.fileobj)
            key.fileobj.close()  # type: ignore[union-attr]
        # The first seconds ramp up to the target: held counts from the 10th second.
        steady = held[10:] or held
        return {
            "target": self.target,
            "seconds": seconds,
            "connections_opened": self.opened,
            "closed_by_server": len(self.ages),
            "answered_before_close": self.answered,
            "failed_connects": self.failed,
            "max_age_closed_s": round(max(self.ages, default=0.0), 3),
            "median_age_closed_s": round(statistics.median(self.ages), 3) if self.ages else None,
            "max_age_open_at_end_s": round(max(still, default=0.0), 3),
            "half_open_at_end": len(half_open),
            "max_age_half_open_at_end_s": round(max(half_open, default=0.0), 3),
            "held_max": max(held, default=0),
            "held_min_after_10_s": min(steady, default=0),
            "held_mean_after_10_s": round(statistics.mean(steady), 1) if steady else 0,
        }


def server_side_ports(port: int) -> set[int]:
    """The client ports of the loopback connections whose server side (local ``port``)
    the kernel has: accepted, or waiting in the accept queue (not listening, not a
    half-done handshake)."""
    listen, syn_recv = "0A", "03"
    found: set[int] = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state = fields[1], fields[2], fields[3]
        if int(local.split(":")[1], 16) == port and state not in (listen, syn_recv):
            found.add(int(remote.split(":")[1], 16))
    return found


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--sockets", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--report", type=Path, required=True)
    args = parser.parse_args()
    raise_file_limit(args.sockets + SPARE)
    report = Flood(args.port, args.sockets).run(args.seconds)
    args.report.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
