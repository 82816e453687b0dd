"""Job definitions: chaining, groups, arity, and the errors of bad ones."""

from __future__ import annotations

import functools

import pytest

from threadjobs import DefinitionError, Job, JobExecutor


def one(params):
    return None


def two(params, ctx):
    return None


def three(params, ctx, executor):
    return None


def test_submit_chains_and_records_shape() -> None:
    job = Job("RUN#1")
    assert job.submit(one).submit([one, two, three]).submit(three) is job
    assert job.shape == [1, 3, 1]
    assert [len(group) for group in job.steps] == [1, 3, 1]


@pytest.mark.parametrize(
    ("function", "arity"),
    [
        (lambda: None, 0),
        (one, 1),
        (two, 2),
        (three, 3),
        (lambda p, c, e, extra=1: None, 3),
        (lambda *args: None, 3),
        (functools.partial(three, {}), 2),
        (print, 3),
    ],
)
def test_arity_is_what_the_function_declares(function, arity) -> None:
    assert Job("j").submit(function).steps[0][0].arity == arity


def test_member_call_passes_only_declared_arguments() -> None:
    seen = []
    job = Job("j").submit(lambda params, ctx: seen.append((params, ctx)))
    job.steps[0][0].call({"p": 1}, {"c": 2}, object())
    assert seen == [({"p": 1}, {"c": 2})]


@pytest.mark.parametrize(
    ("step", "message"),
    [
        (42, "step 1 of job 'j' is a int, not a function"),
        ([], "step 1 of job 'j' is an empty group"),
        ([one, "x"], "member 2 of step 1 of job 'j' is a str"),
    ],
)
def test_bad_steps_fail_at_submit(step, message) -> None:
    job = Job("j")
    with pytest.raises(DefinitionError, match=message.replace("(", r"\(")):
        job.submit(step)
    assert job.steps == ()


def test_async_functions_are_refused() -> None:
    async def step(params):
        return None

    with pytest.raises(DefinitionError, match="async function"):
        Job("j").submit(step)


@pytest.mark.parametrize(
    ("name", "message"),
    [("", "empty"), ("   ", "empty"), (None, "must be a str"), ("x" * 201, "201")],
)
def test_bad_names(name, message) -> None:
    with pytest.raises(DefinitionError, match=message):
        Job(name)


def test_add_refuses_empty_duplicate_and_reserved(tmp_path) -> None:
    executor = JobExecutor(f"sqlite:///{tmp_path}/db.sqlite3")
    with pytest.raises(DefinitionError, match="has no steps"):
        executor.add(Job("empty"))
    executor.add(Job("taken").submit(one))
    with pytest.raises(DefinitionError, match="already added"):
        executor.add(Job("taken").submit(two))
    assert executor.definition("taken").steps[0][0].function is one
    with pytest.raises(DefinitionError, match="reserved for built-in"):
        executor.add(Job(".mine").submit(one))
    with pytest.raises(DefinitionError, match="takes a Job"):
        executor.add(one)  # type: ignore[arg-type]
    executor.close()
