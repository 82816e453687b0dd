"""What every command shares: exit codes, its one error, the database."""

from __future__ import annotations

import logging
import os
import sys
from typing import Optional
from urllib.parse import urlsplit, urlunsplit

from ..executor import JobExecutor

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2

CLI_RETRY_SECS = 1.0
"""One-shot commands retry transient database errors this long, not 10 s."""

DEFAULT_DATABASE = "sqlite:///threadjobs.sqlite3"
"""What an executor built with no URL and no environment variable uses."""


class CliError(Exception):
    """A failure told in one message on stderr, with the exit code to use."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def note(message: str) -> None:
    print(f"threadjobs: {message}", file=sys.stderr, flush=True)


def database_label(database: Optional[str]) -> str:
    """The database a command uses, for messages, without a password."""
    url = database or os.environ.get("THREADJOBS_DATABASE_URL") or DEFAULT_DATABASE
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def open_executor(database: Optional[str]) -> JobExecutor:
    """An executor to inspect jobs; refuses an SQLite file that is not there.

    A mistyped path would otherwise create an empty database and show no
    jobs, which looks like success.
    """
    from ..backends.sqlite import SqliteBackend

    executor = JobExecutor(database, retry_seconds=CLI_RETRY_SECS)
    backend = executor.backend
    if isinstance(backend, SqliteBackend) and not os.path.exists(backend.path):
        raise CliError(
            f"there is no SQLite database at {os.path.abspath(backend.path)}; "
            "nothing was enqueued there. Pass --database URL or set "
            "THREADJOBS_DATABASE_URL to the database your workers use."
        )
    return executor
