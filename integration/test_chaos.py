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


def test_smoke_chaos_with_members_that_run_no_sql() -> None:
    """SQLite's workers commit such calls together: kills must lose none of
    them and commit none twice."""
    report = run(replace(SMOKE["sqlite"], ctx_members=True), log=lambda line: None)
    print(asdict(report))
    assert report.passed, report.problems
