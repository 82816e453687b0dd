"""A threadjobs worker process: ``python -m benchmarks.tj_worker URL THREADS``.

It prints ``ready`` once its tables exist and then runs until SIGTERM. With
``--count-queries FILE`` it counts the statements and commits it sends
through psycopg and writes them to FILE as JSON on exit, to tell how many
round trips a step call costs.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
from collections import Counter
from typing import Any

from .tj_jobs import make_executor

COUNTS: Counter[str] = Counter()


def _count_psycopg() -> None:
    """Wrap psycopg's cursor and connection methods to count calls."""
    import psycopg

    def wrap(owner: Any, name: str) -> None:
        original = getattr(owner, name)

        def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
            COUNTS[name] += 1
            return original(self, *args, **kwargs)

        setattr(owner, name, counted)

    wrap(psycopg.Cursor, "execute")
    wrap(psycopg.Cursor, "executemany")
    wrap(psycopg.Connection, "commit")
    wrap(psycopg.Connection, "rollback")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("threads", type=int)
    parser.add_argument("--poll-interval", type=float, default=0.2)
    parser.add_argument("--count-queries", metavar="FILE")
    args = parser.parse_args()
    # Warnings and errors go to the log that a failed run quotes.
    logging.basicConfig(
        level=logging.WARNING,
        format="%(asctime)s %(threadName)s %(name)s %(levelname)s %(message)s",
    )
    if args.count_queries:
        _count_psycopg()

    executor = make_executor(args.url, args.threads, poll_interval=args.poll_interval)
    executor.count_jobs()  # Creates the tables before we say we are ready.
    signal.signal(signal.SIGTERM, lambda *_: executor.stop())
    print("ready", flush=True)
    executor.run()
    executor.close()
    if args.count_queries:
        with open(args.count_queries, "w") as out:
            json.dump(dict(COUNTS), out)


if __name__ == "__main__":
    main()
