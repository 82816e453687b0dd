"""The threadjobs job definitions every workload runs.

The enqueueing process and the worker process import the same definitions,
as a deployment would: a job is enqueued with the shape of its definition.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from threadjobs import Job, JobExecutor

CHAIN = "bench_chain"
FANOUT = "bench_fanout"
LATENCY = "bench_latency"
LOOP = "bench_loop"

MEMBER_KEYS = ("m0", "m1", "m2", "m3")


def chain_step(params: dict[str, Any], ctx: dict[str, Any]) -> None:
    """One step of W1: count in the ctx, so each step writes the job row."""
    ctx["n"] = ctx.get("n", 0) + 1


def fan_first(params: dict[str, Any], ctx: dict[str, Any]) -> None:
    """W2's opening step."""
    ctx["first"] = True


def _member(key: str) -> Callable[[dict[str, Any], dict[str, Any]], None]:
    def member(params: dict[str, Any], ctx: dict[str, Any]) -> None:
        ctx[key] = True

    member.__name__ = f"fan_member_{key}"
    return member


def fan_final(params: dict[str, Any], ctx: dict[str, Any]) -> None:
    """W2's last step: every member's ctx key must have been merged."""
    missing = [key for key in MEMBER_KEYS if not ctx.get(key)]
    if missing:
        raise RuntimeError(f"group members lost their ctx keys: {missing}")


def latency_step(params: dict[str, Any], ctx: Any, executor: JobExecutor) -> None:
    """Record when the step started, on the machine's clock."""
    executor.exec_query(
        "INSERT INTO bench_started (job, started) VALUES (%s, %s)",
        [params["i"], time.time()],
    )


def loop_step(params: dict[str, Any], ctx: dict[str, Any]) -> bool:
    """Call itself again until it has run ``params["calls"]`` times."""
    ctx["calls"] = ctx.get("calls", 0) + 1
    return bool(ctx["calls"] < params["calls"])


def make_executor(url: str, threads: int = 4, **settings: Any) -> JobExecutor:
    """An executor on ``url`` with every benchmark job added."""
    executor = JobExecutor(url, threads=threads, **settings)
    executor.add(Job(CHAIN).submit(chain_step).submit(chain_step).submit(chain_step))
    members = [_member(key) for key in MEMBER_KEYS]
    executor.add(Job(FANOUT).submit(fan_first).submit(members).submit(fan_final))
    executor.add(Job(LATENCY).submit(latency_step))
    executor.add(Job(LOOP).submit(loop_step))
    return executor
