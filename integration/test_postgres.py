"""PostgreSQL only: transactional enqueue, a ready pool, JSONB storage."""

from __future__ import annotations

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from tests import servers
from tests.helpers import run_until_settled
from threadjobs import ConfigurationError, Job, JobExecutor

pytestmark = pytest.mark.skipif(
    "postgres" not in servers.backends(),
    reason="no PostgreSQL server configured (THREADJOBS_TEST_POSTGRES_URL)",
)


@pytest.fixture
def pg_url(server_urls):
    with servers.fresh_database("postgres", server_urls["postgres"]) as url:
        yield url


def test_enqueue_joins_the_callers_transaction(pg_url) -> None:
    executor = JobExecutor(pg_url, poll_interval=0.05)
    executor.add(Job("mail").submit(lambda p, ctx: ctx.update(sent=True)))
    executor.exec_query("CREATE TABLE orders (id INTEGER)")

    with psycopg.connect(pg_url) as conn:
        conn.execute("INSERT INTO orders VALUES (1)")
        executor.execute("mail", {"order": 1}, connection=conn)
        conn.rollback()
        assert executor.list_not_ended_jobs() == []

        conn.execute("INSERT INTO orders VALUES (2)")
        job_id = executor.execute("mail", {"order": 2}, connection=conn)
        assert executor.list_not_ended_jobs() == []  # Not committed yet.
        conn.commit()

    assert executor.exec_query("SELECT id FROM orders") == [(2,)]
    run_until_settled(executor)
    assert executor.get_job(job_id).ctx == {"sent": True}
    with pytest.raises(ConfigurationError, match="psycopg Connection"):
        executor.execute("mail", {"order": 3}, connection=object())
    executor.close()


def test_a_ready_pool_is_used_and_left_open(pg_url) -> None:
    pool = ConnectionPool(pg_url, min_size=1, max_size=6, open=True)
    executor = JobExecutor(pool, poll_interval=0.05)
    executor.add(Job("j").submit(lambda p, ctx: ctx.update(ok=1)))
    job_id = executor.execute("j")
    run_until_settled(executor)
    assert executor.get_job(job_id).ctx == {"ok": 1}
    executor.close()
    with pool.connection() as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    pool.close()


def test_params_and_ctx_are_jsonb(pg_url) -> None:
    executor = JobExecutor(pg_url)
    executor.add(Job("j").submit(lambda p: None))
    executor.execute("j", {"a": {"b": [1, 2]}}, {"c": "é"})
    rows = executor.exec_query(
        "SELECT pg_typeof(params)::text, params -> 'a' -> 'b' ->> 1, ctx ->> 'c' "
        "FROM threadjobs_jobs"
    )
    assert rows == [("jsonb", "2", "é")]
    executor.close()
