"""Groups: parallel members, the shared ctx, and a failing member."""

from __future__ import annotations

import threading
import time

from threadjobs import Job

from .helpers import run_until_settled, wait_until


def test_members_without_sql_overlap_in_time(make_executor) -> None:
    executor = make_executor(threads=4)
    spans: dict[int, tuple[float, float]] = {}

    def member(index):
        def step(params, ctx):
            start = time.monotonic()
            time.sleep(0.4)
            spans[index] = (start, time.monotonic())
            ctx[f"m{index}"] = threading.current_thread().name

        return step

    executor.add(Job("g").submit([member(i) for i in range(3)]))
    job_id = executor.execute("g")
    run_until_settled(executor)

    assert len(spans) == 3
    latest_start = max(start for start, _ in spans.values())
    earliest_end = min(end for _, end in spans.values())
    assert latest_start < earliest_end, spans
    ctx = executor.get_job(job_id).ctx
    assert len({ctx[f"m{i}"] for i in range(3)}) == 3


def test_a_later_group_starts_every_member_at_once(make_executor) -> None:
    # The worker that finishes the first step runs one member itself; idle
    # threads must take the others at once, not at the next poll.
    executor = make_executor(threads=4, poll_interval=30)
    spans: dict[int, tuple[float, float]] = {}

    def member(index):
        def step(params):
            start = time.monotonic()
            time.sleep(0.4)
            spans[index] = (start, time.monotonic())

        return step

    executor.add(Job("g").submit(lambda p: None).submit([member(i) for i in range(3)]))
    executor.start()
    time.sleep(0.2)
    job_id = executor.execute("g")
    wait_until(lambda: len(spans) == 3, timeout=5, what="every member to run")
    wait_until(lambda: executor.get_job(job_id).status == "ended", timeout=5)
    assert executor.stop(timeout=5)

    latest_start = max(start for start, _ in spans.values())
    earliest_end = min(end for _, end in spans.values())
    assert latest_start < earliest_end, spans


def test_members_keep_changes_to_different_keys(executor) -> None:
    def member(index):
        def step(params, ctx):
            ctx[f"key{index}"] = index
            ctx.setdefault("list", []).append(index)
            time.sleep(0.05 * index)

        return step

    def check(params, ctx):
        ctx["all_there"] = all(f"key{i}" in ctx for i in range(4))

    executor.add(
        Job("g")
        .submit(lambda p, ctx: ctx.update(start=1, gone=1))
        .submit(
            [member(i) for i in range(4)] + [lambda p, ctx: ctx.pop("gone") and None]
        )
        .submit(check)
    )
    job_id = executor.execute("g")
    run_until_settled(executor)
    ctx = executor.get_job(job_id).ctx
    assert ctx["all_there"] is True
    assert {k: ctx[k] for k in ("key0", "key1", "key2", "key3", "start")} == {
        "key0": 0,
        "key1": 1,
        "key2": 2,
        "key3": 3,
        "start": 1,
    }
    assert "gone" not in ctx
    # Every member changed "list": the last to commit wins, whatever it saw.
    assert set(ctx["list"]) <= {0, 1, 2, 3} and ctx["list"]


def test_members_writing_sql_serialize_safely(make_executor) -> None:
    executor = make_executor(threads=6)
    executor.exec_query("CREATE TABLE hits (job INTEGER, member INTEGER, n INTEGER)")

    def member(index):
        def step(params, ctx, ex):
            for n in range(20):
                ex.exec_query(
                    "INSERT INTO hits VALUES (%s, %s, %s)", [params["n"], index, n]
                )
            time.sleep(0.01)
            ctx[f"m{index}"] = ex.exec_query(
                "SELECT COUNT(*) FROM hits WHERE job = %s AND member = %s",
                [params["n"], index],
            )[0][0]

        return step

    executor.add(Job("g").submit([member(i) for i in range(6)]))
    ids = [executor.execute("g", {"n": n}) for n in range(5)]
    run_until_settled(executor, timeout=60)
    assert executor.exec_query("SELECT COUNT(*) FROM hits") == [(6 * 20 * 5,)]
    for job_id in ids:
        job = executor.get_job(job_id)
        assert job.status == "ended"
        assert job.ctx == {f"m{i}": 20 for i in range(6)}
    calls = executor.exec_query("SELECT SUM(calls) FROM threadjobs_steps")
    assert calls == [(30,)]  # No step call ran twice.


def test_next_step_waits_for_a_failed_member_to_be_resumed(executor) -> None:
    executor.exec_query("CREATE TABLE work (member INTEGER)")
    attempts = []
    finals = []

    def good(params, ctx, ex):
        ex.exec_query("INSERT INTO work VALUES (1)")
        ctx["good"] = True

    def flaky(params, ctx, ex):
        attempts.append(1)
        ex.exec_query("INSERT INTO work VALUES (2)")
        if len(attempts) == 1:
            raise RuntimeError("first try fails")
        ctx["flaky"] = True

    executor.add(
        Job("g").submit([good, flaky]).submit(lambda p, ctx: finals.append(dict(ctx)))
    )
    job_id = executor.execute("g")
    run_until_settled(executor)
    assert executor.get_job(job_id).status == "failed"
    assert executor.exec_query("SELECT member FROM work") == [(1,)]
    assert finals == []

    executor.resume_job(job_id)
    run_until_settled(executor)
    assert sorted(executor.exec_query("SELECT member FROM work")) == [(1,), (2,)]
    assert finals == [{"good": True, "flaky": True}]
    assert len(attempts) == 2


def test_next_step_starts_exactly_once(make_executor) -> None:
    executor = make_executor(threads=8)
    starts = []
    executor.add(
        Job("g")
        .submit([lambda p: None] * 8)
        .submit(lambda p, ctx, ex: starts.append(1))
    )
    for n in range(10):
        executor.execute("g", {"n": n})
    run_until_settled(executor)
    assert len(starts) == 10


def test_worker_wakes_for_jobs_enqueued_in_its_process(make_executor) -> None:
    executor = make_executor(poll_interval=30)
    seen = []
    executor.add(Job("j").submit(lambda p: seen.append(p["n"])))
    executor.start()
    time.sleep(0.2)
    executor.execute("j", {"n": 1})
    wait_until(lambda: seen, timeout=5, what="a step despite the long poll")
    assert executor.stop(timeout=5)
