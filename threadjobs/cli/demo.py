"""``threadjobs demo``: the README example, end to end, on the database."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from ..definitions import Job
from ..executor import JobExecutor
from ..records import JobRecord
from .base import (
    EXIT_ERROR,
    EXIT_OK,
    CliError,
    database_label,
)
from .output import on_terminal, progress_bar

logger = logging.getLogger(__name__)

DEMO_TIMEOUT_SECS = 120.0
"""How long the demo waits for its jobs to end before giving up."""


class _DemoOutput:
    """The demo's lines, with a bar of finished step members on a terminal."""

    def __init__(self) -> None:
        self._bar: Any = None
        if on_terminal():
            self._bar = progress_bar(total=0, desc="steps done", unit="step")

    def say(self, text: str) -> None:
        if self._bar is not None:
            self._bar.write(text, file=sys.stdout)
        else:
            print(text, flush=True)

    def progress(self, done: int, total: int) -> None:
        if self._bar is not None and (done, total) != (self._bar.n, self._bar.total):
            self._bar.total = total
            self._bar.n = done
            self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _demo_jobs(say: Callable[[str], None]) -> list[Job]:
    """The README example: RUN#1 with a group, and the sendmail job it starts."""

    def step_1(params: dict[str, Any], ctx: dict[str, Any]) -> None:
        ctx["val"] = 1
        say(f"RUN#1 step 1    name={params['name']} val={ctx['val']}")

    def step_2_1(params: dict[str, Any], ctx: dict[str, Any]) -> Any:
        ctx["val1"] = ctx.get("val1", 0) + 1
        say(f"RUN#1 step 2.1  val1={ctx['val1']} (again in 0.2 s until 4)")
        return {"run_after": 0.2} if ctx["val1"] < 4 else None

    def step_2_2(
        params: dict[str, Any], ctx: dict[str, Any], executor: JobExecutor
    ) -> Any:
        ctx["valx"] = ctx.get("valx", 0) + 1
        say(f"RUN#1 step 2.2  valx={ctx['valx']} (again at once until 6)")
        if ctx["valx"] == 4:
            mail = {"to": "lala@dodo.com", "subject": "Hi", "body": params["name"]}
            ctx["mail_job"] = executor.execute("sendmail", mail)
        executor.exec_query("INSERT INTO demo_counts (val) VALUES (%s)", [ctx["valx"]])
        return "CONTINUE" if ctx["valx"] < 6 else None

    def step_3(params: dict[str, Any], ctx: dict[str, Any]) -> None:
        ctx["val"] += 1
        say(f"RUN#1 step 3    val={ctx['val']}")

    def send_mail(params: dict[str, Any], ctx: dict[str, Any]) -> None:
        say(f"sendmail step 1 sending mail to {params['to']}")
        ctx["sent"] = True

    def confirm(params: dict[str, Any], ctx: dict[str, Any]) -> None:
        say(f"sendmail step 2 sent: {ctx['sent']}")

    return [
        Job("RUN#1").submit(step_1).submit([step_2_1, step_2_2]).submit(step_3),
        Job("sendmail").submit(send_mail).submit(confirm),
    ]


def cmd_demo(args: argparse.Namespace) -> int:
    """Enqueue the README example, run a worker until its jobs end."""
    output = _DemoOutput()
    try:
        with JobExecutor(args.database, poll_interval=0.05) as executor:
            for job in _demo_jobs(output.say):
                executor.add(job)
            return _run_demo(executor, output, database_label(args.database))
    finally:
        output.close()


def _run_demo(executor: JobExecutor, output: _DemoOutput, where: str) -> int:
    executor.exec_query("CREATE TABLE IF NOT EXISTS demo_counts (val INTEGER)")
    name = f"Name{int(time.time())}-{os.getpid()}"
    job_id = executor.execute("RUN#1", {"path": 1, "name": name})
    output.say(f"enqueued RUN#1 as job {job_id} in {where}; starting a worker")
    executor.start()
    try:
        jobs = _wait_for_demo(executor, job_id, output)
    finally:
        executor.stop(timeout=10)
    output.close()
    for job in jobs:
        print(f"job {job.id} {job.name}: {job.status}, ctx={json.dumps(job.ctx)}")
    failed = [job for job in jobs if job.status == "failed"]
    if failed:
        for job in failed:
            print(f"job {job.id} failed: {job.error}", file=sys.stderr)
        print("see `threadjobs show ID` for the traceback", file=sys.stderr)
        return EXIT_ERROR
    print(
        "Every job ended. Next: `threadjobs list ended`, `threadjobs show "
        f"{job_id}`, and `threadjobs worker package.module:executor` for yours."
    )
    return EXIT_OK


def _wait_for_demo(
    executor: JobExecutor, job_id: int, output: _DemoOutput
) -> list[JobRecord]:
    """Poll the demo's jobs until all ended or one failed; report progress."""
    deadline = time.monotonic() + DEMO_TIMEOUT_SECS
    reported: set[int] = set()
    while time.monotonic() < deadline:
        jobs = [executor.get_job(job_id)]
        mail_job = jobs[0].ctx.get("mail_job")
        if isinstance(mail_job, int):
            jobs.append(executor.get_job(mail_job))
        steps = [step for job in jobs for step in executor.get_steps(job.id)]
        total = sum(sum(job.shape) for job in jobs)
        output.progress(sum(step.state == "done" for step in steps), total)
        for job in jobs:
            if job.status != "pending" and job.id not in reported:
                reported.add(job.id)
                output.say(f"{job.name}[{job.id}] {job.status}")
        if any(job.status == "failed" for job in jobs) or (
            mail_job is not None and all(job.status == "ended" for job in jobs)
        ):
            return jobs
        time.sleep(0.1)
    raise CliError(
        f"the demo's jobs did not end within {DEMO_TIMEOUT_SECS:g}s; "
        f"`threadjobs show {job_id}` shows where job {job_id} stands"
    )
