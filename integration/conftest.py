"""Fixtures for scenarios that need a real database server.

``server_db`` is a fresh database on each server backend available here
(PostgreSQL, MySQL/MariaDB); see ``tests/servers.py`` for where servers come
from and how CI makes an unreachable one fail instead of skip.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests import servers

SERVER_BACKENDS = [name for name in servers.backends() if name != "sqlite"]


@pytest.fixture(params=SERVER_BACKENDS or ["none"])
def server_backend(request: Any) -> str:
    if request.param == "none":
        pytest.skip(
            "no database server configured: set THREADJOBS_TEST_POSTGRES_URL "
            "or THREADJOBS_TEST_MYSQL_URL, or run Docker"
        )
    return str(request.param)


@pytest.fixture
def server_db(server_backend: str, server_urls: Any) -> Iterator[str]:
    try:
        database = servers.fresh_database(server_backend, server_urls[server_backend])
        url = database.__enter__()
    except Exception as exc:
        pytest.fail(f"cannot make a {server_backend} test database: {exc}")
    try:
        yield url
    finally:
        database.__exit__(None, None, None)
