"""SQLite and PostgreSQL: a worker thread calls several claimed steps, then
commits the outcomes of those that ran no SQL together.

What every step's guarantees are does not change, and the behavioural
suite checks that on every backend; these tests check the sharing itself:
that it happens, that a call running SQL or a slow call does not make
finished calls wait behind it, that one call's failing writes roll back
alone, that a slow call lets go of the claims behind it, and that a step
during which a worker died runs after the others. On PostgreSQL the waiting
calls keep their rows locked in the round's transaction, so also: a step
that raises, or a group member, does not take the waiting calls down with
it or make them run again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest

from threadjobs import Job, JobExecutor

from . import servers
from .helpers import run_until_settled

SHARING = [name for name in servers.backends() if name in ("sqlite", "postgres")]
"""The backends here that commit several calls at once."""


@pytest.fixture(params=SHARING)
def backend_name(request: Any) -> str:
    return request.param


@pytest.fixture
def one_thread(db_url: str) -> Iterator[JobExecutor]:
    """A worker of one thread, so that it gets every due step at once."""
    executor = JobExecutor(db_url, threads=1, poll_interval=0.05)
    yield executor
    executor.close()


def calls(executor: JobExecutor, job_id: int) -> list[int]:
    return [step.calls for step in executor.get_steps(job_id)]


def quick(params: dict[str, Any], ctx: dict[str, Any]) -> None:
    ctx["ran"] = True


def shared_commit_sizes(caplog: Any) -> list[int]:
    return [
        record.args[0]  # type: ignore[index]
        for record in caplog.records
        if getattr(record, "action", "") == "shared_commit"
    ]


def test_quick_calls_of_one_thread_commit_together(one_thread, caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="threadjobs.scheduler")
    one_thread.add(Job("quick").submit(quick))
    ids = [one_thread.execute("quick", {"n": n}) for n in range(4)]

    run_until_settled(one_thread)

    assert [one_thread.get_job(job_id).ctx for job_id in ids] == [{"ran": True}] * 4
    assert 4 in shared_commit_sizes(caplog)


def test_a_step_running_sql_commits_the_waiting_calls_first(one_thread) -> None:
    one_thread.exec_query("CREATE TABLE seen (ended INTEGER)")

    def writer(params: dict[str, Any], ctx: dict[str, Any], ex: JobExecutor) -> None:
        ended = ex.exec_query(
            "SELECT COUNT(*) FROM threadjobs_jobs WHERE ended_at IS NOT NULL"
        )[0][0]
        ex.exec_query("INSERT INTO seen VALUES (%s)", [ended])
        ctx["ended_before"] = ended

    one_thread.add(Job("quick").submit(quick))
    one_thread.add(Job("writer").submit(writer))
    quick_ids = [one_thread.execute("quick", {"n": n}) for n in range(2)]
    writer_id = one_thread.execute("writer")

    run_until_settled(one_thread)

    # The quick calls ran first and were committed before the writer's
    # transaction began; the writer's own SQL and ctx committed together.
    assert one_thread.get_job(writer_id).ctx == {"ended_before": 2}
    assert one_thread.exec_query("SELECT ended FROM seen") == [(2,)]
    assert all(one_thread.get_job(i).status == "ended" for i in quick_ids)


def test_a_busy_thread_fills_its_rounds_with_due_steps(one_thread, caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="threadjobs.scheduler")

    def spin(params: dict[str, Any]) -> bool:
        return time.time() < params["until"]  # True: call again now.

    one_thread.add(Job("spin").submit(spin))
    one_thread.add(Job("quick").submit(quick))
    one_thread.execute("spin", {"until": time.time() + 1.0})
    quick_ids = [one_thread.execute("quick", {"n": n}, delay=0.3) for n in range(6)]

    run_until_settled(one_thread)

    # The one thread was busy with the spinning step, one call per round,
    # when the quick jobs fell due: its commits claimed them to fill its
    # rounds, which the scheduler could not hand it while it was busy.
    assert max(shared_commit_sizes(caplog)) >= 3
    for job_id in quick_ids:
        assert one_thread.get_job(job_id).status == "ended"
        assert calls(one_thread, job_id) == [1]


def test_a_call_whose_writes_fail_rolls_back_alone(db_url, caplog) -> None:
    executor = JobExecutor(db_url, threads=1, poll_interval=0.05, max_ctx_bytes=500)

    def big(params: dict[str, Any], ctx: dict[str, Any]) -> None:
        ctx["blob"] = "x" * 1000

    try:
        executor.add(Job("quick").submit(quick))
        executor.add(Job("big").submit(big))
        first = executor.execute("quick", {"n": 1})
        failing = executor.execute("big")
        last = executor.execute("quick", {"n": 2})
        run_until_settled(executor)

        assert executor.get_job(first).status == "ended"
        assert executor.get_job(last).status == "ended"
        failed = executor.get_job(failing)
        assert failed.status == "failed"
        assert "over the cap of 500 bytes" in (failed.error or "")
        assert failed.ctx == {}
    finally:
        executor.close()


def test_calls_do_not_wait_behind_a_slow_step(one_thread) -> None:
    seen: list[str] = []

    def check(params: dict[str, Any], ctx: Any, ex: JobExecutor) -> None:
        seen.append(ex.get_job(params["watch"]).status)
        time.sleep(params["sleep"])

    one_thread.add(Job("quick").submit(quick))
    one_thread.add(Job("check").submit(check))
    first = one_thread.execute("quick")
    slow = one_thread.execute("check", {"watch": first, "sleep": 0.2})
    one_thread.execute("check", {"watch": slow, "sleep": 0})

    run_until_settled(one_thread)

    # Each check runs on its own connection and sees only what committed.
    # The first is of a step this worker had not timed yet, the second of
    # one it has seen take 0.2 s: the finished call before each had
    # committed before it started.
    assert seen == ["ended", "ended"]


def test_a_slow_call_gives_back_the_claims_not_started(one_thread, caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="threadjobs.scheduler")

    def slow(params: dict[str, Any]) -> None:
        time.sleep(0.2)

    one_thread.add(Job("slow").submit(slow))
    one_thread.add(Job("quick").submit(quick))
    slow_id = one_thread.execute("slow")
    quick_ids = [one_thread.execute("quick", {"n": n}) for n in range(3)]

    run_until_settled(one_thread)

    # The thread held all four claims; after the slow call the three it had
    # not started went back for any thread or worker, uncounted.
    handed_back = [
        record.args[0]  # type: ignore[index]
        for record in caplog.records
        if getattr(record, "action", "") == "claims_handed_back"
    ]
    assert handed_back == [3]
    for job_id in [slow_id, *quick_ids]:
        assert one_thread.get_job(job_id).status == "ended"
        assert [step.calls for step in one_thread.get_steps(job_id)] == [1]


def test_a_step_a_worker_died_during_runs_after_the_others(one_thread) -> None:
    order: list[str] = []

    def note(params: dict[str, Any]) -> None:
        order.append(params["name"])

    one_thread.add(Job("note").submit(note))
    ids = {name: one_thread.execute("note", {"name": name}) for name in "sab"}
    # As a worker that died during the calls of "s" leaves it (for "s"
    # twice, for "a" once): unfinished calls counted, claims freed.
    for name, unfinished in (("s", 2), ("a", 1)):
        one_thread.exec_query(
            "UPDATE threadjobs_steps SET unfinished_calls = %s, calls = %s "
            "WHERE job_id = %s",
            [unfinished, unfinished, ids[name]],
        )

    run_until_settled(one_thread)

    # "s" and "a" are both suspect now; one of them was given back uncounted
    # and ran in a later round. Within each round, "b" came before a
    # suspect, and no call was counted that was not made.
    assert order.index("b") < order.index("s")
    assert sorted(order) == ["a", "b", "s"]
    calls = {
        name: [step.calls for step in one_thread.get_steps(job_id)]
        for name, job_id in ids.items()
    }
    assert calls == {"s": [3], "a": [2], "b": [1]}


@pytest.mark.skipif("postgres" not in SHARING, reason="no PostgreSQL server here")
@pytest.mark.parametrize("backend_name", ["postgres"], indirect=True)
def test_a_call_the_database_refuses_fails_alone(one_thread) -> None:
    # PostgreSQL refuses a NUL character in JSONB, as the write happens.
    def store(params: dict[str, Any], ctx: dict[str, Any]) -> None:
        ctx["text"] = params["text"].replace("NUL", "\u0000")

    one_thread.add(Job("store").submit(store))
    texts = ["fine", "fine too", "aNULb", "last"]
    ids = [one_thread.execute("store", {"text": text}) for text in texts]

    run_until_settled(one_thread)

    # The refused write rolled back the round's transaction with the other
    # calls' writes; those committed one by one, without a second call.
    jobs = [one_thread.get_job(job_id) for job_id in ids]
    assert [job.status for job in jobs] == ["ended", "ended", "failed", "ended"]
    assert "Unicode" in (jobs[2].error or "")
    assert [job.ctx.get("text") for job in jobs] == ["fine", "fine too", None, "last"]
    assert [calls(one_thread, job_id) for job_id in ids] == [[1]] * 4


def test_a_step_that_raises_leaves_the_waiting_calls_done(one_thread) -> None:
    def maybe_raise(params: dict[str, Any], ctx: dict[str, Any]) -> None:
        if params["n"] == 2:
            raise RuntimeError("step broke")
        ctx["ran"] = True

    one_thread.add(Job("maybe").submit(maybe_raise))
    ids = [one_thread.execute("maybe", {"n": n}) for n in range(4)]

    run_until_settled(one_thread)

    statuses = [one_thread.get_job(job_id).status for job_id in ids]
    assert statuses == ["ended", "ended", "failed", "ended"]
    assert [calls(one_thread, job_id) for job_id in ids] == [[1]] * 4


def test_a_group_member_commits_after_the_waiting_calls(one_thread) -> None:
    def member(params: dict[str, Any], ctx: dict[str, Any]) -> None:
        ctx[f"m{params['n']}"] = True

    def other(params: dict[str, Any], ctx: dict[str, Any]) -> None:
        ctx["other"] = True

    def check(params: dict[str, Any], ctx: dict[str, Any]) -> None:
        assert ctx["m1"] and ctx["other"], ctx

    one_thread.add(Job("quick").submit(quick))
    one_thread.add(Job("group").submit([member, other]).submit(check))
    quick_ids = [one_thread.execute("quick", {"n": n}) for n in range(3)]
    group_id = one_thread.execute("group", {"n": 1})

    run_until_settled(one_thread)

    assert one_thread.get_job(group_id).status == "ended"
    assert one_thread.get_job(group_id).ctx == {"m1": True, "other": True}
    assert calls(one_thread, group_id) == [1, 1, 1]
    for job_id in quick_ids:
        assert one_thread.get_job(job_id).status == "ended"
        assert calls(one_thread, job_id) == [1]


@pytest.mark.skipif("postgres" not in SHARING, reason="no PostgreSQL server here")
@pytest.mark.parametrize("backend_name", ["postgres"], indirect=True)
def test_a_waiting_call_keeps_its_rows_locked(one_thread, db_url) -> None:
    import psycopg

    found: dict[int, str] = {}

    def probe(params: dict[str, Any], ctx: dict[str, Any]) -> None:
        if params["watch"] is None:
            return
        with psycopg.connect(db_url, autocommit=True) as other:
            try:
                other.execute(
                    "SELECT id FROM threadjobs_steps WHERE job_id = %s "
                    "FOR UPDATE NOWAIT",
                    [params["watch"]],
                )
                found[params["watch"]] = "free"
            except psycopg.errors.LockNotAvailable:
                found[params["watch"]] = "locked"

    one_thread.add(Job("probe").submit(probe))
    first = one_thread.execute("probe", {"watch": None})
    second = one_thread.execute("probe", {"watch": first})
    third = one_thread.execute("probe", {"watch": second})

    run_until_settled(one_thread)

    # The second and third calls ran while the one before each waited to
    # commit with them: its step row was still locked against other workers.
    assert found == {first: "locked", second: "locked"}
    assert calls(one_thread, third) == [1]
