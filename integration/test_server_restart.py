"""A worker survives its database server restarting, and loses nothing.

Each test restarts a private server it starts itself (PostgreSQL with
``pg_ctl restart -m fast|immediate``; MariaDB by a clean shutdown or
``kill -9``, then a start), never the shared one.
"""

from __future__ import annotations

import time

import pytest

from tests import servers
from tests.helpers import wait_until

from .mariadb_server import TempMariaDB
from .pgcluster import TempCluster
from .test_workers import expected_effects, kill, labels, spawn_worker
from .workload import TABLES, build

SERVERS = {"postgres": TempCluster, "mariadb": TempMariaDB}


@pytest.fixture
def cluster(request):
    kind = request.param
    try:
        server = SERVERS[kind]().start()
    except (RuntimeError, OSError) as exc:
        if servers.required():
            pytest.fail(f"cannot start a private {kind} server: {exc}")
        pytest.skip(f"cannot start a private {kind} server: {exc}")
    yield server
    server.remove()


@pytest.mark.parametrize(
    ("cluster", "mode"),
    [
        ("postgres", "fast"),
        ("postgres", "immediate"),
        ("mariadb", "clean"),
        ("mariadb", "kill"),
    ],
    indirect=["cluster"],
)
def test_workers_carry_on_after_the_server_restarts(cluster, mode) -> None:
    executor = build(cluster.url)
    for statement in TABLES:
        executor.exec_query(statement)
    count = 120
    executor.execute_many("work", [{"kind": "job", "n": n} for n in range(count)])
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
