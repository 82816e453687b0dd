"""Child processes for the tests that run real commands and servers.

``run_cli`` runs one ``python -m threadjobs`` command to its end;
``spawning`` starts background processes (a worker, a web server) whose
output is collected line by line and which are killed when the test ends.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "threadjobs"]


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a child process: this checkout importable first."""
    env = {k: v for k, v in os.environ.items() if k != "THREADJOBS_DATABASE_URL"}
    path = [str(ROOT), *filter(None, [env.get("PYTHONPATH")])]
    env["PYTHONPATH"] = os.pathsep.join(path)
    env.update(extra)
    return env


def run_cli(
    *args: str,
    cwd: Path = ROOT,
    env: Optional[dict[str, str]] = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        cwd=cwd,
        env=env or child_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class Spawned:
    """A background process; its output lines are collected as they come."""

    def __init__(self, args: Sequence[str], cwd: Path, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            list(args),
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.pid = self.process.pid
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._ended = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._ended = True
            self._changed.notify_all()

    @property
    def output(self) -> str:
        with self._changed:
            return "".join(self.lines)

    def wait_for(self, text: str, timeout: float = 20.0) -> str:
        """The first output line containing ``text``; fails on exit or timeout."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines:
                    if text in line:
                        return line
                left = deadline - time.monotonic()
                if self._ended or left <= 0:
                    state = "exited" if self._ended else "still runs"
                    raise AssertionError(
                        f"{text!r} not in the output ({state}):\n{''.join(self.lines)}"
                    )
                self._changed.wait(left)

    def send(self, signum: int) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float = 30.0) -> int:
        code = self.process.wait(timeout)
        self._reader.join(timeout)
        return code

    def close(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.pid, signal.SIGKILL)
        self.process.wait(30)
        self._reader.join(30)
        assert self.process.stdout is not None
        self.process.stdout.close()


@contextmanager
def spawning() -> Iterator[Any]:
    """Start background processes; every one is killed at the end."""
    started: list[Spawned] = []

    def start(
        *args: str, cwd: Path = ROOT, env: Optional[dict[str, str]] = None
    ) -> Spawned:
        process = Spawned(args, cwd, env or child_env())
        started.append(process)
        return process

    try:
        yield start
    finally:
        for process in started:
            process.close()
