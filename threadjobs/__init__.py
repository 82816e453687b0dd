"""threadjobs: durable, database-backed job chains run by threads.

A job is a named chain of steps; each step call runs in a database
transaction together with the SQL the step runs itself.
"""

from __future__ import annotations

from .definitions import Job
from .errors import (
    ConfigurationError,
    DatabaseError,
    DatabaseUnavailableError,
    DefinitionError,
    InvalidValueError,
    JobNotFoundError,
    JobStateError,
    SchemaVersionError,
    StepTransactionError,
    ThreadJobsError,
    TransientDatabaseError,
    UnknownJobError,
    UnsupportedReturnValueError,
    WorkerDiedError,
)
from .executor import JobExecutor
from .records import JobRecord, StepRecord

__version__ = "0.1.0"

__all__ = [
    "ConfigurationError",
    "DatabaseError",
    "DatabaseUnavailableError",
    "DefinitionError",
    "InvalidValueError",
    "Job",
    "JobExecutor",
    "JobNotFoundError",
    "JobRecord",
    "JobStateError",
    "SchemaVersionError",
    "StepRecord",
    "StepTransactionError",
    "ThreadJobsError",
    "TransientDatabaseError",
    "UnknownJobError",
    "UnsupportedReturnValueError",
    "WorkerDiedError",
]
