"""Exceptions raised by kiq.

Every error kiq raises derives from :class:`KiqError`; the classes defined in
the native module are re-exported here so ``except kiq.errors.ConnectionError``
works without importing ``kiq._kiq``.
"""

from __future__ import annotations

from kiq._kiq import (
    BatchError,
    BufferFullError,
    CodecError,
    ConfigError,
    ConnectionError,
    CrontabError,
    DecryptionError,
    KiqError,
    OverLimit,
    ShutdownError,
    TimeoutError,
    UndeliverableError,
)

__all__ = [
    "ArgumentError",
    "BatchError",
    "BufferFullError",
    "CodecError",
    "ConfigError",
    "ConnectionError",
    "CrontabError",
    "DecryptionError",
    "InvalidJobError",
    "JobTimeoutError",
    "KiqError",
    "OverLimit",
    "PoisonPillError",
    "Shutdown",
    "ShutdownError",
    "TimeoutError",
    "UndeliverableError",
    "UnknownWorkerError",
]


class ArgumentError(KiqError, TypeError):
    """A job's arguments do not fit its worker's ``perform`` (too few or too
    many), found when the job is built (``HardJob.new(...)``,
    ``perform_async``), not when it runs. Also a :class:`TypeError`."""


class UnknownWorkerError(KiqError):
    """A job names a class no worker of this process is registered for.

    Such a job is never imported by name (that would let anyone who can write
    to Redis run code); it fails with this error and takes the retry path.
    """


class InvalidJobError(KiqError):
    """A payload in a queue cannot run: no ``class``, or ``args`` not a list.

    Raised by the core; recorded as the job's ``error_class``.
    """


class JobTimeoutError(KiqError):
    """A job ran past its worker's ``timeout``: an async job is cancelled at
    the deadline; a sync job (Python threads cannot be stopped) fails as soon
    as it returns. Either way it takes the retry path."""


class JobCancelledError(KiqError):
    """A job whose cancellation was asked (:meth:`kiq.api.Api.cancel`, ``kiq cancel``).

    An async job gets it in place of its result once its task is cancelled; a
    sync job raises it itself, from ``kiq.current_job().raise_if_cancelled()``.
    Either way the job ends there: it is not retried, and it counts as
    processed (as a job cancelled in Sidekiq does)."""


class PoisonPillError(KiqError):
    """Recorded on a job moved to the dead set because it was recovered from
    dead processes more than ``max_recoveries`` times (it keeps killing its workers)."""


class Shutdown(BaseException):  # noqa: N818 - Sidekiq's name for the same signal
    """Raised inside a job still running when a stop's deadline passes.

    The job is handed back to its queue, as Sidekiq does; user code should let
    it propagate (it derives from ``BaseException`` so ``except Exception``
    does not swallow it).
    """
