"""The exceptions threadjobs raises.

Every error derives from :class:`ThreadJobsError`, so one ``except`` clause
catches them all. Three sub-bases group them by who has to act: the caller
(:class:`ConfigurationError`), the database (:class:`DatabaseError`) or the
state of a job (:class:`JobStateError`).
"""

from __future__ import annotations


class ThreadJobsError(Exception):
    """Base class of every threadjobs error."""


class ConfigurationError(ThreadJobsError):
    """The caller passed something threadjobs cannot use."""


class DefinitionError(ConfigurationError):
    """A job definition is malformed: not callable, empty, or a taken name."""


class UnknownJobError(ConfigurationError):
    """A job name has no definition in this executor."""


class InvalidValueError(ConfigurationError, ValueError):
    """params, ctx, a delay or a mask is not of the allowed form."""


class UnsupportedReturnValueError(ThreadJobsError):
    """A step function returned a value the return-value rules do not allow.

    Raised inside the step call, so the step's transaction rolls back and the
    step is flagged as failed, exactly as if the function had raised.
    """


class StepTransactionError(ThreadJobsError):
    """A step tried to end or nest the transaction threadjobs runs it in."""


class DatabaseError(ThreadJobsError):
    """The database failed; the driver's exception is kept as ``__cause__``."""


class TransientDatabaseError(DatabaseError):
    """A database failure that retrying can cure (lost connection, busy, ...)."""


class DatabaseUnavailableError(TransientDatabaseError):
    """No connection to the database could be opened within the timeout."""


class SchemaVersionError(DatabaseError):
    """The tables were made by a different version of threadjobs."""


class JobStateError(ThreadJobsError):
    """The job is not in a state that allows the requested operation."""


class JobNotFoundError(JobStateError, LookupError):
    """No job has the given id."""


class WorkerDiedError(ThreadJobsError):
    """A worker process died while running a step, too many times in a row."""
