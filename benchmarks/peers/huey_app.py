"""The Huey application: ``SqliteHuey`` with the benchmark's tasks.

``huey_consumer benchmarks.peers.huey_app.huey -w 4 -k thread`` runs it on
the file named by ``BENCH_HUEY_FILE``; the benchmark builds its own instance
on the same file with ``make()``. W1 is a Huey pipeline (each task's result
is the next one's argument); W2 uses Huey's own fan-out: the first task
enqueues a group of four members whose ``then()`` makes a chord, and the
chord's callback receives the four results.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from huey import SqliteHuey, group

DONE_KEY = "bench_done"
"""A Huey counter the last task of each job increments, to count ended jobs."""

MEMBER_KEYS = ("m0", "m1", "m2", "m3")


@dataclass(frozen=True)
class Tasks:
    """The task wrappers registered on one Huey instance."""

    huey: SqliteHuey
    chain_a: Any
    chain_b: Any
    chain_c: Any
    fan_first: Any
    fan_member: Any
    fan_final: Any
    started: Any

    def chain(self, job: int) -> Any:
        """W1 as a pipeline of three tasks."""
        return self.chain_a.s(job, 0).then(self.chain_b, job).then(self.chain_c, job)

    def done(self) -> int:
        """How many jobs have run their last task."""
        return int(self.huey.storage.incr(DONE_KEY, 0))


def make(filename: str) -> Tasks:
    """A SqliteHuey on ``filename`` with the benchmark's tasks registered."""
    huey = SqliteHuey("tjbench", filename=filename)

    # A pipeline passes a task's result as the next task's last argument.
    @huey.task()
    def chain_a(job: int, n: int) -> int:
        return n + 1

    @huey.task()
    def chain_b(job: int, n: int) -> int:
        return n + 1

    @huey.task()
    def chain_c(job: int, n: int) -> None:
        if n + 1 != 3:
            raise RuntimeError(f"chain {job} counted {n + 1}")
        huey.storage.incr(DONE_KEY)

    @huey.task()
    def fan_first(job: int) -> None:
        members = group([fan_member.s(job, key) for key in MEMBER_KEYS])
        huey.enqueue(members.then(fan_final, job))

    @huey.task()
    def fan_member(job: int, key: str) -> str:
        return key

    @huey.task()
    def fan_final(job: int, keys: list[str]) -> None:
        if sorted(keys) != list(MEMBER_KEYS):
            raise RuntimeError(f"fan-out {job} got {keys}")
        huey.storage.incr(DONE_KEY)

    @huey.task()
    def started(job: int) -> float:
        return time.time()

    return Tasks(
        huey, chain_a, chain_b, chain_c, fan_first, fan_member, fan_final, started
    )


# The consumer finds its file in the environment; an importer without one
# gets a file in the temporary directory, never in the working directory.
TASKS = make(
    os.environ.get("BENCH_HUEY_FILE")
    or os.path.join(tempfile.gettempdir(), "threadjobs-bench-huey.db")
)
huey = TASKS.huey
