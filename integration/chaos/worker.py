"""The chaos workload and its worker process.

Each job is step ``a`` -> group ``b0, b1, b2`` -> step ``c``. Every step call
first notes an attempt on a connection of its own (so rolled-back calls stay
visible), sleeps a few random milliseconds, inserts one effect row inside
the step's transaction, and sleeps again: a kill can strike before the
write or while it is uncommitted.

With ``CHAOS_CTX_STEPS`` set, ``a`` and the group's members instead count
their call in the ctx and run no SQL (so workers may commit them together
with other calls), and ``c`` checks that each counted once.

``python -m integration.chaos.worker URL THREADS`` runs a worker until killed.
"""

from __future__ import annotations

import os
import random
import sys
import threading
import time
from typing import Any

from threadjobs import Job, JobExecutor
from threadjobs.backends import open_backend

_local = threading.local()

CTX_STEPS = ("a", "b0", "b1", "b2")
"""The steps that count their calls in the ctx with ``CHAOS_CTX_STEPS``."""

# How long a step call sleeps after writing its effect, at random.
SLEEP_SECS = tuple(
    float(ms) / 1000 for ms in os.environ.get("CHAOS_SLEEP_MS", "1,5").split(",")
)


def note_attempt(url: str, job: int, step: str) -> None:
    backend = getattr(_local, "backend", None)
    if backend is None:
        backend = _local.backend = open_backend(url, retry_seconds=120)
    backend.transaction(
        lambda cur: cur.execute(
            backend.adapt_user_sql(
                "INSERT INTO attempts (job, step, pid, at) VALUES (%s, %s, %s, %s)"
            ),
            (job, step, os.getpid(), time.time()),
        )
    )


def chaos_step(url: str, name: str) -> Any:
    def step(params: dict[str, Any], ctx: dict[str, Any], ex: JobExecutor) -> None:
        note_attempt(url, params["n"], name)
        time.sleep(random.uniform(*SLEEP_SECS))
        ex.exec_query(
            "INSERT INTO effects (job, step, pid, at) VALUES (%s, %s, %s, %s)",
            [params["n"], name, os.getpid(), time.time()],
        )
        time.sleep(random.uniform(*SLEEP_SECS))
        ctx[name] = os.getpid()

    return step


def ctx_step(url: str, name: str) -> Any:
    """A step that runs no SQL: it counts its call in the ctx."""

    def step(params: dict[str, Any], ctx: dict[str, Any]) -> None:
        note_attempt(url, params["n"], name)
        time.sleep(random.uniform(*SLEEP_SECS))
        ctx[f"{name}_n"] = ctx.get(f"{name}_n", 0) + 1

    return step


def check_counts(url: str) -> Any:
    """The last step, when the others count in the ctx: each must have
    committed exactly once before it runs."""
    last = chaos_step(url, "c")

    def step(params: dict[str, Any], ctx: dict[str, Any], ex: JobExecutor) -> None:
        counts = [ctx.get(f"{name}_n") for name in CTX_STEPS]
        if counts != [1] * len(CTX_STEPS):
            raise RuntimeError(f"the calls of {CTX_STEPS} committed {counts} times")
        last(params, ctx, ex)

    return step


def build(url: str, threads: int = 4, ctx_steps: bool = False) -> JobExecutor:
    executor = JobExecutor(url, threads=threads, poll_interval=0.1)
    step = ctx_step if ctx_steps else chaos_step
    executor.add(
        Job("chaos")
        .submit(step(url, "a"))
        .submit([step(url, f"b{i}") for i in range(3)])
        .submit(check_counts(url) if ctx_steps else chaos_step(url, "c"))
    )
    return executor


if __name__ == "__main__":
    worker = build(
        sys.argv[1], int(sys.argv[2]), bool(os.environ.get("CHAOS_CTX_STEPS"))
    )
    print("ready", flush=True)
    worker.run()
