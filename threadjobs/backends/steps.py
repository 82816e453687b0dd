"""The worker's operations: claiming due steps and running a step call.

A claim counts the call and leases the step row in a transaction that
commits before the call begins. The call's own transaction reads its
params and ctx, runs the step's SQL, and then commits the outcome, the
merged ctx and, when the step is finished, the job's next step, all at
once; that commit can also claim the next step to run for the same worker
(see ``Continuation``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Optional

from .. import jsonvalues
from ..outcomes import CallAgain, Done, FailKeepWork, Outcome, StartChild
from ..records import Claim
from .sql import SqlCore, Write, new_token

CHILDREN_KEY = ".children"
"""The ctx key under which a parent finds the final ctx of its child jobs."""

_INSERT_STEPS = (
    "INSERT INTO threadjobs_steps (job_id, job_name, step_index, "
    "member_index, run_at, updated_at)"
)
_STEP_VALUES = "(%s, %s, %s, %s, {now} + %s, {now})"
_UNCLAIM = (
    "claim_token = NULL, claimed_by = NULL, claimed_until = 0, "
    "unfinished_calls = 0, updated_at = {now}"
)

_GIVE_BACK = (
    "claim_token = NULL, claimed_by = NULL, claimed_until = 0, "
    "calls = calls - 1, unfinished_calls = unfinished_calls - 1"
)

STEP_ROWS_PER_INSERT = 1000
"""How many step rows one INSERT statement carries (bound parameters are
capped per statement on every backend)."""


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


class StepStore(SqlCore):
    """Claiming and running step calls, in portable SQL."""

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
        """Give back every claim made with ``token`` whose call never
        started, counting no call."""
        self.transaction(
            lambda cur: self.execute(
                cur,
                f"UPDATE threadjobs_steps SET {_GIVE_BACK} "
                "WHERE claim_token = %s AND done = 0",
                (token,),
            )
        )

    def release_unstarted_claims(self, claims: Sequence[Claim]) -> None:
        """Give back claims whose calls never started, counting no call,
        in one transaction."""
        ids_by_token: dict[str, list[int]] = {}
        for claim in claims:
            ids_by_token.setdefault(claim.token, []).append(claim.step_id)

        def work(cur: Any) -> None:
            for token, ids in ids_by_token.items():
                marks = ", ".join(["%s"] * len(ids))
                self.execute(
                    cur,
                    f"UPDATE threadjobs_steps SET {_GIVE_BACK} "
                    f"WHERE claim_token = %s AND done = 0 AND id IN ({marks})",
                    (token, *ids),
                )

        self.transaction(work)

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
        result = self.apply_finish(
            cur,
            claim,
            outcome,
            start,
            ctx_after,
            enqueue_child,
            max_ctx_bytes,
            continuation,
        )
        conn.commit()
        return result

    def apply_finish(
        self,
        cur: Any,
        claim: Claim,
        outcome: Outcome,
        start: StepContext,
        ctx_after: dict[str, Any],
        enqueue_child: Callable[[Any, StartChild], int],
        max_ctx_bytes: int,
        continuation: Optional[Continuation] = None,
    ) -> FinishResult:
        """finish_step's writes, inside a transaction that the caller
        commits (its own, or one shared with other step calls)."""
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
