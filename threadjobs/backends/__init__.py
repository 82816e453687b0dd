"""Storage backends, one module per database dialect."""

from __future__ import annotations

import os
from typing import Any, Optional, Union

from ..errors import ConfigurationError
from .base import SqlBackend

_SCHEMES = {
    "sqlite": "sqlite",
    "postgresql": "postgres",
    "postgres": "postgres",
    "mysql": "mysql",
    "mariadb": "mysql",
}


def open_backend(database: Optional[Union[str, Any]], **options: Any) -> SqlBackend:
    """Make the backend for a URL, a path, a ready pool, or None (SQLite).

    A URL picks the dialect by its scheme: ``sqlite:///file``,
    ``postgresql://…`` or ``mysql://…``. A ``psycopg_pool.ConnectionPool``
    is used as it is.
    """
    if isinstance(database, SqlBackend):
        return database
    if database is None:
        database = os.environ.get("THREADJOBS_DATABASE_URL") or None
    if database is None:
        from .sqlite import DEFAULT_PATH, SqliteBackend

        return SqliteBackend(DEFAULT_PATH, **options)
    if isinstance(database, os.PathLike):
        from .sqlite import SqliteBackend

        return SqliteBackend(os.fspath(database), **options)
    if isinstance(database, str):
        return _from_url(database, options)
    return _from_pool(database, options)


def _from_url(url: str, options: dict[str, Any]) -> SqlBackend:
    scheme = url.split("://", 1)[0].split("+", 1)[0].lower() if "://" in url else ""
    dialect = _SCHEMES.get(scheme)
    if dialect is None:
        raise ConfigurationError(
            f"cannot tell the database from {url!r}; use a URL such as "
            "sqlite:///jobs.sqlite3, postgresql://user@host/db or "
            "mysql://user@host/db"
        )
    if dialect == "sqlite":
        from .sqlite import SqliteBackend, path_from_url

        return SqliteBackend(path_from_url(url), **options)
    if dialect == "postgres":
        from .postgres import PostgresBackend

        return PostgresBackend(url, **options)
    from .mysql import MysqlBackend

    return MysqlBackend(url, **options)


def _from_pool(pool: Any, options: dict[str, Any]) -> SqlBackend:
    module = type(pool).__module__
    if module.startswith("psycopg_pool"):
        from .postgres import PostgresBackend

        return PostgresBackend(pool, **options)
    raise ConfigurationError(
        f"a {type(pool).__name__} is not a database threadjobs can use; pass "
        "a URL, a psycopg_pool.ConnectionPool, or None for the SQLite default"
    )


__all__ = ["SqlBackend", "open_backend"]
