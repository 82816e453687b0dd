"""A Flask application that starts jobs in its views and runs them too.

Each process that serves requests runs a worker in a background thread, so
no separate worker process is needed (one may still be added). Run it with
any of::

    python examples/flask_app.py 5000
    flask --app examples/flask_app.py run --debug
    gunicorn --preload -w 2 --chdir examples flask_app:app

then ``curl -X POST -H 'Content-Type: application/json' -d
'{"email": "Ann@Example.com"}' localhost:5000/signup`` starts a job and
``curl localhost:5000/jobs/1`` shows it. The database is
``THREADJOBS_DATABASE_URL``, else the SQLite file ``flask_app.sqlite3``.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from typing import Any

from flask import Flask, abort, jsonify, request
from flask.typing import ResponseReturnValue

from threadjobs import Job, JobNotFoundError
from threadjobs.flask import ThreadJobs

logging.basicConfig(
    level=logging.INFO,
    format="%(asctime)s %(levelname)s [%(process)d %(threadName)s] "
    "%(name)s: %(message)s",
)


def create_account(params: dict[str, Any], ctx: dict[str, Any]) -> None:
    ctx["account"] = params["email"].lower()
    ctx["created_by_pid"] = os.getpid()


def send_welcome(params: dict[str, Any], ctx: dict[str, Any]) -> None:
    # A real step would send the mail here; a rerun may send it twice.
    ctx["welcomed"] = ctx["account"]
    ctx["sent_by_pid"] = os.getpid()


app = Flask(__name__)
app.config.update(
    THREADJOBS_DATABASE_URL=os.environ.get(
        "THREADJOBS_DATABASE_URL", "sqlite:///flask_app.sqlite3"
    ),
    THREADJOBS_THREADS=2,
    THREADJOBS_POLL_INTERVAL=0.1,
)
threadjobs = ThreadJobs(app)
threadjobs.executor.add(Job("welcome").submit(create_account).submit(send_welcome))


@app.post("/signup")
def signup() -> ResponseReturnValue:
    """Start the welcome job; answer at once with its id."""
    email = (request.get_json(silent=True) or {}).get("email")
    if not isinstance(email, str) or "@" not in email:
        return jsonify(error='send JSON like {"email": "ann@example.com"}'), 400
    job_id = threadjobs.executor.execute("welcome", {"email": email})
    return jsonify(job_id=job_id), 202


@app.get("/jobs/<int:job_id>")
def show_job(job_id: int) -> ResponseReturnValue:
    try:
        job = threadjobs.executor.get_job(job_id)
    except JobNotFoundError:
        abort(404)
    return jsonify(
        id=job.id, name=job.name, status=job.status, ctx=job.ctx, error=job.error
    )


@app.get("/worker")
def worker() -> ResponseReturnValue:
    """Which process answered, and whether its worker thread runs."""
    schedulers = [
        thread
        for thread in threading.enumerate()
        if thread.name == "threadjobs-scheduler"
    ]
    return jsonify(
        pid=os.getpid(),
        running=threadjobs.executor.running,
        scheduler_threads=len(schedulers),
    )


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(sys.argv[1]) if len(sys.argv) > 1 else 5000)
