"""Many worker processes on a server database: nothing lost, nothing twice."""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import wait_until

from .workload import TABLES, build

ROOT = Path(__file__).resolve().parent.parent


def spawn_worker(url: str, threads: int = 4, poll: float = 0.2, sleep: float = 0.01):
    process = subprocess.Popen(
        [sys.executable, "-m", "integration.workload", url, str(threads), str(poll)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "STEP_SLEEP": str(sleep)},
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "ready"
    return process


def kill(process: subprocess.Popen, sig: int = signal.SIGKILL) -> str:
    if process.poll() is None:
        process.send_signal(sig)
    _, err = process.communicate(timeout=60)
    return err


@pytest.fixture
def prepared(server_db):
    executor = build(server_db)
    for statement in TABLES:
        executor.exec_query(statement)
    yield executor
    executor.close()


def labels(executor, table: str) -> list[str]:
    return [row[0] for row in executor.exec_query(f"SELECT label FROM {table}")]


def expected_effects(count: int) -> int:
    children = len([n for n in range(count) if n % 3 == 0])
    return count * 5 + children * 2


def test_many_workers_run_every_step_once(server_db, prepared) -> None:
    count = 300
    for n in range(count):
        prepared.execute("work", {"kind": "job", "n": n})
    workers = [spawn_worker(server_db, threads=4) for _ in range(3)]
    try:
        wait_until(
            lambda: not prepared.list_not_ended_jobs(),
            timeout=180,
            what="every job to end",
        )
    finally:
        logs = [kill(process) for process in workers]
    assert prepared.list_failed_jobs() == [], logs
    assert len(prepared.list_ended_jobs()) == count + (count + 2) // 3
    effects = labels(prepared, "effects")
    assert len(effects) == expected_effects(count) == len(set(effects))
    pids = prepared.exec_query("SELECT DISTINCT pid FROM attempts")
    assert len(pids) == 3


def test_worker_killed_mid_step_loses_nothing(server_db, prepared) -> None:
    job_id = prepared.execute("work", {"kind": "job", "n": 1})
    doomed = spawn_worker(server_db, sleep=60)
    wait_until(lambda: labels(prepared, "attempts"), what="the first attempt")
    killed_at = time.monotonic()
    kill(doomed)

    survivor = spawn_worker(server_db, sleep=0.01)
    try:
        wait_until(
            lambda: prepared.get_job(job_id).status == "ended",
            timeout=60,
            what="the job to end on the surviving worker",
        )
        recovered_after = time.monotonic() - killed_at
    finally:
        kill(survivor)
    assert sorted(labels(prepared, "effects")) == [
        "job1:a",
        "job1:b0",
        "job1:b1",
        "job1:b2",
        "job1:c",
    ]
    assert labels(prepared, "attempts").count("job1:a") == 2
    # The claim lease (5 s by default) bounds how long the step waits.
    assert recovered_after < 15, recovered_after


def test_enqueue_from_another_process_starts_at_once(server_db, prepared) -> None:
    """Wake-up latency; on PostgreSQL polling is slowed to 5 s, so only a
    notification can explain a fast start. MySQL has no notifications: its
    latency is the poll interval's."""
    notify = "postgres" in server_db
    worker = spawn_worker(server_db, threads=4, poll=5.0 if notify else 0.05)
    latencies = []
    try:
        time.sleep(0.5)
        for n in range(200 if notify else 50):
            enqueued = time.time()
            prepared.execute("ping", {"n": n})
            rows = wait_until(
                lambda n=n: prepared.exec_query(
                    "SELECT at FROM started WHERE n = %s", [n]
                ),
                timeout=10,
                what=f"ping {n} to start",
            )
            latencies.append(rows[0][0] - enqueued)
    finally:
        kill(worker)
    latencies.sort()
    median = statistics.median(latencies)
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    print(
        f"\nenqueue-to-start latency: median {median * 1000:.1f} ms, "
        f"p99 {p99 * 1000:.1f} ms over {len(latencies)} jobs"
    )
    if notify:
        assert median < 0.25 and p99 < 2.0
    else:
        assert median < 0.25  # Half a 50 ms poll interval, plus the work.
