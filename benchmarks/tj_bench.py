"""The threadjobs side of every workload.

A worker always runs in a process of its own (``benchmarks.tj_worker``);
this process enqueues, watches the counts and reads the clock.
"""

from __future__ import annotations

import contextlib
import inspect
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

from threadjobs import JobExecutor

from .common import (
    BenchError,
    Child,
    Sizes,
    latency_figures,
    rss_mb,
    running,
    scratch_postgres,
    scratch_url,
    wait_until,
)
from .tj_jobs import CHAIN, FANOUT, LATENCY, LOOP, make_executor

BACKLOG_DELAY_SECS = 86_400.0
"""How far in the future the backlog's jobs are due: never, during a run."""

BULK_CHUNK = 50_000
"""Jobs per execute_many() call while filling the backlog."""

SETTLE_SECS = 0.3
"""Time for a freshly started worker to open its listener before the clock."""


@contextlib.contextmanager
def worker(url: str, *extra: str, threads: int = 4) -> Iterator[Child]:
    """A threadjobs worker process on ``url``, ready to claim."""
    args = [sys.executable, "-m", "benchmarks.tj_worker", url, str(threads), *extra]
    with running(Child(args)) as child:
        child.wait_line("ready")
        time.sleep(SETTLE_SECS)
        try:
            yield child
        except BenchError as exc:
            raise BenchError(f"{exc}; the worker's log ends:\n{child.tail()}") from exc


@contextlib.contextmanager
def fresh_executor(backend: str) -> Iterator[tuple[str, JobExecutor]]:
    """A scratch database on ``backend`` with the tables made."""
    with scratch_url(backend) as url:
        executor = make_executor(url)
        try:
            executor.count_jobs()
            yield url, executor
        finally:
            executor.close()


def _ended(executor: JobExecutor, expected: int) -> bool:
    """Two indexed counts: count_jobs() would scan every pending job, which
    loads the server during the run (and a million-job backlog makes slow)."""
    failed = executor.exec_query(
        "SELECT COUNT(*) FROM threadjobs_steps WHERE is_failed = 1"
    )[0][0]
    if failed:
        error = executor.list_failed_jobs()[0].error
        raise BenchError(f"{failed} steps failed, e.g.: {error}")
    rows = executor.exec_query(
        "SELECT COUNT(*) FROM threadjobs_jobs WHERE ended_at IS NOT NULL"
    )
    return int(rows[0][0]) >= expected


def _run_jobs(
    executor: JobExecutor,
    name: str,
    count: int,
    tag: str,
    timeout: float,
    ended_before: int = 0,
) -> float:
    """Enqueue ``count`` jobs one by one; seconds until all have ended."""
    start = time.perf_counter()
    for i in range(count):
        executor.execute(name, {"i": i, "tag": tag})
    wait_until(
        lambda: _ended(executor, ended_before + count),
        timeout,
        f"{count} {name} jobs to end",
    )
    return time.perf_counter() - start


def w1(backend: str, sizes: Sizes, run: int) -> dict[str, float]:
    """W1: chains of three steps, each counting in the ctx."""
    with fresh_executor(backend) as (url, executor), worker(url):
        secs = _run_jobs(
            executor, CHAIN, sizes.w1_jobs, f"w1-{run}", sizes.timeout_secs
        )
        job = executor.list_ended_jobs(CHAIN)[0]
        if job.ctx.get("n") != 3:
            raise BenchError(f"a W1 job ended with ctx {job.ctx}, expected n = 3")
    return {"jobs/s": sizes.w1_jobs / secs, "steps/s": 3 * sizes.w1_jobs / secs}


def w2(backend: str, sizes: Sizes, run: int) -> dict[str, float]:
    """W2: one step, a group of four, one final step that checks the group."""
    with fresh_executor(backend) as (url, executor), worker(url):
        secs = _run_jobs(
            executor, FANOUT, sizes.w2_jobs, f"w2-{run}", sizes.timeout_secs
        )
    return {"jobs/s": sizes.w2_jobs / secs, "step calls/s": 6 * sizes.w2_jobs / secs}


def enqueue(backend: str, sizes: Sizes, run: int) -> dict[str, float]:
    """execute() called one job at a time from one thread, no worker."""
    with fresh_executor(backend) as (_, executor):
        start = time.perf_counter()
        for i in range(sizes.enqueue_jobs):
            executor.execute(CHAIN, {"i": i})
        secs = time.perf_counter() - start
    return {"jobs/s": sizes.enqueue_jobs / secs}


def bulk_api(executor: JobExecutor) -> Any:
    """The executor's execute_many(), or BenchError if it does not exist yet."""
    method = getattr(executor, "execute_many", None)
    if method is None:
        raise BenchError("skipped: JobExecutor.execute_many() does not exist yet")
    return method


def enqueue_bulk(backend: str, sizes: Sizes, run: int) -> dict[str, float]:
    """execute_many() with every job in one call, de-duplication on."""
    with fresh_executor(backend) as (_, executor):
        execute_many = bulk_api(executor)
        params = [{"i": i} for i in range(sizes.bulk_jobs)]
        start = time.perf_counter()
        ids = execute_many(CHAIN, params)
        secs = time.perf_counter() - start
        if len(set(ids)) != sizes.bulk_jobs:
            raise BenchError(f"execute_many returned {len(set(ids))} distinct ids")
        again = execute_many(CHAIN, params[:100])
        if list(again) != list(ids[:100]):
            raise BenchError("execute_many did not de-duplicate a repeated call")
    return {"jobs/s": sizes.bulk_jobs / secs}


def latency(backend: str, sizes: Sizes, run: int) -> dict[str, float]:
    """Enqueue here, note when the step starts in the worker process."""
    with fresh_executor(backend) as (url, executor):
        executor.exec_query(
            "CREATE TABLE bench_started (job INTEGER PRIMARY KEY, "
            "started DOUBLE PRECISION NOT NULL)"
        )
        sent: dict[int, tuple[float, float]] = {}
        with worker(url):
            for i in range(sizes.latency_jobs):
                before = time.time()
                executor.execute(LATENCY, {"i": i})
                sent[i] = (before, time.time())
                time.sleep(sizes.latency_gap_secs)
            wait_until(
                lambda: (
                    executor.exec_query("SELECT COUNT(*) FROM bench_started")[0][0]
                    >= sizes.latency_jobs
                ),
                sizes.timeout_secs,
                "every latency job to start",
            )
        rows = executor.exec_query("SELECT job, started FROM bench_started")
    return latency_figures([(started, *sent[job]) for job, started in rows])


def memory(backend: str, sizes: Sizes, run: int) -> dict[str, float]:
    """Worker RSS after the first and the second mark of step calls."""
    first, total = sizes.memory_marks
    with fresh_executor(backend) as (url, executor), worker(url) as child:
        start_rss = rss_mb(child.pid)
        ids = [executor.execute(LOOP, {"calls": total // 4, "k": k}) for k in range(4)]

        def calls() -> int:
            return sum(int(executor.get_job(i).ctx.get("calls", 0)) for i in ids)

        wait_until(lambda: calls() >= first, sizes.timeout_secs, "the first mark", 0.1)
        first_rss, first_calls = rss_mb(child.pid), calls()
        wait_until(lambda: calls() >= total, sizes.timeout_secs, "the last mark", 0.2)
        last_rss, last_calls = rss_mb(child.pid), calls()
    return {
        "RSS MiB at start": start_rss,
        "RSS MiB at first mark": first_rss,
        "step calls at first mark": first_calls,
        "RSS MiB at last mark": last_rss,
        "step calls at last mark": last_calls,
        "growth MiB": last_rss - first_rss,
    }


# -- backlog ------------------------------------------------------------------


def fill_backlog(executor: JobExecutor, count: int) -> tuple[float, str]:
    """Enqueue ``count`` W1 jobs due in a day; returns (seconds, method)."""
    start = time.perf_counter()
    method = getattr(executor, "execute_many", None)
    if method is not None and "delay" in inspect.signature(method).parameters:
        for low in range(0, count, BULK_CHUNK):
            params = [{"backlog": i} for i in range(low, min(count, low + BULK_CHUNK))]
            method(CHAIN, params, delay=BACKLOG_DELAY_SECS)
        return time.perf_counter() - start, "execute_many()"

    # No bulk API (or none with a delay): execute() from four threads. Bulk
    # SQL straight into the tables would skip what enqueueing really costs.
    def fill(part: int) -> None:
        for i in range(part, count, 4):
            executor.execute(CHAIN, {"backlog": i}, delay=BACKLOG_DELAY_SECS)

    threads = [threading.Thread(target=fill, args=(part,)) for part in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - start, "execute() from 4 threads"


def settle(url: str) -> None:
    """VACUUM ANALYZE and CHECKPOINT after the bulk load, as an operator
    would: otherwise autovacuum works through the million new rows, and a
    checkpoint writes them out, during the measurement."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE threadjobs_jobs, threadjobs_steps")
        conn.execute("CHECKPOINT")


def claim_plan(executor: JobExecutor) -> str:
    """EXPLAIN ANALYZE of the claim SELECT exactly as the backend sends it."""
    backend = executor.backend
    captured: list[tuple[str, tuple[Any, ...]]] = []
    original = backend.execute

    def recording(cur: Any, query: str, params: Any = ()) -> Any:
        if not captured:
            captured.append((backend.sql(query), tuple(params)))
        return original(cur, query, params)

    backend.execute = recording  # type: ignore[method-assign]
    try:
        claims = backend.claim(executor.job_names(), "bench-explain", 4, 5.0)
    finally:
        del backend.execute
    if claims:
        raise BenchError("the plan probe claimed steps; the queue was not idle")
    sql, params = captured[0]
    with backend.connection() as conn:
        cur = conn.cursor()
        cur.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql, params)
        plan = "\n".join(row[0] for row in cur.fetchall())
        conn.rollback()
    return f"{sql}\n{params}\n\n{plan}"


def backlog(backend: str, sizes: Sizes, run: int) -> dict[str, Any]:
    """W1 on an empty queue, then on top of a backlog that is not due."""
    if backend != "postgresql":
        raise BenchError("the backlog workload runs on PostgreSQL only")
    empty = []
    for r in range(sizes.runs):
        with fresh_executor(backend) as (url, executor), worker(url):
            secs = _run_jobs(
                executor, CHAIN, sizes.w1_jobs, f"e{r}", sizes.timeout_secs
            )
            empty.append(sizes.w1_jobs / secs)

    with scratch_postgres() as url:
        executor = make_executor(url)
        try:
            executor.count_jobs()
            fill_secs, how = fill_backlog(executor, sizes.backlog_jobs)
            settle(url)
            plan_before = claim_plan(executor)
            loaded = []
            with worker(url):
                for r in range(sizes.runs):
                    secs = _run_jobs(
                        executor,
                        CHAIN,
                        sizes.w1_jobs,
                        f"b{r}",
                        sizes.timeout_secs,
                        ended_before=r * sizes.w1_jobs,
                    )
                    loaded.append(sizes.w1_jobs / secs)
            plan_after = claim_plan(executor)
        finally:
            executor.close()
    return {
        "backlog jobs": sizes.backlog_jobs,
        "backlog fill s": fill_secs,
        "backlog fill method": how,
        "empty jobs/s": statistics.median(empty),
        "backlog jobs/s": statistics.median(loaded),
        "empty runs": empty,
        "backlog runs": loaded,
        "plan before": plan_before,
        "plan after": plan_after,
    }
