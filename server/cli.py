"""The settle command line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import TYPE_CHECKING, Any

from server import admin, errors, logs, passwords
from server.audit import audit, verify_head
from server.money import parse_amount
from server.redisbox import bundled_redis
from server.settings import ConfigError, Settings
from server.store import Store, create_schema, open_store

if TYPE_CHECKING:
    from starlette.applications import Starlette

DEMO_PASSWORD = "settle-demo"  # noqa: S105 (printed to the user on purpose)
DEMO_USERS = (("alice", "1000.00"), ("bob", "500.00"), ("carol", "250.00"))

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


async def _create_user(store: Store, name: str, password: str, deposit: int | None) -> str:
    _, account_id = await admin.create_user(store, name, passwords.hash_password(password))
    if deposit:
        await admin.deposit(store, account_id, deposit)
    return account_id


def cmd_user_create(settings: Settings, args: argparse.Namespace) -> int:
    deposit = parse_amount(args.deposit, "deposit") if args.deposit else None
    account_id = asyncio.run(
        with_store(settings, lambda s: _create_user(s, args.name, args.password, deposit))
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
        (a["id"], a["owner"], a["currency"], a["available"], a["posted"], a["status"])
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
    status = "frozen" if args.action == "freeze" else "active"
    asyncio.run(with_store(settings, lambda s: admin.set_status(s, args.id, status)))
    print(f"account {args.id} is now {status}")
    return 0


async def create_demo(store: Store) -> list[tuple[str, str]]:
    made = []
    for name, amount in DEMO_USERS:
        try:
            account_id = await _create_user(store, name, DEMO_PASSWORD, parse_amount(amount))
        except errors.InvalidField:
            continue  # already there: the demo is idempotent
        made.append((name, account_id))
    return made


def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    made = asyncio.run(with_store(settings, create_demo))
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


def cmd_web(settings: Settings, args: argparse.Namespace) -> int:
    with resolved(settings) as s:
        asyncio.run(with_store(s, lambda store: asyncio.sleep(0)))
        serve("server.cli:web_app", s, args.workers or s.web_concurrency)
    return 0


def web_app() -> Starlette:
    """``settle web``'s app factory, called by uvicorn in each of its worker processes."""
    from server.app import from_env

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

    from server.protocol import uvicorn_options

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
    try:
        await store.connect()
        if settings.metrics_port:
            from prometheus_client import start_http_server

            from server.metrics import SETTLEMENT

            start_http_server(settings.metrics_port, settings.host, registry=SETTLEMENT.registry)
        freeze_heap()
        await run_worker(settings, store, stop)
    finally:
        await store.disconnect()


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
    from server import protocol
    from server.app import create_app

    assert settings.redis_url is not None
    stop = asyncio.Event()
    server: protocol.Server | None = None

    def on_signal(sig: int) -> None:
        stop.set()
        if server is not None:
            # A second Ctrl+C forces the exit (uvicorn's rule); the worker and store close.
            server.handle_exit(sig, None)

    _on_stop_signals(on_signal)
    store = open_store(settings)
    try:
        await store.connect()
        await create_schema(store)
        if stop.is_set():
            return
        users = await store.fetch_all("SELECT username FROM users WHERE username != 'bank'")
        url = f"http://{settings.host}:{settings.port}/"
        print(f"\n  settle is running at {url}")
        if users:
            names = ", ".join(sorted(r["username"] for r in users))
            print(f"  users: {names}  (demo password: {DEMO_PASSWORD})")
        print("  press Ctrl+C to stop\n", flush=True)
        app = create_app(settings, store=store)
        server = protocol.Server(protocol.config(app, settings, log_level="info"))
        freeze_heap()
        worker = asyncio.create_task(run_worker(settings, store, stop))
        try:
            await server.serve()
        finally:
            stop.set()
            await worker
    finally:
        await store.disconnect()


def cmd_watch(settings: Settings, args: argparse.Namespace) -> int:
    from server.watch import run

    url = args.url or f"http://{settings.host}:{settings.port}"
    return run(url, args.account, args.token, args.username, args.password, args.since)


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
    create.set_defaults(fn=cmd_user_create)
    listing = sub.add_parser("accounts", help="list account ids, owners and balances")
    listing.add_argument("user", nargs="?", help="only this user's accounts")
    listing.set_defaults(fn=cmd_accounts)
    account = sub.add_parser("account", help="freeze or unfreeze an account")
    account.add_argument("action", choices=["freeze", "unfreeze"])
    account.add_argument("id")
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
    return p


def _stop_on_sigterm(signum: int, frame: Any) -> None:
    # SIGTERM (systemd, honcho, container runtimes) stops settle the way Ctrl+C does:
    # every ``finally`` runs, the bundled redis-server included. uvicorn, when it catches
    # the signal itself, re-raises it here once it has shut down.
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``settle`` console script."""
    logs.configure()
    logs.quiet_libraries(os.environ.get("SETTLE_LOG_LEVEL", "info"))
    try:
        args = parser().parse_args(argv)
        signal.signal(signal.SIGTERM, _stop_on_sigterm)
        settings = Settings.from_env()
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


if __name__ == "__main__":
    sys.exit(main())
