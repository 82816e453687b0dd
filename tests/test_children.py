"""Child jobs: the parent waits, reads the child's ctx, and survives failure."""

from __future__ import annotations

from threadjobs import Job

from .helpers import run_until_settled, wait_until


def test_parent_waits_for_the_child_and_sees_its_ctx(executor) -> None:
    events = []

    def parent_first(params, ctx):
        events.append("parent 1")
        return ["child", {"n": params["n"]}, {"start": 10}]

    def parent_second(params, ctx):
        events.append("parent 2")
        ctx["from_child"] = ctx[".children"]["child"]["total"]

    def child_step(params, ctx):
        events.append("child")
        ctx["total"] = ctx["start"] + params["n"]

    executor.add(Job("parent").submit(parent_first).submit(parent_second))
    executor.add(Job("child").submit(child_step).submit(lambda p: None))
    job_id = executor.execute("parent", {"n": 5})
    run_until_settled(executor)
    assert events == ["parent 1", "child", "parent 2"]
    assert executor.get_job(job_id).ctx["from_child"] == 15
    (child,) = [j for j in executor.list_ended_jobs() if j.name == "child"]
    assert child.params == {"n": 5}
    steps = executor.get_steps(job_id)
    assert steps[0].child_job_id == child.id


def test_child_with_delay_and_tuple_form(executor) -> None:
    executor.add(Job("parent").submit(lambda p: ("child", {}, None, 0.2)))
    executor.add(Job("child").submit(lambda p, ctx: ctx.update(ok=True)))
    job_id = executor.execute("parent")
    run_until_settled(executor)
    assert executor.get_job(job_id).ctx == {".children": {"child": {"ok": True}}}


def test_existing_ended_child_lets_the_parent_go_on_at_once(executor) -> None:
    executor.add(Job("child").submit(lambda p, ctx: ctx.update(first=True)))
    executor.add(
        Job("parent")
        .submit(lambda p: ["child", {"same": 1}, {"ignored": True}])
        .submit(lambda p, ctx: ctx.update(after=True))
    )
    child_id = executor.execute("child", {"same": 1})
    run_until_settled(executor)
    job_id = executor.execute("parent")
    run_until_settled(executor)
    job = executor.get_job(job_id)
    assert job.ctx == {".children": {"child": {"first": True}}, "after": True}
    assert job.status == "ended"
    assert executor.get_steps(job_id)[0].child_job_id == child_id


def test_two_parents_share_one_deduplicated_child(executor) -> None:
    def slow_child(params, ctx):
        if ctx.get("waited"):
            return None
        ctx["waited"] = True
        return {"run_after": 0.2}

    executor.add(Job("child").submit(slow_child))
    executor.add(
        Job("parent")
        .submit(lambda p: ["child", {"shared": True}])
        .submit(lambda p, ctx: ctx.update(done=True))
    )
    first = executor.execute("parent", {"n": 1})
    second = executor.execute("parent", {"n": 2})
    run_until_settled(executor)
    assert executor.get_job(first).ctx["done"] is True
    assert executor.get_job(second).ctx["done"] is True
    assert len([j for j in executor.list_ended_jobs() if j.name == "child"]) == 1


def test_failed_child_keeps_the_parent_waiting_until_resumed(executor) -> None:
    tries = []

    def child_step(params):
        tries.append(1)
        if len(tries) == 1:
            raise RuntimeError("child broke")

    executor.add(Job("child").submit(child_step))
    executor.add(
        Job("parent")
        .submit(lambda p: ["child", {}])
        .submit(lambda p, ctx: ctx.update(after=True))
    )
    parent_id = executor.execute("parent")
    executor.start()
    wait_until(executor.list_failed_jobs, what="the child to fail")
    executor.stop()
    (child,) = executor.list_failed_jobs()
    assert child.name == "child"
    assert [j.id for j in executor.list_not_ended_jobs()] == [parent_id]

    executor.resume_job(child.id)
    run_until_settled(executor)
    assert executor.get_job(parent_id).ctx["after"] is True
    assert executor.get_job(parent_id).status == "ended"


def test_group_member_child_holds_the_next_step(executor) -> None:
    order = []

    def slow_child(params):
        order.append("child 1")
        return 0.2 if order.count("child 1") == 1 else None

    executor.add(
        Job("child").submit(slow_child).submit(lambda p: order.append("child 2"))
    )
    executor.add(
        Job("parent")
        .submit([lambda p: ["child", {}], lambda p: order.append("sibling")])
        .submit(lambda p: order.append("parent 2"))
    )
    executor.execute("parent")
    run_until_settled(executor)
    assert order.index("parent 2") > order.index("child 2")


def test_unknown_child_name_fails_the_step(executor) -> None:
    executor.add(Job("parent").submit(lambda p: ["missing", {}]))
    job_id = executor.execute("parent")
    run_until_settled(executor)
    assert "no job named 'missing'" in executor.get_job(job_id).error


def test_builtin_execute_starts_a_job_the_caller_cannot_define(
    make_executor,
) -> None:
    web = make_executor()
    worker = make_executor()
    worker.add(Job("sendMessage").submit(lambda p, ctx: ctx.update(to=p["to"])))

    job_id = web.execute(
        ".execute", {"name": "sendMessage", "param": {"to": "a@b.c"}, "delay": 0}
    )
    run_until_settled(worker)
    started = worker.get_job(job_id).ctx["job_id"]
    assert worker.get_job(started).ctx == {"to": "a@b.c"}
    assert worker.get_job(started).name == "sendMessage"
