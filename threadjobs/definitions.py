"""Job definitions: a name and a sequence of steps.

A step is one function or a group of functions that may run in parallel.
Definitions live in the code of every process that runs or starts jobs; the
database only records their shape (how many steps, how many members each).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Union

from .errors import DefinitionError

StepFunction = Callable[..., Any]
"""A step function: ``fn(params, ctx, executor)``, or a prefix of that."""

MAX_NAME_LENGTH = 200
"""The longest job name the tables can hold (characters)."""

RESERVED_PREFIX = "."
"""Job names starting with this are reserved for built-in jobs."""


def check_name(name: object) -> str:
    """Raise DefinitionError unless ``name`` can name a job."""
    if not isinstance(name, str):
        raise DefinitionError(f"a job name must be a str, got {type(name).__name__}")
    if not name.strip():
        raise DefinitionError("a job name must not be empty or blank")
    if len(name) > MAX_NAME_LENGTH:
        raise DefinitionError(
            f"the job name {name[:40]!r}... is {len(name)} characters long; "
            f"the limit is {MAX_NAME_LENGTH}"
        )
    return name


@dataclass(frozen=True)
class StepMember:
    """One function of a step, with how many arguments it takes (0 to 3)."""

    function: StepFunction
    arity: int

    @property
    def label(self) -> str:
        return getattr(self.function, "__qualname__", repr(self.function))

    def call(self, params: Any, ctx: Any, executor: Any) -> Any:
        return self.function(*(params, ctx, executor)[: self.arity])


def _arity(function: StepFunction) -> int:
    """How many of (params, ctx, executor) the function declares, at most 3."""
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return 3  # Some builtins have no signature; give them everything.

    count = 0
    for parameter in signature.parameters.values():
        if parameter.kind is parameter.VAR_POSITIONAL:
            return 3
        if parameter.kind in (
            parameter.POSITIONAL_ONLY,
            parameter.POSITIONAL_OR_KEYWORD,
        ):
            count += 1
    return min(count, 3)


def _member(function: object, where: str) -> StepMember:
    if not callable(function):
        raise DefinitionError(
            f"{where} is a {type(function).__name__}, not a function; "
            "submit a callable taking (params, ctx, executor) or a prefix"
        )
    if inspect.iscoroutinefunction(function) or inspect.isasyncgenfunction(function):
        raise DefinitionError(
            f"{where} is an async function; step functions run in threads "
            "and must be plain functions"
        )
    return StepMember(function, _arity(function))


class Job:
    """A job definition: a unique name and a chain of steps.

    ``submit()`` appends a step and returns the job, so calls chain::

        job = Job("report").submit(fetch).submit([render_a, render_b]).submit(send)
    """

    def __init__(self, name: str) -> None:
        self.name = check_name(name)
        self._steps: list[tuple[StepMember, ...]] = []

    def submit(self, step: Union[StepFunction, Sequence[StepFunction]]) -> Job:
        """Append a step: one callable, or a non-empty list of callables.

        A list is a group: its members may run in parallel, and the next step
        starts only once every member has finished.
        """
        where = f"step {len(self._steps) + 1} of job {self.name!r}"
        if isinstance(step, (list, tuple)):
            if not step:
                raise DefinitionError(
                    f"{where} is an empty group; a group needs at least one function"
                )
            group = tuple(
                _member(function, f"member {index + 1} of {where}")
                for index, function in enumerate(step)
            )
        else:
            group = (_member(step, where),)

        self._steps.append(group)
        return self

    @property
    def steps(self) -> tuple[tuple[StepMember, ...], ...]:
        """The steps in order, each a tuple of its members."""
        return tuple(self._steps)

    @property
    def shape(self) -> list[int]:
        """The size of each step's group, e.g. ``[1, 3, 1]``."""
        return [len(group) for group in self._steps]

    def __repr__(self) -> str:
        return f"Job({self.name!r}, shape={self.shape})"
