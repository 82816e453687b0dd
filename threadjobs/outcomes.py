"""The return-value rules: what a step function's result means.

``interpret()`` turns whatever a step returned into one of the outcome
classes below; the worker then acts on the outcome. A value the rules do not
allow raises UnsupportedReturnValueError inside the step call, so it is
handled exactly like an exception raised by the step.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Union

from .errors import InvalidValueError, UnsupportedReturnValueError
from .jsonvalues import check_dict

_ALLOWED = (
    "a step may return None/False/0 (done), a positive number or "
    '{"run_after": n} (call again after n seconds), another truthy value '
    "(call again now), a negative number (fail, keep the work), or "
    "[name, params, ctx, delay] (start a child job and wait for it)"
)


@dataclass(frozen=True)
class Done:
    """The step is finished; the job moves on."""


@dataclass(frozen=True)
class CallAgain:
    """Commit and call the same function again after ``delay`` seconds."""

    delay: float = 0.0


@dataclass(frozen=True)
class FailKeepWork:
    """Commit the step's work, then mark the job failed until resumed."""

    value: float


@dataclass(frozen=True)
class StartChild:
    """Commit, start (or find) the child job, and wait for it to end."""

    name: str
    params: dict[str, Any]
    ctx: dict[str, Any] = field(default_factory=dict)
    delay: float = 0.0


Outcome = Union[Done, CallAgain, FailKeepWork, StartChild]


def _unsupported(value: Any, why: str) -> UnsupportedReturnValueError:
    shown = repr(value)
    if len(shown) > 200:
        shown = shown[:200] + "..."
    return UnsupportedReturnValueError(f"the step returned {shown}: {why}; {_ALLOWED}")


def _from_number(value: float) -> Outcome:
    if not math.isfinite(value):
        raise _unsupported(value, "a delay must be a finite number")
    if value == 0:
        return Done()
    if value < 0:
        return FailKeepWork(value)
    return CallAgain(float(value))


def _from_dict(value: dict[Any, Any]) -> Outcome:
    delay: Any = value.get("run_after")
    if set(value) != {"run_after"} or not _is_number(delay):
        raise _unsupported(value, 'a dict must be exactly {"run_after": n}')
    if not math.isfinite(delay) or delay < 0:
        raise _unsupported(value, "run_after must be a finite number >= 0")
    return CallAgain(float(delay))


def _from_sequence(value: Union[list[Any], tuple[Any, ...]]) -> Outcome:
    if not 2 <= len(value) <= 4:
        raise _unsupported(
            value, "a child job is [name, params] plus optional ctx and delay"
        )
    name, params, ctx, delay = [*value, None, None][:4]
    delay = 0 if delay is None else delay
    if not isinstance(name, str):
        raise _unsupported(value, "the child job's name must be a str")
    try:
        check_dict(params, "the child job's params")
        check_dict({} if ctx is None else ctx, "the child job's ctx")
    except InvalidValueError as exc:
        raise _unsupported(value, str(exc)) from None
    if not _is_number(delay) or not math.isfinite(delay) or delay < 0:
        raise _unsupported(value, "the child job's delay must be a number >= 0")
    return StartChild(name, params, ctx or {}, float(delay))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def interpret(value: Any) -> Outcome:
    """Map a step function's return value to an outcome, or raise."""
    if value is None or value is False:
        return Done()
    if value is True:
        return CallAgain()
    if _is_number(value):
        return _from_number(value)
    if isinstance(value, dict):
        return _from_dict(value)
    if isinstance(value, (list, tuple)):
        return _from_sequence(value)
    if (
        inspect.isawaitable(value)
        or inspect.isgenerator(value)
        or (inspect.isasyncgen(value))
    ):
        if inspect.iscoroutine(value):
            value.close()  # Avoid the "never awaited" warning.
        raise _unsupported(
            value,
            "steps run in threads; async functions and generators "
            "are not step functions",
        )
    return CallAgain() if value else Done()
