"""Workers: the code that runs jobs, as classes or decorated functions.

A class-based worker is Sidekiq's ``include Sidekiq::Job``::

    class HardJob(Worker, queue="critical", retry=5, name="HardJob"):
        def perform(self, name: str, count: int) -> None: ...

A function worker is the decorator form::

    @worker(queue="events", retry=3, name="Billing::InvoiceJob")
    def invoice(invoice_id: int) -> None: ...

Either way ``X.new(*args)`` builds a :class:`~kiq.Job`, and a
:class:`~kiq.Kiq` app given the worker runs jobs whose ``class`` is its name.
The name defaults to ``module.QualName``; set ``name=`` to answer to a Ruby
class name (``"HardJob"``, ``"Billing::InvoiceJob"``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Generic, ParamSpec, TypeVar, overload

from kiq.errors import ConfigError
from kiq.job import DEFAULT_QUEUE, Job, check_encrypt, check_unique_and_expiry
from kiq.throttle import Rate, Throttle

__all__ = ["FunctionWorker", "Worker", "WorkerOptions", "worker"]

P = ParamSpec("P")
R = TypeVar("R")

_UNSET: Any = object()


@dataclasses.dataclass(frozen=True, slots=True)
class WorkerOptions:
    """A worker's options, Sidekiq's ``sidekiq_options``.

    - ``queue``: where its jobs go (default ``"default"``).
    - ``retry``: ``True`` (up to the app's ``max_retries``, 25), ``False``
      (no retries and no dead set) or a number of retries.
    - ``dead``: ``False`` drops a job that ran out of retries instead of
      keeping it in the dead set.
    - ``backtrace``: ``True`` or a line count to keep in ``error_backtrace``.
    - ``retry_queue``: the queue retries go to.
    - ``tags``: shown and searchable in Sidekiq's Web UI.
    - ``name``: the wire ``class`` name.
    - ``unique_for``, ``unique_until``, ``expires_in``: see :class:`~kiq.Job`.
    - ``timeout``: seconds a run may take; an ``async`` job is cancelled at
      the deadline, a sync one fails when it returns (threads cannot be
      stopped); both with :class:`~kiq.errors.JobTimeoutError`, retried.
    - ``encrypt``: encrypt the last argument, as Sidekiq Enterprise's
      ``encrypt: true`` does (needs the app's ``encryption_keys``, at least 2
      arguments, and no ``unique_for``).
    - ``throttle``: a :class:`~kiq.Throttle`: at most N of its jobs running
      per key, cluster-wide; ``rate``: ``(count, period_seconds)``, at most
      ``count`` starts per key in any ``period`` (the throttle's key, if any).
      Checked when jobs are fetched, before they take a thread.
    """

    queue: str = DEFAULT_QUEUE
    retry: bool | int = True
    dead: bool = True
    backtrace: bool | int = False
    retry_queue: str | None = None
    tags: tuple[str, ...] = ()
    name: str | None = None
    unique_for: float | None = None
    unique_until: str = "success"
    expires_in: float | None = None
    timeout: float | None = None
    encrypt: bool = False
    throttle: Throttle | None = None
    rate: Rate | None = None
    _payload: dict[str, Any] = dataclasses.field(init=False, repr=False, compare=False, default_factory=dict)
    _throttle: Throttle | None = dataclasses.field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        if not isinstance(self.queue, str) or not self.queue:
            raise ConfigError(f"queue must be a non-empty str, not {self.queue!r}")
        if not (isinstance(self.retry, bool) or (isinstance(self.retry, int) and self.retry >= 0)):
            raise ConfigError(f"retry must be True, False or a count >= 0, not {self.retry!r}")
        if not isinstance(self.dead, bool):
            raise ConfigError(f"dead must be True or False, not {self.dead!r}")
        if not (isinstance(self.backtrace, bool) or (isinstance(self.backtrace, int) and self.backtrace >= 0)):
            raise ConfigError(f"backtrace must be True, False or a line count, not {self.backtrace!r}")
        if self.retry_queue is not None and (not isinstance(self.retry_queue, str) or not self.retry_queue):
            raise ConfigError(f"retry_queue must be a non-empty str, not {self.retry_queue!r}")
        if self.name is not None and (not isinstance(self.name, str) or not self.name):
            raise ConfigError(f"name must be a non-empty str, not {self.name!r}")
        if isinstance(self.unique_for, dt.timedelta):
            object.__setattr__(self, "unique_for", self.unique_for.total_seconds())
        if isinstance(self.expires_in, dt.timedelta):
            object.__setattr__(self, "expires_in", self.expires_in.total_seconds())
        if isinstance(self.timeout, dt.timedelta):
            object.__setattr__(self, "timeout", self.timeout.total_seconds())
        if self.timeout is not None and (
            isinstance(self.timeout, bool) or not isinstance(self.timeout, (int, float)) or self.timeout <= 0
        ):
            raise ConfigError(f"timeout must be a positive number of seconds, not {self.timeout!r}")
        check_unique_and_expiry(self.unique_for, self.unique_until, self.expires_in)
        check_encrypt(self.encrypt, self.unique_for)
        if self.throttle is not None and not isinstance(self.throttle, Throttle):
            raise ConfigError(f"throttle must be a kiq.Throttle(concurrency=..., key=...), not {self.throttle!r}")
        combined = self.throttle
        if self.rate is not None:
            combined = Throttle(rate=self.rate) if combined is None else combined.with_rate(self.rate)
        object.__setattr__(self, "_throttle", combined)
        # Written into every job: computed once.
        object.__setattr__(self, "_payload", self.payload_options())

    @property
    def throttled(self) -> Throttle | None:
        """The throttle the core applies: ``throttle`` with ``rate`` added."""
        return self._throttle

    def updated(self, **changes: Any) -> WorkerOptions:
        given = {k: v for k, v in changes.items() if v is not _UNSET}
        if "tags" in given:
            given["tags"] = tuple(given["tags"])
        return dataclasses.replace(self, **given)

    def payload_options(self) -> dict[str, Any]:
        """The options written into each job, as Sidekiq writes a class's non-default options."""
        out: dict[str, Any] = {}
        if self.backtrace:
            out["backtrace"] = self.backtrace
        if self.retry_queue:
            out["retry_queue"] = self.retry_queue
        if not self.dead:
            out["dead"] = False
        if self.tags:
            out["tags"] = list(self.tags)
        return out

    def job(self, name: str, args: Sequence[Any]) -> Job:
        return Job._checked(
            name, tuple(args), self.queue, self.retry, self._payload, self.unique_for, self.unique_until,
            self.expires_in, self.encrypt,
        )


class Worker:
    """Base class of class-based workers; override :meth:`perform`.

    Options are class keywords: ``class Mailer(Worker, queue="mail", retry=3)``.
    A subclass inherits its parent's options. Each job runs on a fresh
    instance, whose ``jid`` attribute is the job's id.
    """

    kiq_options: ClassVar[WorkerOptions] = WorkerOptions()
    jid: str = ""

    def __init_subclass__(
        cls,
        *,
        queue: str = _UNSET,
        retry: bool | int = _UNSET,
        dead: bool = _UNSET,
        backtrace: bool | int = _UNSET,
        retry_queue: str | None = _UNSET,
        tags: Sequence[str] = _UNSET,
        name: str | None = _UNSET,
        unique_for: float | dt.timedelta | None = _UNSET,
        unique_until: str = _UNSET,
        expires_in: float | dt.timedelta | None = _UNSET,
        timeout: float | dt.timedelta | None = _UNSET,
        encrypt: bool = _UNSET,
        throttle: Throttle | None = _UNSET,
        rate: Rate | None = _UNSET,
        **kwargs: Any,
    ) -> None:
        super().__init_subclass__(**kwargs)
        # The class body's own kiq_options if it set one, else the parent's.
        parent = cls.kiq_options
        # A name is the class's own: subclasses get theirs unless they set one.
        inherited = dataclasses.replace(parent, name=None)
        cls.kiq_options = inherited.updated(
            queue=queue, retry=retry, dead=dead, backtrace=backtrace, retry_queue=retry_queue, tags=tags, name=name,
            unique_for=unique_for, unique_until=unique_until, expires_in=expires_in, timeout=timeout, encrypt=encrypt,
            throttle=throttle, rate=rate,
        )

    def perform(self, *args: Any) -> Any:
        """Runs one job with its arguments; raise to fail it. May be ``async def``."""
        raise NotImplementedError(f"{type(self).__qualname__} must define perform()")

    @classmethod
    def wire_name(cls) -> str:
        """The ``class`` name its jobs carry."""
        return cls.kiq_options.name or f"{cls.__module__}.{cls.__qualname__}"

    @classmethod
    def new(cls, *args: Any) -> Job:
        """A job for this worker with these arguments."""
        return cls.kiq_options.job(cls.wire_name(), args)


class FunctionWorker(Generic[P, R]):
    """A function turned into a worker by :func:`worker`.

    Calling it calls the function; ``.new(*args)`` builds a job for it.
    """

    def __init__(self, fn: Callable[P, R], options: WorkerOptions) -> None:
        self.fn = fn
        self.kiq_options = options
        functools.update_wrapper(self, fn)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.fn(*args, **kwargs)

    def wire_name(self) -> str:
        return self.kiq_options.name or f"{self.fn.__module__}.{self.fn.__qualname__}"

    def new(self, *args: P.args, **kwargs: P.kwargs) -> Job:
        """A job calling the function with these positional arguments.

        Sidekiq jobs carry positional arguments only; pass a dict as the last
        argument where keyword-style data is wanted.
        """
        if kwargs:
            raise ConfigError(
                f"{self.wire_name()}.new() takes positional arguments only (Sidekiq jobs have no keyword "
                f"arguments); got {sorted(kwargs)}"
            )
        return self.kiq_options.job(self.wire_name(), args)

    def __repr__(self) -> str:
        return f"<worker {self.wire_name()} queue={self.kiq_options.queue!r}>"


@overload
def worker(fn: Callable[P, R], /) -> FunctionWorker[P, R]: ...


@overload
def worker(
    *,
    queue: str = ...,
    retry: bool | int = ...,
    dead: bool = ...,
    backtrace: bool | int = ...,
    retry_queue: str | None = ...,
    tags: Sequence[str] = ...,
    name: str | None = ...,
    unique_for: float | dt.timedelta | None = ...,
    unique_until: str = ...,
    expires_in: float | dt.timedelta | None = ...,
    timeout: float | dt.timedelta | None = ...,
    encrypt: bool = ...,
    throttle: Throttle | None = ...,
    rate: Rate | None = ...,
) -> Callable[[Callable[P, R]], FunctionWorker[P, R]]: ...


def worker(
    fn: Callable[P, R] | None = None,
    /,
    *,
    queue: str = _UNSET,
    retry: bool | int = _UNSET,
    dead: bool = _UNSET,
    backtrace: bool | int = _UNSET,
    retry_queue: str | None = _UNSET,
    tags: Sequence[str] = _UNSET,
    name: str | None = _UNSET,
    unique_for: float | dt.timedelta | None = _UNSET,
    unique_until: str = _UNSET,
    expires_in: float | dt.timedelta | None = _UNSET,
    timeout: float | dt.timedelta | None = _UNSET,
    encrypt: bool = _UNSET,
    throttle: Throttle | None = _UNSET,
    rate: Rate | None = _UNSET,
) -> FunctionWorker[P, R] | Callable[[Callable[P, R]], FunctionWorker[P, R]]:
    """Makes a function (or an ``async def`` function) a worker: ``@worker`` or
    ``@worker(queue=..., retry=..., name=...)``."""
    options = WorkerOptions().updated(
        queue=queue, retry=retry, dead=dead, backtrace=backtrace, retry_queue=retry_queue, tags=tags, name=name,
        unique_for=unique_for, unique_until=unique_until, expires_in=expires_in, timeout=timeout, encrypt=encrypt,
        throttle=throttle, rate=rate,
    )

    def wrap(f: Callable[P, R]) -> FunctionWorker[P, R]:
        return FunctionWorker(f, options)

    return wrap(fn) if fn is not None else wrap


WorkerLike = type[Worker] | FunctionWorker[..., Any]
