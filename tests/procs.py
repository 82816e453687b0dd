"""Job definitions and entry points for tests that run several processes.

``python -m tests.procs worker URL`` runs a worker until killed;
``python -m tests.procs execute URL NAME PARAMS_JSON COUNT START_AT``
enqueues COUNT times from START_AT (a time.time() value) and prints the ids.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import time

from threadjobs import Job, JobExecutor


def record_attempt(url: str, label: str) -> None:
    """Note an attempt outside the step's transaction, so rollbacks keep it."""
    if url.startswith("sqlite"):
        conn = sqlite3.connect(url.split("://", 1)[1][1:], timeout=30)
        with conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS attempts (label TEXT, pid INTEGER)"
            )
            conn.execute("INSERT INTO attempts VALUES (?, ?)", (label, os.getpid()))
        conn.close()
        return
    from threadjobs.backends import open_backend

    backend = open_backend(url)
    try:
        backend.transaction(
            lambda cur: cur.execute(
                backend.adapt_user_sql("INSERT INTO attempts VALUES (%s, %s)"),
                (label, os.getpid()),
            )
        )
    finally:
        backend.close()


def effect_step(url: str, name: str, sleep: float, sleep_before: float):
    def step(params, ctx, executor):
        label = f"{params['n']}:{name}"
        record_attempt(url, label)
        time.sleep(sleep_before)
        executor.exec_query("INSERT INTO effects VALUES (%s)", [label])
        time.sleep(sleep)
        ctx[name] = os.getpid()

    return step


def build(url: str) -> JobExecutor:
    lease = float(os.environ.get("LEASE", "5"))
    executor = JobExecutor(url, threads=4, poll_interval=0.05, lease_seconds=lease)
    # STEP_SLEEP is spent after the step's write, in its transaction (on
    # SQLite holding the write lock); STEP_SLEEP_BEFORE before it.
    sleep = float(os.environ.get("STEP_SLEEP", "0.05"))
    before = float(os.environ.get("STEP_SLEEP_BEFORE", "0"))
    executor.add(
        Job("work")
        .submit(effect_step(url, "a", sleep, before))
        .submit([effect_step(url, f"b{i}", sleep, before) for i in range(3)])
        .submit(effect_step(url, "c", sleep, before))
    )
    executor.add(Job("dedup").submit(lambda params: None))
    executor.add(Job("suicide").submit(lambda params: os.kill(os.getpid(), 9)))
    return executor


def main(argv: list[str]) -> None:
    command, url = argv[0], argv[1]
    executor = build(url)
    if command == "worker":
        print("ready", flush=True)
        executor.run()
        return
    name, params, count, start_at = argv[2], json.loads(argv[3]), argv[4], argv[5]
    time.sleep(max(0.0, float(start_at) - time.time()))
    ids = {executor.execute(name, params) for _ in range(int(count))}
    print(json.dumps(sorted(ids)), flush=True)
    executor.close()


if __name__ == "__main__":
    main(sys.argv[1:])
