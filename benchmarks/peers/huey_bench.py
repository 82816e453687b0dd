"""Huey on SQLite: ``huey_consumer -w 4 -k thread`` with its defaults.

The consumer polls the queue, starting at 0.1 s and backing off by 1.15x
up to 10 s while it finds nothing (``-d``, ``-b``, ``-m`` defaults); results
are stored (``results=True``), and SQLite runs in WAL mode with its default
``synchronous`` setting.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

from ..common import (
    BenchError,
    Child,
    Sizes,
    latency_figures,
    python_env,
    running,
    scratch_sqlite,
    venv_bin,
    wait_until,
)
from . import huey_app

WORKERS = 4


@contextlib.contextmanager
def _huey() -> Iterator[huey_app.Tasks]:
    with scratch_sqlite("bench_huey") as path:
        tasks = huey_app.make(path)
        try:
            yield tasks
        finally:
            tasks.huey.storage.close()


@contextlib.contextmanager
def _consumer(tasks: huey_app.Tasks) -> Iterator[Child]:
    env = python_env()
    env["BENCH_HUEY_FILE"] = tasks.huey.storage.filename
    args = [
        venv_bin("huey_consumer"),
        "benchmarks.peers.huey_app.huey",
        f"--workers={WORKERS}",
        "--worker-type=thread",
    ]
    with running(Child(args, env)) as child:
        child.wait_log("consumer started")
        time.sleep(0.3)
        yield child


def _wait_done(tasks: huey_app.Tasks, expected: int, timeout: float) -> None:
    """Wait for the done counter, then look for failures among the results."""
    from huey.api import Error

    wait_until(
        lambda: tasks.done() >= expected,
        timeout,
        f"{expected} Huey jobs to end",
        interval=0.1,
    )
    serializer = tasks.huey.serializer
    failed = [
        key
        for key, raw in tasks.huey.all_results().items()
        if isinstance(serializer.deserialize(raw), Error)
    ]
    if failed:
        raise BenchError(f"{len(failed)} Huey tasks failed")


def w1(backend: str, sizes: Sizes, run: int) -> dict[str, float]:
    """W1: a three-task pipeline per job."""
    with _huey() as tasks, _consumer(tasks):
        start = time.perf_counter()
        for i in range(sizes.w1_jobs):
            tasks.huey.enqueue(tasks.chain(i))
        _wait_done(tasks, sizes.w1_jobs, sizes.timeout_secs)
        rate = sizes.w1_jobs / (time.perf_counter() - start)
    return {"jobs/s": rate, "steps/s": 3 * rate}


def w2(backend: str, sizes: Sizes, run: int) -> dict[str, float]:
    """W2: first task, a chord of four members, the chord's callback."""
    with _huey() as tasks, _consumer(tasks):
        start = time.perf_counter()
        for i in range(sizes.w2_jobs):
            tasks.fan_first(i)
        _wait_done(tasks, sizes.w2_jobs, sizes.timeout_secs)
        rate = sizes.w2_jobs / (time.perf_counter() - start)
    return {"jobs/s": rate, "step calls/s": 6 * rate}


def enqueue(backend: str, sizes: Sizes, run: int) -> dict[str, float]:
    """Enqueue W1's pipeline one job at a time, no consumer."""
    with _huey() as tasks:
        start = time.perf_counter()
        for i in range(sizes.enqueue_jobs):
            tasks.huey.enqueue(tasks.chain(i))
        return {"jobs/s": sizes.enqueue_jobs / (time.perf_counter() - start)}


def latency(backend: str, sizes: Sizes, run: int) -> dict[str, float]:
    """Enqueue here; the task returns its start time as its result."""
    with _huey() as tasks, _consumer(tasks):
        sent = []
        for i in range(sizes.latency_jobs):
            before = time.time()
            result = tasks.started(i)
            sent.append((result, before, time.time()))
            time.sleep(sizes.latency_gap_secs)
        deadline = time.monotonic() + sizes.timeout_secs
        results = []
        for result, before, after in sent:
            remaining = max(0.1, deadline - time.monotonic())
            started = result.get(blocking=True, timeout=remaining)
            results.append((started, before, after))
    return latency_figures(results)
