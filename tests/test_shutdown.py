"""Graceful shutdown of ``python -m threadjobs worker``, with real signals.

The worker runs ``examples.jobs:build`` on an SQLite file; its report step
inserts a row through ``exec_query`` and then sleeps for
``EXAMPLE_REPORT_SECS``, so a signal can arrive while the call is running.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest

from threadjobs import JobExecutor

from .helpers import wait_until
from .spawned import CLI, child_env

WRITING = "report 1: writing in process"


@pytest.fixture(params=["sqlite"])
def database(request: Any, tmp_path: Path) -> Any:
    """The SQLite file, its table, and one report job enqueued."""
    url = f"sqlite:///{tmp_path}/jobs.sqlite3"
    from examples.jobs import build

    executor = build(url)
    job_id = executor.execute("report", {"id": 1})
    yield url, executor, job_id
    executor.close()


def start_worker(spawn: Any, url: str, step_secs: float, *options: str) -> Any:
    worker = spawn(
        *CLI,
        "worker",
        "examples.jobs:build",
        "--database",
        url,
        *options,
        env=child_env(EXAMPLE_REPORT_SECS=str(step_secs)),
    )
    worker.wait_for(WRITING)
    return worker


def rows(executor: JobExecutor) -> list[tuple[Any, ...]]:
    return executor.exec_query("SELECT report_id, pid FROM example_reports")


@pytest.mark.parametrize(
    "signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"]
)
def test_signal_lets_the_running_step_call_commit(
    database: Any, spawn: Any, signum: int
) -> None:
    url, executor, job_id = database
    worker = start_worker(spawn, url, 2.0)
    worker.send(signum)
    worker.wait_for(f"{signal.Signals(signum).name} received")

    assert worker.wait(timeout=10) == 0, worker.output
    assert "report 1: written" in worker.output
    assert "worker stopped; every step call it ran is committed" in worker.output
    assert rows(executor) == [(1, worker.pid)]
    steps = executor.get_steps(job_id)
    assert [step.state for step in steps] == ["done", "due"]
    assert executor.get_job(job_id).ctx == {"written_by": worker.pid}


def test_second_signal_exits_at_once_and_another_worker_reruns_the_step(
    database: Any, spawn: Any
) -> None:
    url, executor, job_id = database
    worker = start_worker(spawn, url, 60.0)
    worker.send(signal.SIGTERM)
    worker.wait_for("SIGTERM received")
    worker.send(signal.SIGTERM)

    assert worker.wait(timeout=5) == 128 + signal.SIGTERM, worker.output
    assert "second signal (SIGTERM): exiting at once" in worker.output
    assert "report 1: written" not in worker.output
    assert rows(executor) == []

    rerun = spawn(*CLI, "worker", "examples.jobs:build", "--database", url)
    wait_until(lambda: executor.get_job(job_id).status == "ended", what="the job")
    assert rows(executor) == [(1, rerun.pid)]
    assert executor.get_steps(job_id)[0].calls == 2
    rerun.send(signal.SIGTERM)
    assert rerun.wait() == 0, rerun.output


def test_grace_period_shorter_than_the_step_exits_without_committing(
    database: Any, spawn: Any
) -> None:
    url, executor, job_id = database
    worker = start_worker(spawn, url, 60.0, "--grace", "1")
    worker.send(signal.SIGTERM)
    worker.wait_for("SIGTERM received")

    assert worker.wait(timeout=5) == 1, worker.output
    assert "still running after the grace period of 1s" in worker.output
    assert rows(executor) == []
    assert executor.get_job(job_id).status == "pending"
