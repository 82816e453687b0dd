"""Procrastinate on PostgreSQL: the worker is its own CLI, 4-way concurrent.

``procrastinate worker --concurrency 4`` with its defaults otherwise:
LISTEN/NOTIFY wake-ups, a 5 s fallback poll, finished jobs kept in the
table. Deferring uses the synchronous API, one ``defer()`` per job.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import procrastinate
import psycopg

from ..common import (
    BenchError,
    Child,
    Sizes,
    counter,
    latency_figures,
    python_env,
    running,
    scratch_postgres,
    venv_bin,
    wait_until,
)
from . import procrastinate_app

CONCURRENCY = 4


@contextlib.contextmanager
def _database() -> Iterator[tuple[str, procrastinate.App]]:
    """A scratch database with Procrastinate's schema and the bench tables.

    This process defers by task name through an app of its own on that
    database, as a process without the task code would; the worker imports
    ``procrastinate_app``.
    """
    with scratch_postgres("bench_proc") as dsn:
        app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=dsn))
        with app.open():
            app.schema_manager.apply_schema()
            with psycopg.connect(dsn, autocommit=True) as conn:
                for statement in procrastinate_app.TABLES:
                    conn.execute(statement)
            yield dsn, app


@contextlib.contextmanager
def _worker(dsn: str) -> Iterator[Child]:
    env = python_env()
    env["BENCH_PROCRASTINATE_DSN"] = dsn
    args = [
        venv_bin("procrastinate"),
        "--app=benchmarks.peers.procrastinate_app.app",
        "worker",
        f"--concurrency={CONCURRENCY}",
    ]
    with running(Child(args, env)) as child:
        with counter(dsn) as count:
            wait_until(
                lambda: count("SELECT COUNT(*) FROM procrastinate_workers") > 0,
                30,
                "the Procrastinate worker to register",
            )
        time.sleep(0.3)
        yield child


def _wait_done(dsn: str, task: str, expected: int, timeout: float) -> None:
    with counter(dsn) as count:

        def done() -> bool:
            failed = count(
                "SELECT COUNT(*) FROM procrastinate_jobs WHERE status = 'failed'"
            )
            if failed:
                raise BenchError(f"{failed} Procrastinate jobs failed")
            return (
                count(
                    "SELECT COUNT(*) FROM procrastinate_jobs "
                    "WHERE task_name = %s AND status = 'succeeded'",
                    (task,),
                )
                >= expected
            )

        wait_until(done, timeout, f"{expected} {task} jobs to succeed")


def _throughput(sizes: Sizes, first: str, last: str, count: int, **extra: Any) -> float:
    with _database() as (dsn, app), _worker(dsn):
        deferrer = app.configure_task(first)
        start = time.perf_counter()
        for i in range(count):
            deferrer.defer(job=i, **extra)
        _wait_done(dsn, last, count, sizes.timeout_secs)
        return count / (time.perf_counter() - start)


def w1(backend: str, sizes: Sizes, run: int) -> dict[str, float]:
    """W1: chain_a defers chain_b defers chain_c, the count passed along."""
    rate = _throughput(sizes, "chain_a", "chain_c", sizes.w1_jobs, n=0)
    return {"jobs/s": rate, "steps/s": 3 * rate}


def w2(backend: str, sizes: Sizes, run: int) -> dict[str, float]:
    """W2: fan_first defers four members; the fourth defers fan_final."""
    rate = _throughput(sizes, "fan_first", "fan_final", sizes.w2_jobs)
    return {"jobs/s": rate, "step calls/s": 6 * rate}


def enqueue(backend: str, sizes: Sizes, run: int) -> dict[str, float]:
    """defer() one job at a time, no worker."""
    with _database() as (_, app):
        deferrer = app.configure_task("chain_a")
        start = time.perf_counter()
        for i in range(sizes.enqueue_jobs):
            deferrer.defer(job=i, n=0)
        return {"jobs/s": sizes.enqueue_jobs / (time.perf_counter() - start)}


def enqueue_bulk(backend: str, sizes: Sizes, run: int) -> dict[str, float]:
    """batch_defer() with every job in one call (no de-duplication)."""
    with _database() as (_, app):
        deferrer = app.configure_task("chain_a")
        kwargs = [{"job": i, "n": 0} for i in range(sizes.bulk_jobs)]
        start = time.perf_counter()
        deferrer.batch_defer(*kwargs)
        return {"jobs/s": sizes.bulk_jobs / (time.perf_counter() - start)}


def latency(backend: str, sizes: Sizes, run: int) -> dict[str, float]:
    """defer() here, the job notes its start time in the worker."""
    with _database() as (dsn, app), _worker(dsn):
        deferrer = app.configure_task("started")
        sent: dict[int, tuple[float, float]] = {}
        for i in range(sizes.latency_jobs):
            before = time.time()
            deferrer.defer(job=i)
            sent[i] = (before, time.time())
            time.sleep(sizes.latency_gap_secs)
        _wait_done(dsn, "started", sizes.latency_jobs, sizes.timeout_secs)
        with psycopg.connect(dsn) as conn:
            rows = conn.execute("SELECT job, started FROM bench_started").fetchall()
    return latency_figures([(started, *sent[job]) for job, started in rows])


def version() -> str:
    """The installed Procrastinate version."""
    from importlib.metadata import version as dist_version

    return dist_version("procrastinate")
