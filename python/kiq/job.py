"""A job to enqueue: what Sidekiq calls the job hash, before it has a jid."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from kiq.errors import ConfigError

__all__ = ["Job"]

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
    """

    class_name: str
    args: Sequence[Any] = ()
    queue: str = DEFAULT_QUEUE
    retry: bool | int = True
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    jid: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.class_name, str) or not self.class_name:
            raise ConfigError(f"Job class_name must be a non-empty str, not {self.class_name!r}")
        if isinstance(self.args, (str, bytes)) or not isinstance(self.args, Sequence):
            raise ConfigError(f"Job args must be a list or tuple, not {type(self.args).__name__}")
        if not isinstance(self.queue, str) or not self.queue:
            raise ConfigError(f"Job queue must be a non-empty str, not {self.queue!r}")
        if isinstance(self.retry, bool) or (isinstance(self.retry, int) and self.retry >= 0):
            return
        raise ConfigError(f"Job retry must be True, False or a count >= 0, not {self.retry!r}")

    @classmethod
    def _checked(cls, class_name: str, args: tuple[Any, ...], queue: str, retry: bool | int,
                 options: Mapping[str, Any]) -> Job:
        """A job from parts already validated (a worker's options): skips ``__post_init__``."""
        job = object.__new__(cls)
        put = object.__setattr__
        put(job, "class_name", class_name)
        put(job, "args", args)
        put(job, "queue", queue)
        put(job, "retry", retry)
        put(job, "options", options)
        put(job, "jid", None)
        return job

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
