"""Several processes on one database: de-duplication, claims, a killed worker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from threadjobs import Job, JobExecutor

from .helpers import wait_until
from .procs import build

ROOT = Path(__file__).resolve().parent.parent


def spawn(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.procs", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def stop(process: subprocess.Popen, sig: int = signal.SIGKILL) -> str:
    """Signal a process, wait for it, and return what it wrote to stderr."""
    if process.poll() is None:
        process.send_signal(sig)
    _, err = process.communicate(timeout=30)
    return err


@pytest.fixture
def prepared(db_url):
    """The executor of the test process, with the effects table made."""
    executor = build(db_url)
    executor.exec_query("CREATE TABLE effects (label VARCHAR(50))")
    executor.exec_query("CREATE TABLE attempts (label VARCHAR(50), pid INTEGER)")
    yield executor
    executor.close()


def effects(executor: JobExecutor) -> list[str]:
    return [row[0] for row in executor.exec_query("SELECT label FROM effects")]


def attempts(executor: JobExecutor) -> list[str]:
    return [row[0] for row in executor.exec_query("SELECT label FROM attempts")]


def test_concurrent_execute_from_many_processes_enqueues_once(db_url, prepared) -> None:
    start_at = str(time.time() + 1.5)
    procs = [
        spawn("execute", db_url, "dedup", '{"k": [1, 2]}', "10", start_at)
        for _ in range(6)
    ]
    results = []
    for process in procs:
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert len({tuple(ids) for ids in results}) == 1
    assert len(results[0]) == 1
    rows = prepared.exec_query(
        "SELECT COUNT(*) FROM threadjobs_jobs WHERE name = 'dedup'"
    )
    assert rows == [(1,)]


def test_two_worker_processes_never_run_a_step_twice(db_url, prepared) -> None:
    jobs = [prepared.execute("work", {"n": n}) for n in range(30)]
    # Steps that held SQLite's one write lock while they slept would leave
    # nothing for a second process to do alongside the first.
    slow = {"STEP_SLEEP_BEFORE": "0.1", "STEP_SLEEP": "0.01"}
    workers = [spawn("worker", db_url, env=slow) for _ in range(2)]
    try:
        wait_until(
            lambda: len(prepared.list_ended_jobs()) == len(jobs),
            timeout=90,
            what="every job to end",
        )
    finally:
        logs = [stop(process) for process in workers]
    done = effects(prepared)
    assert len(done) == 30 * 5 == len(set(done))
    assert sorted(attempts(prepared)) == sorted(done)
    pids = {row[0] for row in prepared.exec_query("SELECT pid FROM attempts")}
    assert len(pids) == 2, f"both workers should have taken steps: {logs}"


def test_killed_worker_loses_nothing(db_url, prepared) -> None:
    job_id = prepared.execute("work", {"n": 0})
    first = spawn("worker", db_url, env={"STEP_SLEEP": "30"})
    try:
        wait_until(lambda: attempts(prepared), timeout=30, what="the first attempt")
    finally:
        stop(first)  # SIGKILL in the middle of step 1.
    assert effects(prepared) == []

    second = spawn("worker", db_url, env={"STEP_SLEEP": "0.05"})
    try:
        wait_until(
            lambda: prepared.get_job(job_id).status == "ended",
            timeout=60,
            what="the job to end on the second worker",
        )
    finally:
        stop(second)
    assert sorted(effects(prepared)) == ["0:a", "0:b0", "0:b1", "0:b2", "0:c"]
    assert attempts(prepared).count("0:a") == 2


def test_shape_change_fails_clearly_and_resumes_after_the_fix(make_executor) -> None:
    old = make_executor()
    old.add(Job("j").submit(lambda p: None).submit([lambda p: None] * 2))
    job_id = old.execute("j")

    changed = make_executor()
    changed.add(Job("j").submit(lambda p: None))
    changed.start()
    wait_until(lambda: changed.list_failed_jobs(), what="the shape mismatch")
    changed.stop()
    error = changed.get_job(job_id).error
    assert "enqueued with the shape [1, 2]" in error
    assert "has the shape [1]" in error

    fixed = make_executor()
    fixed.add(Job("j").submit(lambda p: None).submit([lambda p: None] * 2))
    fixed.resume_job(job_id)
    fixed.start()
    wait_until(lambda: fixed.get_job(job_id).status == "ended", what="the job")
    fixed.stop()


def test_worker_ignores_jobs_it_has_no_definition_for(make_executor) -> None:
    producer = make_executor()
    producer.add(Job("elsewhere").submit(lambda p: None))
    job_id = producer.execute("elsewhere")
    other = make_executor()
    other.add(Job("mine").submit(lambda p: None))
    other.start()
    time.sleep(0.5)
    other.stop()
    assert other.get_job(job_id).status == "pending"
    assert other.get_steps(job_id)[0].calls == 0


def test_a_step_that_kills_its_worker_fails_after_a_bounded_number_of_tries(
    db_url, prepared
) -> None:
    job_id = prepared.execute("suicide")
    deaths = 0
    for _ in range(8):
        worker = spawn("worker", db_url, env={"LEASE": "1"})
        try:
            worker.wait(timeout=15)
        except subprocess.TimeoutExpired:
            break  # It survived: the step is no longer called.
        finally:
            stop(worker)
        deaths += 1
    assert deaths == 3
    job = prepared.get_job(job_id)
    assert job.status == "failed"
    assert "a worker died during this step 3 times in a row" in job.error
    assert prepared.get_steps(job_id)[0].calls == 3


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_forked_child_runs_its_own_worker(make_executor) -> None:
    executor = make_executor()
    executor.add(Job("j").submit(lambda p, ctx: ctx.update(pid=os.getpid())))
    executor.execute("j", {"n": 0})  # The parent has used its connections.
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit code
        code = 1
        try:
            job_id = executor.execute("j", {"n": 1})
            executor.start()
            wait_until(lambda: executor.get_job(job_id).status == "ended")
            code = 0 if executor.stop(timeout=10) else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    (first,) = [j for j in executor.list_ended_jobs() if j.params == {"n": 0}]
    assert first.ctx["pid"] == pid
    assert executor.count_jobs() == {"ended": 2, "failed": 0, "pending": 0}
