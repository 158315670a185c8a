"""A benchmark run's figures: each against its target, as a ratio to the ceiling, next to
the Django + Celery reference; rendered as a Markdown table and a latency CDF plot."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

# Given, not measured here: Django + gunicorn (4 sync workers) + Celery (prefork 2) +
# Redis + SQLite in WAL mode, the client polling every 50 ms, on a 2-core machine.
REFERENCE = {
    "acceptance_rate": "~190/s",
    "acceptance_p99": "~250 ms",
    "completed_p50": "64 ms",
    "completed_p99": "70 ms",
    "settlement_rate": "~380/s",
}
MAX_DROP = 0.20


@dataclasses.dataclass
class Figure:
    key: str
    name: str
    target: str
    value: float
    unit: str  # "/s", "ms", "B", "%", "% core" (of one CPU core) or "x" (a multiple)
    ok: bool | None  # None: no target of its own
    ratio: float | None = None  # to the ceiling
    note: str = ""

    @property
    def reference(self) -> str:
        return REFERENCE.get(self.key, "—")


def _fmt(value: float, unit: str) -> str:
    if unit == "/s":
        return f"{value:,.0f}/s"
    if unit == "B":
        return f"{value / 1000:,.1f} KB"
    if unit == "%":
        return f"{value:.1f}%"
    if unit == "% core":
        return f"{value:.2f}% of a core"
    if unit == "x":
        return f"{value:.2f}x"
    if value < 1:
        return f"{value:.2f} ms"
    return f"{value:,.1f} ms" if value < 100 else f"{value:,.0f} ms"


# A target: ("≥", limit), ("≤", limit) or ("<", limit), in the figure's unit; None: no
# target of its own.
Target = tuple[str, float] | None


def _target_text(target: Target, unit: str) -> str:
    if target is None:
        return "—"
    op, limit = target
    if unit == "B":
        return f"{op} {limit / 1000:g} KB"
    if unit == "%":
        return f"{op} {limit:g}%"
    if unit == "% core":
        return f"{op} {limit:g}% of a core"
    if unit == "x":
        return f"{op} {limit:g}x"
    return f"{op} {limit:,g}/s" if unit == "/s" else f"{op} {limit:g} ms"


def _met(target: Target, value: float) -> bool | None:
    if target is None:
        return None
    op, limit = target
    if op == "≥":
        return value >= limit
    return value <= limit if op == "≤" else value < limit


def figures(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Every figure of the run, as JSON-ready dicts."""
    ceiling, settle = results["ceiling"], results["settle"]
    c200 = ceiling["at_rate"]
    clients = results["plan"]["clients"]
    acc, fan = settle["acceptance"], settle["fanout"]
    idle = settle["idle"]["bytes_per_connection"]
    # key, name, value, unit, target, the ceiling's figure it is divided by (if any)
    rows: list[tuple[str, str, float, str, Target, float | None]] = [
        (
            "acceptance_rate",
            f"Transfers accepted, {clients} clients (the capacity)",
            acc["rate"],
            "/s",
            None,
            ceiling["closed"]["rate"],
        ),
        (
            "acceptance_share",
            "Transfers accepted, as a share of the ceiling's requests/s",
            acc["rate"] * 100 / ceiling["closed"]["rate"],
            "%",
            ("≥", 10),
            None,
        ),
        (
            "acceptance_cpu",
            "Web-process CPU per accepted transfer",
            acc["web_cpu_ms_per_transfer"],
            "ms",
            None,
            None,
        ),
        (
            "acceptance_p99",
            f"Acceptance latency p99, {clients} clients",
            acc["p99"],
            "ms",
            ("<", 30),
            ceiling["closed"]["p99"],
        ),
    ]
    rows += _window(settle, c200, "")
    rows += [
        (
            "settlement_rate",
            f"Settled by one worker, {settle['settlement']['transfers']:,} queued",
            settle["settlement"]["rate"],
            "/s",
            ("≥", 5000),
            ceiling["closed"]["rate"],
        ),
        (
            "idle_socket_memory",
            f"Web process memory per idle WebSocket, {settle['idle']['connections']:,} open",
            idle,
            "B",
            ("<", 30_000),
            ceiling["idle"]["bytes_per_connection"],
        ),
        (
            "fanout_p99",
            f"One event to {fan['subscribers']:,} subscribers, p99",
            fan["p99"],
            "ms",
            ("<", 50),
            c200["p99"],
        ),
    ]
    out = [_figure(*row) for row in rows]
    if "postgresql" in results:
        out += _postgresql(results["postgresql"], settle, ceiling, clients, c200)
    if "large" in results:
        out += _large(results["large"], settle, ceiling["closed"]["rate"], c200)
    if "worker_idle" in results:
        out += _worker_idle(results["worker_idle"])
    return [{**dataclasses.asdict(f), "reference": f.reference} for f in out]


def _window(
    stack: dict[str, Any], c200: dict[str, float], suffix: str
) -> list[tuple[str, str, float, str, Target, float | None]]:
    """The window at half the capacity (and at a quiet rate): POST start to pending and
    completed at the sender's subscriber."""
    live, quiet = stack["live"], stack["live_quiet"]
    half = f"at {live['rate']:,.0f}/s (half the capacity){suffix}"
    at_quiet = f"at {quiet['rate']:,.0f}/s{suffix}"
    key = suffix.strip(", ").lower().replace("postgresql", "_pg")
    return [
        (
            f"completed_p99{key}",
            f"POST → `transfer.completed` at subscriber p99, {half}",
            live["completed"]["p99"],
            "ms",
            ("<", 25),
            c200["p99"],
        ),
        (
            f"pending_p99{key}",
            f"POST → `transfer.pending` at subscriber p99, {half}",
            live["pending"]["p99"],
            "ms",
            ("<", 10),
            c200["p99"],
        ),
        (
            f"completed_p50{key}",
            f"POST → `transfer.completed` at subscriber p50, {half}",
            live["completed"]["p50"],
            "ms",
            None,
            c200["p50"],
        ),
        (
            f"completed_quiet_p99{key}",
            f"POST → `transfer.completed` at subscriber p99, {at_quiet}",
            quiet["completed"]["p99"],
            "ms",
            ("≤", 12),
            c200["p99"],
        ),
    ]


def _postgresql(
    pg: dict[str, Any],
    settle: dict[str, Any],
    ceiling: dict[str, Any],
    clients: int,
    c200: dict[str, float],
) -> list[Figure]:
    """The same stack on PostgreSQL, and its web process's CPU against SQLite's."""
    acc = pg["acceptance"]
    cpu_ratio = acc["web_cpu_ms_per_transfer"] / settle["acceptance"]["web_cpu_ms_per_transfer"]
    rows: list[tuple[str, str, float, str, Target, float | None]] = [
        (
            "acceptance_rate_pg",
            f"Transfers accepted, {clients} clients, PostgreSQL (the capacity)",
            acc["rate"],
            "/s",
            None,
            ceiling["closed"]["rate"],
        ),
        (
            "acceptance_share_pg",
            "Transfers accepted as a share of the ceiling's requests/s, PostgreSQL",
            acc["rate"] * 100 / ceiling["closed"]["rate"],
            "%",
            ("≥", 10),
            None,
        ),
        (
            "acceptance_p99_pg",
            f"Acceptance latency p99, {clients} clients, PostgreSQL",
            acc["p99"],
            "ms",
            ("<", 30),
            ceiling["closed"]["p99"],
        ),
        (
            "acceptance_cpu_ratio_pg",
            "Web-process CPU per accepted transfer, PostgreSQL as a multiple of SQLite's",
            cpu_ratio,
            "x",
            ("≤", 1.5),
            None,
        ),
        *_window(pg, c200, ", PostgreSQL"),
        (
            "settlement_rate_pg",
            f"Settled by one worker, {pg['settlement']['transfers']:,} queued, PostgreSQL",
            pg["settlement"]["rate"],
            "/s",
            None,
            ceiling["closed"]["rate"],
        ),
    ]
    out = [_figure(*row) for row in rows]
    out[3].note = (
        f"{acc['web_cpu_ms_per_transfer']:.2f} ms against"
        f" {settle['acceptance']['web_cpu_ms_per_transfer']:.2f} ms"
    )
    return out


def _figure(key: str, name: str, value: float, unit: str, t: Target, base: float | None) -> Figure:
    ratio = None if base is None else value / base
    return Figure(key, name, _target_text(t, unit), value, unit, _met(t, value), ratio)


def _large(
    large: dict[str, Any], settle: dict[str, Any], c_rate: float, c200: dict[str, float]
) -> list[Figure]:
    entries = f"{large['ledger_entries']:,} entries"
    out = []
    for key, name in (
        ("acceptance", "Transfers accepted, 16 clients"),
        ("settlement", "Settled by one worker"),
    ):
        value, base = large[key]["rate"], settle[key]["rate"]
        change = value / base - 1
        out.append(
            Figure(
                f"large_{key}_rate",
                f"{name}, {entries}",
                "falls < 20%",
                value,
                "/s",
                change > -MAX_DROP,
                value / c_rate,
                f"{change:+.0%} vs. empty database",
            )
        )
    pages: list[tuple[str, str, Target]] = [
        ("pages", "a typical account", ("<", 50)),
        ("pages_merchant", f"the merchant ({large['merchant_transfers']:,} transfers)", None),
    ]
    for key, who, limit in pages:
        page = large[key]
        out.append(
            Figure(
                f"large_{key}_p99",
                f"Account page (HTML) p99, {who}, {entries}",
                _target_text(limit, "ms"),
                page["page"]["p99"],
                "ms",
                _met(limit, page["page"]["p99"]),
                page["page"]["p99"] / c200["p99"],
                f"JSON account p99 {page['api_account']['p99']:.1f} ms,"
                f" history p99 {page['api_history']['p99']:.1f} ms; event-loop lag meanwhile:"
                f" {_lag(page['loop_lag'])}",
            )
        )
    if "statement" in large:
        out += _statement(large["statement"], entries)
        out.append(
            _reading_lag(large["pages_merchant"]["loop_lag"], large["statement"]["loop_lag"])
        )
    return out


def _reading_lag(*lags: dict[str, float]) -> Figure:
    """Event-loop lag while the big account's history and statement are read: p99.9 as
    the bound of its histogram bucket."""
    samples = sum(lag["samples"] for lag in lags)
    over = sum(lag["over_5ms"] for lag in lags)
    bound = max(lag["p999_bound_s"] for lag in lags) * 1000
    return Figure(
        "reading_lag_p999",
        "Event-loop lag p99.9 while the merchant's history and statement are read",
        "< 5 ms",
        bound,
        "ms",
        over <= 0.001 * samples,
        note=f"at most this bucket's bound; {over:.0f} of {samples:.0f} samples over 5 ms",
    )


def _worker_idle(idle: dict[str, Any]) -> list[Figure]:
    """The idle worker (``bench/worker_idle.py``): its CPU, and pickup of a new job."""
    cpu, pickup = idle["idle_cpu_pct"], idle["pickup_ms"]
    return [
        Figure(
            "worker_idle_cpu",
            f"Idle worker CPU, over {idle['seconds']:g} s",
            _target_text(("<", 2), "% core"),
            cpu,
            "% core",
            _met(("<", 2), cpu),
        ),
        Figure(
            "worker_pickup_p99",
            f"Commit → settlement of a transfer sent to an idle worker, p99 of {pickup['n']}",
            _target_text(("<", 5), "ms"),
            pickup["p99"],
            "ms",
            _met(("<", 5), pickup["p99"]),
            note=f"p50 {pickup['p50']:.2f} ms",
        ),
    ]


def _statement(st: dict[str, Any], entries: str) -> list[Figure]:
    """Issue 14's figures: the merchant's whole statement, and balance at a time."""
    js, csv = st["json"], st["csv"]
    return [
        Figure(
            "statement_ms",
            f"Statement of {st['entries']:,} entries (JSON, streamed), the merchant, {entries}",
            "—",
            js["p50"],
            "ms",
            None,
            note=(
                f"median of {js['n']}, {js['bytes'] / 1e6:.1f} MB; web process peak memory"
                f" +{js['peak_rss_growth_kib'] / 1024:.1f} MiB; CSV {csv['p50']:,.0f} ms,"
                f" {csv['bytes'] / 1e6:.1f} MB, +{csv['peak_rss_growth_kib'] / 1024:.1f} MiB;"
                f" event-loop lag meanwhile: {_lag(st['loop_lag'])}"
            ),
        ),
        Figure(
            "balance_at_p99",
            f"Balance at a time p99, the merchant, {entries}",
            "—",
            st["balance_at"]["p99"],
            "ms",
            None,
            note=f"p50 {st['balance_at']['p50']:.1f} ms, {st['balance_at']['n']} random instants",
        ),
    ]


def _lag(lag: dict[str, float]) -> str:
    bound = lag["max_bound_s"] * 1000
    worst = "over 1 s" if bound == float("inf") else f"≤ {bound:g} ms"
    return f"max {worst}, {lag['over_5ms']:.0f} of {lag['samples']:.0f} samples over 5 ms"


def _verdict(ok: bool | None) -> str:
    return "" if ok is None else ("met" if ok else "**missed**")


def markdown(results: dict[str, Any]) -> str:
    m, plan, ceiling = results["machine"], results["plan"], results["ceiling"]
    lines = [
        f"### {plan['name']} run, {results['started']}",
        "",
        f"{m['cpus']} CPUs ({m['cpu']}), Python {m['python']}, commit {m['commit']}"
        + (" (with uncommitted changes)" if m["uncommitted_changes"] else "")
        + f"; load average {m['loadavg_start']:.2f} at the start, {m['loadavg_end']:.2f}"
        f" at the end; wall time {results['wall_s']:.0f} s.",
        "",
        "| figure | target | settle | vs. ceiling | Django + Celery (reference) | |",
        "|---|---|---|---|---|---|",
    ]
    for f in results["figures"]:
        value = _fmt(f["value"], f["unit"])
        if f["note"]:
            value += f" ({f['note']})"
        ratio = "" if f["ratio"] is None else f"{f['ratio']:.2f}x"
        lines.append(
            f"| {f['name']} | {f['target']} | {value} | {ratio} | {f['reference']}"
            f" | {_verdict(f['ok'])} |"
        )
    closed, at_rate = ceiling["closed"], ceiling["at_rate"]
    lines += [
        "",
        f"Ceiling (`bench/ceiling.py`, served like `settle web`): {closed['rate']:,.0f} req/s"
        f" at {plan['clients']} clients (p50 {closed['p50']:.1f} / p99 {closed['p99']:.1f} ms);"
        f" at {plan['ceiling_rate']}/s p50 {at_rate['p50']:.2f} / p99 {at_rate['p99']:.2f} ms;"
        f" {ceiling['idle']['bytes_per_connection'] / 1000:.1f} KB per idle WebSocket."
        " Throughputs are shown as a fraction of the ceiling's requests/s, latencies as a"
        " multiple of its latency at the same percentile (16 clients for acceptance,"
        f" {plan['ceiling_rate']}/s otherwise), memory as a multiple of its per-socket memory.",
    ]
    settle = results["settle"]
    extra = [
        f"202 at {settle['live']['rate']:,.0f}/s: p50 {settle['live']['accepted']['p50']:.1f} /"
        f" p99 {settle['live']['accepted']['p99']:.1f} ms",
        f"acceptance left {settle['acceptance']['pending_after']:,} pending, settled"
        f" {settle['acceptance']['drain_s']:.1f} s later",
        f"account page on the empty database p99 {settle['pages']['page']['p99']:.1f} ms",
        f"audit after the run: {'ok' if settle['audit']['ok'] else 'FAILED'}",
    ]
    if "postgresql" in results:
        extra.append(
            "audit after the PostgreSQL run:"
            f" {'ok' if results['postgresql']['audit']['ok'] else 'FAILED'}"
        )
    if "large" in results:
        large = results["large"]
        extra.append(
            f"large database: {large['transfers']:,} transfers,"
            f" {large['ledger_entries']:,} ledger entries, {large['account_events']:,} events,"
            f" seeded in {large['seed_s']:.0f} s; `settle audit` on it:"
            f" {'ok' if large['audit_seeded']['ok'] else 'FAILED'}"
            f" ({large['audit_seeded']['seconds']:.0f} s)"
        )
    lines += ["", "Also: " + "; ".join(extra) + "."]
    return "\n".join(lines) + "\n"


def plot(samples: dict[str, Any], results: dict[str, Any], path: Path) -> None:
    """CDF of the latencies at half the capacity: the ceiling's answer (at its fixed
    rate), settle's 202, pending, completed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rate = f"{results['settle']['live']['rate']:,.0f}"
    series = [
        ("ceiling: minimal endpoint answers", samples["ceiling"]["at_rate"], "0.6"),
        ("settle: 202 response", samples["settle"]["accepted"], "tab:blue"),
        ("settle: transfer.pending at subscriber", samples["settle"]["pending"], "tab:orange"),
        ("settle: transfer.completed at subscriber", samples["settle"]["completed"], "tab:green"),
    ]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for label, ms, color in series:
        xs = sorted(ms)
        ax.plot(xs, [(i + 1) / len(xs) for i in range(len(xs))], label=label, color=color)
    for x, label in ((10, "pending p99 target"), (25, "completed p99 target")):
        ax.axvline(x, color="0.3", linestyle=":", linewidth=1)
        ax.text(x, 0.97, f" {label}", rotation=90, fontsize=7, va="top")
    ax.axhline(0.99, color="0.8", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("milliseconds from POST start (log scale)")
    ax.set_ylabel("fraction of transfers")
    ax.set_title(
        f"settle at {rate} transfers/s offered ({results['plan']['name']} run,"
        f" {results['started'][:10]})"
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
