"""Every row of the return-value table, run by a real worker."""

from __future__ import annotations

import itertools
import time

import pytest

from threadjobs import Job

from .helpers import run_until_settled, wait_until


@pytest.fixture
def counter(executor):
    executor.exec_query("CREATE TABLE cnt (job_id INTEGER, val INTEGER)")
    return executor


def count_rows(executor) -> int:
    return executor.exec_query("SELECT COUNT(*) FROM cnt")[0][0]


def test_chain_runs_in_order_and_ctx_flows(executor) -> None:
    order = []

    def first(params, ctx):
        order.append("first")
        ctx["val"] = params["start"]

    def second(params, ctx, ex):
        order.append("second")
        ctx["val"] += 1

    def third(params):
        order.append(("third", params))

    executor.add(Job("chain").submit(first).submit(second).submit(third))
    job_id = executor.execute("chain", {"start": 41})
    run_until_settled(executor)
    assert order == ["first", "second", ("third", {"start": 41})]
    job = executor.get_job(job_id)
    assert job.status == "ended" and job.ctx == {"val": 42}


@pytest.mark.parametrize("done_value", [None, False, 0])
def test_falsy_return_commits_and_moves_on(counter, done_value) -> None:
    def step(params, ctx, ex):
        ex.exec_query("INSERT INTO cnt (val) VALUES (1)")
        ctx["seen"] = True
        return done_value

    counter.add(Job("j").submit(step).submit(lambda p, ctx: ctx.update(next=1)))
    job_id = counter.execute("j")
    run_until_settled(counter)
    assert count_rows(counter) == 1
    assert counter.get_job(job_id).ctx == {"seen": True, "next": 1}


@pytest.mark.parametrize("again", [0.3, {"run_after": 0.3}])
def test_positive_number_calls_again_after_that_many_seconds(counter, again) -> None:
    calls = []

    def step(params, ctx, ex):
        calls.append(time.monotonic())
        ex.exec_query("INSERT INTO cnt (val) VALUES (%s)", [len(calls)])
        ctx["calls"] = len(calls)
        return again if len(calls) < 3 else None

    counter.add(Job("j").submit(step))
    job_id = counter.execute("j")
    run_until_settled(counter)
    assert len(calls) == 3
    assert all(b - a >= 0.29 for a, b in itertools.pairwise(calls))
    assert count_rows(counter) == 3
    assert counter.get_job(job_id).ctx == {"calls": 3}


@pytest.mark.parametrize("again", ["CONTINUE", True, {"run_after": 0}])
def test_truthy_return_calls_again_at_once_until_falsy(counter, again) -> None:
    def step(params, ctx, ex):
        ctx["n"] = ctx.get("n", 0) + 1
        ex.exec_query("INSERT INTO cnt (val) VALUES (%s)", [ctx["n"]])
        return again if ctx["n"] < 5 else False

    counter.add(Job("j").submit(step))
    started = time.monotonic()
    job_id = counter.execute("j")
    run_until_settled(counter)
    assert time.monotonic() - started < 5
    assert counter.get_job(job_id).ctx == {"n": 5}
    assert count_rows(counter) == 5


def test_negative_return_keeps_the_work_and_fails_until_resumed(counter) -> None:
    calls = []

    def step(params, ctx, ex):
        calls.append(1)
        ex.exec_query("INSERT INTO cnt (val) VALUES (%s)", [len(calls)])
        ctx["calls"] = len(calls)
        return -1 if len(calls) == 1 else None

    counter.add(Job("j").submit(step).submit(lambda p, ctx: ctx.update(end=1)))
    job_id = counter.execute("j")
    run_until_settled(counter)
    job = counter.get_job(job_id)
    assert job.status == "failed"
    assert "returned -1" in job.error
    assert job.ctx == {"calls": 1}
    assert count_rows(counter) == 1
    assert [j.id for j in counter.list_failed_jobs()] == [job_id]

    assert counter.resume_job(job_id) == 1
    run_until_settled(counter)
    assert counter.get_job(job_id).ctx == {"calls": 2, "end": 1}
    assert count_rows(counter) == 2


def test_exception_rolls_back_sql_ctx_and_started_jobs(counter) -> None:
    calls = []

    def step(params, ctx, ex):
        calls.append(1)
        ex.exec_query("INSERT INTO cnt (val) VALUES (1)")
        ctx["touched"] = True
        ex.execute("other", {"from": "failing step"})
        if len(calls) == 1:
            raise RuntimeError("disk full")

    counter.add(Job("j").submit(step))
    counter.add(Job("other").submit(lambda p: None))
    job_id = counter.execute("j", {}, {"kept": 1})
    run_until_settled(counter)

    job = counter.get_job(job_id)
    assert job.status == "failed"
    assert job.error == "RuntimeError: disk full"
    assert job.ctx == {"kept": 1}
    assert count_rows(counter) == 0
    assert [j.name for j in counter.list_not_ended_jobs()] == []
    assert [j.name for j in counter.list_ended_jobs()] == []
    (step_row,) = counter.get_steps(job_id)
    assert step_row.state == "failed"
    assert "RuntimeError: disk full" in step_row.traceback
    assert "in step" in step_row.traceback
    flags = counter.exec_query("SELECT is_failed FROM threadjobs_steps")
    assert flags == [(1,)]

    counter.resume_job(job_id)
    run_until_settled(counter)
    assert counter.get_job(job_id).status == "ended"
    assert count_rows(counter) == 1
    assert [j.name for j in counter.list_ended_jobs()] == ["j", "other"]


def test_operator_clearing_is_failed_with_sql_reruns_the_step(counter) -> None:
    calls = []

    def step(params, ctx):
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("bad data")

    counter.add(Job("j").submit(lambda p: None).submit(step))
    job_id = counter.execute("j")
    run_until_settled(counter)
    assert counter.get_job(job_id).status == "failed"

    counter.exec_query(
        "UPDATE threadjobs_steps SET is_failed = 0 WHERE job_id = %s", [job_id]
    )
    assert counter.get_job(job_id).status == "pending"
    run_until_settled(counter)
    assert counter.get_job(job_id).status == "ended"
    assert len(calls) == 2


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"later": 1}, 'exactly {"run_after": n}'),
        (["child"], "a child job is"),
        (float("nan"), "finite"),
    ],
)
def test_unsupported_return_fails_like_an_exception(counter, value, message) -> None:
    def step(params, ctx, ex):
        ex.exec_query("INSERT INTO cnt (val) VALUES (1)")
        ctx["x"] = 1
        return value

    counter.add(Job("j").submit(step))
    job_id = counter.execute("j")
    run_until_settled(counter)
    job = counter.get_job(job_id)
    assert job.status == "failed"
    assert "UnsupportedReturnValueError" in job.error and message in job.error
    assert job.ctx == {} and count_rows(counter) == 0


def test_coroutine_return_is_refused(executor) -> None:
    async def later():
        return None

    executor.add(Job("j").submit(lambda p: later()))
    job_id = executor.execute("j")
    run_until_settled(executor)
    assert "async functions and generators" in executor.get_job(job_id).error


@pytest.mark.parametrize("exc", [KeyboardInterrupt, SystemExit])
def test_base_exceptions_from_a_step_fail_the_job_not_the_worker(executor, exc) -> None:
    def step(params):
        raise exc("stop")

    executor.add(Job("j").submit(step))
    executor.add(Job("fine").submit(lambda p: None))
    bad = executor.execute("j")
    run_until_settled(executor)
    assert executor.get_job(bad).status == "failed"
    good = executor.execute("fine")
    run_until_settled(executor)
    assert executor.get_job(good).status == "ended"


def test_step_that_stores_non_json_in_ctx_fails(executor) -> None:
    executor.add(Job("j").submit(lambda p, ctx: ctx.update(when={1, 2})))
    job_id = executor.execute("j")
    run_until_settled(executor)
    job = executor.get_job(job_id)
    assert "the ctx after the step['when'] is a set" in job.error
    assert job.ctx == {}


@pytest.mark.parametrize("statement", ["COMMIT", "ROLLBACK", "BEGIN", "SAVEPOINT s"])
def test_step_cannot_end_its_own_transaction(counter, statement) -> None:
    def step(params, ctx, ex):
        ex.exec_query("INSERT INTO cnt (val) VALUES (1)")
        ex.exec_query(statement)

    counter.add(Job("j").submit(step))
    job_id = counter.execute("j")
    run_until_settled(counter)
    assert "StepTransactionError" in counter.get_job(job_id).error
    assert count_rows(counter) == 0


def test_delay_postpones_the_first_step(executor) -> None:
    seen = []
    executor.add(Job("j").submit(lambda p: seen.append(time.monotonic())))
    executor.start()
    started = time.monotonic()
    executor.execute("j", delay=0.5)
    wait_until(lambda: seen, what="the delayed step")
    executor.stop()
    assert seen[0] - started >= 0.45


def test_execute_inside_a_step_is_deduplicated_and_runs(executor) -> None:
    def step(params, ctx, ex):
        ctx["ids"] = [ex.execute("mail", {"to": "a"}) for _ in range(2)]

    executor.add(Job("j").submit(step))
    executor.add(Job("mail").submit(lambda p, ctx: ctx.update(sent=p["to"])))
    job_id = executor.execute("j")
    run_until_settled(executor)
    first, second = executor.get_job(job_id).ctx["ids"]
    assert first == second
    assert executor.get_job(first).ctx == {"sent": "a"}
