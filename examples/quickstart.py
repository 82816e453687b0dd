"""The first example: three jobs on the embedded SQLite database.

RUN#1 runs a step, then a group of two functions in parallel (one sleeps
between calls, one calls itself again at once and starts another job), then
a final step. Run it with ``python examples/quickstart.py``; it stops when
every job has ended.
"""

from __future__ import annotations

import os
import sys
import time

from threadjobs import Job, JobExecutor


def say(line: str) -> None:
    """Print one whole line; members of a group print from different threads."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def step_1(params, ctx):
    ctx["val"] = 1
    say(f"In #1   name={params['name']} val={ctx['val']}")


def step_2_1(params, ctx):
    ctx["val1"] = ctx.get("val1", 0) + 1
    say(f"In #2.1 name={params['name']} val1={ctx['val1']}")
    if ctx["val1"] < 4:
        return {"run_after": 0.2}  # Call me again in 0.2 seconds.
    return None


def step_2_2(params, ctx, executor):
    ctx["valx"] = ctx.get("valx", 0) + 1
    say(f"In #2.2 name={params['name']} valx={ctx['valx']}")
    if ctx["valx"] == 4:
        executor.execute(
            "sendmail", {"to": "lala@dodo.com", "subject": "Hi", "body": params["name"]}
        )
    # Part of this step's transaction: rolled back if the step raises.
    executor.exec_query("INSERT INTO cnt (val) VALUES (%s)", [ctx["valx"]])
    return "CONTINUE" if ctx["valx"] < 6 else None


def step_3(params, ctx):
    ctx["val"] += 1
    say(f"In #3   name={params['name']} val={ctx['val']}")


def send_mail(params, ctx):
    say(f"Sending mail to {params['to']}")
    ctx["sent"] = True


def confirm(params, ctx):
    if ctx["sent"]:
        say("Sent!")


def main() -> int:
    executor = JobExecutor()  # The SQLite file threadjobs.sqlite3, made here.
    executor.add(
        Job("RUN#1").submit(step_1).submit([step_2_1, step_2_2]).submit(step_3)
    )
    executor.add(Job("sendmail").submit(send_mail).submit(confirm))
    executor.exec_query("CREATE TABLE IF NOT EXISTS cnt (val INTEGER)")

    name = f"Name{int(time.time())}-{os.getpid()}"
    job_id = executor.execute("RUN#1", {"path": 1, "name": name})
    print(f"Enqueued RUN#1 as job {job_id}; starting the worker")

    executor.start()
    while executor.list_not_ended_jobs():
        time.sleep(0.1)
    executor.stop()

    for job in executor.list_ended_jobs():
        print(f"job {job.id} {job.name}: {job.status}, ctx={job.ctx}")
    failed = executor.list_failed_jobs()
    if failed:
        print(f"{len(failed)} jobs failed: {failed}")
    else:
        print("Every job ended.")
    executor.close()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
