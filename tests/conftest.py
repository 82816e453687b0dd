"""Fixtures: every test gets a fresh SQLite file; no server is needed.

The ``db_url`` fixture is the one place a test learns its database; the
integration suite overrides it to run the same tests on the servers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from threadjobs import JobExecutor


@pytest.fixture
def db_url(tmp_path: Any) -> str:
    return f"sqlite:///{tmp_path}/jobs.sqlite3"


@pytest.fixture
def make_executor(db_url: str) -> Iterator[Callable[..., JobExecutor]]:
    """Build executors on the test's database; all are closed afterwards."""
    made: list[JobExecutor] = []

    def make(**options: Any) -> JobExecutor:
        options.setdefault("poll_interval", 0.05)
        executor = JobExecutor(db_url, **options)
        made.append(executor)
        return executor

    yield make
    for executor in made:
        executor.close()


@pytest.fixture
def executor(make_executor: Callable[..., JobExecutor]) -> JobExecutor:
    return make_executor()
