"""The worker: a scheduler thread that claims due steps, and a thread pool.

The scheduler claims as many due step members as the pool has free threads,
hands each to the pool, and sleeps until a call finishes, a job is enqueued
in this process, or the poll interval passes. Each pool thread runs step
calls on its own pooled connection, one transaction each; a call's commit
claims the next step for the same thread (the job's next step, or another
due one), so a busy thread goes from call to call without the scheduler.

Where the backend's ``calls_per_commit`` is above one (SQLite,
PostgreSQL), a thread is handed that many claims at a time and calls them
in turn; the calls that ran no SQL of their own then commit together, so
that one commit (one sync of the disk) serves several calls, and when no
thread is idle that commit also claims the thread's next round. A call that
runs SQL commits the waiting ones first and then commits alone, as
everywhere. On SQLite each waiting call's writes go in a savepoint; on
PostgreSQL the round's one transaction holds every waiting call's row
locks, and if it must roll back, the waiting calls commit one by one.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from functools import partial
from typing import TYPE_CHECKING, Any, Optional

from .backends.base import SqlBackend
from .backends.sql import conn_in_transaction, new_worker_id
from .backends.steps import ClaimLostError, Continuation, FinishResult, StepContext
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

MAX_PENDING_SECS = 0.05
"""How long finished calls may wait to commit together before the thread
commits them rather than call its next claimed step first."""

_SAVEPOINT = "threadjobs_call"


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

    def __init__(
        self,
        backend: SqlBackend,
        conn: Any,
        claim: Claim,
        before_sql: Optional[Callable[[], Optional[StepContext]]] = None,
    ) -> None:
        self.backend = backend
        self.conn = conn
        self.claim = claim
        self.before_sql = before_sql
        #: Whether the step asked for a cursor: it runs SQL of its own.
        self.ran_sql = False
        #: The call's start read again, if ``before_sql`` had to relock it.
        self.reopened: Optional[StepContext] = None

    def cursor(self) -> Any:
        """A cursor inside the step's transaction, beginning it if needed."""
        if not self.ran_sql:
            self.ran_sql = True
            if self.before_sql is not None:
                self.reopened = self.before_sql()
        with self.backend.translate_errors():
            self.backend.ensure_transaction(self.conn)
        return self.conn.cursor()


@dataclass
class _Finished:
    """A call that ran no SQL of its own, its outcome not yet committed."""

    claim: Claim
    outcome: Any
    start: StepContext
    ctx: dict[str, Any]
    continuation: Optional[Continuation]
    at: float


@dataclass
class _Round:
    """One thread's turn through its claims."""

    #: Finished calls waiting to commit together.
    pending: list[_Finished] = field(default_factory=list)
    #: The steps the round's commits claimed for this thread to run next.
    next_claims: list[Claim] = field(default_factory=list)


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
        # Protects _running and _busy: step id -> (claim, future) of claimed
        # calls, and how many pool threads have claims to call.
        self._running_lock = threading.Lock()
        self._running: dict[int, tuple[Claim, Future[None]]] = {}
        self._busy = 0
        self._calls_per_commit = max(1, backend.calls_per_commit)
        # How long each step's last call took here: (job, step, member) -> s.
        self._durations: dict[tuple[str, int, int], float] = {}
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
            free = self.settings.threads - self._busy
        if free <= 0:
            return 0
        wanted = free * self._calls_per_commit
        claims = self.backend.claim(
            self.executor.job_names(),
            self.worker_id,
            wanted,
            self.settings.lease_seconds,
        )
        for claim in claims:
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
        # Dealt out in turn, so that every free thread gets work first.
        shares = [claims[i::free] for i in range(min(free, len(claims)))]
        for index, share in enumerate(shares):
            if not self._submit(pool, share):
                for unsubmitted in shares[index:]:
                    for claim in unsubmitted:
                        self._release(claim)
                break
        # A full batch means more may be due: claim again when a thread frees.
        return len(claims) if len(claims) < wanted else 0

    def _submit(self, pool: ThreadPoolExecutor, claims: list[Claim]) -> bool:
        with self._running_lock:
            try:
                future = pool.submit(self._call, claims)
            except RuntimeError:
                # The interpreter is exiting and the pool takes no more
                # calls: the worker stops and gives its claims back.
                self.stopping.set()
                return False
            self._busy += 1
            for claim in claims:
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

    def _call(self, claims: list[Claim]) -> None:
        """Run claimed step calls, then the steps that their commits claim
        for this worker, until none is left; never lets an exception
        escape."""
        try:
            with self.backend.connection() as conn:
                while claims:
                    next_claims = self._call_round(conn, claims)
                    self._replace(claims, next_claims)
                    claims = next_claims
                    # The commits may have made more steps due (a group's
                    # other members, child jobs) for idle threads. Read
                    # without the lock: a stale count costs one needless
                    # wake-up or one poll interval.
                    if claims and self._busy < self.settings.threads:
                        self._wake.set()
                    if self.stopping.is_set():
                        for claim in claims:
                            self._release(claim)
                        break
        except DatabaseError as exc:
            # No connection for the calls: they never started, so the
            # claims go back uncounted.
            for claim in claims:
                self._retry_later(claim, "no database connection for the call", exc)
        except Exception:
            logger.exception(
                "the worker failed around the step calls of %s",
                ", ".join(claim.label for claim in claims),
                extra={"action": "worker_error"},
            )
        finally:
            with self._running_lock:
                for claim in claims:
                    self._running.pop(claim.step_id, None)
                self._busy -= 1
            self._wake.set()

    def _call_round(self, conn: Any, claims: list[Claim]) -> list[Claim]:
        """Call each claim in turn; return the steps claimed to run next.

        Calls that ran no SQL of their own wait in the round and commit
        together, at the end or once the first of them has waited
        MAX_PENDING_SECS, when the backend commits several calls at once.
        A call slower than that ends the round: the claims not started yet
        go back, for idle threads and other workers.
        """
        turn: Optional[_Round] = _Round() if self._calls_per_commit > 1 else None
        if turn is not None:
            claims = self._suspects_last(claims)
        next_claims: list[Claim] = []
        top_up = 0
        for index, claim in enumerate(claims):
            if self.stopping.is_set():
                for unstarted in claims[index:]:
                    self._release(unstarted)
                break
            if turn is not None and turn.pending and self._commit_first(turn, claim):
                self._commit_pending(conn, turn)
            started = time.monotonic()
            try:
                next_claim = self._call_on(conn, claim, turn)
            except DatabaseError as exc:
                self._retry_later(claim, "database error before the call", exc)
                next_claim = None
            if turn is not None and turn.pending and self._locks_lost(conn):
                self._finish_each_alone(conn, turn)
            took = time.monotonic() - started
            self._durations[_step_key(claim)] = took
            if next_claim is not None:
                next_claims.append(next_claim)
            if turn is not None and took > MAX_PENDING_SECS:
                self._hand_back(claims[index + 1 :], "after a slow call")
                break
        else:
            if self._all_busy():
                # No thread is idle to take more due steps: the round's
                # commit claims enough of them to fill its next round.
                top_up = self._calls_per_commit - len(next_claims)
        if turn is not None:
            if turn.pending:
                self._commit_pending(conn, turn, top_up)
            next_claims.extend(turn.next_claims)
        return next_claims

    def _all_busy(self) -> bool:
        # Read without the lock: a stale count only misses a top-up or
        # makes one a round early.
        return self._busy >= self.settings.threads

    def _commit_first(self, turn: _Round, claim: Claim) -> bool:
        """Whether the waiting calls should commit before ``claim`` is called:
        when they have waited long enough, when its step was slow (or not
        seen yet) in this worker, or when a worker died during its last call.
        """
        if time.monotonic() - turn.pending[0].at > MAX_PENDING_SECS:
            return True
        last = self._durations.get(_step_key(claim))
        return last is None or last > MAX_PENDING_SECS or _suspect(claim)

    def _suspects_last(self, claims: list[Claim]) -> list[Claim]:
        """Keep at most one claim whose last call never finished, and call it
        after the others.

        A worker that dies counts an unfinished call on every step it had
        claimed, run or not. Should a step kill its worker again, the other
        claims of its round are finished by then, and claims of such steps
        are not waiting beside it.
        """
        suspects = [claim for claim in claims if _suspect(claim)]
        self._hand_back(suspects[1:], "beside a step a worker died during")
        others = [claim for claim in claims if not _suspect(claim)]
        return others + suspects[:1]

    def _hand_back(self, claims: list[Claim], why: str) -> None:
        """Give back claims whose calls have not started, uncounted, for
        idle threads and other workers."""
        if not claims:
            return
        try:
            self.backend.release_unstarted_claims(claims)
        except DatabaseError:
            # As in _give_back: the claims' lease runs out instead.
            logger.debug("could not give back %d claims", len(claims), exc_info=True)
            return
        logger.debug(
            "gave back %d claimed steps not started (%s)",
            len(claims),
            why,
            extra={"action": "claims_handed_back"},
        )
        self._wake.set()

    def _retry_later(self, claim: Claim, what: str, exc: BaseException) -> None:
        """Give back the claim of a call that never started, uncounted."""
        logger.warning(
            "%s: %s: %s",
            claim.label,
            what,
            exc,
            extra={"action": "step_retry", "job_id": claim.job_id},
        )
        self._release(claim)

    def _replace(self, done: list[Claim], next_claims: list[Claim]) -> None:
        """Let the entries of a round's claims stand for the next ones."""
        with self._running_lock:
            future = None
            for claim in done:
                entry = self._running.pop(claim.step_id, None)
                if entry is not None:
                    future = entry[1]
            if future is not None:
                for claim in next_claims:
                    self._running[claim.step_id] = (claim, future)

    def _call_on(
        self, conn: Any, claim: Claim, turn: Optional[_Round] = None
    ) -> Optional[Claim]:
        """Call one claimed step; return the step this call claimed to run
        next, if any. With a ``turn``, a call that ran no SQL of its own
        joins ``turn.pending`` instead of committing."""
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
        # A step that runs SQL commits alone, after the calls waiting before
        # it (its transaction holds SQLite's one write lock until it ends).
        before_sql = (
            None if turn is None else partial(self._waiting_go_first, conn, turn, claim)
        )
        session = StepSession(self.backend, conn, claim, before_sql)
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
            if turn is not None and not session.ran_sql and self._may_wait(claim):
                turn.pending.append(
                    _Finished(
                        claim, outcome, start, ctx, continuation, time.monotonic()
                    )
                )
                return None
            if turn is not None and turn.pending:
                session.reopened = self._waiting_go_first(conn, turn, claim)
            if session.reopened is not None:
                start = replace(start, locked_job=session.reopened.locked_job)
            with self.backend.translate_errors():
                return self._commit(conn, claim, outcome, start, ctx, continuation)
        except BaseException as exc:  # A step may raise anything at all.
            self._not_committed(conn, claim, exc, continuation)
        return None

    def _may_wait(self, claim: Claim) -> bool:
        """Whether a call that ran no SQL may wait to commit with others.

        Where the round's transaction holds row locks, only steps of one
        member wait: they lock their job row from the start, a row no other
        worker's call wants, while group members lock their job's row as
        they commit, and two rounds taking such locks in different orders
        could deadlock.
        """
        return not self.backend.holds_row_locks or claim.group_size == 1

    def _waiting_go_first(
        self, conn: Any, turn: _Round, claim: Claim
    ) -> Optional[StepContext]:
        """Commit the calls waiting in ``turn`` before ``claim``, which is
        under way, runs SQL of its own or commits alone.

        Where the round's transaction also held ``claim``'s row locks, that
        commit released them: they are taken again, and the call's start as
        read now is returned. Raises ClaimLostError if the claim went
        meanwhile.
        """
        if not turn.pending:
            return None
        self._commit_pending(conn, turn)
        if not self.backend.holds_row_locks:
            return None
        with self.backend.translate_errors():
            return self.backend.open_step(conn, claim)

    def _locks_lost(self, conn: Any) -> bool:
        """Whether the round's transaction, which held the row locks of the
        waiting calls, has ended without committing them."""
        return self.backend.holds_row_locks and not self.backend.transaction_intact(
            conn
        )

    def _finish_each_alone(self, conn: Any, turn: _Round) -> None:
        """Commit each waiting call in a transaction of its own, its rows
        locked again: after the round's transaction rolled back with them."""
        self.backend._rollback_quietly(conn)
        pending, turn.pending = turn.pending, []
        for finished in pending:
            claim = finished.claim
            try:
                with self.backend.translate_errors():
                    reopened = self.backend.open_step(conn, claim)
                    start = replace(finished.start, locked_job=reopened.locked_job)
                    next_claim = self._commit(
                        conn,
                        claim,
                        finished.outcome,
                        start,
                        finished.ctx,
                        finished.continuation,
                    )
            except BaseException as exc:
                self._not_committed(conn, claim, exc, finished.continuation)
            else:
                if next_claim is not None:
                    turn.next_claims.append(next_claim)

    def _not_committed(
        self,
        conn: Any,
        claim: Claim,
        exc: BaseException,
        continuation: Optional[Continuation] = None,
    ) -> None:
        """Deal with what kept a call from committing: the claim went to
        another worker, the database failed (retry), or the step failed."""
        if isinstance(exc, ClaimLostError):
            self.backend._rollback_quietly(conn)
            logger.warning(
                "%s: the claim passed to another worker; this call rolled back",
                claim.label,
                extra={"action": "claim_lost", "job_id": claim.job_id},
            )
        elif isinstance(exc, TransientDatabaseError):
            self._infrastructure_failure(conn, claim, exc, continuation)
        else:
            self.backend._rollback_quietly(conn)
            self._step_raised(claim, exc)

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

    def _commit_pending(self, conn: Any, turn: _Round, top_up: int = 0) -> None:
        """Commit the calls waiting in ``turn`` in one transaction, each in a
        savepoint of its own (see _apply_saved); never raises.

        A call whose writes fail rolls back to its savepoint and fails (or
        is retried) alone. If the transaction fails as a whole, every call
        in it is handled as if its own commit had failed. With ``top_up``,
        the commit also claims due steps until the round's next claims
        number that many, so that a thread's rounds stay full.
        """
        pending, turn.pending = turn.pending, []
        if not pending:
            return
        results: list[Any] = []
        extra: list[Claim] = []
        try:
            with self.backend.translate_errors():
                self.backend.begin(conn)
                cur = conn.cursor()
                for finished in pending:
                    results.append(self._apply_saved(conn, cur, finished))
                claimed = sum(
                    1
                    for result in results
                    if isinstance(result, FinishResult) and result.next_claim
                )
                room = top_up - claimed - len(turn.next_claims)
                if room > 0:
                    extra = self._claim_more(cur, pending[-1].continuation, room)
                conn.commit()
        except TransientDatabaseError as exc:
            self.backend._rollback_quietly(conn)
            for finished in pending:
                self._infrastructure_failure(
                    conn, finished.claim, exc, finished.continuation
                )
            return
        except BaseException as exc:
            if self.backend.holds_row_locks:
                # No savepoints here: one call's failed writes rolled back
                # the others' too, which now commit one by one.
                turn.pending = pending
                self._finish_each_alone(conn, turn)
                return
            self.backend._rollback_quietly(conn)
            for finished in pending:
                self._step_raised(finished.claim, exc)
            return

        logger.debug(
            "%d step calls committed together",
            len(pending),
            extra={"action": "shared_commit"},
        )
        for finished, result in zip(pending, results, strict=True):
            claim = finished.claim
            if isinstance(result, FinishResult):
                self._log_outcome(claim, finished.outcome, result.job_ended)
                if result.next_claim is not None:
                    turn.next_claims.append(result.next_claim)
            else:
                self._not_committed(conn, claim, result)
        turn.next_claims.extend(extra)

    def _claim_more(
        self, cur: Any, continuation: Optional[Continuation], count: int
    ) -> list[Claim]:
        """Claim up to ``count`` due steps in the commit of waiting calls.

        Where a failed statement leaves the transaction usable (SQLite),
        failing to claim costs only the claims; elsewhere it fails the
        transaction, like any of its statements.
        """
        if continuation is None:  # The worker is stopping.
            return []
        try:
            with self.backend.translate_errors():
                return self.backend.claim_on(
                    cur,
                    continuation.job_names,
                    continuation.worker_id,
                    count,
                    self.backend.claim_lease(continuation.lease_seconds),
                    continuation.token,
                )
        except DatabaseError:
            if self.backend.holds_row_locks:
                raise
            logger.debug("could not claim the next round's steps", exc_info=True)
            return []

    def _apply_saved(self, conn: Any, cur: Any, finished: _Finished) -> Any:
        """One waiting call's writes in a savepoint: its FinishResult, or
        the exception that rolled them back.

        Where row locks are held, without a savepoint: the calls' writes
        rarely fail there, and the two round trips a savepoint costs would
        take back much of what sharing the commit saves. Exceptions then
        propagate, and the caller commits each call alone instead.
        """
        backend = self.backend
        apply = partial(
            backend.apply_finish,
            cur,
            finished.claim,
            finished.outcome,
            finished.start,
            finished.ctx,
            self.executor._enqueue_child,
            self.settings.max_ctx_bytes,
            finished.continuation,
        )
        if backend.holds_row_locks:
            with backend.translate_errors():
                return apply()
        backend.execute(cur, f"SAVEPOINT {_SAVEPOINT}")
        try:
            with backend.translate_errors():
                result: Any = apply()
        except BaseException as exc:
            if isinstance(exc, DatabaseError) and not conn_in_transaction(conn):
                raise  # The database dropped the whole transaction.
            backend.execute(cur, f"ROLLBACK TO SAVEPOINT {_SAVEPOINT}")
            result = exc
        backend.execute(cur, f"RELEASE SAVEPOINT {_SAVEPOINT}")
        return result

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


def _step_key(claim: Claim) -> tuple[str, int, int]:
    return claim.job_name, claim.step_index, claim.member_index


def _suspect(claim: Claim) -> bool:
    """Whether a worker died during this step's last call (this claim
    counted one more unfinished call)."""
    return claim.unfinished_calls > 1
