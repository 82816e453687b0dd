"""Profile one threadjobs W1 run on PostgreSQL: ``python -m benchmarks.run --profile``.

py-spy samples the worker process (a flame graph and the raw stacks) while
the worker counts the statements and commits it sends, so the summary tells
both where the CPU goes and how many round trips a step call costs.
"""

from __future__ import annotations

import json
import signal
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path

from .common import BenchError, Sizes, venv_bin
from .tj_bench import _run_jobs, fresh_executor, worker
from .tj_jobs import CHAIN

SAMPLE_RATE = 200
"""py-spy samples per second."""

TOP = 25


def _spy(pid: int, path: Path, raw: bool) -> subprocess.Popen[bytes]:
    args = [
        venv_bin("py-spy"),
        "record",
        "--pid",
        str(pid),
        "--rate",
        str(SAMPLE_RATE),
        "--nonblocking",
        "--output",
        str(path),
    ]
    if raw:
        args += ["--format", "raw"]
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def summarise(raw: Path) -> str:
    """Inclusive and own samples per function from py-spy's raw stacks."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        for frame in set(frames):
            inclusive[frame] += count
        own[frames[-1]] += count
    if not total:
        raise BenchError("py-spy recorded no samples")
    lines = [f"{total} samples of the worker's busy threads", "", "inclusive:"]
    lines += [f"{n / total:6.1%}  {frame}" for frame, n in inclusive.most_common(TOP)]
    lines += ["", "own time:"]
    lines += [f"{n / total:6.1%}  {frame}" for frame, n in own.most_common(TOP)]
    return "\n".join(lines)


def profile_w1(sizes: Sizes, out: Path) -> str:
    """Run W1 once under py-spy; write the SVG, raw stacks and a summary."""
    out.mkdir(parents=True, exist_ok=True)
    svg, raw = out / "w1_profile.svg", out / "w1_profile.txt"
    counts_file = Path(tempfile.mkdtemp(prefix="bench_counts_")) / "counts.json"
    with (
        fresh_executor("postgresql") as (url, executor),
        worker(url, "--count-queries", str(counts_file)) as child,
    ):
        spies = [_spy(child.pid, svg, raw=False), _spy(child.pid, raw, raw=True)]
        time.sleep(1.0)  # Let py-spy attach before the clock starts.
        secs = _run_jobs(executor, CHAIN, sizes.w1_jobs, "profile", sizes.timeout_secs)
        for spy in spies:
            spy.send_signal(signal.SIGINT)
        for spy in spies:
            _, err = spy.communicate(timeout=120)
            if spy.returncode not in (0, -signal.SIGINT):
                raise BenchError(f"py-spy failed: {err.decode()[-500:]}")
    counts = json.loads(counts_file.read_text())
    steps = 3 * sizes.w1_jobs
    per_step = {name: round(n / steps, 2) for name, n in sorted(counts.items())}
    text = (
        f"W1 on PostgreSQL under py-spy: {sizes.w1_jobs} jobs in {secs:.1f}s "
        f"({steps / secs:,.0f} steps/s, slower than unprofiled)\n"
        f"worker psycopg calls per step call (claim polls included): {per_step}\n\n"
        + summarise(raw)
    )
    (out / "w1_profile_summary.txt").write_text(text + "\n")
    return text
