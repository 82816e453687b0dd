"""What the results were measured on: versions, machine and date."""

from __future__ import annotations

import dataclasses
import datetime
import os
import platform
import sqlite3
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import psycopg
import pymysql

from .common import PG_ADMIN_URL, REPO_ROOT, Sizes, mysql_admin

PACKAGES = (
    "procrastinate",
    "dbos",
    "huey",
    "psycopg",
    "psycopg-pool",
    "PyMySQL",
    "tenacity",
    "SQLAlchemy",
    "matplotlib",
)


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _package(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _threadjobs() -> dict[str, Any]:
    import threadjobs

    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    # Files of the package changed since that commit, if any: the numbers
    # then belong to the working tree, not to the commit alone.
    changed = subprocess.run(
        ["git", "status", "--short", "--", "threadjobs"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split("\n")
    return {
        "version": getattr(threadjobs, "__version__", "?"),
        "commit": commit,
        "uncommitted": [line.strip() for line in changed if line.strip()],
    }


def _servers() -> dict[str, Any]:
    servers: dict[str, Any] = {"sqlite": sqlite3.sqlite_version}
    try:
        with psycopg.connect(PG_ADMIN_URL, connect_timeout=5) as conn:
            row = conn.execute("SHOW server_version").fetchone()
            servers["postgresql"] = row[0] if row else None
    except psycopg.Error as exc:
        servers["postgresql"] = f"unreachable: {exc}"
    try:
        conn = mysql_admin()
        with conn.cursor() as cur:
            cur.execute("SELECT VERSION()")
            servers["mysql"] = cur.fetchone()[0]
        conn.close()
    except pymysql.Error as exc:
        servers["mysql"] = f"unreachable: {exc}"
    return servers


def describe(mode: str, sizes: Sizes) -> dict[str, Any]:
    """Everything a reader needs to compare this run with another."""
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime(
            "%Y-%m-%d %H:%M UTC"
        ),
        "mode": mode,
        "runs": sizes.runs,
        "sizes": dataclasses.asdict(sizes),
        "machine": {
            "nproc": os.cpu_count(),
            "cpu": _cpu(),
            "platform": platform.platform(),
        },
        "python": platform.python_version(),
        "threadjobs": _threadjobs(),
        "packages": {name: _package(name) for name in PACKAGES},
        "servers": _servers(),
    }
