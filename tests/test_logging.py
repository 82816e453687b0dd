"""The log contract: one INFO line per job event, detail at DEBUG.

Tests read each record's stable ``action`` field, never the message text,
except to check that a job is named the same way everywhere.
"""

from __future__ import annotations

import logging

from threadjobs import Job

from .helpers import run_until_settled


def records_of(caplog, job_id: int) -> list[logging.LogRecord]:
    return [
        record
        for record in caplog.records
        if record.name.startswith("threadjobs")
        and getattr(record, "job_id", None) == job_id
    ]


def test_each_job_event_is_one_info_line_naming_the_job(executor, caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="threadjobs")
    executor.add(Job("mail").submit(lambda p: None).submit(lambda p: None))
    job_id = executor.execute("mail", {"to": "a@b.c"})
    run_until_settled(executor)

    records = records_of(caplog, job_id)
    info = [(r.action, r.getMessage()) for r in records if r.levelno == logging.INFO]
    assert info == [
        ("job_enqueued", f"mail[{job_id}] enqueued"),
        ("job_started", f"mail[{job_id}] started"),
        ("job_ended", f"mail[{job_id}] ended"),
    ]
    calls = [r for r in records if r.action == "step_call"]
    assert [r.levelno for r in calls] == [logging.DEBUG, logging.DEBUG]
    assert [r.step for r in calls] == [0, 1]
    assert not [r for r in records if r.levelno >= logging.WARNING]


def test_a_failed_step_is_one_error_with_its_traceback(executor, caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="threadjobs")

    def broken(params):
        raise RuntimeError("no route to the mail server")

    executor.add(Job("mail").submit(broken))
    job_id = executor.execute("mail")
    run_until_settled(executor)

    failed = [r for r in records_of(caplog, job_id) if r.action == "step_failed"]
    assert len(failed) == 1
    assert failed[0].levelno == logging.ERROR
    assert failed[0].exc_info is not None
    assert f"mail[{job_id}] step 1.1" in failed[0].getMessage()


def test_the_library_configures_no_logging() -> None:
    assert logging.getLogger("threadjobs").handlers == []
    assert logging.getLogger("threadjobs").level == logging.NOTSET
