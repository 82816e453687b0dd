"""The jobs the integration scenarios run, and a worker entry point.

``python -m integration.workload URL [THREADS] [POLL_INTERVAL]`` runs a
worker with these definitions until it is killed. ``STEP_SLEEP`` (seconds)
sets how long each step call sleeps after writing its effect.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any

from threadjobs import Job, JobExecutor
from threadjobs.backends import open_backend

TABLES = [
    "CREATE TABLE effects (label VARCHAR(100) NOT NULL UNIQUE)",
    "CREATE TABLE attempts (label VARCHAR(100) NOT NULL, pid INTEGER)",
    "CREATE TABLE started (n INTEGER NOT NULL, at DOUBLE PRECISION NOT NULL)",
]

_local = threading.local()


def record_attempt(url: str, label: str) -> None:
    """Note an attempt on a connection of its own, outside the step."""
    backend = getattr(_local, "backend", None)
    if backend is None:
        backend = _local.backend = open_backend(url, retry_seconds=60)
    backend.transaction(
        lambda cur: cur.execute(
            backend.adapt_user_sql("INSERT INTO attempts VALUES (%s, %s)"),
            (label, os.getpid()),
        )
    )


def effect(url: str, name: str) -> Any:
    sleep = float(os.environ.get("STEP_SLEEP", "0.01"))

    def step(params: dict[str, Any], ctx: dict[str, Any], ex: JobExecutor) -> Any:
        label = f"{params['kind']}{params['n']}:{name}"
        record_attempt(url, label)
        ex.exec_query("INSERT INTO effects (label) VALUES (%s)", [label])
        time.sleep(sleep)
        ctx[name] = True
        if name == "b0" and params["kind"] == "job" and params["n"] % 3 == 0:
            return ["child", {"kind": "child", "n": params["n"]}]
        return None

    return step


def started(params: dict[str, Any], ctx: dict[str, Any], ex: JobExecutor) -> None:
    ex.exec_query("INSERT INTO started VALUES (%s, %s)", [params["n"], time.time()])


def build(url: str, threads: int = 4, poll_interval: float = 0.2) -> JobExecutor:
    executor = JobExecutor(url, threads=threads, poll_interval=poll_interval)
    executor.add(
        Job("work")
        .submit(effect(url, "a"))
        .submit([effect(url, f"b{i}") for i in range(3)])
        .submit(effect(url, "c"))
    )
    executor.add(Job("child").submit(effect(url, "x")).submit(effect(url, "y")))
    executor.add(Job("ping").submit(started))
    return executor


def main(argv: list[str]) -> None:
    url = argv[0]
    threads = int(argv[1]) if len(argv) > 1 else 4
    poll = float(argv[2]) if len(argv) > 2 else 0.2
    executor = build(url, threads, poll)
    print("ready", flush=True)
    executor.run()


if __name__ == "__main__":
    main(sys.argv[1:])
