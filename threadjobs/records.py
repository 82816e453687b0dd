"""Value objects read from the database: jobs, their steps, and claims."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Optional


def from_epoch(seconds: Optional[float]) -> Optional[datetime]:
    """Database times are stored as UTC epoch seconds."""
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, tz=timezone.utc)


@dataclass(frozen=True)
class JobRecord:
    """One enqueued job as stored.

    ``status`` is ``"ended"`` (finished successfully), ``"failed"`` (a step
    is flagged ``is_failed`` and waits for a resume) or ``"pending"`` (queued,
    running, sleeping, or waiting for a child job). ``error`` is the message
    of the failed step of a failed job, else None.
    """

    id: int
    name: str
    params: dict[str, Any]
    ctx: dict[str, Any]
    status: str
    shape: list[int]
    current_step: int
    created_at: datetime
    updated_at: datetime
    ended_at: Optional[datetime]
    error: Optional[str]


@dataclass(frozen=True)
class StepRecord:
    """One member of one step of a job, as stored.

    ``state`` is ``"done"``, ``"failed"``, ``"claimed"`` (a worker holds it)
    or ``"due"`` (waiting for ``run_at``). ``calls`` counts every call of
    the function, including calls that were rolled back.
    """

    job_id: int
    step_index: int
    member_index: int
    state: str
    run_at: datetime
    calls: int
    child_job_id: Optional[int]
    claimed_by: Optional[str]
    error: Optional[str]
    traceback: Optional[str]


@dataclass(frozen=True)
class Claim:
    """A step member that this worker has claimed and is about to call."""

    step_id: int
    job_id: int
    job_name: str
    step_index: int
    member_index: int
    shape: list[int]
    token: str
    unfinished_calls: int
    calls: int

    @property
    def group_size(self) -> int:
        """How many members the claimed step has, as enqueued."""
        return self.shape[self.step_index]

    @property
    def label(self) -> str:
        """How logs name the step: ``NAME[ID] step S.M`` (1-based)."""
        return (
            f"{self.job_name}[{self.job_id}] step "
            f"{self.step_index + 1}.{self.member_index + 1}"
        )
