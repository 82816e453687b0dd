"""DBOS Transact on PostgreSQL: a worker process, enqueues through DBOSClient.

See ``dbos_app`` for the queues' settings. Every workflow and step is
checkpointed in DBOS's system database, which is the scratch database.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from typing import Any

from dbos import DBOSClient

from ..common import (
    BenchError,
    Child,
    Sizes,
    counter,
    latency_figures,
    running,
    scratch_postgres,
    wait_until,
)
from .dbos_app import APP_NAME, QUEUE


def _sqlalchemy_url(dsn: str) -> str:
    """DBOS opens its URL with SQLAlchemy; name the psycopg 3 driver."""
    return dsn.replace("postgresql://", "postgresql+psycopg://", 1)


@contextlib.contextmanager
def _worker(dsn: str) -> Iterator[Child]:
    args = [sys.executable, "-m", "benchmarks.peers.dbos_app", _sqlalchemy_url(dsn)]
    with running(Child(args)) as child:
        child.wait_line("ready")
        time.sleep(0.3)
        yield child


@contextlib.contextmanager
def _client(dsn: str) -> Iterator[DBOSClient]:
    client = DBOSClient(
        system_database_url=_sqlalchemy_url(dsn), application_name=APP_NAME
    )
    try:
        yield client
    finally:
        client.destroy()


def _wait_done(dsn: str, workflow: str, expected: int, timeout: float) -> None:
    with counter(dsn) as count:

        def done() -> bool:
            failed = count(
                "SELECT COUNT(*) FROM dbos.workflow_status WHERE status = 'ERROR'"
            )
            if failed:
                raise BenchError(f"{failed} DBOS workflows failed")
            return (
                count(
                    "SELECT COUNT(*) FROM dbos.workflow_status "
                    "WHERE name = %s AND status = 'SUCCESS'",
                    (workflow,),
                )
                >= expected
            )

        wait_until(done, timeout, f"{expected} {workflow} workflows to succeed")


def _options(workflow: str) -> Any:
    return {"queue_name": QUEUE, "workflow_name": workflow}


def _throughput(sizes: Sizes, workflow: str, count: int) -> float:
    with scratch_postgres("bench_dbos") as dsn, _worker(dsn), _client(dsn) as client:
        start = time.perf_counter()
        for i in range(count):
            client.enqueue(_options(workflow), i)
        _wait_done(dsn, workflow, count, sizes.timeout_secs)
        return count / (time.perf_counter() - start)


def w1(backend: str, sizes: Sizes, run: int) -> dict[str, float]:
    """W1: a workflow of three steps."""
    rate = _throughput(sizes, "w1_chain", sizes.w1_jobs)
    return {"jobs/s": rate, "steps/s": 3 * rate}


def w2(backend: str, sizes: Sizes, run: int) -> dict[str, float]:
    """W2: a parent workflow fanning out to four member workflows."""
    rate = _throughput(sizes, "w2_fanout", sizes.w2_jobs)
    return {"jobs/s": rate, "step calls/s": 6 * rate}


def enqueue(backend: str, sizes: Sizes, run: int) -> dict[str, float]:
    """DBOSClient.enqueue() one workflow at a time, no worker running."""
    with scratch_postgres("bench_dbos") as dsn:
        with _worker(dsn):
            pass  # Creates DBOS's tables and the queues, then stops.
        with _client(dsn) as client:
            start = time.perf_counter()
            for i in range(sizes.enqueue_jobs):
                client.enqueue(_options("w1_chain"), i)
            return {"jobs/s": sizes.enqueue_jobs / (time.perf_counter() - start)}


def latency(backend: str, sizes: Sizes, run: int) -> dict[str, float]:
    """Enqueue here; the workflow returns its start time, read afterwards."""
    with scratch_postgres("bench_dbos") as dsn, _worker(dsn), _client(dsn) as client:
        sent = []
        for i in range(sizes.latency_jobs):
            before = time.time()
            handle = client.enqueue(_options("w_started"), i)
            sent.append((handle, before, time.time()))
            time.sleep(sizes.latency_gap_secs)
        _wait_done(dsn, "w_started", sizes.latency_jobs, sizes.timeout_secs)
        results = [(h.get_result(), before, after) for h, before, after in sent]
    return latency_figures(results)
