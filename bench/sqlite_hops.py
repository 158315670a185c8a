"""How the SQLite store should reach its threads: aiosqlite's public API (one hop to the
connection's thread per statement) against the store's own thread (one hop for a whole
transaction, ``server.store.sqlite._Thread``), on the same acceptance-shaped transaction
(two reads, two updates, three inserts, as ``store.ledger.accept`` makes), one after the
other, on one file each, in one process.

    python -m bench.sqlite_hops [--transactions 3000]

Prints transactions per second and the event loop's CPU per transaction (process CPU,
both threads, over wall time) for each. aiosqlite is not a dependency of settle: this
installs it for the run if it is missing.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from server.store.sqlite import _Thread

SCHEMA = (
    "CREATE TABLE accounts (id TEXT PRIMARY KEY, balance INTEGER, seq INTEGER)",
    "CREATE TABLE transfers (id TEXT PRIMARY KEY, src TEXT, dst TEXT, amount INTEGER)",
    "CREATE TABLE events (account TEXT, seq INTEGER, payload TEXT, PRIMARY KEY (account, seq))",
)
STATEMENTS: list[tuple[str, Callable[[int], tuple[Any, ...]]]] = [
    ("SELECT * FROM accounts WHERE id = ?", lambda i: ("a",)),
    ("SELECT * FROM accounts WHERE id = ?", lambda i: ("b",)),
    ("UPDATE accounts SET balance = balance - 1, seq = seq + 1 WHERE id = ?", lambda i: ("a",)),
    ("UPDATE accounts SET balance = balance + 1, seq = seq + 1 WHERE id = ?", lambda i: ("b",)),
    ("INSERT INTO transfers VALUES (?, 'a', 'b', 1)", lambda i: (f"tr{i}",)),
    ("INSERT INTO events VALUES ('a', ?, '{}')", lambda i: (i,)),
    ("INSERT INTO events VALUES ('b', ?, '{}')", lambda i: (i,)),
]


def prepare(path: Path) -> None:
    raw = sqlite3.connect(path)
    raw.execute("PRAGMA journal_mode=WAL")
    for sql in SCHEMA:
        raw.execute(sql)
    raw.execute("INSERT INTO accounts VALUES ('a', 0, 0), ('b', 0, 0)")
    raw.commit()
    raw.close()


def connect(path: Path) -> sqlite3.Connection:
    raw = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    # NORMAL: no fsync per commit, so that the hops, not the disk, are what is measured.
    raw.execute("PRAGMA synchronous=NORMAL")
    return raw


async def per_statement(path: Path, n: int) -> None:
    aiosqlite: Any = importlib.import_module("aiosqlite")
    async with aiosqlite.connect(path, isolation_level=None) as db:
        await db.execute("PRAGMA synchronous=NORMAL")
        for i in range(n):
            await db.execute("BEGIN IMMEDIATE")
            for sql, args in STATEMENTS:
                cursor = await db.execute(sql, args(i))
                await cursor.fetchall()
            await db.execute("COMMIT")


def _body(raw: sqlite3.Connection, i: int) -> None:
    raw.execute("BEGIN IMMEDIATE")
    for sql, args in STATEMENTS:
        raw.execute(sql, args(i)).fetchall()
    raw.execute("COMMIT")


async def per_transaction(path: Path, n: int) -> None:
    thread = _Thread(lambda: connect(path), "bench")
    await thread.start()
    try:
        for i in range(n):
            await thread.call(_body, i)
    finally:
        await thread.close()


def measure(name: str, run: Callable[[Path, int], Coroutine[Any, Any, None]], n: int) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.db"
        prepare(path)
        wall, cpu = time.perf_counter(), time.process_time()
        asyncio.run(run(path, n))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return f"| {name} | {n / wall:,.0f} | {cpu / n * 1e6:,.0f} µs |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--transactions", type=int, default=3000)
    n = parser.parse_args().transactions
    try:
        importlib.import_module("aiosqlite")
    except ImportError:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "aiosqlite"], check=True)
    print(f"{n} acceptance-shaped transactions ({len(STATEMENTS) + 2} statements each)\n")
    print("| how | transactions/s | CPU per transaction |")
    print("|---|---|---|")
    for _ in range(2):  # twice, alternating: the second pair shows the noise
        print(measure("aiosqlite, a hop per statement", per_statement, n))
        print(measure("own thread, a hop per transaction", per_transaction, n))


if __name__ == "__main__":
    main()
