"""The PostgreSQL ceiling: pgbench running one job step per transaction.

Each transaction does the least a durable step needs: claim one due step row
with ``FOR UPDATE SKIP LOCKED``, mark it done, update the job's JSONB ctx and
insert the job's next step row, then commit. Four clients, as threadjobs
runs four threads. Its tx/s bounds what any step runner on this server and
disk can reach with one commit per step.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import psycopg

from .common import BenchError, Sizes, scratch_postgres

PGBENCH_PATHS = ("/usr/lib/postgresql/15/bin/pgbench",)
CLIENTS = 4
SEED_JOBS = 2_000

SETUP = (
    "CREATE TABLE ceil_jobs (id BIGINT PRIMARY KEY, ctx JSONB NOT NULL)",
    "CREATE TABLE ceil_steps (id BIGSERIAL PRIMARY KEY, job_id BIGINT NOT NULL, "
    "run_at DOUBLE PRECISION NOT NULL, done SMALLINT NOT NULL DEFAULT 0)",
    "CREATE INDEX ceil_steps_due ON ceil_steps (run_at) WHERE done = 0",
    "INSERT INTO ceil_jobs SELECT g, '{\"n\": 0}' FROM generate_series(1, %s) g",
    "INSERT INTO ceil_steps (job_id, run_at) "
    "SELECT g, EXTRACT(EPOCH FROM now()) FROM generate_series(1, %s) g",
    "ANALYZE",
)

SCRIPT = """\
BEGIN;
SELECT id AS step_id, job_id FROM ceil_steps WHERE done = 0 \
AND run_at <= EXTRACT(EPOCH FROM now()) ORDER BY run_at LIMIT 1 \
FOR UPDATE SKIP LOCKED \\gset
UPDATE ceil_steps SET done = 1 WHERE id = :step_id;
UPDATE ceil_jobs SET ctx = jsonb_set(ctx, '{n}', \
to_jsonb((ctx->>'n')::int + 1)) WHERE id = :job_id;
INSERT INTO ceil_steps (job_id, run_at) VALUES (:job_id, EXTRACT(EPOCH FROM now()));
COMMIT;
"""


def pgbench_path() -> str:
    """Where pgbench is; BenchError if it is not installed."""
    for path in PGBENCH_PATHS:
        if Path(path).exists():
            return path
    found = shutil.which("pgbench")
    if found is None:
        raise BenchError("skipped: pgbench is not installed")
    return found


def pgbench(backend: str, sizes: Sizes, run: int) -> dict[str, float]:
    """pgbench's tx/s for the step transaction above."""
    if backend != "postgresql":
        raise BenchError("the ceiling is measured on PostgreSQL only")
    binary = pgbench_path()
    with scratch_postgres("bench_ceiling") as url:
        with psycopg.connect(url, autocommit=True) as conn:
            for statement in SETUP:
                params = (SEED_JOBS,) if "%s" in statement else None
                conn.execute(statement, params)
        parts = urlsplit(url)
        with tempfile.NamedTemporaryFile("w", suffix=".sql") as script:
            script.write(SCRIPT)
            script.flush()
            done = subprocess.run(
                [
                    binary,
                    "-n",
                    f"-h{parts.hostname}",
                    f"-p{parts.port or 5432}",
                    f"-U{parts.username}",
                    f"-c{CLIENTS}",
                    f"-j{CLIENTS}",
                    f"-T{sizes.pgbench_secs}",
                    f"-f{script.name}",
                    parts.path.lstrip("/"),
                ],
                capture_output=True,
                text=True,
                timeout=sizes.pgbench_secs + 120,
                check=False,
            )
    match = re.search(r"tps = ([\d.]+) \(without initial", done.stdout)
    if done.returncode != 0 or match is None:
        raise BenchError(f"pgbench failed: {done.stderr.strip()[-500:]}")
    return {"tx/s": float(match.group(1))}
