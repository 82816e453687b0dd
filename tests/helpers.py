"""Helpers shared by the behavioural tests of every backend."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from threadjobs import JobExecutor

WAIT_SECS = 20.0


def wait_until(
    predicate: Callable[[], Any], timeout: float = WAIT_SECS, what: str = ""
) -> Any:
    """Poll ``predicate`` until it is truthy; fail the test on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def run_until_settled(executor: JobExecutor, timeout: float = WAIT_SECS) -> None:
    """Run a worker until no job is pending, then stop it."""
    executor.start()
    try:
        wait_until(
            lambda: not executor.list_not_ended_jobs(),
            timeout,
            "every job to end or fail",
        )
    finally:
        assert executor.stop(timeout=10)


def status(executor: JobExecutor, job_id: int) -> str:
    return executor.get_job(job_id).status
