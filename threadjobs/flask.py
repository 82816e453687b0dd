"""Flask integration: run a worker inside the processes that serve the app.

``ThreadJobs(app)`` (or ``ThreadJobs()`` then ``init_app(app)``) puts an
executor on ``app.extensions["threadjobs"]`` and runs its worker in a
background thread of every process that serves requests, starting at the
process's first request. Starting there, not at import, is what makes it
safe wherever the application is imported by a process that does not serve:

- gunicorn ``--preload`` imports the application in the master, then forks
  the workers; a thread started in the master would not survive the fork,
  and the master would run jobs too. The master never serves a request.
- Flask's reloader imports the application in a watching parent process,
  which restarts a serving child on each change. The parent never serves.
- ``flask shell`` and other commands import it and serve nothing.

``start()`` starts the worker at once, for a process known to serve (a
gunicorn ``post_fork`` hook, say). The worker stops when the process exits.

Settings, read from ``app.config`` by ``init_app()``:
``THREADJOBS_DATABASE_URL`` (None: the executor's default),
``THREADJOBS_THREADS`` (4), ``THREADJOBS_POLL_INTERVAL`` (0.2 s),
``THREADJOBS_START_WORKER`` (True) and ``THREADJOBS_STOP_TIMEOUT`` (10 s,
how long the exiting process waits for running step calls). The first
three are ignored when an executor is passed in.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from collections.abc import Callable
from typing import Any, Optional

from .errors import ConfigurationError
from .executor import JobExecutor

try:
    import flask
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ConfigurationError(
        "threadjobs.flask needs Flask; install threadjobs[flask]"
    ) from exc

logger = logging.getLogger(__name__)

EXTENSION_KEY = "threadjobs"
"""Where the extension sits in ``app.extensions``."""

DEFAULTS: dict[str, Any] = {
    "THREADJOBS_DATABASE_URL": None,
    "THREADJOBS_THREADS": 4,
    "THREADJOBS_POLL_INTERVAL": 0.2,
    "THREADJOBS_START_WORKER": True,
    "THREADJOBS_STOP_TIMEOUT": 10.0,
}


class ThreadJobs:
    """A Flask extension that gives an app an executor and runs its worker.

    One extension has one executor, shared by every app it is initialized
    with. Views reach it as ``current_app.extensions["threadjobs"].executor``.
    The worker thread cannot interrupt a running step function: a call still
    running after ``THREADJOBS_STOP_TIMEOUT`` at exit rolls back and runs
    again on another worker.
    """

    def __init__(
        self,
        app: Optional[flask.Flask] = None,
        executor: Optional[JobExecutor] = None,
    ) -> None:
        self._executor = executor
        self._owns_executor = False
        self.stop_timeout = float(DEFAULTS["THREADJOBS_STOP_TIMEOUT"])
        # Protects _started_pid: the process whose worker this extension runs.
        self._lock = threading.Lock()
        self._started_pid: Optional[int] = None
        self._starter: Optional[threading.Thread] = None
        self._exit_hook = False
        if app is not None:
            self.init_app(app)

    @property
    def executor(self) -> JobExecutor:
        """The executor: to add job definitions, start jobs and inspect them."""
        if self._executor is None:
            raise ConfigurationError(
                "ThreadJobs has no executor yet; call init_app(app) first, or "
                "pass executor= to ThreadJobs()"
            )
        return self._executor

    def init_app(self, app: flask.Flask) -> None:
        """Read the settings, make the executor if needed, arm the worker."""
        for key, value in DEFAULTS.items():
            app.config.setdefault(key, value)
        if self._executor is None:
            self._executor = JobExecutor(
                app.config["THREADJOBS_DATABASE_URL"],
                threads=int(app.config["THREADJOBS_THREADS"]),
                poll_interval=float(app.config["THREADJOBS_POLL_INTERVAL"]),
            )
            self._owns_executor = True
        self.stop_timeout = float(app.config["THREADJOBS_STOP_TIMEOUT"])
        app.extensions[EXTENSION_KEY] = self
        if app.config["THREADJOBS_START_WORKER"]:
            app.before_request(self._start_for_request)

    def _start_for_request(self) -> None:
        # The common case reads one attribute and takes no lock.
        if self._started_pid != os.getpid():
            self.start()

    def start(self) -> bool:
        """Start the worker in this process unless it runs already.

        Returns whether this call started it. The database is set up in a
        background thread, so a request does not wait for it; if that fails,
        the error is logged and the next request tries again.
        """
        pid = os.getpid()
        with self._lock:
            if self._started_pid == pid:
                return False
            parent, self._started_pid = self._started_pid, pid
        if parent is not None and self.executor.running:
            logger.error(
                "the worker was started in process %d, which then forked this "
                "process (%d); a worker thread does not survive a fork. Call "
                "start() only after forking, or leave it to the first request",
                parent,
                pid,
                extra={"action": "worker_forked"},
            )
            return False
        if not self._exit_hook:
            self._exit_hook = True
            _at_exit(self._stop_at_exit)
        self._starter = threading.Thread(
            target=self._start_worker,
            args=(pid,),
            name="threadjobs-starter",
            daemon=True,
        )
        self._starter.start()
        return True

    def _start_worker(self, pid: int) -> None:
        try:
            self.executor.start()
        except Exception:
            logger.exception(
                "could not start the worker in process %d; the next request "
                "tries again",
                pid,
                extra={"action": "worker_start_failed"},
            )
            with self._lock:
                if self._started_pid == pid:
                    self._started_pid = None

    def stop(self, timeout: Optional[float] = None) -> bool:
        """Stop this process's worker, waiting for its running step calls.

        Waits at most ``timeout`` seconds, by default
        ``THREADJOBS_STOP_TIMEOUT``; returns what ``JobExecutor.stop()``
        returns. Called when the process exits.
        """
        with self._lock:
            if self._started_pid != os.getpid():
                return True
            self._started_pid = None
        wait = self.stop_timeout if timeout is None else timeout
        starter = self._starter
        if starter is not None:
            starter.join(wait)  # A worker still being started is stopped too.
        return self.executor.stop(timeout=wait)

    def _stop_at_exit(self) -> None:
        if self.stop() and self._owns_executor:
            self.executor.close()


def _at_exit(callback: Callable[[], None]) -> None:
    """Call ``callback`` when the interpreter exits.

    ``threading._register_atexit`` runs before the interpreter joins its
    threads, and so before ``concurrent.futures`` refuses new step calls and
    waits for running ones with no time limit; plain ``atexit`` would run
    after that. This way the worker stops first, within its stop timeout.
    """
    register = getattr(threading, "_register_atexit", None)
    if register is None:  # pragma: no cover - Python without the hook
        atexit.register(callback)
        return
    register(callback)
