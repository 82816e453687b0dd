"""The executor: the public API to define, start, inspect and run jobs."""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import threading
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Optional, Union

from . import jsonvalues
from .backends import open_backend
from .backends.base import SqlBackend
from .definitions import RESERVED_PREFIX, Job, check_name
from .errors import (
    ConfigurationError,
    DefinitionError,
    InvalidValueError,
    JobStateError,
    StepTransactionError,
    UnknownJobError,
)
from .outcomes import StartChild
from .records import JobRecord, StepRecord
from .scheduler import StepSession, Worker, WorkerSettings

logger = logging.getLogger(__name__)

EXECUTE_JOB = ".execute"
"""The built-in job that starts another job by name."""

_TRANSACTION_CONTROL = re.compile(
    r"^\s*(BEGIN|COMMIT|ROLLBACK|END|ABORT|SAVEPOINT|RELEASE|"
    r"START\s+TRANSACTION|SET\s+(SESSION\s+)?(TRANSACTION|AUTOCOMMIT))\b",
    re.IGNORECASE,
)

Rows = list[tuple[Any, ...]]


# Every executor, so that a forked child can drop what it inherited.
_EXECUTORS: weakref.WeakSet[JobExecutor] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for executor in list(_EXECUTORS):
        executor._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _start_named_job(
    params: dict[str, Any], ctx: dict[str, Any], executor: JobExecutor
) -> None:
    """The step of ``.execute``: enqueue the job its params name."""
    ctx["job_id"] = executor.execute(
        params["name"],
        params.get("param") or {},
        params.get("ctx") or {},
        params.get("delay") or 0,
    )


class JobExecutor:
    """Stores jobs in a database and runs their steps.

    ``database`` is a URL (``sqlite:///file``, ``postgresql://…``,
    ``mysql://…``), a ready ``psycopg_pool.ConnectionPool``, or None for the
    ``THREADJOBS_DATABASE_URL`` environment variable and, failing that, the
    SQLite file ``threadjobs.sqlite3`` in the working directory. The tables
    are created on first use.

    Worker settings: ``threads`` step calls run at once in this process;
    the database is polled every ``poll_interval`` seconds when idle; on
    PostgreSQL and MySQL a claimed step is reserved for ``lease_seconds``
    before its call starts and locks it (on SQLite a claim lasts as long as
    the worker process); a step whose worker died during it more
    than ``max_unfinished_calls`` times in a row fails instead of being
    called again; a ctx may be at most ``max_ctx_bytes`` encoded; database
    calls outside steps retry transient errors for ``retry_seconds``.
    """

    def __init__(
        self,
        database: Optional[Union[str, Any]] = None,
        *,
        threads: int = 4,
        poll_interval: float = 0.2,
        lease_seconds: float = 5.0,
        max_unfinished_calls: int = 3,
        max_ctx_bytes: int = jsonvalues.DEFAULT_MAX_CTX_BYTES,
        retry_seconds: float = 10.0,
    ) -> None:
        _check_setting("threads", threads, minimum=1, integer=True)
        _check_setting("poll_interval", poll_interval, minimum=0.001)
        _check_setting("lease_seconds", lease_seconds, minimum=1.0)
        _check_setting(
            "max_unfinished_calls",
            max_unfinished_calls,
            minimum=1,
            integer=True,
        )
        _check_setting("max_ctx_bytes", max_ctx_bytes, minimum=2, integer=True)
        self.backend: SqlBackend = open_backend(database, retry_seconds=retry_seconds)
        self.settings = WorkerSettings(
            threads,
            poll_interval,
            lease_seconds,
            max_unfinished_calls,
            max_ctx_bytes,
        )
        # Protects _ready, _worker and _thread (setup and lifecycle).
        self._lock = threading.Lock()
        self._ready = False
        self._worker: Optional[Worker] = None
        self._thread: Optional[threading.Thread] = None
        # The step call running in each pool thread, if any.
        self._local = threading.local()
        self._definitions: dict[str, Job] = {}
        self._register(Job(EXECUTE_JOB).submit(_start_named_job))
        _EXECUTORS.add(self)

    # -- definitions ---------------------------------------------------------

    def add(self, job: Job) -> JobExecutor:
        """Register a job definition; returns the executor, so calls chain."""
        if not isinstance(job, Job):
            raise DefinitionError(f"add() takes a Job, got {type(job).__name__}")
        if job.name.startswith(RESERVED_PREFIX):
            raise DefinitionError(
                f"the job name {job.name!r} starts with "
                f"{RESERVED_PREFIX!r}, which is reserved for built-in jobs; "
                "choose another name"
            )
        if not job.steps:
            raise DefinitionError(
                f"job {job.name!r} has no steps; submit() at least one "
                "function before add()"
            )
        if job.name in self._definitions:
            raise DefinitionError(
                f"a job named {job.name!r} is already added; job names are unique"
            )
        self._register(job)
        return self

    def _register(self, job: Job) -> None:
        self._definitions[job.name] = job
        if self._worker is not None:
            self._worker.wake()

    def definition(self, name: str) -> Job:
        """The definition added under ``name``; raises UnknownJobError."""
        job = self._definitions.get(name)
        if job is None:
            raise UnknownJobError(
                f"no job named {name!r} is added to this executor; add() its "
                f"definition, or start it through the built-in "
                f"{EXECUTE_JOB!r} job, which a worker that has it will run"
            )
        return job

    def job_names(self) -> list[str]:
        """The names of every job this executor can run."""
        return list(self._definitions)

    # -- starting jobs -------------------------------------------------------

    def execute(
        self,
        name: str,
        params: Optional[dict[str, Any]] = None,
        ctx: Optional[dict[str, Any]] = None,
        delay: float = 0,
        *,
        connection: Any = None,
    ) -> int:
        """Enqueue a job and return its id.

        If a job with the same name and params (compared as canonical JSON)
        exists in any state, nothing is enqueued and its id is returned. The
        first step becomes due ``delay`` seconds from now. Called inside a
        step, the enqueue is part of the step's transaction.

        ``connection`` is your own open connection of the backend's driver
        (psycopg or PyMySQL): the job is enqueued in your current transaction
        and exists only once you commit it. threadjobs does not commit it.
        """
        name, params, ctx, delay = self._check_job(name, params, ctx, delay)
        return self._enqueue_where(name, [params], ctx, delay, connection)[0]

    def execute_many(
        self,
        name: str,
        params_list: Sequence[dict[str, Any]],
        ctx: Optional[dict[str, Any]] = None,
        delay: float = 0,
        *,
        connection: Any = None,
    ) -> list[int]:
        """Enqueue one job of ``name`` per params dict, all in one transaction.

        Returns the job ids in the order of ``params_list``. De-duplication
        works as in ``execute()``, also between items of the list. Every
        item is checked before anything is written.
        """
        if isinstance(params_list, (dict, str, bytes)) or not isinstance(
            params_list, Sequence
        ):
            raise InvalidValueError(
                f"params_list must be a list of dicts, got {type(params_list).__name__}"
            )
        name, ctx, delay = self._check_start(name, ctx, delay)
        params = [
            self._check_params(name, item, f"params_list[{index}]")
            for index, item in enumerate(params_list)
        ]
        if not params:
            return []
        return self._enqueue_where(name, params, ctx, delay, connection)

    def _enqueue_where(
        self,
        name: str,
        params_list: list[dict[str, Any]],
        ctx: dict[str, Any],
        delay: float,
        connection: Any,
    ) -> list[int]:
        """Enqueue in the step's, the caller's or a transaction of its own."""
        session = self._current_session()
        if session is not None:
            return self._enqueue(session.cursor(), name, params_list, ctx, delay)
        if connection is not None:
            self.backend.check_connection_type(connection)
            self._ensure_ready()
            with self.backend.translate_errors():
                return self._enqueue(connection.cursor(), name, params_list, ctx, delay)

        self._ensure_ready()
        ids = self.backend.transaction(
            lambda cur: self._enqueue(cur, name, params_list, ctx, delay),
            alone=len(params_list) <= self.backend.enqueue_batch,
        )
        if self._worker is not None:
            self._worker.wake()
        return ids

    def _check_job(
        self, name: Any, params: Any, ctx: Any, delay: Any
    ) -> tuple[str, dict[str, Any], dict[str, Any], float]:
        name, ctx, delay = self._check_start(name, ctx, delay)
        return name, self._check_params(name, params, "params"), ctx, delay

    def _check_start(
        self, name: Any, ctx: Any, delay: Any
    ) -> tuple[str, dict[str, Any], float]:
        """Check what all jobs of one enqueue share: name, ctx and delay."""
        check_name(name)
        job = self.definition(name)
        ctx = {} if ctx is None else ctx
        jsonvalues.check_dict(ctx, "ctx")
        if not isinstance(delay, (int, float)) or isinstance(delay, bool):
            raise InvalidValueError(
                f"delay must be a number of seconds, got {type(delay).__name__}"
            )
        if not math.isfinite(delay) or delay < 0:
            raise InvalidValueError(
                f"delay must be a finite number >= 0, got {delay!r}"
            )
        return job.name, ctx, float(delay)

    def _check_params(self, name: str, params: Any, field: str) -> dict[str, Any]:
        params = {} if params is None else params
        jsonvalues.check_dict(params, field)
        if name == EXECUTE_JOB:
            _check_execute_params(params)
        return params  # type: ignore[no-any-return]

    def _enqueue(
        self,
        cur: Any,
        name: str,
        params_list: list[dict[str, Any]],
        ctx: dict[str, Any],
        delay: float,
    ) -> list[int]:
        ctx_json = jsonvalues.dumps(ctx)
        jsonvalues.check_ctx_size(ctx_json, self.settings.max_ctx_bytes)
        items = []
        for params in params_list:
            params_json = jsonvalues.dumps(params)
            key = hashlib.sha256(f"{name}\n{params_json}".encode()).hexdigest()
            items.append((key, params_json))
        shape = self._definitions[name].shape
        results = self.backend.enqueue(cur, name, items, ctx_json, shape, delay)
        for job_id, created in results:
            if created:
                logger.info(
                    "%s[%d] enqueued",
                    name,
                    job_id,
                    extra={"action": "job_enqueued", "job_id": job_id, "job": name},
                )
            else:
                logger.debug(
                    "%s[%d] already exists, not enqueued again",
                    name,
                    job_id,
                    extra={"action": "job_deduplicated", "job_id": job_id, "job": name},
                )
        return [job_id for job_id, _ in results]

    def _enqueue_child(self, cur: Any, child: StartChild) -> int:
        name, params, ctx, delay = self._check_job(
            child.name, child.params, child.ctx, child.delay
        )
        return self._enqueue(cur, name, [params], ctx, delay)[0]

    # -- SQL -----------------------------------------------------------------

    def exec_query(self, sql: str, params: Optional[Sequence[Any]] = None) -> Rows:
        """Run SQL and return its rows as tuples (an empty list if none).

        Placeholders are ``%s`` on every backend (``%%`` for a literal ``%``)
        and ``params`` is a list or tuple. Inside a step the query runs in the
        step's transaction; elsewhere in a transaction of its own. A step
        must not end that transaction itself, so BEGIN, COMMIT, ROLLBACK and
        SAVEPOINT statements are refused.
        """
        if not isinstance(sql, str):
            raise InvalidValueError(f"sql must be a str, got {type(sql).__name__}")
        if params is None:
            params = ()
        if isinstance(params, (str, bytes, dict)) or not isinstance(params, Sequence):
            raise InvalidValueError(
                f"params must be a list or tuple matching the %s "
                f"placeholders, got {type(params).__name__}"
            )
        if _TRANSACTION_CONTROL.match(sql):
            raise StepTransactionError(
                f"exec_query() refuses {sql.split()[0].upper()}: threadjobs "
                "owns the transaction, which commits or rolls back with the "
                "step"
            )
        text = self.backend.adapt_user_sql(sql)

        def run(cur: Any) -> Rows:
            cur.execute(text, tuple(params))
            if cur.description is None:
                return []
            return [tuple(row) for row in cur.fetchall()]

        session = self._current_session()
        if session is None:
            self._ensure_ready()
            return self.backend.transaction(run, write=False, alone=True)
        with self.backend.translate_errors():
            return run(session.cursor())

    # -- inspecting and managing jobs ----------------------------------------

    def list_ended_jobs(self, mask: Optional[str] = None) -> list[JobRecord]:
        """Jobs that finished successfully; ``mask`` is an SQL LIKE pattern.

        Masks are case-sensitive on every backend; ``\\`` escapes ``%`` and
        ``_``.
        """
        return self._list("ended", mask)

    def list_not_ended_jobs(self, mask: Optional[str] = None) -> list[JobRecord]:
        """Jobs queued, running, sleeping or waiting for a child job."""
        return self._list("pending", mask)

    def list_failed_jobs(self, mask: Optional[str] = None) -> list[JobRecord]:
        """Jobs with a failed step, waiting for ``resume_job()``."""
        return self._list("failed", mask)

    def _list(self, which: str, mask: Optional[str]) -> list[JobRecord]:
        if mask is not None and not isinstance(mask, str):
            raise InvalidValueError(
                f"mask must be a str LIKE pattern or None, got {type(mask).__name__}"
            )
        self._ensure_ready()
        return self.backend.list_jobs(which, mask)

    def count_jobs(self) -> dict[str, int]:
        """The number of jobs per status: ``ended``, ``failed``, ``pending``."""
        self._ensure_ready()
        return self.backend.count_jobs()

    def get_job(self, job_id: int) -> JobRecord:
        """One job by id; raises JobNotFoundError if there is none."""
        self._ensure_ready()
        return self.backend.get_job(_check_id(job_id))

    def get_steps(self, job_id: int) -> list[StepRecord]:
        """The step members of one job, with their state and last error."""
        self._ensure_ready()
        return self.backend.get_steps(_check_id(job_id))

    def resume_job(self, job_id: int) -> int:
        """Call the failed step(s) of a failed job again; returns how many.

        Raises JobNotFoundError for an unknown id and JobStateError for a
        job that is not failed.
        """
        self._ensure_ready()
        count = self.backend.resume(_check_id(job_id))
        logger.info(
            "job %d resumed (%d steps)",
            job_id,
            count,
            extra={"action": "job_resumed", "job_id": job_id},
        )
        if self._worker is not None:
            self._worker.wake()
        return count

    def clean_up(self) -> int:
        """Delete the jobs that ended successfully; returns how many.

        Afterwards an ``execute()`` with the same name and params enqueues a
        new job.
        """
        self._ensure_ready()
        count = self.backend.clean_up()
        logger.info("cleaned up %d ended jobs", count, extra={"action": "clean_up"})
        return count

    # -- running -------------------------------------------------------------

    def run(self) -> None:
        """Run due steps in this thread until ``stop()`` is called."""
        worker = self._new_worker()
        try:
            worker.run()
        finally:
            with self._lock:
                self._worker = None

    def start(self) -> None:
        """Run the worker in a background thread and return at once."""
        worker = self._new_worker()
        thread = threading.Thread(
            target=self._run_started,
            args=(worker,),
            name="threadjobs-scheduler",
            daemon=True,
        )
        with self._lock:
            self._thread = thread
        thread.start()

    def _run_started(self, worker: Worker) -> None:
        try:
            worker.run()
        finally:
            with self._lock:
                self._worker = None

    def _new_worker(self) -> Worker:
        # No setup here: a worker started while the database is down waits
        # for it with capped backoff instead of failing.
        with self._lock:
            if self._worker is not None:
                raise JobStateError(
                    "this executor is already running a worker; call stop() "
                    "before starting another"
                )
            self._worker = Worker(self, self.backend, self.settings)
            return self._worker

    def stop(self, timeout: Optional[float] = None) -> bool:
        """Stop taking steps and wait for running step calls to finish.

        Waits at most ``timeout`` seconds (None: as long as they take).
        Returns True if the worker stopped in time. A call still running
        after the timeout keeps running; if the process exits first, its
        transaction rolls back and another worker runs the step again.
        """
        with self._lock:
            worker, thread = self._worker, self._thread
        if worker is None:
            return True
        worker.stop(timeout)
        if thread is None or thread is threading.current_thread():
            return True
        thread.join(None if timeout is None else timeout + 1.0)
        with self._lock:
            if not thread.is_alive():
                self._thread = None
        return not thread.is_alive() and worker.unfinished_at_stop == 0

    @property
    def running(self) -> bool:
        """Whether a worker of this executor is running."""
        return self._worker is not None

    def close(self) -> None:
        """Stop the worker, if any, and close the database connections."""
        self.stop()
        self.backend.close()

    def __enter__(self) -> JobExecutor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- internals -----------------------------------------------------------

    def _after_fork(self) -> None:
        """A forked child has no worker threads and must not use the
        parent's connections; a worker may be started afresh."""
        self._lock = threading.Lock()
        self._worker = None
        self._thread = None
        self._local = threading.local()
        self.backend.after_fork()

    def _ensure_ready(self) -> None:
        if self._ready:
            return
        with self._lock:
            if not self._ready:
                self.backend.setup()
                self._ready = True

    def _current_session(self) -> Optional[StepSession]:
        return getattr(self._local, "session", None)

    @contextmanager
    def _step_session(self, session: StepSession) -> Iterator[None]:
        self._local.session = session
        try:
            yield
        finally:
            self._local.session = None


def _check_execute_params(params: dict[str, Any]) -> None:
    if not isinstance(params.get("name"), str):
        raise InvalidValueError(
            f"params of {EXECUTE_JOB!r} need 'name', the str name of the job "
            "to start, with optional 'param' and 'ctx' dicts and 'delay'"
        )
    for key in ("param", "ctx"):
        if params.get(key) is not None and not isinstance(params[key], dict):
            raise InvalidValueError(
                f"params[{key!r}] of {EXECUTE_JOB!r} must be a dict"
            )
    unknown = set(params) - {"name", "param", "ctx", "delay"}
    if unknown:
        raise InvalidValueError(
            f"params of {EXECUTE_JOB!r} have unknown keys {sorted(unknown)}; "
            "allowed are name, param, ctx and delay"
        )


def _check_id(job_id: Any) -> int:
    if not isinstance(job_id, int) or isinstance(job_id, bool):
        raise InvalidValueError(f"a job id is an int, got {type(job_id).__name__}")
    return job_id


def _check_setting(
    name: str, value: Any, *, minimum: float, integer: bool = False
) -> None:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if integer:
        number = number and isinstance(value, int)
    if not number or not math.isfinite(value) or value < minimum:
        kind = "an int" if integer else "a number"
        raise ConfigurationError(f"{name} must be {kind} >= {minimum}, got {value!r}")
