"""A job to enqueue: what Sidekiq calls the job hash, before it has a jid."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from kiq import _kiq

__all__ = ["Enqueued", "Job", "PeriodicEntry"]

DEFAULT_QUEUE = "default"


@dataclasses.dataclass(frozen=True, slots=True)
class Job:
    """One job, ready for :meth:`kiq.Kiq.enqueue`.

    ``class_name`` is the ``class`` field Sidekiq dispatches on: a Ruby
    constant such as ``"HardJob"`` or ``"Billing::InvoiceJob"`` for a Ruby
    worker, or a kiq worker's name. Build jobs for kiq workers with
    ``MyWorker.new(*args)``; build one by class name alone to hand work to a
    Ruby worker::

        app.enqueue(Job("HardJob", [1, "two"], queue="critical"))

    ``options`` adds payload fields Sidekiq understands (``backtrace``,
    ``retry_queue``, ``dead``, ``tags``, ``retry_for``) or that the receiving
    side reads itself; they are written as given.

    ``unique_for`` (seconds) makes the job unique: while a job of the same
    class, queue and arguments holds the lock, enqueueing another is skipped
    (see :class:`Enqueued`). The lock goes when the job succeeds or dies
    (``unique_until="success"``, the default) or when it starts
    (``"start"``), or after ``unique_for`` seconds (counted from the run time
    of a scheduled job). ``expires_in`` (seconds, from the run time) drops a
    job that has not started by then.

    ``encrypt=True`` encrypts the last argument in Sidekiq Enterprise's
    format (the app needs ``encryption_keys``); a Ruby worker with
    Enterprise's encryption, or a kiq worker with the keys, reads it. It needs
    at least 2 arguments and cannot be combined with ``unique_for``.
    """

    class_name: str
    args: Sequence[Any] = ()
    queue: str = DEFAULT_QUEUE
    retry: bool | int = True
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    jid: str | None = None
    unique_for: float | None = None
    unique_until: str = "success"
    expires_in: float | None = None
    encrypt: bool = False

    def __post_init__(self) -> None:
        _kiq.check_job(self)  # the core's rules, shared with worker options

    @staticmethod
    def _maker(
        class_name: str,
        queue: str,
        retry: bool | int,
        options: Mapping[str, Any],
        unique_for: float | None = None,
        unique_until: str = "success",
        expires_in: float | None = None,
        encrypt: bool = False,
    ) -> Callable[[tuple[Any, ...]], Job]:
        """Builds jobs from parts already validated (a worker's options), given
        their arguments: skips ``__post_init__``, and every field but ``args``
        is bound once (a worker's ``new()`` runs for every enqueue)."""
        unfrozen, job_class = _Unfrozen, Job

        def make(args: tuple[Any, ...]) -> Job:
            # Filled in as an unfrozen twin with the same slots, then turned
            # into a Job: plain attribute stores instead of ten
            # object.__setattr__ calls.
            job = unfrozen()
            job.class_name = class_name
            job.args = args
            job.queue = queue
            job.retry = retry
            job.options = options
            job.jid = None
            job.unique_for = unique_for
            job.unique_until = unique_until
            job.expires_in = expires_in
            job.encrypt = encrypt
            job.__class__ = job_class  # type: ignore[assignment]
            return job  # type: ignore[return-value]

        return make

    def set(self, **changes: Any) -> Job:
        """A copy with fields changed, like Sidekiq's ``Job.set(queue: ...)``.

        Unknown names become payload options: ``job.set(queue="low", tags=["x"])``.
        """
        fields = {f.name for f in dataclasses.fields(self)}
        direct = {k: v for k, v in changes.items() if k in fields and k != "options"}
        extra = {k: v for k, v in changes.items() if k not in fields}
        options = dict(self.options)
        options.update(changes.get("options", {}))
        options.update(extra)
        return dataclasses.replace(self, options=options, **direct)


class _Unfrozen:
    """Job's slots, writable: what :meth:`Job._maker` fills in before it turns
    it into a Job (``__class__`` may change between classes of the same slot layout)."""

    __slots__ = Job.__slots__
    class_name: str
    args: tuple[Any, ...]
    queue: str
    retry: bool | int
    options: Mapping[str, Any]
    jid: str | None
    unique_for: float | None
    unique_until: str
    expires_in: float | None
    encrypt: bool


@dataclasses.dataclass(frozen=True, slots=True)
class PeriodicEntry:
    """A periodic job as the core takes it: its crontab and the job enqueued at each match."""

    crontab: str
    job: Job


class Enqueued(str):
    """The jid :meth:`kiq.Kiq.enqueue` returns, telling whether the job went in.

    It is the job's jid (a ``str``). For a unique job whose lock another job
    holds, ``skipped`` is true and ``held_by`` names that job's jid (when it
    could be read); the job was not enqueued.
    """

    # Class-level defaults: a job that went in (nearly every one) is a bare
    # ``str.__new__(Enqueued, jid)``; only a skipped one gets its own values.
    held_by: str | None = None
    skipped: bool = False

    def __new__(cls, jid: str, held_by: str | None = None) -> Enqueued:
        self = super().__new__(cls, jid)
        if held_by is not None:
            self.skipped = True
            self.held_by = held_by or None
        return self
