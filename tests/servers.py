"""Where the server backends come from in tests, and a fresh database each.

A server comes from the environment (``THREADJOBS_TEST_POSTGRES_URL``,
``THREADJOBS_TEST_MYSQL_URL``) or, where Docker runs, from testcontainers.
With ``THREADJOBS_TEST_REQUIRE_SERVERS=1`` (as CI sets it) a server that
cannot be had fails the tests instead of leaving its backend out.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import quote, urlsplit, urlunsplit

ENV_URLS = {
    "postgres": "THREADJOBS_TEST_POSTGRES_URL",
    "mysql": "THREADJOBS_TEST_MYSQL_URL",
}


def required() -> bool:
    return os.environ.get("THREADJOBS_TEST_REQUIRE_SERVERS", "") not in ("", "0")


def docker_available() -> bool:
    if not shutil.which("docker"):
        return False
    probe = subprocess.run(
        ["docker", "info"], capture_output=True, timeout=20, check=False
    )
    return probe.returncode == 0


def backends() -> list[str]:
    """The backends the behavioural suite runs on here."""
    found = ["sqlite"]
    docker = None
    for name, env in ENV_URLS.items():
        if os.environ.get(env) or required():
            found.append(name)
            continue
        if docker is None:
            docker = docker_available()
        if docker:
            found.append(name)
    return found


@contextmanager
def server_url(name: str) -> Iterator[str]:
    """The URL of a server for the whole test session."""
    url = os.environ.get(ENV_URLS[name])
    if url:
        yield url
        return
    if not docker_available():
        raise RuntimeError(
            f"no {name} server: set {ENV_URLS[name]} to a database URL, or "
            "run Docker so testcontainers can start one"
        )
    if name == "postgres":
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:15", driver=None) as container:
            yield container.get_connection_url()
    else:
        from testcontainers.mysql import MySqlContainer

        with MySqlContainer("mariadb:10.11") as container:
            yield container.get_connection_url().replace("mysql+pymysql", "mysql")


@contextmanager
def fresh_database(name: str, url: str) -> Iterator[str]:
    """A new empty schema (PostgreSQL) or database (MySQL), dropped after."""
    label = f"tj_{uuid.uuid4().hex[:12]}"
    if name == "postgres":
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {label}")
        parts = urlsplit(url)
        option = quote(f"-csearch_path={label}")
        query = (
            f"{parts.query}&options={option}" if parts.query else f"options={option}"
        )
        try:
            yield urlunsplit(parts._replace(query=query))
        finally:
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(f"DROP SCHEMA {label} CASCADE")
        return

    import pymysql

    parts = urlsplit(url)
    conn = pymysql.connect(
        host=parts.hostname,
        port=parts.port or 3306,
        user=parts.username or "root",
        password=parts.password or "",
        autocommit=True,
    )
    try:
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE {label}")
        try:
            yield urlunsplit(parts._replace(path=f"/{label}"))
        finally:
            with conn.cursor() as cur:
                cur.execute(f"DROP DATABASE IF EXISTS {label}")
    finally:
        conn.close()
