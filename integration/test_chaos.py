"""The chaos harness, small: run in CI on PostgreSQL and SQLite.

The full runs are ``python -m integration.chaos postgres|mariadb|sqlite``.
"""

from __future__ import annotations

from dataclasses import asdict, replace

import pytest

from tests import servers

from .chaos.harness import SMOKE, run


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_smoke_chaos_loses_nothing(backend) -> None:
    try:
        report = run(SMOKE[backend], log=lambda line: None)
    except RuntimeError as exc:
        if backend != "sqlite" and not servers.required():
            pytest.skip(f"no private {backend} server here: {exc}")
        raise
    print(asdict(report))
    assert report.passed, report.problems


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_smoke_chaos_with_steps_that_run_no_sql(backend: str) -> None:
    """Workers commit such calls together: kills and restarts must lose none
    of them and commit none twice."""
    try:
        report = run(replace(SMOKE[backend], ctx_steps=True), log=lambda line: None)
    except RuntimeError as exc:
        if backend != "sqlite" and not servers.required():
            pytest.skip(f"no private {backend} server here: {exc}")
        raise
    print(asdict(report))
    assert report.passed, report.problems
