"""The Flask extension: in this process, and behind real servers on loopback.

The servers run ``examples/flask_app.py`` in subprocesses (Werkzeug's
development server, Flask's reloader, gunicorn with ``--preload``) on an
SQLite file, and are driven over HTTP on 127.0.0.1.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Optional

import pytest

from threadjobs import ConfigurationError, Job

from .helpers import wait_until
from .spawned import ROOT, Spawned, child_env

flask = pytest.importorskip("flask")
from threadjobs.flask import ThreadJobs  # noqa: E402

EXAMPLE = ROOT / "examples" / "flask_app.py"

# Never a proxy: every request goes to a server on loopback.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http(method: str, url: str, body: Optional[dict[str, Any]] = None) -> Any:
    """Send one request; returns (status, decoded JSON body or None)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with OPENER.open(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, None


def base_url(server: Spawned, announcement: str) -> str:
    line = server.wait_for(announcement)
    match = re.search(r"http://127\.0\.0\.1:(\d+)", line)
    assert match, line
    return f"http://127.0.0.1:{match.group(1)}"


def sign_up_and_wait(base: str) -> dict[str, Any]:
    """POST /signup, then poll the job until it ends; returns the job."""
    status, body = http("POST", f"{base}/signup", {"email": "Ann@Example.com"})
    assert status == 202, body
    job_url = f"{base}/jobs/{body['job_id']}"

    def ended() -> Any:
        job = http("GET", job_url)[1]
        return job if job["status"] == "ended" else None

    job = wait_until(ended, what="the welcome job to end")
    assert job["ctx"]["welcomed"] == "ann@example.com"
    return dict(job)


def worker_log_pids(server: Spawned, event: str) -> list[int]:
    """The processes that logged the worker's ``started``/``stopped``."""
    pattern = re.compile(rf"\[(\d+) [^\]]*\] threadjobs\.scheduler: worker \S+ {event}")
    return [int(m.group(1)) for m in map(pattern.search, server.lines) if m]


# -- the extension in this process ------------------------------------------


def test_extension_reads_settings_and_starts_at_the_first_request(
    sqlite_url: str,
) -> None:
    app = flask.Flask("signups")
    app.config.update(
        THREADJOBS_DATABASE_URL=sqlite_url,
        THREADJOBS_THREADS=2,
        THREADJOBS_POLL_INTERVAL=0.05,
        THREADJOBS_STOP_TIMEOUT=5,
    )
    extension = ThreadJobs(app)
    executor = extension.executor
    executor.add(Job("hello").submit(lambda params, ctx: ctx.update(said="hi")))
    app.add_url_rule("/", "index", lambda: "ok")
    assert app.extensions["threadjobs"] is extension
    assert (executor.settings.threads, executor.settings.poll_interval) == (2, 0.05)
    assert app.config["THREADJOBS_START_WORKER"] is True
    assert not executor.running  # Importing and configuring starts nothing.

    assert app.test_client().get("/").status_code == 200
    wait_until(lambda: executor.running, what="the worker to start")
    job_id = executor.execute("hello")
    wait_until(lambda: executor.get_job(job_id).status == "ended", what="the job")
    assert extension.start() is False  # Already running in this process.
    assert extension.stop() is True
    assert not executor.running
    executor.close()


def test_start_worker_off_leaves_the_worker_to_others(sqlite_url: str) -> None:
    app = flask.Flask("web_only")
    app.config.update(THREADJOBS_DATABASE_URL=sqlite_url, THREADJOBS_START_WORKER=0)
    extension = ThreadJobs()
    extension.init_app(app)
    app.add_url_rule("/", "index", lambda: "ok")
    assert app.test_client().get("/").status_code == 200
    assert app.before_request_funcs.get(None, []) == []
    assert not extension.executor.running
    extension.executor.close()


def test_executor_before_init_app_says_what_to_do(sqlite_url: str) -> None:
    with pytest.raises(ConfigurationError, match="call init_app"):
        ThreadJobs().executor  # noqa: B018


def test_without_flask_the_module_says_what_to_install(sqlite_url: str) -> None:
    hide_flask = "import sys; sys.modules['flask'] = None; import threadjobs.flask"
    result = subprocess.run(
        [sys.executable, "-c", hide_flask],
        cwd=ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "install threadjobs[flask]" in result.stderr


# -- real servers ------------------------------------------------------------


def test_development_server_runs_jobs_and_stops_its_worker_at_exit(
    sqlite_url: str, spawn: Any
) -> None:
    server = spawn(
        sys.executable,
        str(EXAMPLE),
        "0",
        env=child_env(THREADJOBS_DATABASE_URL=sqlite_url),
    )
    base = base_url(server, "Running on http://127.0.0.1:")
    job = sign_up_and_wait(base)
    assert job["ctx"]["created_by_pid"] == server.pid
    assert http("GET", f"{base}/worker")[1] == {
        "pid": server.pid,
        "running": True,
        "scheduler_threads": 1,
    }
    assert http("GET", f"{base}/jobs/987654")[0] == 404

    server.send(signal.SIGINT)
    assert server.wait(timeout=20) == 0, server.output
    assert worker_log_pids(server, "started") == [server.pid]
    assert worker_log_pids(server, "stopped") == [server.pid]


def test_reloader_runs_the_worker_only_in_the_serving_child(
    sqlite_url: str, spawn: Any
) -> None:
    server = spawn(
        *[sys.executable, "-m", "flask", "--app", str(EXAMPLE)],
        *["run", "--debug", "--reload", "--host", "127.0.0.1", "--port", "0"],
        env=child_env(THREADJOBS_DATABASE_URL=sqlite_url),
    )
    base = base_url(server, "Running on http://127.0.0.1:")
    job = sign_up_and_wait(base)
    parent = server.pid
    child = job["ctx"]["created_by_pid"]
    assert child != parent
    answer = http("GET", f"{base}/worker")[1]
    assert answer["pid"] != parent
    assert answer["scheduler_threads"] == 1
    started = worker_log_pids(server, "started")
    assert started and parent not in started


def gunicorn_command(sqlite_url: str) -> list[str]:
    gunicorn_config = pytest.importorskip("gunicorn.config")
    command = [sys.executable, "-m", "gunicorn", "--preload", "--workers", "2"]
    command += ["--bind", "127.0.0.1:0", "--graceful-timeout", "20"]
    command += ["--chdir", str(EXAMPLE.parent)]
    names = {setting.name for setting in gunicorn_config.KNOWN_SETTINGS}
    if "control_socket_disable" in names:  # No socket in the home directory.
        command.append("--no-control-socket")
    return [*command, "flask_app:app"]


def thread_count(pid: int) -> int:
    status = Path(f"/proc/{pid}/status")
    if not status.exists():
        pytest.skip("needs Linux's /proc to count a process's threads")
    line = next(x for x in status.read_text().splitlines() if x.startswith("Threads:"))
    return int(line.split()[1])


def test_gunicorn_preload_runs_one_worker_per_worker_process_none_in_master(
    sqlite_url: str, spawn: Any
) -> None:
    server = spawn(
        *gunicorn_command(sqlite_url),
        env=child_env(THREADJOBS_DATABASE_URL=sqlite_url),
    )
    base = base_url(server, "Listening at: http://127.0.0.1:")
    master = server.pid
    job = sign_up_and_wait(base)
    runner = job["ctx"]["created_by_pid"]
    assert runner != master

    # Whichever worker process answers runs one scheduler thread once its
    # first request has started it, never two; the master serves nothing.
    def one_scheduler() -> bool:
        answer = http("GET", f"{base}/worker")[1]
        assert answer["pid"] != master
        assert answer["scheduler_threads"] <= 1
        return bool(answer["scheduler_threads"] == 1)

    wait_until(one_scheduler, what="a scheduler thread in the answering process")
    assert thread_count(master) == 1
    started = worker_log_pids(server, "started")
    assert runner in started and master not in started
    assert len(started) == len(set(started))

    server.send(signal.SIGTERM)
    assert server.wait(timeout=30) == 0, server.output
    started = worker_log_pids(server, "started")
    assert sorted(worker_log_pids(server, "stopped")) == sorted(started)
