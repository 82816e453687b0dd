"""Run the chaos workload under faults, then check in SQL that nothing was lost.

Faults: a random worker process is SIGKILLed every ``kill_every`` seconds
and replaced; the database server is restarted (PostgreSQL: ``pg_ctl restart
-m immediate`` and ``-m fast`` on a private cluster; MariaDB: ``kill -9`` and
a clean shutdown of a private server, each followed by a start) or, on
SQLite, another process holds an exclusive lock for a few seconds. Faults
are spread over the first 80% of the step calls (counted as committed
effects, since steps of all jobs interleave and jobs end in a burst at the
end), so every live worker can be seen to commit after the last one.

Checks, all in SQL on the final database: every job ended; no step's effect
twice; no effect of a step before its predecessors'; no session left idle in
a transaction; every live worker committed a step after the last fault; and
enough re-executions that the run proved something.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from threadjobs import DatabaseError, JobExecutor

from .worker import CTX_STEPS

ROOT = Path(__file__).resolve().parents[2]

EFFECT_TABLES = {
    "postgres": "id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
    "mariadb": "id BIGINT AUTO_INCREMENT PRIMARY KEY",
    "sqlite": "id INTEGER PRIMARY KEY AUTOINCREMENT",
}


@dataclass
class Plan:
    """One scenario: the load and the faults."""

    backend: str
    jobs: int
    workers: int
    threads: int
    kill_every: float
    restarts: int
    outage_secs: float = 3.0
    sleep_ms: str = "1,5"
    min_reexecutions: int = 20
    timeout: float = 600.0
    #: The group's members keep their effect in the ctx instead of a table:
    #: calls that run no SQL, which SQLite's workers commit together.
    ctx_steps: bool = False


FULL = {
    "postgres": Plan("postgres", 2000, 4, 4, 5.0, 3),
    # MariaDB runs this load in seconds; longer steps keep the run long
    # enough for several kills, each catching calls in flight.
    "mariadb": Plan("mariadb", 1000, 4, 4, 5.0, 2, sleep_ms="5,20"),
    # One SQLite writer at a time, so steps sleeping longer keep more calls
    # in flight when a worker is killed.
    "sqlite": Plan("sqlite", 500, 1, 4, 3.0, 3, sleep_ms="5,20"),
}
SMOKE = {
    "postgres": Plan("postgres", 200, 2, 4, 2.0, 1, min_reexecutions=1, timeout=90),
    "mariadb": Plan("mariadb", 200, 2, 4, 2.0, 1, min_reexecutions=1, timeout=90),
    "sqlite": Plan("sqlite", 200, 1, 4, 2.0, 1, min_reexecutions=1, timeout=90),
}


@dataclass
class Report:
    backend: str
    jobs: int
    wall_secs: float = 0.0
    kills: int = 0
    restarts: int = 0
    step_calls: int = 0
    effects: int = 0
    reexecutions: int = 0
    lost: int = -1
    duplicated: int = -1
    order_violations: int = -1
    ctx_violations: int = -1
    idle_in_transaction: int = -1
    live_workers_silent: list[int] = field(default_factory=list)
    integrity: str = "n/a"
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems


class Server:
    """The database under test and its fault: a restart or a lock outage."""

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self.modes = (
            ["immediate", "fast"] if backend == "postgres" else ["kill", "clean"]
        )
        if backend == "postgres":
            from integration.pgcluster import TempCluster

            self.server: Any = TempCluster().start()
            self.url = self.server.url
        elif backend == "mariadb":
            from integration.mariadb_server import TempMariaDB

            self.server = TempMariaDB().start()
            self.url = self.server.url
        else:
            self.server = None
            self.dir = Path(tempfile.mkdtemp(prefix="threadjobs-chaos-"))
            self.url = f"sqlite:///{self.dir}/chaos.sqlite3"

    def fault(self, number: int, seconds: float) -> str:
        if self.backend == "sqlite":
            path = self.url.split("://", 1)[1][1:]
            subprocess.run(
                [
                    sys.executable,
                    "-c",
                    "import sqlite3, sys, time\n"
                    "c = sqlite3.connect(sys.argv[1], 60, isolation_level=None)\n"
                    "c.execute('BEGIN EXCLUSIVE'); time.sleep(float(sys.argv[2]))\n"
                    "c.execute('COMMIT')",
                    path,
                    str(seconds),
                ],
                check=True,
                timeout=60,
            )
            return f"exclusive lock held {seconds:g}s"
        mode = self.modes[number % 2]
        self.server.restart(mode)
        if self.backend == "postgres":
            self.server.wait_ready()
        return f"restart ({mode})"

    def remove(self) -> None:
        if self.server is not None:
            self.server.remove()


def spawn(plan: Plan, url: str) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "integration.chaos.worker", url, str(plan.threads)],
        env={
            **os.environ,
            "CHAOS_SLEEP_MS": plan.sleep_ms,
            "CHAOS_CTX_STEPS": "1" if plan.ctx_steps else "",
        },
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdout is not None
    process.stdout.readline()
    return process


def end(process: subprocess.Popen[str]) -> None:
    """SIGKILL a worker and reap it, closing its pipe."""
    process.kill()
    process.wait()
    if process.stdout is not None:
        process.stdout.close()


def prepare(url: str, backend: str, jobs: int) -> JobExecutor:
    from integration.chaos.worker import build

    executor = build(url)
    for table in ("effects", "attempts"):
        executor.exec_query(
            f"CREATE TABLE {table} ({EFFECT_TABLES[backend]}, job INTEGER NOT NULL, "
            "step VARCHAR(4) NOT NULL, pid INTEGER NOT NULL, at DOUBLE PRECISION "
            "NOT NULL)"
        )
    executor.execute_many("chaos", [{"n": n} for n in range(jobs)])
    return executor


def progress(executor: JobExecutor) -> tuple[int, int]:
    """(jobs ended, step effects committed); (-1, -1) while unreachable."""
    try:
        ended = executor.count_jobs()["ended"]
        effects = one(executor, "SELECT COUNT(*) FROM effects")
    except DatabaseError:
        return -1, -1  # The server is restarting.
    return ended, int(effects)


def effects_per_job(plan: Plan) -> int:
    """Effect rows a job leaves: one per step call that runs SQL."""
    return 1 if plan.ctx_steps else 5


def run(plan: Plan, log: Any = print) -> Report:
    """Run one scenario and check it; the report says what went wrong."""
    report = Report(plan.backend, plan.jobs)
    server = Server(plan.backend)
    executor = prepare(server.url, plan.backend, plan.jobs)
    workers = [spawn(plan, server.url) for _ in range(plan.workers)]
    started = time.monotonic()
    last_fault = time.time()
    next_kill = started + plan.kill_every
    steps = plan.jobs * effects_per_job(plan)
    fault_marks = [(i + 1) / (plan.restarts + 1) * 0.8 for i in range(plan.restarts)]
    try:
        while True:
            done, effects = progress(executor)
            if done >= plan.jobs:
                break
            now = time.monotonic()
            if now - started > plan.timeout:
                report.problems.append(f"timed out with {done} jobs ended")
                break
            faulting = 0 <= effects < steps * 0.8
            if faulting and now >= next_kill:
                victim = random.randrange(len(workers))
                end(workers[victim])
                workers[victim] = spawn(plan, server.url)
                report.kills += 1
                last_fault = time.time()
                next_kill = now + plan.kill_every
            if fault_marks and effects >= steps * fault_marks[0]:
                fault_marks.pop(0)
                what = server.fault(report.restarts, plan.outage_secs)
                report.restarts += 1
                last_fault = time.time()
                log(f"  fault {report.restarts}: {what} at {effects} of {steps} steps")
            time.sleep(0.1)
        report.wall_secs = round(time.monotonic() - started, 1)
        time.sleep(1.0)  # Let idle workers settle before looking at sessions.
        check(report, executor, plan, server, workers, last_fault)
    finally:
        for process in workers:
            end(process)
        executor.close()
        server.remove()
    return report


def stuck_steps(executor: JobExecutor, limit: int = 5) -> list[str]:
    """The unfinished steps of a few jobs that did not end, for the report."""
    lines = [
        f"job {job.id} failed: {job.error}" for job in executor.list_failed_jobs()
    ][:limit]
    for job in executor.list_not_ended_jobs()[:limit]:
        for step in executor.get_steps(job.id):
            if step.state != "done":
                lines.append(
                    f"job {job.id} step {step.step_index + 1}.{step.member_index + 1}"
                    f": {step.state}, {step.calls} calls, claimed by "
                    f"{step.claimed_by}, run at {step.run_at:%H:%M:%S}"
                )
    return lines


def one(executor: JobExecutor, sql: str, params: list[Any] | None = None) -> Any:
    return executor.exec_query(sql, params)[0][0]


def check(
    report: Report,
    executor: JobExecutor,
    plan: Plan,
    server: Server,
    workers: list[subprocess.Popen[str]],
    last_fault: float,
) -> None:
    counts = executor.count_jobs()
    report.lost = counts["pending"] + counts["failed"]
    report.step_calls = one(executor, "SELECT COUNT(*) FROM attempts")
    report.effects = one(executor, "SELECT COUNT(*) FROM effects")
    ctx_calls = len(CTX_STEPS) * plan.jobs if plan.ctx_steps else 0
    report.reexecutions = report.step_calls - report.effects - ctx_calls
    report.duplicated = one(
        executor,
        "SELECT COUNT(*) FROM (SELECT job, step FROM effects GROUP BY job, step "
        "HAVING COUNT(*) > 1) d",
    )
    report.order_violations = one(
        executor,
        "SELECT COUNT(*) FROM (SELECT job, "
        "MAX(CASE WHEN step = 'a' THEN id END) AS a_last, "
        "MIN(CASE WHEN step IN ('b0', 'b1', 'b2') THEN id END) AS b_first, "
        "MAX(CASE WHEN step IN ('b0', 'b1', 'b2') THEN id END) AS b_last, "
        "MIN(CASE WHEN step = 'c' THEN id END) AS c_first "
        "FROM effects GROUP BY job) t "
        "WHERE NOT (a_last < b_first AND b_last < c_first)",
    )
    report.idle_in_transaction = idle_transactions(executor, plan.backend)
    report.live_workers_silent = [
        process.pid
        for process in workers
        if one(
            executor,
            "SELECT COUNT(*) FROM effects WHERE pid = %s AND at > %s",
            [process.pid, last_fault],
        )
        == 0
    ]
    if plan.backend == "sqlite":
        report.integrity = one(executor, "PRAGMA integrity_check")

    report.ctx_violations = 0
    if plan.ctx_steps:
        # Each such step counts its committed calls in the ctx: exactly one.
        report.ctx_violations = sum(
            1
            for job in executor.list_ended_jobs()
            if any(job.ctx.get(f"{name}_n") != 1 for name in CTX_STEPS)
        )
    expected = plan.jobs * effects_per_job(plan)
    if report.ctx_violations:
        report.problems.append(
            f"{report.ctx_violations} jobs whose ctx shows a step committed "
            "other than once"
        )
    if report.lost:
        report.problems.append(f"{report.lost} jobs did not end")
        report.problems.extend(stuck_steps(executor))
    if report.effects != expected or report.duplicated:
        report.problems.append(
            f"{report.effects} effects for {expected} steps, "
            f"{report.duplicated} duplicated"
        )
    if report.order_violations:
        report.problems.append(f"{report.order_violations} order violations")
    if report.idle_in_transaction:
        report.problems.append(
            f"{report.idle_in_transaction} sessions idle in transaction"
        )
    if report.live_workers_silent:
        report.problems.append(
            f"live workers {report.live_workers_silent} committed nothing after "
            "the last fault"
        )
    if report.reexecutions < plan.min_reexecutions:
        report.problems.append(
            f"only {report.reexecutions} re-executions; the run proves little"
        )
    if report.integrity not in ("ok", "n/a"):
        report.problems.append(f"integrity_check: {report.integrity}")


def idle_transactions(executor: JobExecutor, backend: str) -> int:
    if backend == "postgres":
        return int(
            one(
                executor,
                "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = "
                "current_database() AND state LIKE 'idle in transaction%%'",
            )
        )
    if backend == "mariadb":
        return int(
            one(
                executor,
                "SELECT COUNT(*) FROM information_schema.innodb_trx "
                "WHERE trx_mysql_thread_id <> CONNECTION_ID()",
            )
        )
    # SQLite: a lingering transaction would hold the write lock.
    executor.exec_query("CREATE TABLE IF NOT EXISTS lock_probe (x INTEGER)")
    return 0


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m integration.chaos")
    parser.add_argument("backend", choices=sorted(FULL))
    parser.add_argument("--smoke", action="store_true", help="the small CI run")
    parser.add_argument("--jobs", type=int)
    parser.add_argument("--timeout", type=float, help="seconds before giving up")
    parser.add_argument(
        "--ctx-steps",
        action="store_true",
        help="all steps but the last keep their effect in the ctx, running no SQL",
    )
    args = parser.parse_args(argv)
    plan = (SMOKE if args.smoke else FULL)[args.backend]
    if args.jobs:
        plan.jobs = args.jobs
    if args.timeout:
        plan.timeout = args.timeout
    plan.ctx_steps = args.ctx_steps
    print(f"chaos: {json.dumps(asdict(plan))}")
    report = run(plan)
    print(json.dumps(asdict(report), indent=2))
    print("PASSED" if report.passed else "FAILED: " + "; ".join(report.problems))
    return 0 if report.passed else 1
