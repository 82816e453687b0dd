"""The one-shot commands: start a job, list, show, resume, clean up, count."""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable, Sequence
from typing import Any, Optional

from ..definitions import check_name
from ..errors import (
    JobNotFoundError,
    JobStateError,
)
from ..executor import EXECUTE_JOB, JobExecutor
from ..records import JobRecord, StepRecord
from .app import load_app
from .base import (
    CLI_RETRY_SECS,
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    database_label,
    note,
    open_executor,
)
from .output import first_line, spinner, table, to_json, when

logger = logging.getLogger(__name__)


def cmd_execute(args: argparse.Namespace) -> int:
    """Enqueue a job, directly or through the built-in .execute job."""
    check_name(args.name)
    params = _json_object(args.params, "--params")
    ctx = _json_object(args.ctx, "--ctx")
    if args.app:
        executor = load_app(args.app, args.database)
    else:
        executor = JobExecutor(args.database, retry_seconds=CLI_RETRY_SECS)
    with executor:
        if args.name in executor.job_names():
            job_id = executor.execute(args.name, params, ctx, args.delay)
        else:
            wrapped = {"name": args.name, "param": params, "ctx": ctx}
            job_id = executor.execute(EXECUTE_JOB, {**wrapped, "delay": args.delay})
            note(
                f"{args.name!r} has no definition here, so the built-in "
                f"{EXECUTE_JOB} job {job_id} was enqueued: a worker that has "
                f"{args.name!r} runs it and starts {args.name!r}"
            )
    print(job_id)
    return EXIT_OK


def _json_object(text: str, option: str) -> dict[str, Any]:
    example = """'{"to": "a@b.c"}'"""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CliError(
            f"{option} is not valid JSON ({exc.msg}, column {exc.colno}); "
            f"give an object such as {example}",
            EXIT_USAGE,
        ) from None
    if not isinstance(value, dict):
        raise CliError(
            f"{option} must be a JSON object such as {example}, got "
            f"{type(value).__name__} {text}",
            EXIT_USAGE,
        )
    return value


LISTS: dict[str, Callable[[JobExecutor, Optional[str]], list[JobRecord]]] = {
    "ended": JobExecutor.list_ended_jobs,
    "not-ended": JobExecutor.list_not_ended_jobs,
    "failed": JobExecutor.list_failed_jobs,
}


def cmd_list(args: argparse.Namespace) -> int:
    """Print the jobs of one list as a table or as JSON lines."""
    with open_executor(args.database) as executor:
        jobs = LISTS[args.which](executor, args.like)
    if args.json:
        for job in jobs:
            print(to_json(job))
    elif not jobs:
        print(f"no {args.which} jobs")
    else:
        print(_jobs_table(jobs, errors=args.which == "failed"))
    return EXIT_OK


def _jobs_table(jobs: Sequence[JobRecord], errors: bool) -> str:
    headers = ["id", "name", "status", "created", "updated"]
    rows = [
        [
            str(job.id),
            job.name,
            job.status,
            when(job.created_at),
            when(job.updated_at),
        ]
        for job in jobs
    ]
    if errors:
        headers.append("error")
        for row, job in zip(rows, jobs, strict=True):
            row.append(first_line(job.error, 60))
    return table(headers, rows)


def cmd_show(args: argparse.Namespace) -> int:
    """Print one job with its step members, errors and tracebacks."""
    with open_executor(args.database) as executor:
        try:
            job = executor.get_job(args.job_id)
        except JobNotFoundError:
            raise _no_such_job(args) from None
        steps = executor.get_steps(args.job_id)
    if args.json:
        print(to_json({"job": job, "steps": steps}))
        return EXIT_OK
    step_count = len(job.shape)
    print(f"job {job.id} {job.name}: {job.status}")
    print(f"  params   {json.dumps(job.params)}")
    print(f"  ctx      {json.dumps(job.ctx)}")
    print(f"  step     {min(job.current_step + 1, step_count)} of {step_count}")
    print(f"  created  {when(job.created_at)}")
    print(f"  updated  {when(job.updated_at)}")
    print(f"  ended    {when(job.ended_at)}")
    if job.error:
        print(f"  error    {job.error}")
    print()
    print(table(*_steps_table(steps)))
    for step in steps:
        if step.error:
            print(f"\nstep {_step_label(step)} failed: {step.error}")
            for line in (step.traceback or "").rstrip().splitlines():
                print(f"  {line}")
    return EXIT_OK


def _steps_table(steps: Sequence[StepRecord]) -> tuple[list[str], list[list[str]]]:
    headers = ["step", "state", "calls", "run at", "claimed by", "child job"]
    rows = [
        [
            _step_label(step),
            step.state,
            str(step.calls),
            when(step.run_at),
            step.claimed_by or "-",
            "-" if step.child_job_id is None else str(step.child_job_id),
        ]
        for step in steps
    ]
    return headers, rows


def _step_label(step: StepRecord) -> str:
    return f"{step.step_index + 1}.{step.member_index + 1}"


def _no_such_job(args: argparse.Namespace) -> CliError:
    return CliError(
        f"there is no job {args.job_id} in {database_label(args.database)}; "
        "`threadjobs list failed` and `threadjobs list not-ended` show ids"
    )


def cmd_resume(args: argparse.Namespace) -> int:
    """Resume a failed job."""
    with open_executor(args.database) as executor:
        try:
            count = executor.resume_job(args.job_id)
        except JobNotFoundError:
            raise _no_such_job(args) from None
        except JobStateError as exc:
            raise CliError(
                f"{exc}. `threadjobs show {args.job_id}` shows its steps"
            ) from None
    print(f"job {args.job_id} resumed: {count} failed step call(s) will run again")
    return EXIT_OK


def cmd_clean_up(args: argparse.Namespace) -> int:
    """Delete the ended jobs, with a spinner on a terminal."""
    with open_executor(args.database) as executor, spinner("deleting ended jobs"):
        count = executor.clean_up()
    print(f"deleted {count} ended jobs")
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    """Print how many jobs are ended, failed and pending."""
    with open_executor(args.database) as executor:
        counts = executor.count_jobs()
    if args.json:
        print(json.dumps(counts, sort_keys=True))
        return EXIT_OK
    print(f"jobs in {database_label(args.database)}")
    for state in ("pending", "failed", "ended"):
        print(f"  {state:<8} {counts.get(state, 0)}")
    return EXIT_OK
