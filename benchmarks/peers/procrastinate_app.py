"""The Procrastinate application the peer benchmarks run.

Imported by the benchmark (to defer) and by ``procrastinate worker`` (to
run); the database comes from ``BENCH_PROCRASTINATE_DSN``. Procrastinate has
no chains and no groups: a step defers the next one, and W2's members count
their arrivals in a table, the fourth one deferring the final step.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

import procrastinate
from psycopg_pool import AsyncConnectionPool

DSN = os.environ.get("BENCH_PROCRASTINATE_DSN", "")

app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=DSN))

TABLES = (
    "CREATE TABLE bench_fanout (job INTEGER PRIMARY KEY, arrived INTEGER "
    "NOT NULL DEFAULT 0, data JSONB NOT NULL DEFAULT '{}')",
    "CREATE TABLE bench_started (job INTEGER PRIMARY KEY, started "
    "DOUBLE PRECISION NOT NULL)",
)
MEMBER_KEYS = ("m0", "m1", "m2", "m3")

# The worker's own pool for the tables above, opened on first use inside
# the worker's event loop; the lock keeps two jobs from opening it twice.
_pool: AsyncConnectionPool | None = None
_pool_lock = asyncio.Lock()


async def _bench_pool() -> AsyncConnectionPool:
    global _pool
    async with _pool_lock:
        if _pool is None:
            _pool = AsyncConnectionPool(DSN, min_size=1, max_size=4, open=False)
            await _pool.open()
    return _pool


@app.task(name="chain_a")
async def chain_a(job: int, n: int) -> None:
    """W1's first step: count, then defer the second."""
    await chain_b.defer_async(job=job, n=n + 1)


@app.task(name="chain_b")
async def chain_b(job: int, n: int) -> None:
    """W1's second step."""
    await chain_c.defer_async(job=job, n=n + 1)


@app.task(name="chain_c")
async def chain_c(job: int, n: int) -> None:
    """W1's last step: the count arrives complete."""
    if n + 1 != 3:
        raise RuntimeError(f"chain {job} counted {n + 1} steps, expected 3")


@app.task(name="fan_first")
async def fan_first(job: int) -> None:
    """W2's first step: make the arrival row, then defer the four members."""
    pool = await _bench_pool()
    async with pool.connection() as conn:
        await conn.execute("INSERT INTO bench_fanout (job) VALUES (%s)", (job,))
    for key in MEMBER_KEYS:
        await fan_member.defer_async(job=job, key=key)


@app.task(name="fan_member")
async def fan_member(job: int, key: str) -> None:
    """Write this member's key; the fourth to arrive defers the final step."""
    pool = await _bench_pool()
    async with pool.connection() as conn:
        cur = await conn.execute(
            "UPDATE bench_fanout SET arrived = arrived + 1, "
            "data = data || jsonb_build_object(%s::text, true) "
            "WHERE job = %s RETURNING arrived",
            (key, job),
        )
        row = await cur.fetchone()
    assert row is not None
    if row[0] == len(MEMBER_KEYS):
        await fan_final.defer_async(job=job)


@app.task(name="fan_final")
async def fan_final(job: int) -> None:
    """W2's final step: all four keys must be there."""
    pool = await _bench_pool()
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT data FROM bench_fanout WHERE job = %s", (job,))
        row = await cur.fetchone()
    data: dict[str, Any] = row[0] if row else {}
    missing = [key for key in MEMBER_KEYS if not data.get(key)]
    if missing:
        raise RuntimeError(f"fan-out {job} is missing {json.dumps(missing)}")


@app.task(name="started")
async def started(job: int) -> None:
    """Record when the job started, on the machine's clock."""
    now = time.time()
    pool = await _bench_pool()
    async with pool.connection() as conn:
        await conn.execute(
            "INSERT INTO bench_started (job, started) VALUES (%s, %s)", (job, now)
        )
