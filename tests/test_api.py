"""The executor's API without a worker: enqueue, de-duplicate, list, clean."""

from __future__ import annotations

import datetime
import math

import pytest

from threadjobs import (
    ConfigurationError,
    InvalidValueError,
    Job,
    JobNotFoundError,
    JobStateError,
    StepTransactionError,
    UnknownJobError,
)

from .helpers import run_until_settled

DEEP: dict = {}
_inner = DEEP
for _ in range(200):
    _inner["x"] = {}
    _inner = _inner["x"]


def noop(params):
    return None


@pytest.fixture
def ex(executor):
    executor.add(Job("RUN#1").submit(noop).submit([noop, noop]))
    executor.add(Job("mail").submit(noop))
    return executor


def stored_jobs(executor):
    return executor.exec_query("SELECT id, name, params FROM threadjobs_jobs")


def test_execute_returns_the_id_and_records_the_job(ex) -> None:
    job_id = ex.execute("RUN#1", {"path": 1, "name": "Name"}, {"c": 1})
    job = ex.get_job(job_id)
    assert (job.id, job.name, job.params, job.ctx) == (
        job_id,
        "RUN#1",
        {"path": 1, "name": "Name"},
        {"c": 1},
    )
    assert job.status == "pending"
    assert job.shape == [1, 2]
    assert isinstance(job.created_at, datetime.datetime)
    assert job.created_at.tzinfo is not None
    assert job.updated_at >= job.created_at
    assert job.ended_at is None and job.error is None


def test_same_name_and_params_are_deduplicated(ex) -> None:
    first = ex.execute("RUN#1", {"a": 1, "b": [1, 2]})
    assert ex.execute("RUN#1", {"b": [1, 2], "a": 1}, {"other": "ctx"}) == first
    assert ex.execute("RUN#1", {"a": 2, "b": [1, 2]}) != first
    assert ex.execute("mail", {"a": 1, "b": [1, 2]}) != first
    assert len(stored_jobs(ex)) == 3
    assert ex.execute("RUN#1") == ex.execute("RUN#1", {})


def test_dedup_holds_in_every_state_until_clean_up(ex) -> None:
    job_id = ex.execute("mail", {"to": "a"})
    run_until_settled(ex)
    assert ex.get_job(job_id).status == "ended"
    assert ex.execute("mail", {"to": "a"}) == job_id
    assert ex.clean_up() == 1
    assert ex.execute("mail", {"to": "a"}) != job_id


@pytest.mark.parametrize(
    ("args", "error", "message"),
    [
        (("nope",), UnknownJobError, "no job named 'nope'.*'.execute'"),
        (("",), Exception, "empty"),
        (("x" * 300,), Exception, "the limit is 200"),
        (("mail", {"deep": DEEP}), InvalidValueError, "nests deeper than 64"),
        (("mail", {}, {"deep": DEEP}), InvalidValueError, "nests deeper than 64"),
        (("mail", {}, {}, math.inf), InvalidValueError, "delay must be a finite"),
        (("mail", [1]), InvalidValueError, "params must be a dict, got list"),
        (("mail", {"d": datetime.datetime.now()}), InvalidValueError, "datetime"),
        (("mail", {"s": {1}}), InvalidValueError, r"params\['s'\] is a set"),
        (("mail", {"n": math.nan}), InvalidValueError, "NaN"),
        (("mail", {1: 2}), InvalidValueError, "key 1 of type int"),
        (("mail", {"t": (1,)}), InvalidValueError, "tuple"),
        (("mail", {}, "ctx"), InvalidValueError, "ctx must be a dict"),
        (("mail", {}, {"b": b"x"}), InvalidValueError, r"ctx\['b'\] is a bytes"),
        (("mail", {}, {}, -1), InvalidValueError, "delay must be a finite"),
        (("mail", {}, {}, math.nan), InvalidValueError, "delay must be a finite"),
        (("mail", {}, {}, True), InvalidValueError, "delay must be a number"),
        (("mail", {}, {}, "1"), InvalidValueError, "delay must be a number"),
    ],
)
def test_bad_execute_input_is_refused_and_nothing_is_stored(
    ex, args, error, message
) -> None:
    kept = ex.execute("mail", {"keep": 1})
    before = stored_jobs(ex)
    with pytest.raises(error, match=message):
        ex.execute(*args)
    assert stored_jobs(ex) == before
    assert ex.get_job(kept).params == {"keep": 1}


def test_ctx_over_the_size_cap_is_refused(make_executor) -> None:
    ex = make_executor(max_ctx_bytes=100)
    ex.add(Job("mail").submit(noop))
    with pytest.raises(InvalidValueError, match="over the cap of 100 bytes"):
        ex.execute("mail", {}, {"blob": "x" * 200})
    assert ex.list_not_ended_jobs() == []


def test_builtin_execute_job_checks_its_params(ex) -> None:
    with pytest.raises(InvalidValueError, match="need 'name'"):
        ex.execute(".execute", {"param": {}})
    with pytest.raises(InvalidValueError, match="unknown keys"):
        ex.execute(".execute", {"name": "x", "params": {}})
    assert ex.execute(".execute", {"name": "anything", "param": {"a": 1}}) > 0


def test_exec_query_outside_a_step_returns_tuples(ex) -> None:
    assert ex.exec_query("CREATE TABLE t (a INTEGER, b VARCHAR(10))") == []
    ex.exec_query("INSERT INTO t (a, b) VALUES (%s, %s)", [1, "x"])
    ex.exec_query("INSERT INTO t (a, b) VALUES (%s, '50%%')", (2,))
    assert ex.exec_query("SELECT a, b FROM t ORDER BY a") == [(1, "x"), (2, "50%")]
    with pytest.raises(InvalidValueError, match="list or tuple"):
        ex.exec_query("SELECT %s", {"a": 1})
    with pytest.raises(InvalidValueError, match="sql must be a str"):
        ex.exec_query(b"SELECT 1")
    for statement in ("COMMIT", " rollback", "BEGIN", "SAVEPOINT x"):
        with pytest.raises(StepTransactionError, match="owns the transaction"):
            ex.exec_query(statement)


def test_list_methods_partition_jobs_and_return_records(ex) -> None:
    ex.add(Job("bad").submit(lambda p: 1 / 0))
    ended = ex.execute("mail", {"n": 1})
    failed = ex.execute("bad")
    run_until_settled(ex)
    pending = ex.execute("mail", {"n": 2}, delay=3600)

    assert [j.id for j in ex.list_ended_jobs()] == [ended]
    assert [j.id for j in ex.list_failed_jobs()] == [failed]
    assert [j.id for j in ex.list_not_ended_jobs()] == [pending]
    record = ex.list_failed_jobs()[0]
    assert record.status == "failed"
    assert "ZeroDivisionError" in record.error
    assert ex.list_ended_jobs()[0].ended_at is not None


@pytest.mark.parametrize(
    ("mask", "expected"),
    [
        ("mail%", ["mail", "mail_box", "mailXbox"]),
        ("mail\\_box", ["mail_box"]),
        ("mail_box", ["mail_box", "mailXbox"]),
        ("MAIL%", []),
        ("100\\%", ["100%"]),
        ("%'%", ["it's"]),
        ("x' OR '1'='1", []),
        ("%; DROP TABLE threadjobs_jobs; --", []),
        ("back\\\\slash", ["back\\slash"]),
    ],
)
def test_masks_are_bound_like_patterns(executor, mask, expected) -> None:
    names = ["mail", "mail_box", "mailXbox", "100%", "it's", "back\\slash"]
    for name in names:
        executor.add(Job(name).submit(noop))
        executor.execute(name)
    found = [job.name for job in executor.list_not_ended_jobs(mask)]
    assert found == expected
    assert len(executor.list_not_ended_jobs()) == len(names)


def test_mask_must_be_a_string(ex) -> None:
    with pytest.raises(InvalidValueError, match="mask must be a str"):
        ex.list_failed_jobs(5)


def test_resume_and_get_job_errors(ex) -> None:
    with pytest.raises(JobNotFoundError, match="no job has the id 999"):
        ex.get_job(999)
    with pytest.raises(JobNotFoundError):
        ex.resume_job(999)
    job_id = ex.execute("mail")
    with pytest.raises(JobStateError, match="is not failed"):
        ex.resume_job(job_id)
    with pytest.raises(InvalidValueError, match="job id is an int"):
        ex.resume_job("1")


def test_clean_up_deletes_only_ended_jobs_and_their_steps(ex) -> None:
    ex.add(Job("bad").submit(lambda p: -1))
    for n in range(3):
        ex.execute("mail", {"n": n})
    ex.execute("bad")
    run_until_settled(ex)
    ex.execute("mail", {"later": 1}, delay=3600)
    assert ex.clean_up() == 3
    assert ex.list_ended_jobs() == []
    assert len(ex.list_failed_jobs()) == 1
    assert len(ex.list_not_ended_jobs()) == 1
    (count,) = ex.exec_query("SELECT COUNT(*) FROM threadjobs_steps")[0]
    assert count == 2
    assert ex.clean_up() == 0


def test_settings_are_checked() -> None:
    from threadjobs import JobExecutor

    with pytest.raises(ConfigurationError, match="threads must be an int >= 1"):
        JobExecutor("sqlite:///x.sqlite3", threads=0)
    with pytest.raises(ConfigurationError, match="cannot tell the database"):
        JobExecutor("oracle://x")
    with pytest.raises(ConfigurationError, match="names no file"):
        JobExecutor("sqlite:///:memory:")


@pytest.mark.parametrize(("version", "message"), [(99, "newer"), (0, "older")])
def test_tables_of_another_schema_version_are_refused(
    ex, make_executor, version, message
) -> None:
    from threadjobs import SchemaVersionError

    job_id = ex.execute("mail")
    ex.exec_query("UPDATE threadjobs_schema SET version = %s", [version])
    other = make_executor()
    other.add(Job("mail").submit(noop))
    with pytest.raises(SchemaVersionError, match=f"version {version}, {message}"):
        other.execute("mail", {"new": 1})
    assert [job.id for job in ex.list_not_ended_jobs()] == [job_id]


def test_older_tables_are_upgraded_by_their_migrations(
    ex, make_executor, monkeypatch
) -> None:
    from threadjobs.backends import sql

    job_id = ex.execute("mail")
    monkeypatch.setattr(sql, "SCHEMA_VERSION", 2)
    upgraded = make_executor()
    monkeypatch.setattr(
        upgraded.backend,
        "migrations",
        lambda: {1: ["ALTER TABLE threadjobs_jobs ADD COLUMN note VARCHAR(20)"]},
    )
    upgraded.add(Job("mail").submit(noop))
    assert upgraded.get_job(job_id).name == "mail"
    assert upgraded.exec_query("SELECT version FROM threadjobs_schema") == [(2,)]
    assert upgraded.exec_query("SELECT note FROM threadjobs_jobs") == [(None,)]


def test_count_jobs_per_status(ex) -> None:
    ex.add(Job("bad").submit(lambda p: -1))
    ex.execute("mail", {"n": 1})
    ex.execute("bad")
    run_until_settled(ex)
    ex.execute("mail", {"n": 2}, delay=3600)
    assert ex.count_jobs() == {"ended": 1, "failed": 1, "pending": 1}


def test_execute_many_enqueues_in_order_and_deduplicates(ex) -> None:
    existing = ex.execute("mail", {"n": 1})
    ids = ex.execute_many("mail", [{"n": 0}, {"n": 1}, {"n": 2}, {"n": 0}], {"c": 1})
    assert ids[1] == existing
    assert ids[0] == ids[3]
    assert len(set(ids)) == 3
    assert ex.get_job(ids[2]).ctx == {"c": 1}
    assert len(ex.list_not_ended_jobs()) == 3
    run_until_settled(ex)
    assert len(ex.list_ended_jobs()) == 3
    assert ex.execute_many("mail", []) == []


def test_execute_many_in_batches(ex) -> None:
    ids = ex.execute_many("mail", [{"n": n} for n in range(1234)])
    assert len(set(ids)) == 1234
    assert ex.count_jobs()["pending"] == 1234
    steps = ex.exec_query("SELECT COUNT(*) FROM threadjobs_steps")
    assert steps == [(1234,)]


def test_execute_many_checks_every_item_before_writing(ex) -> None:
    with pytest.raises(InvalidValueError, match=r"params_list\[1\]\['bad'\] is a set"):
        ex.execute_many("mail", [{"n": 1}, {"bad": {1}}])
    with pytest.raises(InvalidValueError, match="params_list must be a list"):
        ex.execute_many("mail", {"n": 1})
    with pytest.raises(UnknownJobError):
        ex.execute_many("nope", [])
    assert ex.list_not_ended_jobs() == []


# The constant that holds each backend's oldest supported server version, and
# a value above any real server.
TOO_NEW_MINIMUM = {
    "sqlite": ("threadjobs.backends.sqlite", "MIN_SQLITE_VERSION", (99, 0, 0)),
    "postgres": ("threadjobs.backends.postgres", "MIN_SERVER_VERSION", 990000),
    "mysql": ("threadjobs.backends.mysql", "MIN_MARIADB", (99, 0, 0)),
}


def test_a_too_old_server_is_refused_before_anything_is_written(
    backend_name, make_executor, monkeypatch
) -> None:
    import importlib

    module, constant, value = TOO_NEW_MINIMUM[backend_name]
    monkeypatch.setattr(importlib.import_module(module), constant, value)
    if backend_name == "mysql":
        monkeypatch.setattr(importlib.import_module(module), "MIN_MYSQL", value)
    ex = make_executor()
    ex.add(Job("mail").submit(noop))
    with pytest.raises(ConfigurationError, match=r"too old|or newer"):
        ex.execute("mail")

    # No tables, and no schema version row: nothing was written.
    assert ex.backend.transaction(ex.backend._read_version, write=False) is None
