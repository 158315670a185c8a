"""Time from a transfer's 202 to its completed state, over N transfers.

Starts `settle run` (bundled Redis, SQLite, web + worker) in a temporary directory on a
loopback port, sends N transfers one after another, and for each measures:
- client: from the 202 arriving to the first GET /api/transfers/{id} that says completed
  (polled every 1 ms, so this over-states by up to ~1 ms plus a request's round trip);
- server: the transfer's own settled_in_ms (settled_at - created_at, both stamped by
  settle; created_at is taken just before the acceptance commit).

    python bench/settle_latency.py [--n 100] [--delay-ms 0]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time

import httpx

PORT = 8731


def settle_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "server.cli", *args]


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--delay-ms", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            **os.environ,
            "SETTLE_VAR_DIR": tmp,
            "PORT": str(PORT),
            "SETTLE_DELAY_MS": str(args.delay_ms),
        }
        env.pop("REDIS_URL", None)
        env.pop("DATABASE_URL", None)
        subprocess.run(settle_cmd("demo"), env=env, check=True, capture_output=True)
        server = subprocess.Popen(
            settle_cmd("run"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            await measure(args.n)
        finally:
            server.terminate()
            server.wait(30)


async def measure(n: int) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{PORT}", timeout=10) as c:
        for _ in range(200):
            try:
                if (await c.get("/healthz")).status_code == 200:
                    break
            except httpx.TransportError:
                await asyncio.sleep(0.05)
        tokens = {}
        accounts = {}
        for name in ("alice", "bob"):
            r = await c.post("/api/tokens", json={"username": name, "password": "settle-demo"})
            tokens[name] = {"Authorization": f"Bearer {r.json()['token']}"}
            accounts[name] = (await c.get("/api/accounts", headers=tokens[name])).json()[
                "accounts"
            ][0]["id"]
        client_ms, server_ms = [], []
        for _ in range(n):
            body = {
                "from_account": accounts["alice"],
                "to_account": accounts["bob"],
                "amount": "0.01",
            }
            r = await c.post("/api/transfers", json=body, headers=tokens["alice"])
            assert r.status_code == 202, r.text
            accepted = time.perf_counter()
            tid = r.json()["id"]
            while True:
                t = (await c.get(f"/api/transfers/{tid}", headers=tokens["alice"])).json()
                if t["status"] == "completed":
                    client_ms.append((time.perf_counter() - accepted) * 1000)
                    server_ms.append(t["settled_in_ms"])
                    break
                await asyncio.sleep(0.001)
        for label, xs in (
            ("client 202 -> completed seen", client_ms),
            ("server created -> settled", server_ms),
        ):
            xs.sort()
            print(
                f"{label:32s} n={len(xs)} median={statistics.median(xs):.1f} ms "
                f"p90={xs[int(len(xs) * 0.9) - 1]:.1f} ms max={xs[-1]:.1f} ms"
            )


if __name__ == "__main__":
    asyncio.run(main())
