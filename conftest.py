"""Fixtures shared by tests/ and integration/."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack

import pytest

from tests import servers


@pytest.fixture(scope="session")
def server_urls() -> Iterator[dict[str, str]]:
    """Server URLs, started or looked up once per session, on first need."""
    with ExitStack() as stack:
        urls: dict[str, str] = {}

        class Lazy(dict):  # type: ignore[type-arg]
            def __missing__(self, name: str) -> str:
                try:
                    urls[name] = stack.enter_context(servers.server_url(name))
                except Exception as exc:
                    pytest.fail(f"the {name} backend is unavailable: {exc}")
                return urls[name]

        yield Lazy()
