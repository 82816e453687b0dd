"""Running a worker process until a signal stops it, within a grace period."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
import time
from types import FrameType
from typing import NoReturn, Optional

from ..executor import JobExecutor
from .app import load_app
from .base import (
    EXIT_ERROR,
    EXIT_OK,
)

logger = logging.getLogger(__name__)

DEFAULT_GRACE_SECS = 30.0
"""How long a stopping worker waits for running step calls by default."""

SIGNAL_POLL_SECS = 0.1
"""How often the worker's main thread looks for a stop signal."""

STEP_THREAD_PREFIX = "threadjobs-step"
"""The names of the threads that run step calls (see scheduler.Worker)."""


def cmd_worker(args: argparse.Namespace) -> int:
    """Run the APP's worker until a signal stops it."""
    executor = load_app(
        args.app,
        args.database,
        threads=args.threads,
        poll_interval=args.poll_interval,
    )
    return run_worker(executor, args.grace)


class _StopSignals:
    """Remembers the first SIGTERM/SIGINT; the second one exits at once.

    A handler runs between two bytecodes of the main thread, which may hold
    a lock at that moment: the first signal only sets an attribute, and the
    second logs as best it can before exiting.
    """

    def __init__(self) -> None:
        self.received: Optional[int] = None

    def install(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: Optional[FrameType]) -> None:
        if self.received is None:
            self.received = signum
            return
        _exit_now(
            128 + signum,
            f"second signal ({signal.Signals(signum).name}): exiting at once; "
            "running step calls roll back and run again on another worker",
        )


def run_worker(executor: JobExecutor, grace: float) -> int:
    """Run the worker; on a signal, stop it within ``grace`` seconds.

    A running step function cannot be interrupted, so when the grace period
    ends (or a second signal comes) the process exits at once without
    committing: those step calls roll back and run again elsewhere.
    """
    # Until the worker runs, a signal's default action is right: nothing of
    # it is running yet, so there is nothing to wait for.
    executor.start()
    signals = _StopSignals()
    signals.install()
    logger.info(
        "worker running jobs %s; SIGTERM or SIGINT stops it after its running "
        "step calls (up to %gs), a second signal at once",
        ", ".join(executor.job_names()),
        grace,
    )
    while signals.received is None:
        if not executor.running:
            logger.error("the worker stopped by itself; see the log above")
            return EXIT_ERROR
        time.sleep(SIGNAL_POLL_SECS)

    logger.info(
        "%s received: taking no new steps, waiting up to %gs for running ones",
        signal.Signals(signals.received).name,
        grace,
    )
    deadline = time.monotonic() + grace
    if not _stop_by(executor, deadline):
        _exit_now(
            EXIT_ERROR,
            f"step calls still running after the grace period of {grace:g}s; "
            "exiting without them: they roll back and run again on another "
            "worker",
        )
    executor.close()
    logger.info("worker stopped; every step call it ran is committed")
    return EXIT_OK


def _stop_by(executor: JobExecutor, deadline: float) -> bool:
    """Stop the worker; whether every step call ended by the deadline.

    ``stop()`` runs in a helper thread so that the main thread keeps to the
    deadline and still runs the signal handler. Its result alone is not
    enough: it returns once the scheduler stops waiting, even when step
    calls still run, so the step threads are joined as well.
    """
    grace = max(0.0, deadline - time.monotonic())
    stopper = threading.Thread(
        target=executor.stop, args=(grace,), name="threadjobs-stop", daemon=True
    )
    stopper.start()
    stopper.join(grace + SIGNAL_POLL_SECS)
    if stopper.is_alive():
        return False
    for thread in threading.enumerate():
        if thread.name.startswith(STEP_THREAD_PREFIX):
            # Idle pool threads end as soon as the pool shuts down.
            thread.join(max(deadline - time.monotonic(), SIGNAL_POLL_SECS))
            if thread.is_alive():
                return False
    return True


def _exit_now(code: int, message: str) -> NoReturn:
    """Exit without unwinding, so uncommitted step calls roll back."""
    try:
        logger.error(message)
    except Exception:  # Reentrant write to stderr from a signal handler.
        pass
    finally:
        os._exit(code)
