"""The storage boundary: what the executor and the worker ask of a database.

``SqlBackend`` holds every operation once, written in portable SQL with
``%s`` placeholders and a few ``{fragments}`` that each dialect fills in.
It is built in three layers, each a module: ``sql.py`` (connections,
transactions, errors, schema), ``steps.py`` (claiming and running step
calls, for the worker) and this one (enqueueing, reading and housekeeping,
for the executor's API). A dialect subclass supplies connections, its
fragments, its schema and the test that tells a transient database error
from a real one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

from .. import jsonvalues
from ..errors import JobNotFoundError, JobStateError
from ..records import JobRecord, StepRecord, from_epoch
from .steps import StepStore

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
_LIST_FILTERS = {
    "ended": "j.ended_at IS NOT NULL",
    "failed": f"j.ended_at IS NULL AND {_FAILED}",
    "pending": f"j.ended_at IS NULL AND NOT {_FAILED}",
}


class SqlBackend(StepStore):
    """Every operation threadjobs runs on a database; dialects subclass it."""

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
