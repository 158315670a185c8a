"""Percentiles and summaries of latency samples."""

from __future__ import annotations

import math
from collections.abc import Sequence


def pct(values: Sequence[float], p: float) -> float:
    """The p-th percentile (nearest rank); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]


def summary(ms: Sequence[float]) -> dict[str, float]:
    """n, p50, p90, p99 and max of latencies in milliseconds."""
    return {
        "n": len(ms),
        "p50": pct(ms, 50),
        "p90": pct(ms, 90),
        "p99": pct(ms, 99),
        "max": max(ms) if ms else math.nan,
    }


def line(name: str, ms: Sequence[float]) -> str:
    s = summary(ms)
    return f"{name:<52} n={s['n']:<6} p50={s['p50']:7.2f} ms  p99={s['p99']:7.2f} ms"
