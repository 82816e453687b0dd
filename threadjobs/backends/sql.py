"""The SQL layer under every backend: connections, transactions, schema.

``SqlCore`` holds what every operation needs: the dialect's connections and
the SQL fragments it fills in (the current time, JSON casts, row-locking
clauses), one place where driver exceptions become threadjobs errors
(``translate_errors()``), transactions with retries, and creating and
upgrading the tables. ``steps.py`` builds the worker's operations on it and
``base.py`` the executor's.
"""

from __future__ import annotations

import abc
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Optional, TypeVar

import tenacity

from ..errors import (
    ConfigurationError,
    DatabaseError,
    DatabaseUnavailableError,
    SchemaVersionError,
    TransientDatabaseError,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")

SCHEMA_VERSION = 1
"""The version of the tables this code reads and writes.

A change to the tables raises it and adds the statements that upgrade the
previous version to each dialect's ``migrations()``; ``setup()`` applies them
in order, under the same lock as table creation.
"""

Write = tuple[str, Sequence[Any]]
"""A statement and its parameters."""

FIRST_RETRY_SECS = 0.02
"""The pause before a transaction that failed transiently is tried again."""


def new_worker_id() -> str:
    """A worker's name in claims: host, pid, process start, random suffix.

    The start time tells a live process from a later one that reuses the pid.
    """
    pid = os.getpid()
    started = process_start(pid) or "0"
    return f"{socket.gethostname()}:{pid}:{started}:{uuid.uuid4().hex[:8]}"


def new_token() -> str:
    """A random claim token: 128 bits, as hex."""
    return os.urandom(16).hex()


def process_start(pid: int) -> Optional[str]:
    """A process's start time in clock ticks, or None if it is not running.

    Read from Linux's /proc; elsewhere "?" for any live process. A zombie
    (exited, not yet reaped by its parent) counts as not running.
    """
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        if os.path.isdir("/proc/self"):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return "?"
    except OSError:
        return "?"
    if fields[0] == "Z":
        return None
    return fields[19]


INHERITED: list[Any] = []
"""Connections and pools a forked child got from its parent, kept referenced
so that garbage collection never closes them under the parent."""


class SqlCore(abc.ABC):
    """One database dialect: its connections, SQL fragments and schema."""

    #: The dialect's name, as used in URLs and logs.
    name: str = ""

    #: True where a running step call holds a row lock on its step, which
    #: keeps other workers off it and vanishes with a dead worker's
    #: connection (PostgreSQL, MySQL).
    holds_row_locks: bool = True

    #: How many claimed steps a worker thread calls before it commits their
    #: outcomes together. More than one where a commit costs much more than
    #: a call's writes: SQLite, where one connection writes at a time and
    #: every commit waits for the disk, and PostgreSQL, where BEGIN and
    #: COMMIT are two of the four or five round trips of a call and a
    #: commit waits for the WAL to reach the disk.
    calls_per_commit: int = 1

    #: True where ``run_alone()`` can run a statement as its own transaction,
    #: saving the round trips of BEGIN and COMMIT.
    statements_commit_alone: bool = False

    #: How many jobs one statement of a bulk enqueue carries.
    enqueue_batch: int = 500

    #: True where the driver opens a transaction at the first statement,
    #: so ``begin()`` has nothing to do.
    begins_implicitly: bool = False

    #: True where the database can announce new due steps (``listen()``).
    supports_notify: bool = False

    #: SQL fragments substituted into every query.
    now_sql: str = ""
    #: The time that due steps are compared with when claiming: an
    #: expression the planner treats as a constant, so that it bounds an
    #: index range scan instead of filtering every pending step.
    due_now_sql: str = ""
    json_param: str = "%s"
    lock_rows: str = " FOR UPDATE"
    skip_locked: str = " FOR UPDATE SKIP LOCKED"
    #: How a step call locks the row it claimed. It waits: another worker's
    #: claim query may hold the row for a moment (PostgreSQL keeps the lock
    #: on a row it locked and then found no longer due, InnoDB on rows it
    #: scanned, until that transaction ends). Giving the claim up instead
    #: would leave the step waiting for its lease to pass. The only long
    #: holder is a worker that took the step over after this claim's lease
    #: ran out; once it commits, this call finds its claim gone.
    lock_claimed: str = " FOR UPDATE"
    like_escape: str = "ESCAPE '\\'"
    #: A query with one parameter, a table name, that is true if it exists.
    table_exists_sql: str = ""
    #: Claims due steps in one statement where the dialect has UPDATE ...
    #: RETURNING: ``{names}`` becomes the job name placeholders; parameters
    #: are token, worker id, lease, the names, then the limit. Rows as
    #: ``_claim_from_row()`` reads them.
    claim_sql: Optional[str] = None

    def __init__(self, *, retry_seconds: float = 10.0) -> None:
        self.retry_seconds = retry_seconds
        self._sql_cache: dict[str, str] = {}

    # -- what a dialect provides ---------------------------------------------

    @abc.abstractmethod
    @contextmanager
    def connection(self) -> Iterator[Any]:
        """Lend a DB-API connection with no transaction open."""

    @abc.abstractmethod
    def close(self) -> None:
        """Close every pooled connection."""

    @abc.abstractmethod
    def begin(self, conn: Any) -> None:
        """Start a transaction that may write."""

    def ensure_transaction(self, conn: Any) -> None:
        """Begin a transaction that may write, unless one is open."""
        if not self.begins_implicitly and not conn_in_transaction(conn):
            self.begin(conn)

    def begin_read(self, conn: Any) -> None:
        """Start a transaction that reads, or writes in its first statement."""
        self.begin(conn)

    @abc.abstractmethod
    def is_transient(self, exc: BaseException) -> bool:
        """Whether a driver exception is worth retrying."""

    @abc.abstractmethod
    def schema_statements(self) -> list[str]:
        """The statements that create the tables of ``SCHEMA_VERSION``."""

    def driver_error(self) -> tuple[type[BaseException], ...]:
        """The base classes of the driver's (and its pool's) exceptions."""
        return (Exception,)

    def setup_lock(self, cur: Any) -> None:
        """Serialize table creation between processes (inside a transaction).

        Nothing to do where ``begin()`` already takes a database-wide lock.
        """
        return None

    def adapt_user_sql(self, sql: str) -> str:
        """Turn a user query written with ``%s`` into the driver's style."""
        return sql

    def listen(self, wake: Callable[[], None], stopping: threading.Event) -> None:
        """Call ``wake`` whenever a step may have become due, until stopped.

        Only dialects with ``supports_notify`` implement it; it runs in a
        thread of its own.
        """
        raise NotImplementedError(f"{self.name} cannot announce due steps")

    def after_fork(self) -> None:
        """In a forked child: stop using the parent's connections.

        They are dropped, never closed: closing would end the parent's
        sessions too. The backend opens new ones on demand.
        """
        return None

    def check_transaction_intact(self, conn: Any) -> None:
        """Raise TransientDatabaseError if the server already rolled back.

        Where a failed statement aborts the transaction for good (PostgreSQL)
        or nothing rolls back on its own (SQLite), there is nothing to check.
        """
        return None

    def transaction_intact(self, conn: Any) -> bool:
        """Whether ``conn`` has a transaction open that can still commit."""
        return conn_in_transaction(conn)

    def check_connection_type(self, conn: Any) -> None:
        """Raise ConfigurationError unless ``conn`` is this driver's."""
        raise ConfigurationError(
            f"execute(connection=...) is not available on {self.name}; it "
            "needs the PostgreSQL or MySQL backend"
        )

    def claim_lease(self, lease_seconds: float) -> float:
        """How long a new claim lasts before another worker may take it."""
        return lease_seconds

    def free_stale_claims(self, worker_id: str, running: Sequence[int]) -> int:
        """Free claims whose worker died or no longer runs them.

        Only dialects whose claims outlive their worker need this; elsewhere
        a dead worker's row locks vanish with its connection.
        """
        return 0

    # -- plumbing ------------------------------------------------------------

    def sql(self, query: str) -> str:
        """Fill in the dialect's fragments; cached, queries are constants."""
        text = self._sql_cache.get(query)
        if text is None:
            text = query.format(
                now=self.now_sql,
                due_now=self.due_now_sql or self.now_sql,
                json=self.json_param,
                lock=self.lock_rows,
                skip_locked=self.skip_locked,
                lock_claimed=self.lock_claimed,
                escape=self.like_escape,
            )
            text = self.adapt_sql(text)
            self._sql_cache[query] = text
        return text

    def adapt_sql(self, text: str) -> str:
        """Placeholder conversion for internal queries (none by default)."""
        return text

    def execute(self, cur: Any, query: str, params: Sequence[Any] = ()) -> Any:
        cur.execute(self.sql(query), tuple(params))
        return cur

    @contextmanager
    def translate_errors(self) -> Iterator[None]:
        """Turn driver exceptions into threadjobs errors, keeping the cause."""
        try:
            yield
        except self.driver_error() as exc:
            if isinstance(exc, DatabaseError):
                raise
            kind = TransientDatabaseError if self.is_transient(exc) else DatabaseError
            raise kind(f"{self.name}: {exc}") from exc

    def transaction(
        self,
        work: Callable[[Any], T],
        *,
        write: bool = True,
        retry: bool = True,
        alone: bool = False,
    ) -> T:
        """Run ``work(cursor)`` in one transaction and commit it.

        ``write=False`` marks work that only reads or whose first statement
        writes; SQLite then does not take its write lock up front.
        ``alone=True`` marks work whose one write is a single statement, read
        by nothing it does before: where a statement is a transaction of its
        own, it is sent without BEGIN and COMMIT. Transient errors roll back
        and run the whole transaction again, with capped exponential backoff
        for up to ``retry_seconds``.
        """

        def attempt() -> T:
            with self.connection() as conn, self.translate_errors():
                if alone and self.statements_commit_alone:
                    return self.run_alone(conn, work)
                if write:
                    self.begin(conn)
                else:
                    self.begin_read(conn)
                try:
                    result = work(conn.cursor())
                    conn.commit()
                except BaseException:
                    self._rollback_quietly(conn)
                    raise
                return result

        if not retry:
            return attempt()
        try:
            # The first try goes without the retry machinery, which costs
            # more than a short transaction on the usual path.
            return attempt()
        except DatabaseUnavailableError as exc:
            raise DatabaseUnavailableError(
                f"{exc}; check that the database server is running and that "
                "the URL points at it"
            ) from exc
        except TransientDatabaseError as exc:
            _log_retry_reason(exc, 2)
            time.sleep(FIRST_RETRY_SECS)
        retrying = tenacity.Retrying(
            # An unreachable server is reported at once, not retried: the
            # connect timeout already waited.
            retry=(
                tenacity.retry_if_exception_type(TransientDatabaseError)
                & tenacity.retry_if_not_exception_type(DatabaseUnavailableError)
            ),
            wait=tenacity.wait_exponential(multiplier=0.02, max=2.0),
            stop=tenacity.stop_after_delay(self.retry_seconds),
            before_sleep=_log_retry,
            reraise=True,
        )
        try:
            return retrying(attempt)
        except DatabaseUnavailableError as exc:
            raise DatabaseUnavailableError(
                f"{exc}; check that the database server is running and that "
                "the URL points at it"
            ) from exc
        except TransientDatabaseError as exc:
            raise TransientDatabaseError(
                f"{exc} (gave up after retrying for {self.retry_seconds:g}s; "
                "check that the database server is running and reachable)"
            ) from exc

    def run_alone(self, conn: Any, work: Callable[[Any], T]) -> T:
        """Run ``work`` with each statement committing by itself."""
        raise NotImplementedError(f"{self.name} runs every statement in BEGIN")

    def _rollback_quietly(self, conn: Any) -> None:
        try:
            conn.rollback()
        except Exception:  # The connection may be gone; the pool checks it.
            logger.debug("rollback failed", exc_info=True)

    # -- schema --------------------------------------------------------------

    def setup(self) -> None:
        """Create the tables if they are missing and check their version.

        Tables that exist are only read: creating them takes locks that
        would stall workers already running on them.
        """
        version = self.transaction(self._read_version, write=False)
        if version is None:
            version = self.transaction(self._create_tables)
        elif version < SCHEMA_VERSION:
            version = self.transaction(self._migrate)
        _check_version(version)

    def migrations(self) -> dict[int, list[str]]:
        """Statements that upgrade the tables from version N to N + 1, by N.

        Empty while there is one schema version. On MySQL each DDL statement
        commits on its own, so an upgrade stopped halfway is finished by the
        next run only if its statements can run twice.
        """
        return {}

    def _migrate(self, cur: Any) -> int:
        self.setup_lock(cur)
        version = self._read_version(cur)
        assert version is not None
        while version < SCHEMA_VERSION:
            statements = self.migrations().get(version)
            if statements is None:
                break  # _check_version() explains.
            for statement in statements:
                cur.execute(statement)
            version += 1
            self.execute(cur, "UPDATE threadjobs_schema SET version = %s", (version,))
            logger.info(
                "upgraded the threadjobs tables to schema version %d",
                version,
                extra={"action": "schema_upgraded"},
            )
        return version

    def _read_version(self, cur: Any) -> Optional[int]:
        self.execute(cur, self.table_exists_sql, ("threadjobs_schema",))
        if not cur.fetchone()[0]:
            return None
        self.execute(cur, "SELECT version FROM threadjobs_schema")
        row = cur.fetchone()
        return None if row is None else int(row[0])

    def _create_tables(self, cur: Any) -> int:
        self.setup_lock(cur)
        version = self._read_version(cur)  # Another process may have won.
        if version is not None:
            return version
        for statement in self.schema_statements():
            cur.execute(statement)
        self.execute(
            cur,
            "INSERT INTO threadjobs_schema (version) VALUES (%s)",
            (SCHEMA_VERSION,),
        )
        logger.info(
            "created the threadjobs tables (schema version %d) on %s",
            SCHEMA_VERSION,
            self.name,
            extra={"action": "schema_created"},
        )
        return SCHEMA_VERSION

    def insert_returning_id(
        self, cur: Any, leading: Sequence[Write], query: str, params: Sequence[Any]
    ) -> int:
        """Run ``leading``, then an INSERT of one row; return the row's id."""
        self.execute_together(cur, leading, query, params)
        return int(cur.lastrowid)

    def execute_together(
        self,
        cur: Any,
        leading: Sequence[Write],
        query: str,
        params: Sequence[Any],
    ) -> Any:
        """Run writes whose results nobody reads, then ``query``.

        One statement each here; a dialect that can send them as one
        statement saves the round trips.
        """
        for write, write_params in leading:
            self.execute(cur, write, write_params)
        return self.execute(cur, query, params)


def _check_version(version: int) -> None:
    if version > SCHEMA_VERSION:
        raise SchemaVersionError(
            f"the threadjobs tables are at schema version {version}, newer "
            f"than the version {SCHEMA_VERSION} this threadjobs reads; "
            "install the threadjobs release that made them"
        )
    if version < SCHEMA_VERSION:
        raise SchemaVersionError(
            f"the threadjobs tables are at schema version {version}, older "
            f"than {SCHEMA_VERSION}, and there is no upgrade path from it; "
            "drop the threadjobs_* tables or use an older release"
        )


def conn_in_transaction(conn: Any) -> bool:
    """Whether a connection has a transaction open (the drivers differ)."""
    flag = getattr(conn, "in_transaction", None)
    if isinstance(flag, bool):
        return flag
    status = getattr(getattr(conn, "info", None), "transaction_status", None)
    if status is not None:
        return int(status) != 0
    return bool(getattr(conn, "_threadjobs_in_tx", False))


def _log_retry(state: tenacity.RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    _log_retry_reason(exc, state.attempt_number + 2)


def _log_retry_reason(exc: Optional[BaseException], attempt: int) -> None:
    logger.warning(
        "database error, retrying (attempt %d): %s",
        attempt,
        exc,
        extra={"action": "retry_database"},
    )
