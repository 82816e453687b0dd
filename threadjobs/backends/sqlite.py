"""The embedded SQLite backend (Python's own ``sqlite3``), the default.

SQLite has one writer at a time and no row locks, so this backend differs
from the server backends in two ways:

- A step call does not hold a write transaction while its function runs.
  The transaction begins (``BEGIN IMMEDIATE``) at the step's first
  ``exec_query`` or, if it runs none, when its outcome is written. Members of
  a group that run no SQL therefore overlap in time; members that write
  serialize on SQLite's write lock.
- A claim lasts as long as the worker process that made it lives: every
  worker checks each second whether the owners of claimed steps are still
  alive (they are processes on the same machine) and frees the claims of
  dead ones. Before a call commits, it checks that its claim is still its
  own, so a call whose claim was freed rolls back instead of applying twice.

Several worker processes may share one database file on one machine; a file
on a network filesystem is not supported, as SQLite's locking is not reliable
there.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from ..errors import ConfigurationError, TransientDatabaseError
from .base import SqlBackend
from .sql import INHERITED, process_start

logger = logging.getLogger(__name__)

_PERCENT = re.compile("%([s%])")

DEFAULT_PATH = "threadjobs.sqlite3"
"""The database file used when no database is given."""

BUSY_TIMEOUT_SECS = 5.0
"""How long one SQLite call waits for the write lock before saying busy."""

LOCK_WAIT_SECS = 300.0
"""How long a write transaction keeps retrying to get the write lock."""

CLAIM_FOREVER_SECS = 10 * 365 * 86400.0
"""A claim's lease on SQLite: its owner's life, which reaping bounds."""

OWN_LEFTOVER_SECS = 10.0
"""How old a claim of a live worker's own, not among its running calls,
must be before the worker frees it as a leftover."""

# INSERT ... ON CONFLICT DO NOTHING RETURNING needs SQLite 3.35 (2021).
MIN_SQLITE_VERSION = (3, 35, 0)

_SCHEMA = [
    "CREATE TABLE IF NOT EXISTS threadjobs_schema (version INTEGER NOT NULL)",
    """CREATE TABLE IF NOT EXISTS threadjobs_jobs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL,
        dedup_key TEXT NOT NULL UNIQUE,
        params TEXT NOT NULL,
        ctx TEXT NOT NULL,
        shape TEXT NOT NULL,
        current_step INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        ended_at REAL)""",
    "CREATE INDEX IF NOT EXISTS threadjobs_jobs_name ON threadjobs_jobs (name)",
    "CREATE INDEX IF NOT EXISTS threadjobs_jobs_ended ON threadjobs_jobs (ended_at)",
    """CREATE TABLE IF NOT EXISTS threadjobs_steps (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id INTEGER NOT NULL
            REFERENCES threadjobs_jobs (id) ON DELETE CASCADE,
        job_name TEXT NOT NULL,
        step_index INTEGER NOT NULL,
        member_index INTEGER NOT NULL,
        run_at REAL NOT NULL,
        done INTEGER NOT NULL DEFAULT 0,
        is_failed INTEGER NOT NULL DEFAULT 0,
        child_job_id INTEGER,
        claim_token TEXT,
        claimed_by TEXT,
        claimed_until REAL NOT NULL DEFAULT 0,
        calls INTEGER NOT NULL DEFAULT 0,
        unfinished_calls INTEGER NOT NULL DEFAULT 0,
        error TEXT,
        traceback TEXT,
        updated_at REAL NOT NULL,
        UNIQUE (job_id, step_index, member_index))""",
    "CREATE INDEX IF NOT EXISTS threadjobs_steps_due ON threadjobs_steps "
    "(run_at) WHERE done = 0 AND is_failed = 0",
    "CREATE INDEX IF NOT EXISTS threadjobs_steps_claim ON threadjobs_steps "
    "(claim_token) WHERE claim_token IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS threadjobs_steps_child ON threadjobs_steps "
    "(child_job_id) WHERE child_job_id IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS threadjobs_steps_failed ON threadjobs_steps "
    "(job_id) WHERE is_failed = 1",
]


def path_from_url(url: str) -> str:
    """``sqlite:///relative/file`` or ``sqlite:////absolute/file``."""
    path = url.split("://", 1)[1]
    if path.startswith("/"):
        path = path[1:]
    if not path or path == ":memory:" or path.startswith("file::memory:"):
        raise ConfigurationError(
            f"{url!r} names no file; threadjobs needs an SQLite file that "
            "every worker thread can open, e.g. sqlite:///jobs.sqlite3"
        )
    return path


def to_qmark(sql: str) -> str:
    """Turn ``%s`` placeholders into SQLite's ``?`` and ``%%`` into ``%``.

    Like psycopg and PyMySQL, this does not look inside quotes: a literal
    ``%`` is always written ``%%``.
    """
    return _PERCENT.sub(lambda match: "?" if match[1] == "s" else "%", sql)


class SqliteBackend(SqlBackend):
    """Jobs in one SQLite file, shared by threads and local processes."""

    name = "sqlite"
    holds_row_locks = False
    calls_per_commit = 4
    now_sql = "((julianday('now') - 2440587.5) * 86400.0)"
    lock_rows = ""
    skip_locked = ""
    table_exists_sql = (
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = %s"
    )
    # The write lock is the database's, so the due rows cannot change
    # between the inner SELECT and the UPDATE.
    claim_sql = (
        "UPDATE threadjobs_steps SET claim_token = %s, claimed_by = %s, "
        "claimed_until = {now} + %s, calls = calls + 1, "
        "unfinished_calls = unfinished_calls + 1, updated_at = {now} "
        "WHERE id IN (SELECT id FROM threadjobs_steps WHERE done = 0 "
        "AND is_failed = 0 AND run_at <= {due_now} AND claimed_until < {due_now} "
        "AND job_name IN ({names}) ORDER BY run_at LIMIT %s) "
        "RETURNING id, job_id, job_name, step_index, member_index, "
        "(SELECT shape FROM threadjobs_jobs j WHERE j.id = job_id), "
        "unfinished_calls, calls"
    )

    def __init__(self, path: str = DEFAULT_PATH, **options: Any) -> None:
        super().__init__(**options)
        self.path = os.fspath(path)
        # Idle connections; each thread borrows one at a time.
        self._idle: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
        self._all: list[sqlite3.Connection] = []
        # Protects _all and _closed, not the connections themselves.
        self._lock = threading.Lock()
        self._closed = False
        self._host = socket.gethostname()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path,
            timeout=BUSY_TIMEOUT_SECS,
            isolation_level=None,
            check_same_thread=False,
        )
        # FULL: a committed step survives power loss, not just a crash.
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
        # LIKE masks compare case-sensitively, as on PostgreSQL and MySQL.
        conn.execute("PRAGMA case_sensitive_like = ON")
        return conn

    @contextmanager
    def connection(self) -> Iterator[sqlite3.Connection]:
        try:
            conn = self._idle.get_nowait()
        except queue.Empty:
            with self.translate_errors():
                conn = self._connect()
            with self._lock:
                self._all.append(conn)
        try:
            yield conn
        finally:
            if conn.in_transaction:
                conn.rollback()
            with self._lock:
                closed = self._closed
            if closed:
                conn.close()
            else:
                self._idle.put(conn)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            connections, self._all = self._all, []
        for conn in connections:
            conn.close()

    def begin(self, conn: Any) -> None:
        """Take the write lock now, waiting as long as LOCK_WAIT_SECS.

        Taking it before the first read means a transaction never has to be
        abandoned for a stale snapshot, so lock contention never causes a
        step to be called twice.
        """
        deadline = time.monotonic() + LOCK_WAIT_SECS
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if not self.is_transient(exc) or time.monotonic() > deadline:
                    raise
                logger.warning(
                    "%s: still waiting for the SQLite write lock",
                    self.path,
                    extra={"action": "wait_write_lock"},
                )

    def driver_error(self) -> tuple[type[BaseException], ...]:
        return (sqlite3.Error,)

    def is_transient(self, exc: BaseException) -> bool:
        text = str(exc).lower()
        return isinstance(exc, sqlite3.OperationalError) and (
            "locked" in text or "busy" in text
        )

    def adapt_sql(self, text: str) -> str:
        return text.replace("%s", "?")

    def adapt_user_sql(self, sql: str) -> str:
        return to_qmark(sql)

    def schema_statements(self) -> list[str]:
        return _SCHEMA

    def setup(self) -> None:
        """Switch the file to WAL mode (it stays so), then create the tables.

        Done once, not per connection: the switch needs a lock that another
        process may be holding.
        """
        if sqlite3.sqlite_version_info < MIN_SQLITE_VERSION:
            raise ConfigurationError(
                f"this Python's SQLite library is version "
                f"{sqlite3.sqlite_version}, too old; threadjobs needs SQLite "
                f"{'.'.join(map(str, MIN_SQLITE_VERSION))} or newer (use a "
                "newer Python build, or a PostgreSQL or MySQL database)"
            )
        with self.connection() as conn, self.translate_errors():
            _retry_busy(lambda: conn.execute("PRAGMA journal_mode = WAL"), self)
        super().setup()

    def after_fork(self) -> None:
        with self._lock:
            INHERITED.extend(self._all)
            self._all = []
        self._idle = queue.SimpleQueue()

    def begin_read(self, conn: Any) -> None:
        conn.execute("BEGIN")

    def claim_lease(self, lease_seconds: float) -> float:
        return CLAIM_FOREVER_SECS

    def free_stale_claims(self, worker_id: str, running: Sequence[int]) -> int:
        """Free claims of dead local processes, and this worker's leftovers."""

        def find(cur: Any) -> list[str]:
            self.execute(
                cur,
                "SELECT DISTINCT claimed_by FROM threadjobs_steps "
                "WHERE claim_token IS NOT NULL AND claimed_until > {now}",
            )
            return [worker for (worker,) in cur.fetchall() if worker]

        owners = self.transaction(find, write=False)
        dead = [w for w in owners if _is_dead_local_worker(w, self._host)]
        if worker_id in owners:
            dead.append(worker_id)
        if not dead:
            return 0

        def free(cur: Any) -> int:
            freed = 0
            for worker in dead:
                own = worker == worker_id
                keep = [-1, *running] if own else [-1]
                marks = ", ".join(["%s"] * len(keep))
                # A call claims its job's next step in its commit and only
                # then shows it in ``running``: a fresh claim of our own may
                # be missing there, so only old leftovers are ours to free.
                self.execute(
                    cur,
                    "UPDATE threadjobs_steps SET claimed_until = 0 "
                    "WHERE claimed_by = %s AND claim_token IS NOT NULL "
                    f"AND done = 0 AND id NOT IN ({marks}) "
                    "AND updated_at < {now} - %s",
                    (worker, *keep, OWN_LEFTOVER_SECS if own else -1.0),
                )
                freed += cur.rowcount
                if worker != worker_id:
                    logger.warning(
                        "worker %s died; its claimed steps are free again",
                        worker,
                        extra={"action": "reap_dead_worker"},
                    )
            return freed

        return self.transaction(free)


def _retry_busy(action: Any, backend: SqliteBackend) -> None:
    deadline = time.monotonic() + LOCK_WAIT_SECS
    while True:
        try:
            action()
            return
        except sqlite3.OperationalError as exc:
            if not backend.is_transient(exc) or time.monotonic() > deadline:
                raise


def _is_dead_local_worker(worker_id: str, host: str) -> bool:
    parts = worker_id.split(":")
    if len(parts) != 4 or parts[0] != host or not parts[1].isdigit():
        return False  # Another host's worker, or not a worker id at all.
    started = process_start(int(parts[1]))
    if started is None:
        return True
    return "?" not in (started, parts[2]) and parts[2] != "0" and started != parts[2]


__all__ = ["DEFAULT_PATH", "SqliteBackend", "TransientDatabaseError"]
