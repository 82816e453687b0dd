"""The benchmark suite's quick mode runs against the library as it is now.

It proves the benchmarks still work, not how fast anything is: threadjobs'
own workloads on every backend configured here. The peers need the
benchmark's own requirements and are left to its documented command.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests import servers

ROOT = Path(__file__).resolve().parent.parent

# Our backend names in tests -> the benchmark's, and its URL variable.
BENCH_BACKENDS = {
    "postgres": ("postgresql", "BENCH_POSTGRES_URL"),
    "mysql": ("mysql", "BENCH_MYSQL_URL"),
}
SERVER_ONLY = {"backlog", "memory"}
"""Workloads the benchmark runs on PostgreSQL alone."""


def test_quick_benchmarks_run(tmp_path: Path, server_urls: Any) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    backends = ["sqlite"]
    for name in servers.backends():
        if name in BENCH_BACKENDS:
            backend, variable = BENCH_BACKENDS[name]
            backends.append(backend)
            env[variable] = server_urls[name]

    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.run",
            "--quick",
            "--systems",
            "threadjobs",
            "--backends",
            ",".join(backends),
            "--out",
            str(tmp_path),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr

    results = json.loads((tmp_path / "results.json").read_text())["results"]
    ours = [item for item in results if item["system"] == "threadjobs"]
    failed = {(i["workload"], i["backend"]): i["error"] for i in ours if i["error"]}
    assert not failed, f"{failed}\n{done.stdout}\n{done.stderr}"
    measured = {(item["workload"], item["backend"]) for item in ours if item["runs"]}
    for workload in ("w1", "w2", "enqueue", "bulk", "latency"):
        for backend in backends:
            assert (workload, backend) in measured
    if "postgresql" in backends:
        assert {(w, "postgresql") for w in SERVER_ONLY} <= measured
