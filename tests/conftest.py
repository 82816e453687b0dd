"""Fixtures: every behavioural test runs on every backend available here.

SQLite always (a fresh file per test, no server needed); PostgreSQL and
MySQL when a server is configured (see ``tests/servers.py``), each test in
a fresh schema or database. ``db_url`` is the one fixture that tells a test
where its database is.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from threadjobs import JobExecutor

from . import servers
from .spawned import spawning

BACKENDS = servers.backends()


@pytest.fixture(params=BACKENDS)
def backend_name(request: Any) -> str:
    return request.param


@pytest.fixture
def db_url(backend_name: str, tmp_path: Any, server_urls: Any) -> Iterator[str]:
    if backend_name == "sqlite":
        yield f"sqlite:///{tmp_path}/jobs.sqlite3"
        return
    try:
        database = servers.fresh_database(backend_name, server_urls[backend_name])
        url = database.__enter__()
    except Exception as exc:
        pytest.fail(f"cannot make a {backend_name} test database: {exc}")
    try:
        yield url
    finally:
        database.__exit__(None, None, None)


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


@pytest.fixture
def spawn() -> Iterator[Any]:
    """Start background processes; each is killed when the test ends."""
    with spawning() as start:
        yield start


@pytest.fixture(params=["sqlite"])
def sqlite_url(request: Any, tmp_path: Any) -> str:
    """An SQLite file, for tests about a command or a server, not a backend."""
    return f"sqlite:///{tmp_path}/jobs.sqlite3"
