"""The DBOS Transact application: ``python -m benchmarks.peers.dbos_app URL``.

A worker process that launches DBOS on the system database at URL, declares
the two queues with 4-way worker concurrency and runs what they hold until
SIGTERM. The benchmark enqueues from another process with ``DBOSClient``, as
DBOS's queue-worker example does. W2 is a parent workflow that enqueues four
member workflows on a second queue and waits for their results, as DBOS's
queue tutorial shows for fan-out; a second queue keeps waiting parents from
taking every slot their members need.
"""

from __future__ import annotations

import signal
import sys
import threading
import time

from dbos import DBOS

APP_NAME = "tjbench"
QUEUE = "bench"
MEMBER_QUEUE = "bench_members"
CONCURRENCY = 4
MEMBER_KEYS = ("m0", "m1", "m2", "m3")

POLL_SECS = 0.01
"""The queues' polling interval, and how often a parent polls for a member's
result. DBOS's default of 1 s for both would let a worker start at most 4
workflows a second here, which measures the timer, not DBOS."""

QUEUE_START_SECS = 1.5
"""DBOS starts a registered queue's thread within about a second."""


@DBOS.step()
def count_step(n: int) -> int:
    """One W1 step: the count travels as the step's recorded output."""
    return n + 1


@DBOS.workflow(name="w1_chain")
def w1_chain(job: int) -> int:
    """W1: three steps in sequence."""
    n = 0
    for _ in range(3):
        n = count_step(n)
    if n != 3:
        raise RuntimeError(f"chain {job} counted {n}")
    return n


@DBOS.step()
def fan_first(job: int) -> bool:
    """W2's opening step."""
    return True


@DBOS.step()
def member_step(key: str) -> str:
    """A member's work: its key is its recorded output."""
    return key


@DBOS.workflow(name="w2_member")
def w2_member(job: int, key: str) -> str:
    """One member of W2's group, a workflow of its own so it runs in parallel."""
    return member_step(key)


@DBOS.step()
def fan_final(keys: list[str]) -> None:
    """W2's final step: all four members' keys must be there."""
    if sorted(keys) != list(MEMBER_KEYS):
        raise RuntimeError(f"members returned {keys}")


@DBOS.workflow(name="w2_fanout")
def w2_fanout(job: int) -> None:
    """W2: one step, four member workflows in parallel, one final step."""
    fan_first(job)
    handles = [
        DBOS.enqueue_workflow(MEMBER_QUEUE, w2_member, job, key) for key in MEMBER_KEYS
    ]
    fan_final([h.get_result(polling_interval_sec=POLL_SECS) for h in handles])


@DBOS.workflow(name="w_started")
def w_started(job: int) -> float:
    """Return when the workflow started, on the machine's clock."""
    return time.time()


def main() -> None:
    url = sys.argv[1]
    DBOS(
        config={
            "name": APP_NAME,
            "system_database_url": url,
            "log_level": "WARNING",
        }
    )
    DBOS.launch()
    for name in (QUEUE, MEMBER_QUEUE):
        DBOS.register_queue(
            name,
            worker_concurrency=CONCURRENCY,
            polling_interval_sec=POLL_SECS,
            on_conflict="always_update",
        )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    time.sleep(QUEUE_START_SECS)
    print("ready", flush=True)
    stop.wait()
    DBOS.destroy()


if __name__ == "__main__":
    main()
