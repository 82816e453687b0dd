"""The storage boundary: what the executor and the worker ask of a database.

``SqlBackend`` holds every operation once, written in portable SQL with
``%s`` placeholders and a few ``{fragments}`` that each dialect fills in
(the current time, JSON casts, row-locking clauses). A dialect subclass
supplies connections, those fragments, its schema and the test that tells a
transient database error from a real one. Driver exceptions become
threadjobs errors in exactly one place, ``translate_errors()``.
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
from dataclasses import dataclass, field, replace
from typing import Any, Optional, TypeVar

import tenacity

from .. import jsonvalues
from ..errors import (
    ConfigurationError,
    DatabaseError,
    DatabaseUnavailableError,
    JobNotFoundError,
    JobStateError,
    SchemaVersionError,
    TransientDatabaseError,
)
from ..outcomes import CallAgain, Done, FailKeepWork, Outcome, StartChild
from ..records import Claim, JobRecord, StepRecord, from_epoch

logger = logging.getLogger(__name__)

T = TypeVar("T")

SCHEMA_VERSION = 1
"""The version of the tables this code reads and writes.

A change to the tables raises it and adds the statements that upgrade the
previous version to each dialect's ``migrations()``; ``setup()`` applies them
in order, under the same lock as table creation.
"""

CHILDREN_KEY = ".children"
"""The ctx key under which a parent finds the final ctx of its child jobs."""

_JOB_COLUMNS = (
    "j.id, j.name, j.params, j.ctx, j.shape, j.current_step, j.created_at, "
    "j.updated_at, j.ended_at, "
    "(SELECT MIN(s.error) FROM threadjobs_steps s WHERE s.job_id = j.id "
    "AND s.is_failed = 1 AND s.done = 0) AS error"
)
_FAILED = (
    "EXISTS (SELECT 1 FROM threadjobs_steps s WHERE s.job_id = j.id "
    "AND s.is_failed = 1 AND s.done = 0)"
)
_INSERT_STEPS = (
    "INSERT INTO threadjobs_steps (job_id, job_name, step_index, "
    "member_index, run_at, updated_at)"
)
_STEP_VALUES = "(%s, %s, %s, %s, {now} + %s, {now})"
_UNCLAIM = (
    "claim_token = NULL, claimed_by = NULL, claimed_until = 0, "
    "unfinished_calls = 0, updated_at = {now}"
)

Write = tuple[str, Sequence[Any]]
"""A statement and its parameters."""

STEP_ROWS_PER_INSERT = 1000
"""How many step rows one INSERT statement carries (bound parameters are
capped per statement on every backend)."""

FIRST_RETRY_SECS = 0.02
"""The pause before a transaction that failed transiently is tried again."""


_LIST_FILTERS = {
    "ended": "j.ended_at IS NOT NULL",
    "failed": f"j.ended_at IS NULL AND {_FAILED}",
    "pending": f"j.ended_at IS NULL AND NOT {_FAILED}",
}


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


class ClaimLostError(Exception):
    """The step's claim passed to another worker; the call must not commit."""


@dataclass(frozen=True)
class JobState:
    """The job row as a step call found it under its lock."""

    ctx: dict[str, Any]
    current_step: int
    ended: bool


@dataclass
class StepContext:
    """The data a step call starts from, read when the call begins.

    ``locked_job`` is set when the call already holds the job row's lock
    (a step of one member, on a dialect with row locks): nothing else can
    change the row before the call commits, so finishing need not read it
    again.
    """

    params: dict[str, Any]
    ctx: dict[str, Any]
    locked_job: Optional[JobState] = None


@dataclass(frozen=True)
class Continuation:
    """Who claims the next step to run in the commit of a step call.

    The worker whose call finishes a step runs the job's next step itself
    when it has one member; otherwise the commit claims another due step
    for it. The claim, with its call counted, commits together with the
    finished call, so no other round trip or poll is needed, and the
    crash-loop count is still committed before the next call's own
    transaction begins.
    """

    worker_id: str
    lease_seconds: float
    #: The jobs the worker runs: when this call's job has no next step for
    #: it, the commit claims a due step of one of these instead.
    job_names: Sequence[str] = ()
    #: The next step's claim token, chosen before the commit so that a
    #: worker unsure whether its commit applied can give the claim back.
    token: str = field(default_factory=lambda: new_token())


@dataclass(frozen=True)
class FinishResult:
    """What committing a step call changed, for logging and wake-ups."""

    job_ended: bool
    advanced: bool
    child_job_id: Optional[int] = None
    #: The next step to run, already claimed for the continuing worker.
    next_claim: Optional[Claim] = None


class SqlBackend(abc.ABC):
    """One database dialect: its connections, SQL fragments and schema."""

    #: The dialect's name, as used in URLs and logs.
    name: str = ""

    #: True where a running step call holds a row lock on its step, which
    #: keeps other workers off it and vanishes with a dead worker's
    #: connection (PostgreSQL, MySQL).
    holds_row_locks: bool = True

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

    # -- enqueue -------------------------------------------------------------

    def enqueue(
        self,
        cur: Any,
        name: str,
        items: Sequence[tuple[str, str]],
        ctx_json: str,
        shape: list[int],
        delay: float,
    ) -> list[tuple[int, bool]]:
        """Insert jobs and their first steps; return (id, new) per item.

        ``items`` are (dedup_key, params_json) pairs. A key that exists
        already, in the table or earlier in ``items``, gets that job's id.
        """
        shape_json = jsonvalues.dumps(shape)
        ids: dict[str, int] = {}
        new: set[str] = set()
        unique = list(dict.fromkeys(key for key, _ in items))
        params = dict(items)
        size = self.enqueue_batch
        for start in range(0, len(unique), size):
            batch = unique[start : start + size]
            pairs = [(key, params[key]) for key in batch]
            inserted = self.insert_jobs_with_steps(
                cur, name, pairs, ctx_json, shape_json, shape[0], delay
            )
            ids.update(inserted)
            new.update(inserted)
            missing = [key for key in batch if key not in inserted]
            if missing:
                ids.update(self._existing_ids(cur, missing))
        result = []
        for key, _ in items:
            result.append((ids[key], key in new))
            new.discard(key)  # A repeat within one call is not new.
        return result

    def insert_jobs(self, cur: Any, rows: Sequence[Sequence[Any]]) -> dict[str, int]:
        """Insert job rows whose dedup_key is new; return {dedup_key: id}.

        A row is (name, dedup_key, params, ctx, shape), the last three JSON.
        """
        values = ", ".join(
            ["(%s, %s, {json}, {json}, {json}, {now}, {now})"] * len(rows)
        )
        self.execute(
            cur,
            "INSERT INTO threadjobs_jobs (name, dedup_key, params, ctx, shape, "
            f"created_at, updated_at) VALUES {values} "
            "ON CONFLICT (dedup_key) DO NOTHING RETURNING dedup_key, id",
            [value for row in rows for value in row],
        )
        return {key: int(job_id) for key, job_id in cur.fetchall()}

    def insert_jobs_with_steps(
        self,
        cur: Any,
        name: str,
        pairs: Sequence[tuple[str, str]],
        ctx_json: str,
        shape_json: str,
        first_size: int,
        delay: float,
    ) -> dict[str, int]:
        """Insert the jobs whose dedup_key is new, then the rows of their
        first step; return {dedup_key: id} of the new ones.

        ``pairs`` are (dedup_key, params JSON).
        """
        rows = [(name, key, params, ctx_json, shape_json) for key, params in pairs]
        inserted = self.insert_jobs(cur, rows)
        job_ids = [inserted[key] for key, _ in pairs if key in inserted]
        self._insert_first_steps(cur, name, job_ids, first_size, delay)
        return inserted

    def _existing_ids(self, cur: Any, keys: Sequence[str]) -> dict[str, int]:
        marks = ", ".join(["%s"] * len(keys))
        self.execute(
            cur,
            f"SELECT dedup_key, id FROM threadjobs_jobs WHERE dedup_key IN ({marks})",
            keys,
        )
        return {key: int(job_id) for key, job_id in cur.fetchall()}

    def _insert_first_steps(
        self,
        cur: Any,
        name: str,
        job_ids: Sequence[int],
        size: int,
        delay: float,
    ) -> None:
        rows = [
            (job_id, name, 0, member, delay)
            for job_id in job_ids
            for member in range(size)
        ]
        for start in range(0, len(rows), STEP_ROWS_PER_INSERT):
            batch = rows[start : start + STEP_ROWS_PER_INSERT]
            values = ", ".join([_STEP_VALUES] * len(batch))
            self.execute(
                cur,
                f"{_INSERT_STEPS} VALUES {values}",
                [value for row in batch for value in row],
            )

    def _insert_step(
        self,
        cur: Any,
        job_id: int,
        name: str,
        index: int,
        shape: list[int],
        continuation: Optional[Continuation],
        leading: Sequence[Write] = (),
    ) -> Optional[Claim]:
        """Insert the rows of step ``index``, due now, after ``leading``.

        With a ``continuation``, its first member is claimed for that worker
        as it is inserted, its call counted, and the claim is returned; the
        other members are left for any worker.
        """
        size = shape[index]
        first = 0 if continuation is None else 1
        writes = list(leading)
        if size > first:
            values = ", ".join([_STEP_VALUES] * (size - first))
            writes.append(
                (
                    f"{_INSERT_STEPS} VALUES {values}",
                    [
                        value
                        for member in range(first, size)
                        for value in (job_id, name, index, member, 0.0)
                    ],
                )
            )
        if continuation is None:
            *leading, (query, params) = writes
            self.execute_together(cur, leading, query, params)
            return None

        token = continuation.token
        step_id = self.insert_returning_id(
            cur,
            writes,
            "INSERT INTO threadjobs_steps (job_id, job_name, step_index, "
            "member_index, run_at, updated_at, claim_token, claimed_by, "
            "claimed_until, calls, unfinished_calls) "
            "VALUES (%s, %s, %s, 0, {now}, {now}, %s, %s, {now} + %s, 1, 1)",
            (
                job_id,
                name,
                index,
                token,
                continuation.worker_id,
                self.claim_lease(continuation.lease_seconds),
            ),
        )
        return Claim(step_id, job_id, name, index, 0, shape, token, 1, 1)

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

    # -- claiming ------------------------------------------------------------

    def claim(
        self,
        names: Sequence[str],
        worker_id: str,
        limit: int,
        lease_seconds: float,
    ) -> list[Claim]:
        """Claim up to ``limit`` due step members of the named jobs.

        A claim is committed on its own, before the step call starts: it
        counts the call (so a step that keeps killing its worker can be
        stopped) and leases the row for ``lease_seconds``.
        """
        if not names or limit <= 0:
            return []
        token = new_token()
        lease = self.claim_lease(lease_seconds)
        return self.transaction(
            lambda cur: self.claim_on(cur, names, worker_id, limit, lease, token)
        )

    def claim_on(
        self,
        cur: Any,
        names: Sequence[str],
        worker_id: str,
        limit: int,
        lease: float,
        token: str,
    ) -> list[Claim]:
        """Claim due steps inside the caller's transaction, in step id order."""
        marks = ", ".join(["%s"] * len(names))
        if self.claim_sql is not None:
            query = self.claim_sql.replace("{names}", marks)
            self.execute(cur, query, (token, worker_id, lease, *names, limit))
            claims = [_claim_from_row(row, token) for row in cur.fetchall()]
            return sorted(claims, key=_step_id)

        self.execute(
            cur,
            "SELECT id FROM threadjobs_steps WHERE done = 0 "
            "AND is_failed = 0 AND run_at <= {due_now} "
            f"AND claimed_until < {{due_now}} AND job_name IN ({marks}) "
            "ORDER BY run_at LIMIT %s{skip_locked}",
            (*names, limit),
        )
        ids = [row[0] for row in cur.fetchall()]
        if not ids:
            return []
        id_marks = ", ".join(["%s"] * len(ids))
        self.execute(
            cur,
            "UPDATE threadjobs_steps SET claim_token = %s, "
            "claimed_by = %s, claimed_until = {now} + %s, "
            "calls = calls + 1, unfinished_calls = unfinished_calls + 1, "
            f"updated_at = {{now}} WHERE id IN ({id_marks})",
            (token, worker_id, lease, *ids),
        )
        self.execute(
            cur,
            "SELECT s.id, s.job_id, s.job_name, s.step_index, "
            "s.member_index, j.shape, s.unfinished_calls, s.calls "
            "FROM threadjobs_steps s JOIN threadjobs_jobs j "
            "ON j.id = s.job_id WHERE s.claim_token = %s ORDER BY s.id",
            (token,),
        )
        return [_claim_from_row(row, token) for row in cur.fetchall()]

    def release_claim(self, claim: Claim) -> None:
        """Give a claimed step back untouched, e.g. after a lost connection.

        The call is uncounted, as it was not the step's doing. That part is
        not tied to the claim token: the claim may have passed to another
        worker meanwhile, and counting one call too few only loosens the
        crash-loop bound by one.
        """

        def work(cur: Any) -> None:
            self.execute(
                cur,
                "UPDATE threadjobs_steps SET claim_token = NULL, "
                "claimed_by = NULL, claimed_until = 0 "
                "WHERE id = %s AND claim_token = %s",
                (claim.step_id, claim.token),
            )
            self.execute(
                cur,
                "UPDATE threadjobs_steps SET unfinished_calls = "
                "unfinished_calls - 1 WHERE id = %s AND unfinished_calls > 0",
                (claim.step_id,),
            )

        self.transaction(work)

    def release_unstarted(self, token: str) -> None:
        """Give back a claim whose call never started, counting no call."""
        self.transaction(
            lambda cur: self.execute(
                cur,
                "UPDATE threadjobs_steps SET claim_token = NULL, "
                "claimed_by = NULL, claimed_until = 0, calls = calls - 1, "
                "unfinished_calls = unfinished_calls - 1 "
                "WHERE claim_token = %s AND done = 0",
                (token,),
            )
        )

    def claim_settled(self, claim: Claim) -> bool:
        """Whether a claim is no longer on its step row.

        Read on a fresh connection after a connection failed during a step
        call: a step call that committed has cleared its claim token.
        """

        def work(cur: Any) -> bool:
            self.execute(
                cur,
                "SELECT claim_token FROM threadjobs_steps WHERE id = %s",
                (claim.step_id,),
            )
            row = cur.fetchone()
            return row is None or row[0] != claim.token

        return self.transaction(work, write=False)

    # -- running a step ------------------------------------------------------

    def open_step(self, conn: Any, claim: Claim) -> StepContext:
        """Begin the step call's transaction and read its params and ctx.

        Where the dialect has row locks, the step row stays locked until the
        call commits, so no other worker can claim it meanwhile; the job row
        too when the step has one member, as no other call of the job can
        run then. Raises ClaimLostError if the claim is no longer this
        call's.
        """
        cur = conn.cursor()
        if self.holds_row_locks:
            self.begin(conn)
        lock_job = self._locks_job(claim)
        return _step_context(self._read_claimed(cur, claim, lock_job), claim, lock_job)

    def _locks_job(self, claim: Claim) -> bool:
        """Whether a call holds its job row's lock from the start."""
        return self.holds_row_locks and claim.group_size == 1

    def _read_claimed(
        self, cur: Any, claim: Claim, lock_job: bool
    ) -> Optional[Sequence[Any]]:
        """The job's params, ctx, current_step and ended_at, if the claim
        still holds; locks the step row (and the job row if ``lock_job``).

        Two statements here, as not every dialect can lock only some of the
        rows a join returns; dialects that can override this with one.
        """
        if self.holds_row_locks:
            self.execute(
                cur,
                "SELECT id FROM threadjobs_steps WHERE id = %s "
                "AND claim_token = %s AND done = 0{lock_claimed}",
                (claim.step_id, claim.token),
            )
            if cur.fetchone() is None:
                return None
            self.execute(
                cur,
                "SELECT params, ctx, current_step, ended_at FROM threadjobs_jobs "
                "WHERE id = %s" + ("{lock}" if lock_job else ""),
                (claim.job_id,),
            )
            return cur.fetchone()  # type: ignore[no-any-return]
        self.execute(
            cur,
            "SELECT j.params, j.ctx, j.current_step, j.ended_at "
            "FROM threadjobs_steps s JOIN threadjobs_jobs j ON j.id = s.job_id "
            "WHERE s.id = %s AND s.claim_token = %s AND s.done = 0",
            (claim.step_id, claim.token),
        )
        return cur.fetchone()  # type: ignore[no-any-return]

    def finish_step(
        self,
        conn: Any,
        claim: Claim,
        outcome: Outcome,
        start: StepContext,
        ctx_after: dict[str, Any],
        enqueue_child: Callable[[Any, StartChild], int],
        max_ctx_bytes: int,
        continuation: Optional[Continuation] = None,
    ) -> FinishResult:
        """Apply a step call's outcome and ctx changes, and commit.

        With a ``continuation``, a next step of one member that this commit
        makes due is claimed for that worker in the same commit.
        """
        self.check_transaction_intact(conn)
        cur = conn.cursor()
        self.ensure_transaction(conn)
        job = start.locked_job or self._lock_job(cur, claim)
        ctx = merge_ctx(job.ctx, start.ctx, ctx_after)
        ctx_json = jsonvalues.dumps(ctx)
        jsonvalues.check_ctx_size(ctx_json, max_ctx_bytes)

        if (
            isinstance(outcome, Done)
            and job.current_step == claim.step_index
            and not job.ended
        ):
            result = self._finish_done(cur, claim, ctx_json, continuation)
        else:
            self.execute(
                cur,
                "UPDATE threadjobs_jobs SET ctx = {json}, updated_at = {now} "
                "WHERE id = %s",
                (ctx_json, claim.job_id),
            )
            result = self._apply_outcome(cur, claim, outcome, enqueue_child)
            if result.advanced:
                ended, next_claim = self.advance(
                    cur, claim.job_id, claim.step_index, continuation
                )
                result = FinishResult(ended, True, result.child_job_id, next_claim)
        if continuation is not None and result.next_claim is None:
            result = replace(result, next_claim=self._claim_another(cur, continuation))
        conn.commit()
        return result

    def _claim_another(self, cur: Any, continuation: Continuation) -> Optional[Claim]:
        if not continuation.job_names:
            return None
        claims = self.claim_on(
            cur,
            continuation.job_names,
            continuation.worker_id,
            1,
            self.claim_lease(continuation.lease_seconds),
            continuation.token,
        )
        return claims[0] if claims else None

    def _lock_job(self, cur: Any, claim: Claim) -> JobState:
        """Lock and read the job row; without row locks, check the claim too.

        SQLite holds its one write lock by now, so the claim read here
        cannot change before the commit.
        """
        if self.holds_row_locks:
            self.execute(
                cur,
                "SELECT ctx, current_step, ended_at FROM threadjobs_jobs "
                "WHERE id = %s{lock}",
                (claim.job_id,),
            )
        else:
            self.execute(
                cur,
                "SELECT j.ctx, j.current_step, j.ended_at FROM threadjobs_steps s "
                "JOIN threadjobs_jobs j ON j.id = s.job_id WHERE s.id = %s "
                "AND s.claim_token = %s AND s.done = 0",
                (claim.step_id, claim.token),
            )
        row = cur.fetchone()
        if row is None:
            raise ClaimLostError(claim.label)
        ctx_json, current_step, ended_at = row
        return JobState(jsonvalues.loads(ctx_json), current_step, ended_at is not None)

    def _finish_done(
        self,
        cur: Any,
        claim: Claim,
        ctx_json: str,
        continuation: Optional[Continuation],
    ) -> FinishResult:
        """The common case, in few statements: a member of the job's current
        step is done. The job moves on when it was the step's last."""
        mark_done: Write = (
            f"UPDATE threadjobs_steps SET done = 1, {_UNCLAIM} WHERE id = %s",
            (claim.step_id,),
        )
        if claim.group_size == 1:
            return self._move_on(cur, claim, ctx_json, [mark_done], continuation)

        # The job row's lock orders the members' commits: the others'
        # state read here cannot change before this one commits. (A WITH
        # query's writes are not seen by its final SELECT, hence s.id <> ...)
        save_ctx: Write = (
            "UPDATE threadjobs_jobs SET ctx = {json}, updated_at = {now} WHERE id = %s",
            (ctx_json, claim.job_id),
        )
        self.execute_together(
            cur,
            [mark_done, save_ctx],
            "SELECT COALESCE(SUM(CASE WHEN s.done = 0 OR (s.child_job_id IS NOT "
            "NULL AND c.ended_at IS NULL) THEN 1 ELSE 0 END), 0), "
            "COUNT(s.child_job_id) FROM threadjobs_steps s LEFT JOIN "
            "threadjobs_jobs c ON c.id = s.child_job_id WHERE s.job_id = %s "
            "AND s.step_index = %s AND s.id <> %s",
            (claim.job_id, claim.step_index, claim.step_id),
        )
        unfinished, children = cur.fetchone()
        if unfinished:
            return FinishResult(False, False)
        if children:
            # The children's final ctx goes into the parent's: the long way.
            ended, next_claim = self.advance(
                cur, claim.job_id, claim.step_index, continuation
            )
            return FinishResult(ended, True, next_claim=next_claim)
        return self._move_on(cur, claim, None, [], continuation)

    def _move_on(
        self,
        cur: Any,
        claim: Claim,
        ctx_json: Optional[str],
        leading: Sequence[Write],
        continuation: Optional[Continuation],
    ) -> FinishResult:
        """After ``leading``, start the job's next step or end the job,
        saving ``ctx_json`` with it unless it is None."""
        set_ctx = "" if ctx_json is None else "ctx = {json}, "
        ctx_params = () if ctx_json is None else (ctx_json,)
        next_index = claim.step_index + 1
        if next_index < len(claim.shape):
            move: Write = (
                f"UPDATE threadjobs_jobs SET {set_ctx}current_step = %s, "
                "updated_at = {now} WHERE id = %s",
                (*ctx_params, next_index, claim.job_id),
            )
            next_claim = self._insert_step(
                cur,
                claim.job_id,
                claim.job_name,
                next_index,
                claim.shape,
                continuation,
                [*leading, move],
            )
            return FinishResult(False, True, next_claim=next_claim)

        end: Write = (
            f"UPDATE threadjobs_jobs SET {set_ctx}ended_at = {{now}}, "
            "updated_at = {now} WHERE id = %s",
            (*ctx_params, claim.job_id),
        )
        self._wake_parents(cur, claim.job_id, [*leading, end])
        return FinishResult(True, True)

    def _apply_outcome(
        self,
        cur: Any,
        claim: Claim,
        outcome: Outcome,
        enqueue_child: Callable[[Any, StartChild], int],
    ) -> FinishResult:
        where = " WHERE id = %s"
        if isinstance(outcome, Done):
            self.execute(
                cur,
                f"UPDATE threadjobs_steps SET done = 1, {_UNCLAIM}{where}",
                (claim.step_id,),
            )
            return FinishResult(False, True)
        if isinstance(outcome, CallAgain):
            self.execute(
                cur,
                f"UPDATE threadjobs_steps SET run_at = {{now}} + %s, {_UNCLAIM}{where}",
                (outcome.delay, claim.step_id),
            )
            return FinishResult(False, False)
        if isinstance(outcome, FailKeepWork):
            self.execute(
                cur,
                "UPDATE threadjobs_steps SET is_failed = 1, error = %s, "
                f"traceback = NULL, {_UNCLAIM}{where}",
                (
                    f"the step returned {outcome.value!r}, a negative number: "
                    "failed on purpose, its work was kept; resume the job to "
                    "call it again",
                    claim.step_id,
                ),
            )
            return FinishResult(False, False)

        child_id = enqueue_child(cur, outcome)
        self.execute(
            cur,
            "UPDATE threadjobs_steps SET done = 1, child_job_id = %s, "
            f"{_UNCLAIM}{where}",
            (child_id, claim.step_id),
        )
        return FinishResult(False, True, child_id)

    def advance(
        self,
        cur: Any,
        job_id: int,
        step_index: int,
        continuation: Optional[Continuation] = None,
    ) -> tuple[bool, Optional[Claim]]:
        """Start the next step if step ``step_index`` has wholly finished.

        Finished means every member is done and every child job its members
        started has ended. Runs with the job row locked, so members finishing
        at the same moment start the next step exactly once. Returns whether
        the job ended, and the next step's claim if ``continuation`` took it.
        """
        self.execute(
            cur,
            "SELECT name, ctx, current_step, shape, ended_at "
            "FROM threadjobs_jobs WHERE id = %s{lock}",
            (job_id,),
        )
        name, ctx_json, current_step, shape_json, ended_at = cur.fetchone()
        if current_step != step_index or ended_at is not None:
            return False, None
        self.execute(
            cur,
            "SELECT s.done, c.name, c.ctx, c.ended_at, c.id "
            "FROM threadjobs_steps s LEFT JOIN threadjobs_jobs c "
            "ON c.id = s.child_job_id "
            "WHERE s.job_id = %s AND s.step_index = %s",
            (job_id, step_index),
        )
        members = cur.fetchall()
        if any(not done for done, *_ in members):
            return False, None
        children = [row for row in members if row[4] is not None]
        if any(child_ended is None for *_, child_ended, _ in children):
            return False, None

        if children:
            ctx = jsonvalues.loads(ctx_json)
            found = ctx.setdefault(CHILDREN_KEY, {})
            for _, child_name, child_ctx, _, _ in children:
                found[child_name] = jsonvalues.loads(child_ctx)
            self.execute(
                cur,
                "UPDATE threadjobs_jobs SET ctx = {json} WHERE id = %s",
                (jsonvalues.dumps(ctx), job_id),
            )

        shape = jsonvalues.loads(shape_json)
        if step_index + 1 < len(shape):
            self.execute(
                cur,
                "UPDATE threadjobs_jobs SET current_step = %s, "
                "updated_at = {now} WHERE id = %s",
                (step_index + 1, job_id),
            )
            next_claim = self._insert_step(
                cur, job_id, name, step_index + 1, shape, continuation
            )
            return False, next_claim

        self.execute(
            cur,
            "UPDATE threadjobs_jobs SET ended_at = {now}, updated_at = {now} "
            "WHERE id = %s",
            (job_id,),
        )
        self._wake_parents(cur, job_id)
        return True, None

    def _wake_parents(
        self, cur: Any, child_id: int, leading: Sequence[Write] = ()
    ) -> None:
        self.execute_together(
            cur,
            leading,
            "SELECT job_id, step_index FROM threadjobs_steps WHERE child_job_id = %s",
            (child_id,),
        )
        for parent_id, parent_step in cur.fetchall():
            self.advance(cur, parent_id, parent_step)  # No continuation.

    def record_failure(
        self,
        claim: Claim,
        error: str,
        traceback_text: Optional[str],
        *,
        called: bool = True,
    ) -> None:
        """Flag a claimed step as failed, after its call was rolled back.

        ``called=False`` when the worker refused to call the function at
        all; the claim then does not count as a call.
        """
        self.transaction(
            lambda cur: self.execute(
                cur,
                "UPDATE threadjobs_steps SET is_failed = 1, error = %s, "
                "traceback = %s, claim_token = NULL, claimed_by = NULL, "
                "claimed_until = 0, unfinished_calls = 0, calls = calls - %s, "
                "updated_at = {now} WHERE id = %s AND claim_token = %s",
                (error, traceback_text, 0 if called else 1, claim.step_id, claim.token),
            )
        )

    # -- reading and housekeeping --------------------------------------------

    def list_jobs(self, which: str, mask: Optional[str]) -> list[JobRecord]:
        """Jobs in one of the states "ended", "failed" or "pending"."""
        where = _LIST_FILTERS[which]
        params: tuple[Any, ...] = ()
        if mask is not None:
            where += " AND j.name LIKE %s {escape}"
            params = (mask,)

        def work(cur: Any) -> list[JobRecord]:
            self.execute(
                cur,
                f"SELECT {_JOB_COLUMNS} FROM threadjobs_jobs j "
                f"WHERE {where} ORDER BY j.id",
                params,
            )
            return [_job_record(row, which) for row in cur.fetchall()]

        return self.transaction(work, write=False)

    def count_jobs(self) -> dict[str, int]:
        """How many jobs are ended, failed and pending."""

        def work(cur: Any) -> dict[str, int]:
            counts = {}
            for which, where in _LIST_FILTERS.items():
                self.execute(
                    cur, f"SELECT COUNT(*) FROM threadjobs_jobs j WHERE {where}"
                )
                counts[which] = int(cur.fetchone()[0])
            return counts

        return self.transaction(work, write=False)

    def get_job(self, job_id: int) -> JobRecord:
        """One job by id; raises JobNotFoundError."""

        def work(cur: Any) -> JobRecord:
            self.execute(
                cur,
                f"SELECT {_JOB_COLUMNS}, {_FAILED} FROM threadjobs_jobs j "
                "WHERE j.id = %s",
                (job_id,),
            )
            row = cur.fetchone()
            if row is None:
                raise JobNotFoundError(f"no job has the id {job_id}")
            status = (
                "ended" if row[8] is not None else "failed" if row[10] else "pending"
            )
            return _job_record(row[:10], status)

        return self.transaction(work, write=False)

    def get_steps(self, job_id: int) -> list[StepRecord]:
        """The step rows of one job, in order."""

        def work(cur: Any) -> list[StepRecord]:
            self.execute(
                cur,
                "SELECT job_id, step_index, member_index, done, is_failed, "
                "claim_token, run_at, calls, child_job_id, claimed_by, error, "
                "traceback, claimed_until > {now} FROM threadjobs_steps "
                "WHERE job_id = %s ORDER BY step_index, member_index",
                (job_id,),
            )
            return [_step_record(row) for row in cur.fetchall()]

        return self.transaction(work, write=False)

    def resume(self, job_id: int) -> int:
        """Clear the failed flag of a failed job's steps; return how many."""

        def work(cur: Any) -> int:
            self.execute(
                cur,
                "UPDATE threadjobs_steps SET is_failed = 0, run_at = {now}, "
                "unfinished_calls = 0, updated_at = {now} "
                "WHERE job_id = %s AND is_failed = 1 AND done = 0",
                (job_id,),
            )
            count = int(cur.rowcount)
            if count == 0:
                self.execute(
                    cur,
                    "SELECT ended_at FROM threadjobs_jobs WHERE id = %s",
                    (job_id,),
                )
                row = cur.fetchone()
                if row is None:
                    raise JobNotFoundError(f"no job has the id {job_id}")
                state = "has ended" if row[0] is not None else "is not failed"
                raise JobStateError(
                    f"job {job_id} {state}; only a failed job can be resumed"
                )
            return count

        return self.transaction(work)

    def clean_up(self) -> int:
        """Delete the jobs that ended successfully, with their steps."""

        def work(cur: Any) -> int:
            self.execute(
                cur,
                "DELETE FROM threadjobs_steps WHERE job_id IN "
                "(SELECT id FROM threadjobs_jobs WHERE ended_at IS NOT NULL)",
            )
            self.execute(cur, "DELETE FROM threadjobs_jobs WHERE ended_at IS NOT NULL")
            return int(cur.rowcount)

        return self.transaction(work)


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


def merge_ctx(
    stored: dict[str, Any], before: dict[str, Any], after: dict[str, Any]
) -> dict[str, Any]:
    """Apply one step call's changes to the ctx as stored now.

    Only the top-level keys this call added, changed or deleted are written,
    so members of a group that touch different keys all keep their changes.
    """
    merged = dict(stored)
    for key in before.keys() - after.keys():
        merged.pop(key, None)
    for key, value in after.items():
        if key not in before or before[key] != value:
            merged[key] = value
    return merged


def _step_context(
    row: Optional[Sequence[Any]], claim: Claim, locked_job: bool
) -> StepContext:
    """A call's start from (params, ctx, current_step, ended_at)."""
    if row is None:
        raise ClaimLostError(claim.label)
    params, ctx_json, current_step, ended_at = row
    ctx = jsonvalues.loads(ctx_json)
    job = JobState(ctx, current_step, ended_at is not None) if locked_job else None
    return StepContext(jsonvalues.loads(params), ctx, job)


def _step_id(claim: Claim) -> int:
    return claim.step_id


def _claim_from_row(row: Sequence[Any], token: str) -> Claim:
    """A claim from (id, job_id, job_name, step_index, member_index, shape,
    unfinished_calls, calls)."""
    step_id, job_id, name, step_index, member, shape, unfinished, calls = row
    return Claim(
        int(step_id),
        int(job_id),
        name,
        int(step_index),
        int(member),
        jsonvalues.loads(shape),
        token,
        int(unfinished),
        int(calls),
    )


def _job_record(row: Sequence[Any], status: str) -> JobRecord:
    return JobRecord(
        id=int(row[0]),
        name=row[1],
        params=jsonvalues.loads(row[2]),
        ctx=jsonvalues.loads(row[3]),
        status=status,
        shape=jsonvalues.loads(row[4]),
        current_step=int(row[5]),
        created_at=from_epoch(row[6]),  # type: ignore[arg-type]
        updated_at=from_epoch(row[7]),  # type: ignore[arg-type]
        ended_at=from_epoch(row[8]),
        error=row[9] if status == "failed" else None,
    )


def _step_record(row: Sequence[Any]) -> StepRecord:
    (
        job_id,
        step_index,
        member,
        done,
        failed,
        token,
        run_at,
        calls,
        child,
        claimed_by,
        error,
        traceback_text,
        leased,
    ) = row
    state = (
        "done"
        if done
        else "failed"
        if failed
        else "claimed"
        if token is not None and leased
        else "due"
    )
    return StepRecord(
        job_id=int(job_id),
        step_index=int(step_index),
        member_index=int(member),
        state=state,
        run_at=from_epoch(run_at),  # type: ignore[arg-type]
        calls=int(calls),
        child_job_id=child,
        claimed_by=claimed_by if state == "claimed" else None,
        error=error,
        traceback=traceback_text,
    )


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
