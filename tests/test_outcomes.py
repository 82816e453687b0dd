"""The return-value table, value by value."""

from __future__ import annotations

import math

import pytest

from threadjobs import UnsupportedReturnValueError
from threadjobs.outcomes import (
    CallAgain,
    Done,
    FailKeepWork,
    StartChild,
    interpret,
)


@pytest.mark.parametrize("value", [None, False, 0, 0.0, ""])
def test_falsy_values_mean_done(value) -> None:
    assert interpret(value) == Done()


@pytest.mark.parametrize(
    ("value", "delay"), [(5, 5.0), (0.25, 0.25), ({"run_after": 3}, 3.0)]
)
def test_positive_numbers_and_run_after_mean_call_again_later(value, delay) -> None:
    assert interpret(value) == CallAgain(delay)


def test_run_after_zero_means_call_again_now() -> None:
    assert interpret({"run_after": 0}) == CallAgain(0.0)


@pytest.mark.parametrize("value", [True, "CONTINUE", "x", object()])
def test_other_truthy_values_mean_call_again_now(value) -> None:
    assert interpret(value) == CallAgain(0.0)


@pytest.mark.parametrize("value", [-1, -0.5])
def test_negative_numbers_mean_fail_keeping_the_work(value) -> None:
    assert interpret(value) == FailKeepWork(value)


def test_child_job_lists_and_tuples() -> None:
    assert interpret(["mail", {"to": "a"}]) == StartChild("mail", {"to": "a"})
    assert interpret(("mail", {}, {"c": 1}, 2)) == StartChild("mail", {}, {"c": 1}, 2.0)
    assert interpret(["mail", {}, None]) == StartChild("mail", {}, {}, 0.0)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (math.nan, "finite"),
        (math.inf, "finite"),
        ({"run_after": -1}, "run_after must be"),
        ({"run_after": "soon"}, "exactly"),
        ({"delay": 1}, "exactly"),
        ({}, "exactly"),
        ([], "a child job is"),
        (["mail"], "a child job is"),
        (["mail", {}, {}, 1, 2], "a child job is"),
        ([1, {}], "name must be a str"),
        (["mail", [1]], "params must be a dict"),
        (["mail", {}, {"k": {1, 2}}], "set"),
        (["mail", {}, {}, -3], "delay"),
    ],
)
def test_unsupported_values_say_what_was_returned(value, message) -> None:
    with pytest.raises(UnsupportedReturnValueError, match=message) as info:
        interpret(value)
    assert "the step returned" in str(info.value)
    assert "[name, params, ctx, delay]" in str(info.value)


def test_coroutines_and_generators_are_unsupported() -> None:
    async def coroutine_function():
        return None

    def generator_function():
        yield 1

    for value in (coroutine_function(), generator_function()):
        with pytest.raises(UnsupportedReturnValueError, match="async"):
            interpret(value)
