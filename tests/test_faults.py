"""Database faults around a step call: infrastructure, never a step failure.

A connection that drops while COMMIT is in flight leaves the worker unsure
whether the call applied; it must read the step row on a fresh connection
and act on what it finds, never guess.
"""

from __future__ import annotations

import time

import pytest

from threadjobs import DatabaseUnavailableError, Job, TransientDatabaseError

from .helpers import run_until_settled


@pytest.fixture
def effects(executor):
    executor.exec_query("CREATE TABLE effects (job_id INTEGER, step VARCHAR(4))")
    return executor


def count_effects(executor) -> list[tuple]:
    return executor.exec_query(
        "SELECT step, COUNT(*) FROM effects GROUP BY step ORDER BY step"
    )


def job_with_effects(executor, calls: list[str]) -> int:
    def step(name):
        def run(params, ctx, ex):
            calls.append(name)
            ex.exec_query("INSERT INTO effects VALUES (%s, %s)", [1, name])
            ctx[name] = True

        return run

    executor.add(Job("j").submit(step("a")).submit(step("b")))
    return executor.execute("j")


def fail_first_finish(monkeypatch, backend, *, after_commit: bool) -> list[bool]:
    """Make the first step commit raise a lost connection, before or after
    the commit itself applied."""
    original = backend.finish_step
    struck: list[bool] = []

    def finish_step(conn, *args, **kwargs):
        if struck:
            return original(conn, *args, **kwargs)
        struck.append(True)
        if after_commit:
            original(conn, *args, **kwargs)
        raise TransientDatabaseError("connection lost during COMMIT (simulated)")

    monkeypatch.setattr(backend, "finish_step", finish_step)
    return struck


def test_commit_that_applied_is_not_run_again(effects, monkeypatch, caplog) -> None:
    calls: list[str] = []
    job_id = job_with_effects(effects, calls)
    struck = fail_first_finish(monkeypatch, effects.backend, after_commit=True)

    run_until_settled(effects)
    assert struck == [True]
    assert calls == ["a", "b"]
    assert count_effects(effects) == [("a", 1), ("b", 1)]
    assert effects.get_job(job_id).status == "ended"
    assert [step.calls for step in effects.get_steps(job_id)] == [1, 1]
    actions = [getattr(record, "action", "") for record in caplog.records]
    assert "commit_confirmed" in actions
    assert "step_failed" not in actions


def test_commit_that_did_not_apply_runs_again_once(
    effects, monkeypatch, caplog
) -> None:
    calls: list[str] = []
    job_id = job_with_effects(effects, calls)
    fail_first_finish(monkeypatch, effects.backend, after_commit=False)

    run_until_settled(effects)
    assert calls == ["a", "a", "b"]
    assert count_effects(effects) == [("a", 1), ("b", 1)]
    job = effects.get_job(job_id)
    assert job.status == "ended" and job.error is None
    actions = [getattr(record, "action", "") for record in caplog.records]
    assert "step_retry" in actions
    assert "step_failed" not in actions


def test_execute_on_an_unreachable_server_fails_within_the_timeout() -> None:
    pytest.importorskip("psycopg")
    from threadjobs import JobExecutor

    executor = JobExecutor("postgresql://nobody@127.0.0.1:1/none")
    executor.add(Job("j").submit(lambda params: None))
    begun = time.monotonic()
    with pytest.raises(DatabaseUnavailableError, match="check that the database"):
        executor.execute("j")
    assert time.monotonic() - begun < 15
    executor.close()
