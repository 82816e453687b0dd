"""Finding the APP a worker runs: ``package.module:attribute``.

The attribute is a JobExecutor or a function returning one, found the way
gunicorn and celery find theirs.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any, Optional

from ..errors import (
    ThreadJobsError,
)
from ..executor import JobExecutor
from .base import (
    EXIT_USAGE,
    CliError,
)

logger = logging.getLogger(__name__)


def load_app(
    spec: str,
    database: Optional[str] = None,
    *,
    threads: Optional[int] = None,
    poll_interval: Optional[float] = None,
) -> JobExecutor:
    """The executor that ``package.module:attribute`` names, set up to run.

    The attribute is a JobExecutor or a function returning one; a function
    that takes ``database`` is called with it. Otherwise a given database
    (and any setting given) makes a new executor with the app's definitions,
    so step functions must use the executor they are passed, not a global.
    """
    target = _import_attribute(spec)
    passed = False
    if isinstance(target, JobExecutor):
        executor = target
    elif callable(target):
        executor, passed = _call_factory(spec, target, database)
    else:
        raise CliError(
            f"APP {spec!r} is a {type(target).__name__}, not a JobExecutor "
            "or a function returning one",
            EXIT_USAGE,
        )
    if (database is not None and not passed) or threads or poll_interval:
        executor = _rebuild(
            executor, None if passed else database, threads, poll_interval
        )
    return executor


def _import_attribute(spec: str) -> Any:
    module_name, colon, attribute = spec.partition(":")
    if not colon or not module_name or not attribute:
        raise CliError(
            "APP must look like package.module:attribute, e.g. "
            f"myproject.jobs:executor; got {spec!r}",
            EXIT_USAGE,
        )
    # Like gunicorn and celery: the project's own directory is importable.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as exc:
        missing = getattr(exc, "name", None)
        if (
            isinstance(exc, ModuleNotFoundError)
            and missing
            and (module_name == missing or module_name.startswith(missing + "."))
        ):
            raise CliError(
                f"cannot import {module_name!r} (APP {spec!r}): no module "
                f"named {missing!r}. Run the command in your project's "
                "directory, or add that directory to PYTHONPATH.",
                EXIT_USAGE,
            ) from None
        traceback.print_exc()
        raise CliError(
            f"importing {module_name!r} raised {type(exc).__name__}: {exc}; "
            "see the traceback above"
        ) from None
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise CliError(
                f"{module_name!r} has no attribute {attribute!r} (APP "
                f"{spec!r}); name a JobExecutor or a function returning one",
                EXIT_USAGE,
            )
        target = getattr(target, part)
    return target


def _call_factory(
    spec: str, factory: Callable[..., Any], database: Optional[str]
) -> tuple[JobExecutor, bool]:
    kwargs: dict[str, Any] = {}
    try:
        signature: Optional[inspect.Signature] = inspect.signature(factory)
    except (TypeError, ValueError):
        signature = None
    if database is not None and signature and _takes(signature, "database"):
        kwargs["database"] = database
    try:
        if signature is not None:
            signature.bind(**kwargs)
    except TypeError:
        raise CliError(
            f"APP {spec!r} is a function of {signature}; it must take no "
            "arguments, or just database",
            EXIT_USAGE,
        ) from None
    try:
        executor = factory(**kwargs)
    except ThreadJobsError:
        raise
    except Exception as exc:
        traceback.print_exc()
        raise CliError(
            f"calling {spec} raised {type(exc).__name__}: {exc}; see above"
        ) from None
    if not isinstance(executor, JobExecutor):
        raise CliError(
            f"APP {spec!r} returned a {type(executor).__name__}, not a JobExecutor",
            EXIT_USAGE,
        )
    return executor, bool(kwargs)


def _takes(signature: inspect.Signature, name: str) -> bool:
    for parameter in signature.parameters.values():
        if parameter.kind is parameter.VAR_KEYWORD:
            return True
        if parameter.name == name and parameter.kind is not parameter.POSITIONAL_ONLY:
            return True
    return False


def _rebuild(
    executor: JobExecutor,
    database: Optional[str],
    threads: Optional[int],
    poll_interval: Optional[float],
) -> JobExecutor:
    """A new executor with the app's definitions and this command's settings."""
    settings = executor.settings
    fresh = JobExecutor(
        executor.backend if database is None else database,
        threads=threads or settings.threads,
        poll_interval=poll_interval or settings.poll_interval,
        lease_seconds=settings.lease_seconds,
        max_unfinished_calls=settings.max_unfinished_calls,
        max_ctx_bytes=settings.max_ctx_bytes,
        retry_seconds=executor.backend.retry_seconds,
    )
    for name in executor.job_names():
        if not name.startswith("."):  # Built-in jobs come with every executor.
            fresh.add(executor.definition(name))
    if database is not None:
        executor.close()
    return fresh
