"""The settle command line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import errno
import gc
import logging
import os
import signal
import socket
import sys
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from typing import TYPE_CHECKING, Any

from arq import create_pool

from server import logs
from server.domain import errors, people
from server.domain.money import format_amount, parse_amount
from server.live.dispatch import Dispatcher
from server.redisbox import bundled_redis, redis_settings, running_redis_url
from server.settings import ConfigError, Settings
from server.store import Store, create_schema, open_store
from server.store import accounts as admin
from server.store.audit import audit, verify_head
from server.store.migrate import MigrationRefused
from server.usecases import accounts as account_cases
from server.usecases.context import Context, Unpublished
from server.web import passwords

if TYPE_CHECKING:
    from starlette.applications import Starlette

DEMO_PASSWORD = "settle-demo"  # noqa: S105 (printed to the user on purpose)
# (username, the name they go by, their first deposit)
DEMO_USERS = (
    ("alice", "Alice Chen", "1000.00"),
    ("bob", "Bob Martin", "500.00"),
    ("carol", "Carol Diaz", "250.00"),
)

log = logging.getLogger("settle")


@contextlib.contextmanager
def resolved(settings: Settings) -> Iterator[Settings]:
    """Settings with a usable REDIS_URL: the configured one, or the bundled server."""
    if settings.redis_url is not None:
        yield settings
        return
    with bundled_redis(settings.var_dir) as url:
        # Child processes (uvicorn workers) read settings from the environment too.
        os.environ["REDIS_URL"] = url
        yield dataclasses.replace(settings, redis_url=url)


async def with_store(settings: Settings, fn: Callable[[Store], Awaitable[Any]]) -> Any:
    store = open_store(settings)
    await store.connect()
    try:
        await create_schema(store)
        return await fn(store)
    finally:
        await store.disconnect()


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    async def go(store: Store) -> None:
        pass  # create_schema already ran in with_store

    asyncio.run(with_store(settings, go))
    print("database schema is up to date")
    return 0


@contextlib.asynccontextmanager
async def usecases(settings: Settings, store: Store) -> AsyncIterator[Context]:
    """The use cases' context for a command that changes accounts: what it changes is
    published to the web processes when a Redis is there to carry it ($REDIS_URL, or the
    bundled server that ``settle run`` or ``settle web`` started); with none, no page is
    open to tell (each catches up from the log when it next connects)."""
    url = running_redis_url(settings)
    if url is None:
        yield Context(settings, store, Unpublished())
        return
    redis = await create_pool(redis_settings(settings, url, retries=2))
    dispatch = Dispatcher(redis, settings)
    try:
        yield Context(settings, store, dispatch)
    finally:
        await dispatch.close()
        await redis.aclose()


async def _create_user(
    settings: Settings,
    store: Store,
    name: str,
    password: str,
    deposit: int | None,
    display_name: str | None = None,
) -> str:
    _, account_id = await admin.create_user(
        store, people.username(name), passwords.hash_password(password), display_name=display_name
    )
    if deposit:
        async with usecases(settings, store) as ctx:
            await account_cases.deposit(ctx, account_id, deposit)
    return account_id


def cmd_user_create(settings: Settings, args: argparse.Namespace) -> int:
    deposit = parse_amount(args.deposit, "deposit") if args.deposit else None
    account_id = asyncio.run(
        with_store(
            settings,
            lambda s: _create_user(
                settings, s, args.name, args.password, deposit, args.display_name
            ),
        )
    )
    print(f"created user {args.name} with account {account_id}")
    return 0


def cmd_accounts(settings: Settings, args: argparse.Namespace) -> int:
    found = asyncio.run(with_store(settings, lambda s: admin.list_accounts(s, args.user)))
    if not found:
        print(f"no accounts of {args.user}" if args.user else "no accounts yet")
        return 1 if args.user else 0
    rows = [("ACCOUNT", "OWNER", "CURRENCY", "AVAILABLE", "POSTED", "STATUS")]
    rows += [
        (
            a.id,
            a.owner,
            a.currency,
            format_amount(a.balance.available),
            format_amount(a.balance.posted),
            a.status.value,
        )
        for a in found
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        cells = [
            c.rjust(w) if i in (3, 4) else c.ljust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ]
        print("  ".join(cells).rstrip())
    return 0


def cmd_account_status(settings: Settings, args: argparse.Namespace) -> int:
    async def change(store: Store) -> tuple[str, bool]:
        async with usecases(settings, store) as ctx:
            account_id = await account_cases.account_named(ctx, args.account)
            if args.action == "freeze":
                return account_id, await account_cases.freeze(ctx, account_id) is not None
            return account_id, await account_cases.unfreeze(ctx, account_id) is not None

    account_id, changed = asyncio.run(with_store(settings, change))
    status = "frozen" if args.action == "freeze" else "active"
    print(f"account {account_id} {'is now' if changed else 'was already'} {status}")
    return 0


async def create_demo(settings: Settings, store: Store) -> list[tuple[str, str]]:
    made = []
    for name, display_name, amount in DEMO_USERS:
        try:
            account_id = await _create_user(
                settings, store, name, DEMO_PASSWORD, parse_amount(amount), display_name
            )
        except errors.InvalidField:
            # Already there: the demo is idempotent (it names demo users made before
            # display names existed, and renames nobody).
            await admin.name_user(store, name, display_name, only_unnamed=True)
            continue
        made.append((name, account_id))
    return made


def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    made = asyncio.run(with_store(settings, lambda store: create_demo(settings, store)))
    for name, account_id in made:
        print(f"created demo user {name} (password {DEMO_PASSWORD}), account {account_id}")
    if not made:
        print("demo users already exist")
    return 0


def cmd_audit(settings: Settings, args: argparse.Namespace) -> int:
    if args.verify_head:
        account, head = args.verify_head
        check = asyncio.run(with_store(settings, lambda s: verify_head(s, account, head)))
        print(check.message)
        return 0 if check.ok else 1
    report = asyncio.run(with_store(settings, audit))
    print(report.render())
    return 0 if report.ok else 1


class PortTaken(Exception):
    """The web server's address is in use: said in one line naming PORT."""


def listening_socket(settings: Settings) -> socket.socket:
    """The web server's listening socket, bound before anything says settle is running:
    a port in use is one clear line naming PORT, not uvicorn's Errno 98 after the
    banner."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    # As uvicorn binds: a port in TIME_WAIT after a restart is free, one in use is not.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((settings.host, settings.port))
    except OSError as exc:
        sock.close()
        why = {
            errno.EADDRINUSE: "the port is in use (another settle?)",
            errno.EACCES: "not allowed",
        }
        if exc.errno not in why:
            raise
        raise PortTaken(
            f"cannot listen on {settings.host}:{settings.port}: {why[exc.errno]}; "
            f"set PORT to a free one, e.g. PORT={settings.port + 1} make run"
        ) from None
    return sock


def cmd_web(settings: Settings, args: argparse.Namespace) -> int:
    # uvicorn binds in its own (worker) processes: check the port first, then let go.
    listening_socket(settings).close()
    with resolved(settings) as s:
        asyncio.run(with_store(s, lambda store: asyncio.sleep(0)))
        serve("server.cli:web_app", s, args.workers or s.web_concurrency)
    return 0


def web_app() -> Starlette:
    """``settle web``'s app factory, called by uvicorn in each of its worker processes."""
    from server.web.app import from_env

    app = from_env()
    freeze_heap()
    return app


def freeze_heap() -> None:
    """Put everything loaded so far (libraries, the app) out of the garbage collector's
    reach. Otherwise each full collection walks those ~90,000 long-lived objects and
    stalls the event loop for tens of milliseconds: at 200 requests/s, that pause alone
    sets the p99 latency."""
    gc.collect()
    gc.freeze()


def serve(factory: str, settings: Settings, workers: int) -> None:
    """Serve an ASGI app factory ("module:function") with uvicorn, as ``settle web`` does.

    The benchmark serves its minimal "ceiling" app through here too, so that the two are
    compared on exactly the same server settings.
    """
    import uvicorn

    from server.web.protocol import uvicorn_options

    uvicorn.run(
        factory,
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=workers,
        log_level="info",
        **uvicorn_options(settings),
    )


def run_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run a long-lived process on uvloop, as uvicorn runs the web server, when it is
    installed (uvicorn[standard] brings it): a settlement job, mostly Redis round trips,
    costs the worker ~10% less CPU than on asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main)


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    with resolved(settings) as s:
        run_loop(_work(s))
    return 0


async def _work(settings: Settings) -> None:
    """Run the worker until SIGTERM/SIGINT, then always release the database.

    We own the signals rather than arq: its shutdown path can raise CancelledError
    before on_shutdown runs, and an open database handle would keep the process alive.
    """
    from jobs.worker import run_worker

    stop = asyncio.Event()
    _on_stop_signals(lambda sig: stop.set())
    store = open_store(settings)
    metrics: asyncio.Task[None] | None = None
    try:
        await store.connect()
        if settings.metrics_port:
            metrics = asyncio.create_task(_serve_metrics(settings, stop))
            # A metrics server that fails stops the worker (and its error is raised).
            metrics.add_done_callback(lambda _: stop.set())
        freeze_heap()
        await run_worker(settings, store, stop)
    finally:
        stop.set()
        if metrics is not None:
            await metrics
        await store.disconnect()


async def _serve_metrics(settings: Settings, stop: asyncio.Event) -> None:
    """The worker's settlement metrics on SETTLE_METRICS_PORT, until ``stop``: the web's
    ``/metrics`` rule (token, or loopback only) on the web's HTTP protocol and limits."""
    from server.web import ops, protocol

    config = protocol.config(
        ops.worker_metrics_app(settings), settings, port=settings.metrics_port, lifespan="off"
    )
    server = protocol.Server(config)
    serving = asyncio.create_task(server.serve())
    await stop.wait()
    server.should_exit = True
    await serving


def _on_stop_signals(handler: Callable[[int], object]) -> None:
    """SIGTERM and Ctrl+C, from now on, call ``handler`` on the loop: settle stops
    gracefully, and whatever it opened (the database's threads above all, which would
    keep the process alive) is closed, however early in start-up the signal comes."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, handler, sig)


def cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    with resolved(settings) as s:
        run_loop(_run_all(s))
    return 0


async def _run_all(settings: Settings) -> None:
    """Web and worker in one event loop, sharing one database handle (one write lock)."""

    from jobs.worker import run_worker
    from server.web import protocol
    from server.web.app import create_app

    assert settings.redis_url is not None
    stop = asyncio.Event()
    server: protocol.Server | None = None

    def on_signal(sig: int) -> None:
        stop.set()
        if server is not None:
            # A second Ctrl+C forces the exit (uvicorn's rule); the worker and store close.
            server.handle_exit(sig, None)

    _on_stop_signals(on_signal)
    sock = listening_socket(settings)
    store = open_store(settings)
    try:
        await store.connect()
        await create_schema(store)
        if stop.is_set():
            return
        await _banner(settings, store)
        app = create_app(settings, store=store)
        server = protocol.Server(protocol.config(app, settings, log_level="info"))
        freeze_heap()
        worker = asyncio.create_task(run_worker(settings, store, stop))
        try:
            await server.serve(sockets=[sock])
        finally:
            stop.set()
            await worker
    finally:
        sock.close()
        await store.disconnect()


async def _banner(settings: Settings, store: Store) -> None:
    """Where settle is, and the demo users to log in as (only those: a user made by
    hand has a password of their own, which is not the demo's)."""
    listed = await admin.list_accounts(store)
    demo = {name for name, _, _ in DEMO_USERS} & {a.owner for a in listed}
    # Passkeys need a host name, not an IP address: send people to the public URL when
    # it is this very server.
    public = urllib.parse.urlsplit(settings.public_url)
    here = settings.host in ("127.0.0.1", "::1", "localhost") and public.port == settings.port
    shown = settings.public_url if here else f"http://{settings.host}:{settings.port}"
    print(f"\n  settle is running at {shown}/")
    if not here:
        print(f"  passkeys work only at {settings.public_url}/ (SETTLE_PUBLIC_URL)")
    if demo:
        print(f"  demo users: {', '.join(sorted(demo))}  (password: {DEMO_PASSWORD})")
    print("  press Ctrl+C to stop\n", flush=True)


def cmd_watch(settings: Settings, args: argparse.Namespace) -> int:
    from server.watch import run

    url = args.url or f"http://{settings.host}:{settings.port}"
    return run(url, args.account, args.token, args.username, args.password, args.since)


def cmd_webhooks_listen(settings: Settings, args: argparse.Namespace) -> int:
    from server.watch import run_listen

    url = args.url or f"http://{settings.host}:{settings.port}"
    return run_listen(url, args.forward_to, args.token, args.username, args.password)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="settle",
        description="settle: money transfers accepted at once, settled in the background, "
        "shown live.",
        epilog="Start with: settle demo, then settle run. Logs are quiet by default; "
        "SETTLE_LOG_LEVEL=debug shows every job.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="web + worker (+ bundled Redis) in one process").set_defaults(
        fn=cmd_run
    )
    web = sub.add_parser("web", help="the web server (HTTP API, pages, WebSocket)")
    web.add_argument("--workers", type=int, help="uvicorn worker processes (WEB_CONCURRENCY)")
    web.set_defaults(fn=cmd_web)
    sub.add_parser("worker", help="the arq worker that settles transfers").set_defaults(
        fn=cmd_worker
    )
    sub.add_parser("migrate", help="create or upgrade the database schema").set_defaults(
        fn=cmd_migrate
    )
    user = sub.add_parser("user", help="manage users").add_subparsers(dest="action", required=True)
    create = user.add_parser("create", help="create a user with one account")
    create.add_argument("name")
    create.add_argument("--password", required=True)
    create.add_argument("--deposit", help="fund the account from the bank, e.g. 100.00")
    create.add_argument(
        "--display-name", help='the name the user goes by, e.g. "Bob Martin" (default: NAME)'
    )
    create.set_defaults(fn=cmd_user_create)
    listing = sub.add_parser("accounts", help="list account ids, owners and balances")
    listing.add_argument("user", nargs="?", help="only this user's accounts")
    listing.set_defaults(fn=cmd_accounts)
    account = sub.add_parser("account", help="freeze or unfreeze an account")
    account.add_argument("action", choices=["freeze", "unfreeze"])
    account.add_argument("account", help="an account id, or a username (their first account)")
    account.set_defaults(fn=cmd_account_status)
    sub.add_parser("demo", help="create demo users with balances").set_defaults(fn=cmd_demo)
    check = sub.add_parser("audit", help="check every ledger invariant (exit 1 on violation)")
    check.add_argument(
        "--verify-head",
        nargs=2,
        metavar=("ACCOUNT", "HASH"),
        help="prove the account's history up to this chain head (a statement's) unchanged",
    )
    check.set_defaults(fn=cmd_audit)
    watch = sub.add_parser("watch", help="print an account's live events as JSON lines")
    watch.add_argument("account")
    watch.add_argument("--since", type=int, help="replay the events after this seq first")
    watch.add_argument("--token", help="an API token (or give --username and --password)")
    watch.add_argument("--username")
    watch.add_argument("--password")
    watch.add_argument("--url", help="the settle server (default: http://HOST:PORT)")
    watch.set_defaults(fn=cmd_watch)
    hooks = sub.add_parser("webhooks", help="webhooks for development").add_subparsers(
        dest="action", required=True
    )
    listen = hooks.add_parser(
        "listen",
        help="forward your accounts' events, signed as webhooks, to a local URL, printing"
        " each with its outcome",
    )
    listen.add_argument(
        "forward_to", metavar="URL", help="where to POST them, e.g. http://127.0.0.1:9000/hook"
    )
    listen.add_argument("--token", help="an API token (or give --username and --password)")
    listen.add_argument("--username")
    listen.add_argument("--password")
    listen.add_argument("--url", help="the settle server (default: http://HOST:PORT)")
    listen.set_defaults(fn=cmd_webhooks_listen)
    return p


def _stop_on_sigterm(signum: int, frame: Any) -> None:
    # SIGTERM (systemd, honcho, container runtimes) stops settle the way Ctrl+C does:
    # every ``finally`` runs, the bundled redis-server included. uvicorn, when it catches
    # the signal itself, re-raises it here once it has shut down.
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``settle`` console script."""
    logs.configure()
    try:
        args = parser().parse_args(argv)
        signal.signal(signal.SIGTERM, _stop_on_sigterm)
        settings = Settings.from_env()
        logs.quiet_libraries(settings.log_level)
        return int(args.fn(settings, args))
    except (KeyboardInterrupt, asyncio.CancelledError):
        # Ctrl+C: every ``finally`` has run; no traceback for a person who asked to stop.
        print("settle: stopped", file=sys.stderr)
        return 0
    except ConfigError as exc:
        print(f"settle: configuration error: {exc}", file=sys.stderr)
        return 2
    except errors.SettleError as exc:
        print(f"settle: {exc.message}", file=sys.stderr)
        return 1
    except MigrationRefused as exc:
        print(f"settle: cannot upgrade the database: {exc}", file=sys.stderr)
        return 1
    except PortTaken as exc:
        print(f"settle: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
