"""The command line: run a worker, start and inspect jobs, try the demo.

Installed as ``threadjobs`` and runnable as ``python -m threadjobs``. Only
``worker`` (and ``execute --app``) import your code; every other command
reads the tables, which hold everything needed, so it needs only the
database: ``--database URL``, else ``THREADJOBS_DATABASE_URL``, else the
SQLite file ``threadjobs.sqlite3`` in the working directory.

Exit codes: 0 done, 1 something failed at run time (the database, a job's
state), 2 the command was used wrongly (bad APP, JSON or option). A worker
stopped by a second signal exits with 128 + the signal number.

The command line configures logging; the library never does.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any, Optional

from .. import __version__
from ..errors import (
    ConfigurationError,
    DatabaseError,
    JobStateError,
    ThreadJobsError,
)
from ..executor import EXECUTE_JOB
from .base import (
    DEFAULT_DATABASE,
    EXIT_ERROR,
    EXIT_USAGE,
    CliError,
    database_label,
)
from .commands import (
    LISTS,
    cmd_clean_up,
    cmd_execute,
    cmd_list,
    cmd_resume,
    cmd_show,
    cmd_status,
)
from .demo import cmd_demo
from .worker import DEFAULT_GRACE_SECS, cmd_worker

LOG_FORMAT = "%(asctime)s %(levelname)s [%(threadName)s] %(name)s: %(message)s"


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run one command; returns the process exit code."""
    args = build_parser().parse_args(argv)
    run: Callable[[argparse.Namespace], int] = args.run
    _configure_logging(args.log_level, worker=run is cmd_worker)
    try:
        return run(args)
    except CliError as exc:
        return _error(exc.message, exc.code)
    except ConfigurationError as exc:
        return _error(str(exc), EXIT_USAGE)
    except JobStateError as exc:
        return _error(str(exc), EXIT_ERROR)
    except DatabaseError as exc:
        return _error(
            f"cannot use the database {database_label(args.database)} (from "
            f"--database, THREADJOBS_DATABASE_URL or the default): {exc}",
            EXIT_ERROR,
        )
    except ThreadJobsError as exc:
        return _error(str(exc), EXIT_ERROR)
    except KeyboardInterrupt:
        return _error("interrupted", 128 + signal.SIGINT)


def _error(message: str, code: int) -> int:
    print(f"threadjobs: error: {message}", file=sys.stderr, flush=True)
    return code


# -- the parser --------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--database",
        metavar="URL",
        help="the database (default: $THREADJOBS_DATABASE_URL, else "
        f"{DEFAULT_DATABASE})",
    )
    common.add_argument(
        "--log-level",
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
        help="the least severe log records shown on stderr (default: INFO "
        "for worker, WARNING otherwise)",
    )
    parser = argparse.ArgumentParser(
        prog="threadjobs",
        description="Run and inspect threadjobs jobs.",
        epilog="Exit codes: 0 done, 1 runtime error, 2 usage error.",
    )
    parser.add_argument("--version", action="version", version=__version__)
    commands = parser.add_subparsers(metavar="COMMAND", required=True)

    def add(name: str, run: Callable[..., int], summary: str) -> Any:
        command = commands.add_parser(
            name, parents=[common], help=summary, description=summary
        )
        command.set_defaults(run=run)
        return command

    _add_worker(add("worker", cmd_worker, "Run a worker until SIGTERM or SIGINT."))
    _add_execute(add("execute", cmd_execute, "Start a job and print its id."))
    listing = add("list", cmd_list, "List ended, not-ended or failed jobs.")
    listing.add_argument("which", choices=list(LISTS))
    listing.add_argument("--like", metavar="MASK", help="SQL LIKE mask on the name")
    listing.add_argument("--json", action="store_true", help="one JSON object a line")
    show = add("show", cmd_show, "Show one job and its steps.")
    show.add_argument("job_id", type=int, metavar="JOB_ID")
    show.add_argument("--json", action="store_true", help="print one JSON object")
    resume = add("resume", cmd_resume, "Call the failed step(s) of a job again.")
    resume.add_argument("job_id", type=int, metavar="JOB_ID")
    add("clean-up", cmd_clean_up, "Delete the jobs that ended successfully.")
    status = add("status", cmd_status, "Count the jobs per state.")
    status.add_argument("--json", action="store_true", help="print one JSON object")
    add("demo", cmd_demo, "Run the README example on the database, end to end.")
    return parser


def _add_worker(command: Any) -> None:
    command.add_argument(
        "app",
        metavar="APP",
        help="package.module:attribute naming a JobExecutor, or a function "
        "returning one (given database=URL when it takes a database argument)",
    )
    command.add_argument("--threads", type=_positive(int), metavar="N")
    command.add_argument("--poll-interval", type=_positive(float), metavar="SECONDS")
    command.add_argument(
        "--grace",
        type=_positive(float, allow_zero=True),
        default=DEFAULT_GRACE_SECS,
        metavar="SECONDS",
        help="after SIGTERM/SIGINT, how long running step calls may take to "
        "finish (default %(default)s); then, or at a second signal, the "
        "process exits at once and those calls roll back",
    )


def _add_execute(command: Any) -> None:
    command.add_argument("name", metavar="NAME", help="the job's name")
    command.add_argument("--params", default="{}", help="a JSON object")
    command.add_argument("--ctx", default="{}", help="a JSON object")
    command.add_argument("--delay", type=_positive(float, allow_zero=True), default=0.0)
    command.add_argument(
        "--app",
        metavar="APP",
        help="enqueue NAME with this executor's definition; without it (or "
        f"if APP lacks NAME) the built-in {EXECUTE_JOB} job starts NAME",
    )


def _positive(
    kind: Callable[[str], Any], *, allow_zero: bool = False
) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value < 0 or (value == 0 and not allow_zero) or value != value:
            least = ">= 0" if allow_zero else "> 0"
            raise argparse.ArgumentTypeError(f"must be {least}, got {text}")
        return value

    return parse


def _configure_logging(level: Optional[str], *, worker: bool = False) -> None:
    default = "INFO" if worker else "WARNING"
    logging.basicConfig(level=level or default, format=LOG_FORMAT, stream=sys.stderr)
    if level is None and not worker:
        # A one-shot command reports a connection failure once, at the end,
        # instead of the pool's warning for each try.
        logging.getLogger("psycopg.pool").setLevel(logging.ERROR)


__all__ = ["build_parser", "main"]
