"""Results: the JSON record, the Markdown tables, the targets and the chart."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

PG = "postgresql"
MB_PER_MIB = 1.048576


@dataclass
class Result:
    """One workload for one system on one backend, over one or more runs."""

    workload: str
    system: str
    backend: str
    runs: list[dict[str, float]] = field(default_factory=list)
    median: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    error: Optional[str] = None


class Results:
    """Every Result of one invocation, with lookups for the targets."""

    def __init__(self, meta: dict[str, Any]) -> None:
        self.meta = meta
        self.items: list[Result] = []

    def get(
        self, workload: str, system: str, backend: str, metric: str
    ) -> float | None:
        for item in self.items:
            if (item.workload, item.system, item.backend) == (
                workload,
                system,
                backend,
            ):
                return item.median.get(metric)
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "meta": self.meta,
            "results": [asdict(item) for item in self.items],
            "targets": targets(self),
        }


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def _best(results: Results, workload: str, peers: list[tuple[str, str]]) -> Any:
    found = [
        (value, system)
        for system, backend in peers
        if (value := results.get(workload, system, backend, "jobs/s")) is not None
    ]
    return max(found) if found else (None, None)


def targets(results: Results) -> list[dict[str, Any]]:
    """Each target with the measured ratio and whether it is met."""
    rows: list[dict[str, Any]] = []

    def add(
        name: str, value: float | None, goal: float, higher: bool, how: str
    ) -> None:
        met = None if value is None else (value >= goal if higher else value <= goal)
        rows.append(
            {"target": name, "value": value, "goal": goal, "met": met, "how": how}
        )

    pg_peers = [("procrastinate", PG), ("dbos", PG)]
    ceiling = results.get("ceiling", "pgbench", PG, "tx/s")
    for workload, goal in (("w1", 3.0), ("w2", 3.0)):
        best, who = _best(results, workload, pg_peers)
        mine = results.get(workload, "threadjobs", PG, "jobs/s")
        add(
            f"PostgreSQL {workload.upper()} >= {goal:g}x best peer",
            _ratio(mine, best),
            goal,
            True,
            f"threadjobs / {who} jobs/s",
        )
    steps = results.get("w1", "threadjobs", PG, "steps/s")
    add(
        "PostgreSQL W1 >= 60% of pgbench",
        _ratio(steps, ceiling),
        0.6,
        True,
        "threadjobs W1 steps/s / pgbench tx/s",
    )
    for workload in ("w1", "w2"):
        add(
            f"SQLite {workload.upper()} >= 2x Huey",
            _ratio(
                results.get(workload, "threadjobs", "sqlite", "jobs/s"),
                results.get(workload, "huey", "sqlite", "jobs/s"),
            ),
            2.0,
            True,
            "threadjobs / huey jobs/s",
        )
    best, who = _best(results, "enqueue", pg_peers)
    add(
        "PostgreSQL enqueue >= best peer",
        _ratio(results.get("enqueue", "threadjobs", PG, "jobs/s"), best),
        1.0,
        True,
        f"threadjobs / {who} jobs/s",
    )
    add(
        "SQLite enqueue >= Huey",
        _ratio(
            results.get("enqueue", "threadjobs", "sqlite", "jobs/s"),
            results.get("enqueue", "huey", "sqlite", "jobs/s"),
        ),
        1.0,
        True,
        "threadjobs / huey jobs/s",
    )
    add(
        "PostgreSQL bulk enqueue >= 20,000 jobs/s",
        results.get("bulk", "threadjobs", PG, "jobs/s"),
        20_000,
        True,
        "execute_many() jobs/s",
    )
    add(
        "PostgreSQL latency median <= 5 ms",
        results.get("latency", "threadjobs", PG, "median ms"),
        5.0,
        False,
        "ms from execute() to step start",
    )
    add(
        "PostgreSQL latency p99 <= 50 ms",
        results.get("latency", "threadjobs", PG, "p99 ms"),
        50.0,
        False,
        "ms from execute() to step start",
    )
    add(
        "Backlog W1 >= 80% of empty-queue W1",
        _ratio(
            results.get("backlog", "threadjobs", PG, "backlog jobs/s"),
            results.get("backlog", "threadjobs", PG, "empty jobs/s"),
        ),
        0.8,
        True,
        "jobs/s with the backlog / without",
    )
    growth = results.get("memory", "threadjobs", PG, "growth MiB")
    add(
        "Memory growth < 20 MB",
        None if growth is None else growth * MB_PER_MIB,
        20.0,
        False,
        "MB of worker RSS between the two marks",
    )
    return rows


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if abs(value) >= 100:
            return f"{value:,.0f}"
        return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def markdown(results: Results) -> str:
    """The results, the pgbench fractions and the targets as Markdown."""
    meta = results.meta
    lines = [
        f"Run {meta['date']} on {meta['machine']['nproc']} cores "
        f"({meta['machine']['cpu']}), {meta['mode']} mode, "
        f"medians of {meta['runs']} run(s) for the ceiling, W1, W2, enqueue and bulk.",
        "",
        "| workload | system | backend | metric | median | runs |",
        "|---|---|---|---|---|---|",
    ]
    for item in results.items:
        if item.error:
            lines.append(
                f"| {item.workload} | {item.system} | {item.backend} | - | - | "
                f"{item.error.splitlines()[0][:160]} |"
            )
            continue
        for metric, value in item.median.items():
            runs = ", ".join(_fmt(run.get(metric)) for run in item.runs)
            lines.append(
                f"| {item.workload} | {item.system} | {item.backend} | {metric} | "
                f"{_fmt(value)} | {runs} |"
            )
    lines += _ceiling_lines(results)
    lines += ["", "| target | measured | goal | met | how |", "|---|---|---|---|---|"]
    for row in targets(results):
        met = {True: "yes", False: "**no**", None: "-"}[row["met"]]
        lines.append(
            f"| {row['target']} | {_fmt(row['value'])} | {_fmt(row['goal'])} | "
            f"{met} | {row['how']} |"
        )
    return "\n".join(lines) + "\n"


def _ceiling_lines(results: Results) -> list[str]:
    ceiling = results.get("ceiling", "pgbench", PG, "tx/s")
    if ceiling is None:
        return []
    figures = [
        ("W1 steps/s", results.get("w1", "threadjobs", PG, "steps/s")),
        ("W2 step calls/s", results.get("w2", "threadjobs", PG, "step calls/s")),
        ("enqueue jobs/s", results.get("enqueue", "threadjobs", PG, "jobs/s")),
        ("bulk enqueue jobs/s", results.get("bulk", "threadjobs", PG, "jobs/s")),
    ]
    backlog = results.get("backlog", "threadjobs", PG, "backlog jobs/s")
    if backlog is not None:
        figures.append(("backlog W1 steps/s", 3 * backlog))
    lines = [
        "",
        f"pgbench ceiling: {_fmt(ceiling)} step transactions/s. threadjobs on "
        "PostgreSQL as a fraction of it:",
        "",
        "| figure | value | of pgbench |",
        "|---|---|---|",
    ]
    for name, value in figures:
        if value is not None:
            lines.append(f"| {name} | {_fmt(value)} | {value / ceiling:.1%} |")
    return lines


def chart(results: Results, path: Path) -> bool:
    """Bar charts of W1, W2, enqueue and latency, one panel each; False if
    matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        return False

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("w1", "jobs/s", "W1 chain, jobs/s"),
        ("w2", "jobs/s", "W2 fan-out, jobs/s"),
        ("enqueue", "jobs/s", "single enqueue, jobs/s"),
        ("latency", "median ms", "enqueue-to-start latency, median ms"),
    ]
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    for ax, (workload, metric, title) in zip(axes.flat, panels, strict=True):
        items = [
            item
            for item in results.items
            if item.workload == workload and metric in item.median
        ]
        labels = [f"{item.system}\n{item.backend}" for item in items]
        values = [item.median[metric] for item in items]
        colors = ["tab:blue" if i.system == "threadjobs" else "tab:gray" for i in items]
        ax.bar(labels, values, color=colors)
        ax.set_title(title)
        ax.tick_params(axis="x", labelsize=8)
        if workload == "latency" and values and max(values) > 20 * min(values):
            ax.set_yscale("log")
        for x, value in enumerate(values):
            ax.annotate(_fmt(value), (x, value), ha="center", va="bottom", fontsize=8)
    fig.suptitle(
        f"threadjobs benchmarks ({results.meta['mode']}, {results.meta['date']})"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def write(results: Results, out: Path) -> str:
    """Write results.json, results.md and results.png; return the Markdown."""
    out.mkdir(parents=True, exist_ok=True)
    text = markdown(results)
    (out / "results.json").write_text(json.dumps(results.to_json(), indent=2) + "\n")
    (out / "results.md").write_text(text + _plans(results))
    if not chart(results, out / "results.png"):
        text += "\n\n(no results.png: matplotlib is not installed)"
    return text


def _plans(results: Results) -> str:
    for item in results.items:
        if item.workload == "backlog" and "plan after" in item.extra:
            return (
                "\nClaim query plan with the backlog present (after the runs):\n\n"
                f"```\n{item.extra['plan after']}\n```\n"
            )
    return ""
