"""Exit 0 if the PostgreSQL server at argv[1] accepts a connection (used by `make test`)."""

from __future__ import annotations

import asyncio
import sys


async def reachable(url: str) -> bool:
    import asyncpg

    try:
        conn = await asyncpg.connect(url, timeout=3)
    except (TimeoutError, OSError, asyncpg.PostgresError):
        return False
    await conn.close()
    return True


if __name__ == "__main__":
    sys.exit(0 if asyncio.run(reachable(sys.argv[1])) else 1)
