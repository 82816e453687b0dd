"""Scratch databases, child processes and clocks shared by every workload.

Each measurement gets a database of its own, created here and dropped after,
so that no run sees the rows of another and nothing outside ``bench_*``
databases is touched.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import psycopg
import pymysql

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"

PG_ADMIN_URL = os.environ.get(
    "BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
MYSQL_ADMIN_URL = os.environ.get("BENCH_MYSQL_URL", "mysql://root@127.0.0.1:3306/test")

BACKENDS = ("sqlite", "postgresql", "mysql")

READY_TIMEOUT_SECS = 60.0
"""How long a worker process may take to say it is ready."""

STOP_TIMEOUT_SECS = 15.0
"""How long a worker process may take to exit after SIGTERM."""


class BenchError(RuntimeError):
    """A workload could not be measured; the message says why."""


@dataclass(frozen=True)
class Sizes:
    """How much work each workload does; quick mode shrinks all of it."""

    w1_jobs: int
    w2_jobs: int
    enqueue_jobs: int
    bulk_jobs: int
    latency_jobs: int
    latency_gap_secs: float
    backlog_jobs: int
    memory_marks: tuple[int, int]
    pgbench_secs: int
    runs: int
    timeout_secs: float


FULL = Sizes(
    2_000, 500, 2_000, 100_000, 1_000, 0.01, 1_000_000, (10_000, 200_000), 20, 3, 1800.0
)
QUICK = Sizes(60, 20, 100, 2_000, 20, 0.01, 2_000, (300, 1_500), 3, 1, 60.0)


def python_env() -> dict[str, str]:
    """The environment for child processes: the checkout on the import path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")])
    )
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def venv_bin(name: str) -> str:
    """A console script installed beside the running interpreter."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise BenchError(f"{name} is not installed; pip install -r requirements.txt")
    return found


# -- scratch databases --------------------------------------------------------


def _pg_admin() -> psycopg.Connection[Any]:
    return psycopg.connect(PG_ADMIN_URL, autocommit=True)


def pg_url(dbname: str) -> str:
    """The URL of a database on the benchmark's PostgreSQL server."""
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    return f"{base}/{dbname}"


@contextlib.contextmanager
def scratch_postgres(prefix: str = "bench") -> Iterator[str]:
    """A fresh PostgreSQL database, dropped (with its sessions) afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with _pg_admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield pg_url(name)
    finally:
        with _pg_admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def mysql_admin() -> Any:
    """A connection to the benchmark's MariaDB/MySQL server, as its admin."""
    parts = urlsplit(MYSQL_ADMIN_URL)
    return pymysql.connect(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 3306,
        user=unquote(parts.username or "root"),
        password=unquote(parts.password or ""),
        autocommit=True,
    )


def mysql_url(dbname: str) -> str:
    """The URL of a database on the benchmark's MariaDB/MySQL server."""
    return MYSQL_ADMIN_URL.rsplit("/", 1)[0] + f"/{dbname}"


@contextlib.contextmanager
def scratch_mysql(prefix: str = "bench") -> Iterator[str]:
    """A fresh MariaDB/MySQL database, dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    conn = mysql_admin()
    try:
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{name}`")
    finally:
        conn.close()
    try:
        yield mysql_url(name)
    finally:
        conn = mysql_admin()
        try:
            with conn.cursor() as cur:
                cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        finally:
            conn.close()


@contextlib.contextmanager
def scratch_sqlite(prefix: str = "bench") -> Iterator[str]:
    """A fresh SQLite file in a temporary directory, as an absolute path."""
    with tempfile.TemporaryDirectory(prefix=f"{prefix}_") as folder:
        yield os.path.join(folder, "bench.sqlite3")


@contextlib.contextmanager
def scratch_url(backend: str) -> Iterator[str]:
    """A threadjobs URL of a fresh database on ``backend``."""
    if backend == "postgresql":
        with scratch_postgres() as url:
            yield url
    elif backend == "mysql":
        with scratch_mysql() as url:
            yield url
    elif backend == "sqlite":
        with scratch_sqlite() as path:
            yield f"sqlite:///{path}"
    else:
        raise BenchError(f"unknown backend {backend!r}; choose from {BACKENDS}")


# -- child processes ----------------------------------------------------------


class Child:
    """A process this benchmark started, stopped by its own pid only."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        self.log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - kept for tail()
            prefix="bench_child_", suffix=".log", delete=False
        )
        self.args = args
        self.proc = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=self.log,
            env=env or python_env(),
            cwd=REPO_ROOT,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_line(self, expected: str, timeout: float = READY_TIMEOUT_SECS) -> None:
        """Wait until the child prints a line starting with ``expected``."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        buffer = b""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"{self.args[0]} exited early: {self.tail()}")
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if not ready:
                continue
            chunk = os.read(self.proc.stdout.fileno(), 4096)
            buffer += chunk
            for line in buffer.decode(errors="replace").splitlines():
                if line.startswith(expected):
                    return
        raise BenchError(
            f"{' '.join(self.args[:3])} did not print {expected!r} within "
            f"{timeout:.0f}s: {self.tail()}"
        )

    def wait_log(self, expected: str, timeout: float = READY_TIMEOUT_SECS) -> None:
        """Wait until the child's log (stderr) contains ``expected``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"{self.args[0]} exited early: {self.tail()}")
            if expected in Path(self.log.name).read_text(errors="replace"):
                return
            time.sleep(0.1)
        raise BenchError(f"no {expected!r} in the child's log: {self.tail()}")

    def tail(self, lines: int = 15) -> str:
        """The last lines of the child's log, for error messages."""
        self.log.flush()
        text = Path(self.log.name).read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Signal the child, wait for it, and kill it if it lingers."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(STOP_TIMEOUT_SECS)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.log.close()
        with contextlib.suppress(OSError):
            os.unlink(self.log.name)


@contextlib.contextmanager
def running(child: Child) -> Iterator[Child]:
    """Stop the child however the block ends."""
    try:
        yield child
    finally:
        child.stop()


def rss_mb(pid: int) -> float:
    """A process's resident set size in MiB, from /proc/PID/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    raise BenchError(f"no VmRSS for pid {pid}")


# -- clocks -------------------------------------------------------------------


def wait_until(
    done: Callable[[], bool], timeout: float, what: str, interval: float = 0.05
) -> None:
    """Poll ``done`` until it is true; raise BenchError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def percentile(values: list[float], fraction: float) -> float:
    """The nearest-rank percentile of ``values`` (fraction in 0..1)."""
    ordered = sorted(values)
    if not ordered:
        raise BenchError("no values to take a percentile of")
    rank = max(0, min(len(ordered) - 1, round(fraction * len(ordered) + 0.5) - 1))
    return ordered[rank]


def latency_figures(samples: list[tuple[float, float, float]]) -> dict[str, float]:
    """Median and 99th percentile in ms from (started, before the enqueue
    call, after it returned) clock readings, one per job."""
    from_call = [(started - before) * 1000 for started, before, _ in samples]
    from_commit = [(started - after) * 1000 for started, _, after in samples]
    return {
        "median ms": statistics.median(from_call),
        "p99 ms": percentile(from_call, 0.99),
        "median ms after commit": statistics.median(from_commit),
        "p99 ms after commit": percentile(from_commit, 0.99),
    }


@contextlib.contextmanager
def counter(dsn: str) -> Iterator[Callable[..., int]]:
    """``count(sql, params)`` on one connection for a whole wait: opening one
    per poll would load the server with a new session twenty times a
    second, slowing the system measured."""
    with psycopg.connect(dsn, autocommit=True) as conn:

        def count(sql: str, params: tuple[Any, ...] = ()) -> int:
            row = conn.execute(sql, params).fetchone()
            return int(row[0]) if row else 0

        yield count
