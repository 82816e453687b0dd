"""A throwaway MariaDB server in a temporary directory, for restart tests.

Faults are done to this server, never to the shared one. It needs the
MariaDB server programs (``mariadb-install-db``, ``mariadbd``).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from .pgcluster import free_port


class TempMariaDB:
    """Install, start, kill, shut down and remove a private MariaDB server."""

    def __init__(self) -> None:
        self.mariadbd = shutil.which("mariadbd") or "/usr/sbin/mariadbd"
        installer = shutil.which("mariadb-install-db")
        if not os.path.exists(self.mariadbd) or installer is None:
            raise RuntimeError("MariaDB server programs are not installed")
        self.installer = installer
        self.root = Path(tempfile.mkdtemp(prefix="threadjobs-mariadb-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.url = f"mysql://root@127.0.0.1:{self.port}/chaos"
        self.process: subprocess.Popen[bytes] | None = None
        self._user = ["--user=mysql"] if os.geteuid() == 0 else []
        if os.geteuid() == 0:
            shutil.chown(self.root, "mysql", "mysql")

    def start(self) -> TempMariaDB:
        if not self.data.exists():
            subprocess.run(
                [
                    self.installer,
                    f"--datadir={self.data}",
                    "--auth-root-authentication-method=normal",
                    "--skip-test-db",
                    *self._user,
                ],
                check=True,
                capture_output=True,
                timeout=180,
            )
        # The server keeps its own copy of the log file descriptor.
        with open(self.root / "server.log", "ab") as log:
            self.process = self._spawn(log)
        self.wait_ready()
        return self

    def _spawn(self, log: Any) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [
                self.mariadbd,
                "--no-defaults",
                f"--datadir={self.data}",
                f"--port={self.port}",
                "--bind-address=127.0.0.1",
                f"--socket={self.root}/mysqld.sock",
                "--skip-grant-tables",
                "--max-connections=300",
                *self._user,
            ],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )

    def wait_ready(self, timeout: float = 60) -> None:
        import pymysql

        deadline = time.monotonic() + timeout
        while True:
            try:
                conn = pymysql.connect(
                    host="127.0.0.1", port=self.port, user="root", connect_timeout=2
                )
                with conn.cursor() as cur:
                    cur.execute("CREATE DATABASE IF NOT EXISTS chaos")
                conn.close()
                return
            except pymysql.err.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def kill(self) -> None:
        """kill -9 of the server: a crash, recovered from at the next start."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def shutdown(self) -> None:
        """A clean shutdown, as an operator would do it."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=120)

    def restart(self, mode: str) -> None:
        if mode == "kill":
            self.kill()
        else:
            self.shutdown()
        self.start()

    def remove(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)
        shutil.rmtree(self.root, ignore_errors=True)
