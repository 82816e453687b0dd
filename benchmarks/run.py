"""Run the benchmark suite: ``python -m benchmarks.run [--quick] [--only w1,w2]``.

Full mode takes the median of three runs for W1, W2 and enqueueing and
writes benchmarks/results/; quick mode shrinks every workload so that CI can
check in under two minutes that everything still runs, and writes
benchmarks/results/quick/. A workload that cannot run (a backend that does
not work yet, a missing API) is recorded with its error and the rest go on.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

from . import ceiling, machine, report, tj_bench
from .common import BACKENDS, FULL, QUICK, RESULTS_DIR, BenchError, Sizes

Measure = Callable[[str, Sizes, int], dict[str, Any]]


class Peer:
    """A peer's workload, imported only when it runs, so that threadjobs
    alone can be measured without the peers installed."""

    def __init__(self, module: str) -> None:
        self.module = module

    def __getattr__(self, workload: str) -> Measure:
        def measure(backend: str, sizes: Sizes, run: int) -> dict[str, Any]:
            try:
                loaded = importlib.import_module(f"benchmarks.peers.{self.module}")
            except ImportError as exc:
                raise BenchError(
                    f"skipped: {exc}; pip install -r benchmarks/requirements.txt"
                ) from exc
            result: dict[str, Any] = getattr(loaded, workload)(backend, sizes, run)
            return result

        return measure


dbos_bench = Peer("dbos_bench")
huey_bench = Peer("huey_bench")
procrastinate_bench = Peer("procrastinate_bench")

# workload -> [(system, backend, function)]; peers run on their own backend.
PLAN: dict[str, list[tuple[str, str, Measure]]] = {
    "ceiling": [("pgbench", "postgresql", ceiling.pgbench)],
    "w1": [
        *[("threadjobs", b, tj_bench.w1) for b in BACKENDS],
        ("procrastinate", "postgresql", procrastinate_bench.w1),
        ("dbos", "postgresql", dbos_bench.w1),
        ("huey", "sqlite", huey_bench.w1),
    ],
    "w2": [
        *[("threadjobs", b, tj_bench.w2) for b in BACKENDS],
        ("procrastinate", "postgresql", procrastinate_bench.w2),
        ("dbos", "postgresql", dbos_bench.w2),
        ("huey", "sqlite", huey_bench.w2),
    ],
    "enqueue": [
        *[("threadjobs", b, tj_bench.enqueue) for b in BACKENDS],
        ("procrastinate", "postgresql", procrastinate_bench.enqueue),
        ("dbos", "postgresql", dbos_bench.enqueue),
        ("huey", "sqlite", huey_bench.enqueue),
    ],
    "bulk": [
        *[("threadjobs", b, tj_bench.enqueue_bulk) for b in BACKENDS],
        ("procrastinate", "postgresql", procrastinate_bench.enqueue_bulk),
    ],
    "latency": [
        *[("threadjobs", b, tj_bench.latency) for b in BACKENDS],
        ("procrastinate", "postgresql", procrastinate_bench.latency),
        ("dbos", "postgresql", dbos_bench.latency),
        ("huey", "sqlite", huey_bench.latency),
    ],
    "backlog": [("threadjobs", "postgresql", tj_bench.backlog)],
    "memory": [("threadjobs", "postgresql", tj_bench.memory)],
}

REPEATED = {"ceiling", "w1", "w2", "enqueue", "bulk"}
"""Workloads measured ``runs`` times; the others measure distributions or
repeat internally."""


def measure(
    workload: str, system: str, backend: str, fn: Measure, sizes: Sizes
) -> report.Result:
    """Run one cell of the plan, keeping an error instead of raising."""
    result = report.Result(workload, system, backend)
    runs = sizes.runs if workload in REPEATED else 1
    for run in range(runs):
        started = time.monotonic()
        try:
            values = fn(backend, sizes, run)
        except BenchError as exc:
            result.error = str(exc)
            break
        except Exception as exc:
            result.error = f"{type(exc).__name__}: {exc}".strip()
            traceback.print_exc(file=sys.stderr)
            break
        numbers = {k: float(v) for k, v in values.items() if _is_number(v)}
        result.runs.append(numbers)
        result.extra.update({k: v for k, v in values.items() if not _is_number(v)})
        print(
            f"  {workload} {system} {backend} run {run + 1}/{runs}: "
            f"{_summary(numbers)} ({time.monotonic() - started:.1f}s)",
            flush=True,
        )
    if result.runs:
        keys = result.runs[0].keys()
        result.median = {k: statistics.median(r[k] for r in result.runs) for k in keys}
    if result.error:
        print(f"  {workload} {system} {backend}: {result.error}", flush=True)
    return result


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _summary(values: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:,.1f}" for k, v in list(values.items())[:3])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, one run")
    parser.add_argument(
        "--only", help=f"comma-separated workloads out of {','.join(PLAN)}"
    )
    parser.add_argument("--systems", help="comma-separated systems, e.g. threadjobs")
    parser.add_argument("--backends", help=f"comma-separated, out of {BACKENDS}")
    parser.add_argument("--runs", type=int, help="runs per repeated workload")
    parser.add_argument("--backlog", type=int, help="jobs in the backlog")
    parser.add_argument("--out", help="where to write results (default results/)")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="profile one threadjobs W1 run on PostgreSQL with py-spy instead",
    )
    return parser.parse_args(argv)


def _pick(text: str | None, allowed: Any, what: str) -> set[str] | None:
    if not text:
        return None
    chosen = {part.strip() for part in text.split(",") if part.strip()}
    unknown = chosen - set(allowed)
    if unknown and what != "system":
        raise SystemExit(f"unknown {what}: {', '.join(sorted(unknown))}")
    return chosen


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = QUICK if args.quick else FULL
    if args.runs:
        sizes = dataclasses.replace(sizes, runs=args.runs)
    if args.backlog:
        sizes = dataclasses.replace(sizes, backlog_jobs=args.backlog)
    out = RESULTS_DIR / "quick" if args.quick else RESULTS_DIR
    if args.out:
        from pathlib import Path

        out = Path(args.out)
    if args.profile:
        from . import profile

        print(profile.profile_w1(sizes, out))
        return 0

    workloads = _pick(args.only, PLAN, "workload") or set(PLAN)
    systems = _pick(args.systems, (), "system")
    backends = _pick(args.backends, BACKENDS, "backend")
    results = report.Results(machine.describe("quick" if args.quick else "full", sizes))
    started = time.monotonic()
    for workload, cells in PLAN.items():
        if workload not in workloads:
            continue
        print(f"{workload}:", flush=True)
        for system, backend, fn in cells:
            if systems and system not in systems and system != "pgbench":
                continue
            if backends and backend not in backends:
                continue
            results.items.append(measure(workload, system, backend, fn, sizes))
            # Keep what is measured so far, should a long run be cut short.
            out.mkdir(parents=True, exist_ok=True)
            partial = json.dumps(results.to_json(), indent=2)
            (out / "results.partial.json").write_text(partial + "\n")
    results.meta["seconds"] = round(time.monotonic() - started, 1)
    print()
    print(report.write(results, out))
    (out / "results.partial.json").unlink(missing_ok=True)
    print(
        f"wrote {out}/results.json, results.md and results.png "
        f"in {results.meta['seconds']:.0f}s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
