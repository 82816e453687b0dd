"""The command line, run as a real ``python -m threadjobs`` process.

Every command gets an explicit database (an SQLite file in the test's
directory unless the test runs on a server), so no test touches the working
directory's default file.
"""

from __future__ import annotations

import configparser
import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from threadjobs import Job, JobExecutor

from .helpers import run_until_settled, wait_until
from .spawned import CLI, ROOT, child_env, run_cli


def fails(executor: JobExecutor) -> None:
    raise ValueError("boom")


@pytest.fixture
def settled(db_url: str) -> Iterator[dict[str, int]]:
    """A database with one ended, one failed and one pending job."""
    executor = JobExecutor(db_url, poll_interval=0.05)
    executor.add(Job("fine").submit(lambda params: None))
    executor.add(Job("broken").submit(lambda params: None).submit(fails))
    ids = {"ended": executor.execute("fine"), "failed": executor.execute("broken")}
    run_until_settled(executor)
    executor.add(Job("later").submit(lambda params: None))
    ids["pending"] = executor.execute("later", delay=3600)
    executor.close()
    yield ids


# -- help and installation ---------------------------------------------------

COMMANDS = ["worker", "execute", "list", "show", "resume", "clean-up", "status"]


def test_every_command_has_help(sqlite_url: str) -> None:
    top = run_cli("--help")
    assert top.returncode == 0
    for command in [*COMMANDS, "demo"]:
        assert command in top.stdout
        result = run_cli(command, "--help")
        assert result.returncode == 0, result.stderr
        assert f"usage: threadjobs {command}" in result.stdout
        assert "--database" in result.stdout
    assert "--grace" in run_cli("worker", "--help").stdout


def test_no_command_is_a_usage_error(sqlite_url: str) -> None:
    result = run_cli()
    assert result.returncode == 2
    assert "usage:" in result.stderr


def test_console_script_points_at_main(sqlite_url: str) -> None:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    scripts = config["options.entry_points"]["console_scripts"]
    assert "threadjobs = threadjobs.cli:main" in scripts

    script = Path(sys.executable).with_name("threadjobs")
    if not script.exists():
        pytest.skip("threadjobs is not installed next to this Python")
    result = subprocess.run(
        [str(script), "status", "--database", sqlite_url],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1  # The file does not exist yet.
    assert "there is no SQLite database" in result.stderr


# -- starting jobs and running a worker --------------------------------------


def test_execute_without_definitions_goes_through_dot_execute(
    db_url: str, spawn: Any
) -> None:
    started = run_cli(
        "execute", "greet", "--params", '{"who": "Ann"}', "--database", db_url
    )
    assert started.returncode == 0, started.stderr
    execute_id = int(started.stdout)
    assert ".execute" in started.stderr and "'greet'" in started.stderr

    # The instance's own database is the default file; --database overrides it.
    worker = spawn(*CLI, "worker", "examples.jobs:executor", "--database", db_url)
    worker.wait_for("worker running jobs")

    def ended() -> list[dict[str, Any]]:
        listed = run_cli("list", "ended", "--json", "--database", db_url)
        return [json.loads(line) for line in listed.stdout.splitlines()]

    jobs = wait_until(lambda: len(ended()) == 2 and ended(), what="both jobs")
    greet = next(job for job in jobs if job["name"] == "greet")
    assert greet["ctx"] == {"greeting": "Hello, Ann!"}
    assert next(job for job in jobs if job["id"] == execute_id)["name"] == ".execute"
    worker.send(signal.SIGTERM)
    assert worker.wait() == 0, worker.output


def test_execute_with_app_enqueues_directly(db_url: str) -> None:
    started = run_cli(
        "execute",
        "report",
        "--app",
        "examples.jobs:build",
        "--params",
        '{"id": 4}',
        "--ctx",
        '{"by": "cli"}',
        "--delay",
        "60",
        "--database",
        db_url,
    )
    assert started.returncode == 0, started.stderr
    assert ".execute" not in started.stderr
    shown = run_cli("show", started.stdout.strip(), "--json", "--database", db_url)
    job = json.loads(shown.stdout)["job"]
    assert (job["name"], job["params"], job["ctx"]) == (
        "report",
        {"id": 4},
        {"by": "cli"},
    )
    assert job["status"] == "pending"


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ("{bad", "--params is not valid JSON"),
        ("[1, 2]", "--params must be a JSON object"),
        ('"text"', "--params must be a JSON object"),
    ],
)
def test_execute_refuses_bad_params(sqlite_url: str, params: str, message: str) -> None:
    result = run_cli("execute", "greet", "--params", params, "--database", sqlite_url)
    assert result.returncode == 2
    assert message in result.stderr
    assert result.stdout == ""


def test_execute_refuses_bad_ctx(sqlite_url: str) -> None:
    result = run_cli("execute", "greet", "--ctx", "[]", "--database", sqlite_url)
    assert result.returncode == 2
    assert "--ctx must be a JSON object" in result.stderr


@pytest.mark.parametrize(
    ("app", "message"),
    [
        ("no_such_module_here:executor", "no module named 'no_such_module_here'"),
        ("examples.jobs", "APP must look like package.module:attribute"),
        ("examples.jobs:missing", "has no attribute 'missing'"),
        ("examples.jobs:logger", "is a Logger, not a JobExecutor"),
        ("examples.jobs:greet", "must take no arguments, or just database"),
    ],
)
def test_worker_refuses_a_bad_app(sqlite_url: str, app: str, message: str) -> None:
    result = run_cli("worker", app, "--database", sqlite_url)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr


def test_worker_reports_an_app_that_raises(sqlite_url: str, tmp_path: Path) -> None:
    (tmp_path / "broken_app.py").write_text("import not_installed_anywhere\n")
    (tmp_path / "factory_app.py").write_text(
        "def build():\n    raise RuntimeError('no config')\n"
    )
    broken = run_cli("worker", "broken_app:x", "--database", sqlite_url, cwd=tmp_path)
    assert broken.returncode == 1
    assert "importing 'broken_app' raised ModuleNotFoundError" in broken.stderr
    assert "Traceback" in broken.stderr
    raising = run_cli(
        "worker", "factory_app:build", "--database", sqlite_url, cwd=tmp_path
    )
    assert raising.returncode == 1
    assert "calling factory_app:build raised RuntimeError: no config" in raising.stderr


def test_unreachable_database_fails_fast(sqlite_url: str) -> None:
    pytest.importorskip("psycopg")
    url = "postgresql://nobody@127.0.0.1:1/x"
    begun = time.monotonic()
    result = run_cli("status", "--database", url, timeout=30)
    assert result.returncode == 1
    assert f"cannot use the database {url}" in result.stderr
    assert time.monotonic() - begun < 15


def test_missing_sqlite_file_is_not_created(sqlite_url: str, tmp_path: Path) -> None:
    result = run_cli("list", "ended", "--database", sqlite_url)
    assert result.returncode == 1
    assert "there is no SQLite database" in result.stderr
    assert not (tmp_path / "jobs.sqlite3").exists()


def test_database_comes_from_the_environment(sqlite_url: str) -> None:
    env = child_env(THREADJOBS_DATABASE_URL=sqlite_url)
    started = run_cli("execute", "anything", env=env)
    assert started.returncode == 0, started.stderr
    status = run_cli("status", "--json", env=env)
    assert json.loads(status.stdout) == {"ended": 0, "failed": 0, "pending": 1}


# -- inspecting jobs ---------------------------------------------------------


def test_list_as_table_and_json(db_url: str, settled: dict[str, int]) -> None:
    table = run_cli("list", "failed", "--database", db_url)
    assert table.returncode == 0, table.stderr
    header, row = table.stdout.splitlines()
    assert header.split() == ["id", "name", "status", "created", "updated", "error"]
    assert row.split()[:3] == [str(settled["failed"]), "broken", "failed"]
    assert row.endswith("ValueError: boom")

    lines = run_cli("list", "not-ended", "--json", "--database", db_url).stdout
    assert [json.loads(line)["id"] for line in lines.splitlines()] == [
        settled["pending"]
    ]
    masked = run_cli("list", "not-ended", "--like", "la%", "--database", db_url)
    assert masked.stdout.splitlines()[1].split()[1] == "later"
    nothing = run_cli("list", "ended", "--like", "zz%", "--database", db_url)
    assert nothing.stdout == "no ended jobs\n"
    assert (
        run_cli("list", "ended", "--like", "zz%", "--json", "--database", db_url).stdout
        == ""
    )


def test_show_gives_steps_errors_and_tracebacks(
    db_url: str, settled: dict[str, int]
) -> None:
    shown = run_cli("show", str(settled["failed"]), "--database", db_url)
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout
    assert f"job {settled['failed']} broken: failed" in text
    assert "step  state   calls  run at" in text
    assert "step 2.1 failed: ValueError: boom" in text
    assert "Traceback (most recent call last)" in text

    as_json = json.loads(
        run_cli("show", str(settled["failed"]), "--json", "--database", db_url).stdout
    )
    steps = as_json["steps"]
    assert [(s["state"], s["calls"]) for s in steps] == [("done", 1), ("failed", 1)]
    assert "ValueError: boom" in steps[1]["traceback"]

    missing = run_cli("show", "987654", "--database", db_url)
    assert missing.returncode == 1
    assert "there is no job 987654" in missing.stderr


def test_status_resume_and_clean_up(db_url: str, settled: dict[str, int]) -> None:
    status = run_cli("status", "--database", db_url)
    assert status.returncode == 0
    counts = dict(line.split() for line in status.stdout.splitlines()[1:])
    assert counts == {"pending": "1", "failed": "1", "ended": "1"}

    resumed = run_cli("resume", str(settled["failed"]), "--database", db_url)
    assert resumed.returncode == 0, resumed.stderr
    assert "1 failed step call(s) will run again" in resumed.stdout
    again = run_cli("resume", str(settled["failed"]), "--database", db_url)
    assert again.returncode == 1
    assert "only a failed job can be resumed" in again.stderr
    unknown = run_cli("resume", "987654", "--database", db_url)
    assert unknown.returncode == 1
    assert "there is no job 987654" in unknown.stderr

    cleaned = run_cli("clean-up", "--database", db_url)
    assert cleaned.returncode == 0, cleaned.stderr
    assert cleaned.stdout == "deleted 1 ended jobs\n"  # No bar: not a terminal.
    status = run_cli("status", "--json", "--database", db_url)
    assert json.loads(status.stdout) == {"ended": 0, "failed": 0, "pending": 2}


# -- the demo and progress on a terminal -------------------------------------


def test_demo_runs_on_the_default_sqlite_file(sqlite_url: str, tmp_path: Path) -> None:
    result = run_cli("demo", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "enqueued RUN#1 as job 1 in sqlite:///threadjobs.sqlite3" in result.stdout
    assert "sendmail step 2 sent: True" in result.stdout
    assert "Every job ended." in result.stdout
    assert "\r" not in result.stdout and "\x1b" not in result.stdout
    assert (tmp_path / "threadjobs.sqlite3").exists()
    listed = run_cli("list", "ended", "--json", cwd=tmp_path)
    names = [json.loads(line)["name"] for line in listed.stdout.splitlines()]
    assert names == ["RUN#1", "sendmail"]


def run_on_terminal(*args: str, timeout: float = 60) -> tuple[int, str]:
    """Run the command with its stdout on a pseudo-terminal."""
    master, slave = pty.openpty()
    process = subprocess.Popen(
        [*CLI, *args],
        cwd=ROOT,
        env=child_env(TERM="xterm"),
        stdout=slave,
        stderr=subprocess.PIPE,
        text=False,
    )
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the terminal's other side closed.
                break
            if not chunk:
                break
            chunks.append(chunk)
        elif process.poll() is not None:
            break
    os.close(master)
    _, err = process.communicate(timeout=timeout)
    assert not err, err
    return process.returncode, b"".join(chunks).decode()


def test_demo_and_clean_up_show_progress_on_a_terminal(sqlite_url: str) -> None:
    code, output = run_on_terminal("demo", "--database", sqlite_url)
    assert code == 0, output
    assert "steps done" in output and "\r" in output
    assert "Every job ended." in output

    code, output = run_on_terminal("clean-up", "--database", sqlite_url)
    assert code == 0, output
    assert "deleting ended jobs" in output
    assert output.rstrip().endswith("deleted 2 ended jobs")
