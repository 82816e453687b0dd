"""The worker: a scheduler thread that claims due steps, and a thread pool.

The scheduler claims as many due step members as the pool has free threads,
hands each to the pool, and sleeps until a call finishes, a job is enqueued
in this process, or the poll interval passes. Each pool thread runs step
calls on its own pooled connection, one transaction each; a call's commit
claims the next step for the same thread (the job's next step, or another
due one), so a busy thread goes from call to call without the scheduler.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

from .backends.base import SqlBackend
from .backends.sql import new_worker_id
from .backends.steps import ClaimLostError, Continuation, StepContext
from .errors import DatabaseError, SchemaVersionError, TransientDatabaseError
from .jsonvalues import check_dict, copy_json
from .outcomes import CallAgain, Done, FailKeepWork, StartChild, interpret
from .records import Claim

if TYPE_CHECKING:
    from .definitions import Job
    from .executor import JobExecutor

logger = logging.getLogger(__name__)

REAP_INTERVAL_SECS = 1.0
"""How often a worker without row locks looks for claims of dead workers."""

MAX_BACKOFF_SECS = 5.0
"""The longest a worker waits between tries while the database is down."""


@dataclass(frozen=True)
class WorkerSettings:
    """How a worker runs; see JobExecutor for what each setting means."""

    threads: int
    poll_interval: float
    lease_seconds: float
    max_unfinished_calls: int
    max_ctx_bytes: int


class KeyedLocks:
    """One lock per job id, created on demand and dropped when unused."""

    def __init__(self) -> None:
        # Protects _locks; each entry is [lock, number of holders/waiters].
        self._mutex = threading.Lock()
        self._locks: dict[int, list[Any]] = {}

    @contextmanager
    def hold(self, key: int) -> Iterator[None]:
        with self._mutex:
            entry = self._locks.setdefault(key, [threading.Lock(), 0])
            entry[1] += 1
        try:
            with entry[0]:
                yield
        finally:
            with self._mutex:
                entry[1] -= 1
                if entry[1] == 0:
                    del self._locks[key]


class StepSession:
    """The connection of the step call running in the current thread."""

    def __init__(self, backend: SqlBackend, conn: Any, claim: Claim) -> None:
        self.backend = backend
        self.conn = conn
        self.claim = claim

    def cursor(self) -> Any:
        """A cursor inside the step's transaction, beginning it if needed."""
        with self.backend.translate_errors():
            self.backend.ensure_transaction(self.conn)
        return self.conn.cursor()


class Worker:
    """Runs due steps of the executor's jobs until told to stop."""

    def __init__(
        self,
        executor: JobExecutor,
        backend: SqlBackend,
        settings: WorkerSettings,
    ) -> None:
        self.executor = executor
        self.backend = backend
        self.settings = settings
        self.worker_id = new_worker_id()
        self.stopping = threading.Event()
        self._wake = threading.Event()
        # Serializes the ctx merge of one job's members within this process.
        self._job_locks = KeyedLocks()
        # Protects _running: step id -> (claim, future) of claimed calls.
        self._running_lock = threading.Lock()
        self._running: dict[int, tuple[Claim, Future[None]]] = {}
        self._grace: Optional[float] = None
        #: Step calls still running when stop() stopped waiting for them.
        self.unfinished_at_stop = 0
        # Claims given back while the database was unreachable, to retry;
        # guarded by _running_lock.
        self._unreleased: list[Claim] = []

    def wake(self) -> None:
        """Make the scheduler look for due steps now."""
        self._wake.set()

    def stop(self, timeout: Optional[float]) -> None:
        """Ask the loop to stop, letting running calls finish in ``timeout``."""
        self._grace = timeout
        self.stopping.set()
        self._wake.set()

    # -- the scheduler loop --------------------------------------------------

    def run(self) -> None:
        """Claim and run steps until ``stop()``; then drain the pool."""
        settings = self.settings
        pool = ThreadPoolExecutor(
            settings.threads, thread_name_prefix="threadjobs-step"
        )
        logger.info(
            "worker %s started: %d threads on %s",
            self.worker_id,
            settings.threads,
            self.backend.name,
            extra={"action": "worker_started"},
        )
        if self.backend.supports_notify:
            threading.Thread(
                target=self.backend.listen,
                args=(self.wake, self.stopping),
                name="threadjobs-listener",
                daemon=True,
            ).start()
        backoff = 0.0
        next_chores = 0.0
        try:
            while not self.stopping.is_set():
                self._wake.clear()
                try:
                    self.executor._ensure_ready()
                    if time.monotonic() >= next_chores:
                        self._chores()
                        next_chores = time.monotonic() + REAP_INTERVAL_SECS
                    claimed = self._claim_and_submit(pool)
                    backoff = 0.0
                except SchemaVersionError:
                    raise
                except DatabaseError as exc:
                    backoff = min(max(backoff * 2, 0.1), MAX_BACKOFF_SECS)
                    logger.warning(
                        "worker %s cannot reach the database, retrying in %.1fs: %s",
                        self.worker_id,
                        backoff,
                        exc,
                        extra={"action": "poll_failed"},
                    )
                    self.stopping.wait(backoff)
                    continue
                if not claimed:
                    self._wake.wait(settings.poll_interval)
        finally:
            self._drain(pool)
        logger.info(
            "worker %s stopped",
            self.worker_id,
            extra={"action": "worker_stopped"},
        )

    def _claim_and_submit(self, pool: ThreadPoolExecutor) -> int:
        with self._running_lock:
            free = self.settings.threads - len(self._running)
        if free <= 0:
            return 0
        claims = self.backend.claim(
            self.executor.job_names(),
            self.worker_id,
            free,
            self.settings.lease_seconds,
        )
        for index, claim in enumerate(claims):
            logger.debug(
                "claimed %s",
                claim.label,
                extra={
                    "action": "claim",
                    "job_id": claim.job_id,
                    "job": claim.job_name,
                    "step": claim.step_index,
                },
            )
            if not self._submit(pool, claim):
                for unsubmitted in claims[index:]:
                    self._release(unsubmitted)
                break
        # A full batch means more may be due: claim again when a thread frees.
        return len(claims) if len(claims) < free else 0

    def _submit(self, pool: ThreadPoolExecutor, claim: Claim) -> bool:
        with self._running_lock:
            try:
                future = pool.submit(self._call, claim)
            except RuntimeError:
                # The interpreter is exiting and the pool takes no more
                # calls: the worker stops and gives its claims back.
                self.stopping.set()
                return False
            self._running[claim.step_id] = (claim, future)
        return True

    def _chores(self) -> None:
        """Retry claim releases; free claims that outlived their worker."""
        with self._running_lock:
            unreleased, self._unreleased = self._unreleased, []
            running = list(self._running)
        for claim in unreleased:
            self._release(claim)
        if not self.backend.holds_row_locks:
            self.backend.free_stale_claims(self.worker_id, running)

    def _drain(self, pool: ThreadPoolExecutor) -> None:
        with self._running_lock:
            running = list(self._running.values())
        not_started = [claim for claim, future in running if future.cancel()]
        for claim in not_started:
            self._forget(claim)
            self._release(claim)

        futures = [future for _, future in running if not future.cancelled()]
        _, still_running = wait_futures(futures, timeout=self._grace)
        self.unfinished_at_stop = len(still_running)
        if still_running:
            logger.warning(
                "worker %s stopped waiting for %d running step calls after "
                "%.1fs; they roll back if the process exits before they end",
                self.worker_id,
                len(still_running),
                self._grace or 0.0,
                extra={"action": "shutdown_timeout"},
            )
        pool.shutdown(wait=False, cancel_futures=True)

    def _forget(self, claim: Claim) -> None:
        with self._running_lock:
            self._running.pop(claim.step_id, None)

    # -- one step call -------------------------------------------------------

    def _call(self, claim: Claim) -> None:
        """Run one claimed step call, then the job's next steps that the
        calls claim for this worker as they commit; never lets an exception
        escape."""
        try:
            with self.backend.connection() as conn:
                next_claim = self._call_on(conn, claim)
                while next_claim is not None:
                    self._continue_with(claim, next_claim)
                    claim = next_claim
                    # The commit may have made more steps due (a group's
                    # other members, child jobs) for idle threads. Read
                    # without the lock: a stale count costs one needless
                    # wake-up or one poll interval.
                    if len(self._running) < self.settings.threads:
                        self._wake.set()
                    if self.stopping.is_set():
                        self._release(claim)
                        break
                    next_claim = self._call_on(conn, claim)
        except DatabaseError as exc:
            # No connection for the call: it never started, so the claim
            # goes back uncounted.
            logger.warning(
                "%s: no database connection for the step call: %s",
                claim.label,
                exc,
                extra={"action": "step_retry", "job_id": claim.job_id},
            )
            self._release(claim)
        except Exception:
            logger.exception(
                "%s: the worker failed around the step call",
                claim.label,
                extra={"action": "worker_error", "job_id": claim.job_id},
            )
        finally:
            self._forget(claim)
            self._wake.set()

    def _continue_with(self, done: Claim, next_claim: Claim) -> None:
        """Let the entry of a finished call stand for the job's next step."""
        with self._running_lock:
            entry = self._running.pop(done.step_id, None)
            if entry is not None:
                self._running[next_claim.step_id] = (next_claim, entry[1])

    def _call_on(self, conn: Any, claim: Claim) -> Optional[Claim]:
        """Call one claimed step; return the step this call claimed to run
        next, if any."""
        job = self.executor.definition(claim.job_name)
        problem = self._refusal(claim, job)
        if problem:
            self._fail(claim, problem, None, called=False)
            return None

        try:
            with self.backend.translate_errors():
                start = self.backend.open_step(conn, claim)
        except ClaimLostError:
            self.backend._rollback_quietly(conn)
            return None
        except TransientDatabaseError as exc:
            self._infrastructure_failure(conn, claim, exc)
            return None

        member = job.steps[claim.step_index][claim.member_index]
        ctx = copy_json(start.ctx)
        if claim.step_index == 0 and claim.member_index == 0 and claim.calls == 1:
            logger.info(
                "%s[%d] started",
                claim.job_name,
                claim.job_id,
                extra={
                    "action": "job_started",
                    "job_id": claim.job_id,
                    "job": claim.job_name,
                },
            )
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "calling %s (%s)",
                claim.label,
                member.label,
                extra={
                    "action": "step_call",
                    "job_id": claim.job_id,
                    "job": claim.job_name,
                    "step": claim.step_index,
                },
            )
        session = StepSession(self.backend, conn, claim)
        continuation = None
        try:
            with self.executor._step_session(session):
                outcome = interpret(member.call(start.params, ctx, self.executor))
                check_dict(ctx, "the ctx after the step")
            if not self.stopping.is_set():
                continuation = Continuation(
                    self.worker_id,
                    self.settings.lease_seconds,
                    self.executor.job_names(),
                )
            with self.backend.translate_errors():
                return self._commit(conn, claim, outcome, start, ctx, continuation)
        except ClaimLostError:
            self.backend._rollback_quietly(conn)
            logger.warning(
                "%s: the claim passed to another worker; this call rolled back",
                claim.label,
                extra={"action": "claim_lost", "job_id": claim.job_id},
            )
        except TransientDatabaseError as exc:
            self._infrastructure_failure(conn, claim, exc, continuation)
        except BaseException as exc:  # A step may raise anything at all.
            self.backend._rollback_quietly(conn)
            self._step_raised(claim, exc)
        return None

    def _refusal(self, claim: Claim, job: Job) -> Optional[str]:
        """Why this claim must fail without calling the step, if it must."""
        limit = self.settings.max_unfinished_calls
        if claim.unfinished_calls > limit:
            return (
                f"a worker died during this step {claim.unfinished_calls - 1} "
                f"times in a row (the limit is {limit}); fix the step, then "
                "resume the job"
            )
        if job.shape != claim.shape:
            return (
                f"the job was enqueued with the shape {claim.shape} (group "
                f"sizes per step), but this worker's definition of "
                f"{claim.job_name!r} has the shape {job.shape}; deploy a "
                "definition with the enqueued shape, then resume the job"
            )
        return None

    def _commit(
        self,
        conn: Any,
        claim: Claim,
        outcome: Any,
        start: StepContext,
        ctx_after: dict[str, Any],
        continuation: Optional[Continuation],
    ) -> Optional[Claim]:
        # Take the database's write lock before the in-process job lock:
        # the reverse order could deadlock against a member of the same job
        # that already holds SQLite's write lock from its own exec_query.
        self.backend.ensure_transaction(conn)
        # Only members of one group can run side by side in this process.
        job_lock = nullcontext() if claim.group_size == 1 else None
        with job_lock or self._job_locks.hold(claim.job_id):
            result = self.backend.finish_step(
                conn,
                claim,
                outcome,
                start,
                ctx_after,
                self.executor._enqueue_child,
                self.settings.max_ctx_bytes,
                continuation,
            )
        self._log_outcome(claim, outcome, result.job_ended)
        return result.next_claim

    def _log_outcome(self, claim: Claim, outcome: Any, ended: bool) -> None:
        extra = {
            "job_id": claim.job_id,
            "job": claim.job_name,
            "step": claim.step_index,
        }
        if isinstance(outcome, FailKeepWork):
            logger.info(
                "%s returned %s: job failed, work kept",
                claim.label,
                outcome.value,
                extra={"action": "job_failed", **extra},
            )
        elif isinstance(outcome, StartChild):
            logger.info(
                "%s started child job %s",
                claim.label,
                outcome.name,
                extra={"action": "child_started", **extra},
            )
        elif not logger.isEnabledFor(logging.DEBUG):
            pass  # Labels are not worth formatting for nothing.
        elif isinstance(outcome, CallAgain):
            logger.debug(
                "%s will be called again in %.3fs",
                claim.label,
                outcome.delay,
                extra={"action": "step_again", **extra},
            )
        elif isinstance(outcome, Done):
            logger.debug("%s done", claim.label, extra={"action": "step_done", **extra})
        if ended:
            logger.info(
                "%s[%d] ended",
                claim.job_name,
                claim.job_id,
                extra={"action": "job_ended", **extra},
            )

    def _step_raised(self, claim: Claim, exc: BaseException) -> None:
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        logger.error(
            "%s raised %s: %s; rolled back, job failed",
            claim.label,
            type(exc).__name__,
            exc,
            exc_info=exc,
            extra={
                "action": "step_failed",
                "job_id": claim.job_id,
                "job": claim.job_name,
                "step": claim.step_index,
            },
        )
        self._fail(claim, f"{type(exc).__name__}: {exc}", text)

    def _fail(
        self, claim: Claim, error: str, text: Optional[str], *, called: bool = True
    ) -> None:
        if text is None:
            logger.error(
                "%s: %s",
                claim.label,
                error,
                extra={
                    "action": "step_failed",
                    "job_id": claim.job_id,
                    "job": claim.job_name,
                    "step": claim.step_index,
                },
            )
        try:
            self.backend.record_failure(claim, error, text, called=called)
        except DatabaseError:
            # The claim's lease runs out and the step is called again, which
            # is safe: nothing of this call was committed.
            logger.warning(
                "%s: could not record the failure; the step will be retried",
                claim.label,
                exc_info=True,
                extra={"action": "record_failure_failed"},
            )

    def _infrastructure_failure(
        self,
        conn: Any,
        claim: Claim,
        exc: BaseException,
        continuation: Optional[Continuation] = None,
    ) -> None:
        """A database error that is not the step's fault: retry, don't fail.

        If the error may have struck during COMMIT, the outcome is unknown
        until the step row is read again on a fresh connection: either the
        call committed (the claim is gone from the row, and the job's next
        step may be claimed for us: it is given back) or it rolled back.
        """
        self.backend._rollback_quietly(conn)
        try:
            committed = self.backend.claim_settled(claim)
        except DatabaseError:
            committed = None
        if committed:
            if continuation is not None:
                self._give_back(continuation.token)
            logger.warning(
                "%s: the connection failed at commit, but the commit had applied: %s",
                claim.label,
                exc,
                extra={"action": "commit_confirmed", "job_id": claim.job_id},
            )
            return
        logger.warning(
            "%s: database error during the step call, it rolled back and "
            "will run again: %s",
            claim.label,
            exc,
            extra={"action": "step_retry", "job_id": claim.job_id},
        )
        self._release(claim)

    def _give_back(self, token: str) -> None:
        try:
            self.backend.release_unstarted(token)
        except DatabaseError:
            # The claim's lease runs out instead (on SQLite, the worker
            # frees its own leftovers after OWN_LEFTOVER_SECS).
            logger.debug("could not give back claim %s", token, exc_info=True)

    def _release(self, claim: Claim) -> None:
        """Give a claim back; if the database is away, keep trying later."""
        try:
            self.backend.release_claim(claim)
        except DatabaseError:
            logger.debug("could not release %s yet", claim.label, exc_info=True)
            with self._running_lock:
                self._unreleased.append(claim)
