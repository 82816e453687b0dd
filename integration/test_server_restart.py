"""A worker survives its database server restarting, and loses nothing."""

from __future__ import annotations

import time

import pytest

from tests import servers
from tests.helpers import wait_until

from .pgcluster import TempCluster
from .test_workers import expected_effects, kill, labels, spawn_worker
from .workload import TABLES, build


@pytest.fixture
def cluster():
    try:
        server = TempCluster().start()
    except RuntimeError as exc:
        if servers.required():
            pytest.fail(f"cannot start a private PostgreSQL server: {exc}")
        pytest.skip(f"cannot start a private PostgreSQL server: {exc}")
    yield server
    server.remove()


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_workers_carry_on_after_postgres_restarts(cluster, mode) -> None:
    executor = build(cluster.url)
    for statement in TABLES:
        executor.exec_query(statement)
    count = 120
    for n in range(count):
        executor.execute("work", {"kind": "job", "n": n})
    workers = [spawn_worker(cluster.url, threads=4, sleep=0.02) for _ in range(2)]
    try:
        wait_until(
            lambda: len(executor.list_ended_jobs()) >= count // 4,
            timeout=60,
            what="a quarter of the jobs to end",
        )
        cluster.restart(mode)
        restarted_at = time.monotonic()
        cluster.wait_ready()
        wait_until(
            lambda: not executor.list_not_ended_jobs(),
            timeout=120,
            what="every job to end after the restart",
        )
        assert all(process.poll() is None for process in workers)
        print(
            f"\n{mode} restart: all jobs ended "
            f"{time.monotonic() - restarted_at:.1f}s after it"
        )
    finally:
        logs = [kill(process) for process in workers]
        executor.close()
    executor = build(cluster.url)
    try:
        assert executor.list_failed_jobs() == [], logs
        effects = labels(executor, "effects")
        assert len(effects) == expected_effects(count) == len(set(effects))
        retried = len(labels(executor, "attempts")) - len(effects)
        print(f"{retried} step calls ran again after the restart")
    finally:
        executor.close()
