"""Job definitions for the command line worker.

Run a worker for them with ``threadjobs worker examples.jobs:build`` from the
repository root, then start jobs from anywhere with
``threadjobs execute report --params '{"id": 7}'``.

``build`` is a factory: the worker calls it with ``database`` when
``--database`` is given. ``executor`` is the same definitions on a
ready-made executor, for workers started with ``examples.jobs:executor``.

``EXAMPLE_REPORT_SECS`` makes the report step take that long, to watch a
worker finish (or give up) a step call when it is told to stop.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Optional

from threadjobs import Job, JobExecutor

logger = logging.getLogger(__name__)


def write_report(
    params: dict[str, Any], ctx: dict[str, Any], executor: JobExecutor
) -> None:
    """Store a report row; it commits with the step or not at all."""
    logger.info("report %s: writing in process %d", params["id"], os.getpid())
    executor.exec_query(
        "INSERT INTO example_reports (report_id, pid) VALUES (%s, %s)",
        [params["id"], os.getpid()],
    )
    time.sleep(float(os.environ.get("EXAMPLE_REPORT_SECS", "0")))
    ctx["written_by"] = os.getpid()
    logger.info("report %s: written", params["id"])


def send_report(params: dict[str, Any], ctx: dict[str, Any]) -> None:
    logger.info("report %s: sent", params["id"])
    ctx["sent"] = True


def greet(params: dict[str, Any], ctx: dict[str, Any]) -> None:
    ctx["greeting"] = f"Hello, {params.get('who', 'world')}!"


def add_definitions(executor: JobExecutor) -> JobExecutor:
    """Add the jobs; the factory and the ready-made executor share them."""
    executor.add(Job("report").submit(write_report).submit(send_report))
    executor.add(Job("greet").submit(greet))
    return executor


def build(database: Optional[str] = None) -> JobExecutor:
    """An executor with these jobs, and the table the report step writes."""
    executor = add_definitions(JobExecutor(database, poll_interval=0.05))
    executor.exec_query(
        "CREATE TABLE IF NOT EXISTS example_reports "
        "(report_id INTEGER NOT NULL, pid INTEGER NOT NULL)"
    )
    return executor


# Building an executor touches no database; its first use does.
executor = add_definitions(JobExecutor(poll_interval=0.05))
