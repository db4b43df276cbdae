"""Workers: the code that runs jobs, as classes or decorated functions.

A class-based worker is Sidekiq's ``include Sidekiq::Job``::

    class HardJob(Worker, queue="critical", retry=5, name="HardJob"):
        def perform(self, name: str, count: int) -> None: ...

A function worker is the decorator form::

    @worker(queue="events", retry=3, name="Billing::InvoiceJob")
    def invoice(invoice_id: int) -> None: ...

Either way ``X.new(*args)`` builds a :class:`~kiq.Job` (its arguments checked
against the signature of ``perform``, or of the function), and a
:class:`~kiq.Kiq` app given the worker runs jobs whose ``class`` is its name.
The name defaults to ``module.QualName``; set ``name=`` to answer to a Ruby
class name (``"HardJob"``, ``"Billing::InvoiceJob"``).

A worker registered in exactly one app also has Sidekiq's verbs, which enqueue
to that app: ``X.perform_async(*args)``, ``X.perform_in(seconds, *args)``,
``X.perform_at(when, *args)`` and ``X.set(queue=..., retry=...)``. The worker
keeps weak references to the apps that registered it; nothing is process-global.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import inspect
import sys
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Generic, ParamSpec, Protocol, TypeGuard, TypeVar, overload

from kiq import _kiq
from kiq.errors import ArgumentError, ConfigError
from kiq.job import DEFAULT_QUEUE, Enqueued, Job
from kiq.throttle import Rate, Throttle

if TYPE_CHECKING:
    from kiq.app import Kiq

__all__ = ["Configured", "FunctionWorker", "Worker", "WorkerOptions", "worker"]

P = ParamSpec("P")
R = TypeVar("R")

_UNSET: Any = object()

#: Positional arguments a callable takes: (fewest, most).
Arity = tuple[int, int]
_ANY_ARITY: Arity = (0, sys.maxsize)


def arity(fn: Callable[..., Any], *, method: bool) -> Arity:
    """How many positional arguments ``fn`` takes (``self`` left out for a method);
    any number when its signature cannot be read."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return _ANY_ARITY
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if method and params and params[0].kind in positional:
        params = params[1:]
    fewest = most = 0
    for p in params:
        if p.kind in positional:
            most += 1
            fewest += p.default is inspect.Parameter.empty
        elif p.kind is inspect.Parameter.VAR_POSITIONAL:
            most = sys.maxsize
    return fewest, most


def arguments_error(name: str, fn: Callable[..., Any], given: Sequence[Any], method: bool) -> ArgumentError:
    fewest, most = arity(fn, method=method)
    takes = f"{fewest}" if fewest == most else f"{fewest} to {most}" if most < sys.maxsize else f"at least {fewest}"
    try:
        params = [p for p in inspect.signature(fn).parameters][1 if method else 0:]
    except (TypeError, ValueError):
        params = []
    return ArgumentError(
        f"{name} takes {takes} argument{'s' if most != 1 else ''} ({', '.join(params)}), but the job was given "
        f"{len(given)}: {list(given)!r}"
    )


def bind(w: WorkerLike, app: Kiq) -> None:
    """Notes that ``app`` registered worker ``w`` (a weak reference, for the perform verbs)."""
    apps = bound_apps(w)
    if apps is None:
        apps = weakref.WeakSet()
        setattr(w, "_kiq_apps", apps)  # noqa: B010 - on this class only, never inherited
    apps.add(app)


def bound_apps(w: WorkerLike) -> weakref.WeakSet[Kiq] | None:
    found: weakref.WeakSet[Kiq] | None = (w.__dict__ if isinstance(w, type) else vars(w)).get("_kiq_apps")
    return found


def the_app(w: WorkerLike, verb: str) -> Kiq:
    """The one app ``w`` is registered in, for ``perform_async`` and the like."""
    apps = list(bound_apps(w) or ())
    if len(apps) == 1:
        return apps[0]
    name = w.__name__ if isinstance(w, type) else w.fn.__name__
    if not apps:
        raise ConfigError(
            f"{name}.{verb}() has no app to enqueue to: {name} is not registered in any kiq.Kiq. Register it "
            f"(Kiq(workers=[{name}]) or app.register({name})), or enqueue explicitly: app.enqueue({name}.new(...))"
        )
    raise ConfigError(
        f"{name}.{verb}() cannot choose between the {len(apps)} kiq.Kiq apps {name} is registered in "
        f"({', '.join(sorted(repr(a) for a in apps))}); enqueue explicitly on the one you mean: "
        f"app.enqueue({name}.new(...))"
    )


class _Performs(Protocol[P]):
    """What the verbs of a class worker take their argument types from: its ``perform``."""

    def perform(self, *args: P.args, **kwargs: P.kwargs) -> Any: ...


class Configured(Generic[P]):
    """A worker with options changed for the jobs built from it: what
    ``Worker.set(...)`` returns (Sidekiq's ``HardJob.set(queue: "critical")``).

    ``.new(*args)`` builds a job; ``perform_async``, ``perform_in`` and
    ``perform_at`` enqueue one to the app the worker is registered in.
    """

    def __init__(self, worker: WorkerLike, options: dict[str, Any]) -> None:
        self.worker = worker
        self.options = options
        worker.kiq_options.job(worker.wire_name(), ()).set(**options)  # bad options fail here, not later

    def new(self, *args: P.args, **kwargs: P.kwargs) -> Job:
        job: Job = self.worker.new(*args, **kwargs)
        return job.set(**self.options)

    def perform_async(self, *args: P.args, **kwargs: P.kwargs) -> Enqueued:
        """Enqueues a job to run now."""
        return the_app(self.worker, "perform_async").enqueue(self.new(*args, **kwargs))

    def perform_in(self, interval: float | dt.timedelta, *args: P.args, **kwargs: P.kwargs) -> Enqueued:
        """Enqueues a job to run ``interval`` seconds (or a timedelta) from now."""
        return the_app(self.worker, "perform_in").enqueue(self.new(*args, **kwargs), delay=interval)

    def perform_at(self, when: dt.datetime | float, *args: P.args, **kwargs: P.kwargs) -> Enqueued:
        """Enqueues a job to run at ``when`` (a datetime or epoch seconds)."""
        return the_app(self.worker, "perform_at").enqueue(self.new(*args, **kwargs), at=when)

    def __repr__(self) -> str:
        return f"<{self.worker.wire_name()} set {self.options}>"


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
    - ``hard_timeout``: seconds after which a run is stopped for sure, even
      a sync job spinning in Python or C code (Celery's ``time_limit``):
      under a swarm (``kiq run --processes N``), the parent kills the child
      running it and starts a new one; the job fails with
      :class:`~kiq.errors.JobTimeoutError` through the retry path, and the
      child's other running jobs go back to their queues. Needs a swarm: an
      app started without one refuses it.
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
    hard_timeout: float | None = None
    throttle: Throttle | None = None
    rate: Rate | None = None
    _payload: dict[str, Any] = dataclasses.field(init=False, repr=False, compare=False, default_factory=dict)
    _throttle: Throttle | None = dataclasses.field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        for name in ("unique_for", "expires_in", "timeout", "hard_timeout"):
            value = getattr(self, name)
            if isinstance(value, dt.timedelta):
                object.__setattr__(self, name, value.total_seconds())
        if self.throttle is not None and not isinstance(self.throttle, Throttle):
            raise ConfigError(f"throttle must be a kiq.Throttle(concurrency=..., key=...), not {self.throttle!r}")
        combined = self.throttle
        if self.rate is not None:
            combined = Throttle(rate=self.rate) if combined is None else combined.with_rate(self.rate)
        object.__setattr__(self, "_throttle", combined)
        _kiq.check_worker_options(self)  # every rule on the values lives in the core (worker.rs)
        # Written into every job: computed once.
        object.__setattr__(self, "_payload", self.payload_options())

    @property
    def throttled(self) -> Throttle | None:
        """The throttle the core applies: ``throttle`` with ``rate`` added."""
        return self._throttle

    def updated(self, **changes: Any) -> WorkerOptions:
        given = {k: v for k, v in changes.items() if v is not _UNSET}
        if "tags" in given and not isinstance(given["tags"], str):  # a str is refused by the check, not split
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
        return self.maker(name)(tuple(args))

    def maker(self, name: str) -> Callable[[tuple[Any, ...]], Job]:
        """What builds this worker's jobs (named ``name``) from their arguments."""
        return Job._maker(
            name, self.queue, self.retry, self._payload, self.unique_for, self.unique_until, self.expires_in,
            self.encrypt,
        )


#: What a worker's ``new()`` needs, bound once: (fewest, most arguments, job
#: maker, the options it was made from).
NewJobs = tuple[int, int, Callable[[tuple[Any, ...]], Job], WorkerOptions]


def new_jobs(w: WorkerLike) -> NewJobs:
    fewest, most = w._kiq_arity
    options = w.kiq_options
    return fewest, most, options.maker(w.wire_name()), options


class Worker:
    """Base class of class-based workers; override :meth:`perform`.

    Options are class keywords: ``class Mailer(Worker, queue="mail", retry=3)``.
    A subclass inherits its parent's options. Each job runs on a fresh
    instance, whose ``jid`` attribute is the job's id.
    """

    kiq_options: ClassVar[WorkerOptions] = WorkerOptions()
    #: Positional arguments ``perform`` takes, read once per class.
    _kiq_arity: ClassVar[Arity] = _ANY_ARITY
    #: What ``new()`` needs, made with the options (again if ``kiq_options`` is replaced).
    _kiq_new: ClassVar[NewJobs]
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
        hard_timeout: float | dt.timedelta | None = _UNSET,
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
            hard_timeout=hard_timeout,
            throttle=throttle, rate=rate,
        )
        cls._kiq_arity = arity(cls.perform, method=True)
        cls._kiq_new = new_jobs(cls)

    def perform(self, *args: Any) -> Any:
        """Runs one job with its arguments; raise to fail it. May be ``async def``."""
        raise NotImplementedError(f"{type(self).__qualname__} must define perform()")

    @classmethod
    def wire_name(cls) -> str:
        """The ``class`` name its jobs carry."""
        return cls.kiq_options.name or f"{cls.__module__}.{cls.__qualname__}"

    @classmethod
    def new(cls: type[_Performs[P]], *args: P.args, **kwargs: P.kwargs) -> Job:
        """A job for this worker with these arguments, which must fit ``perform``
        (else :class:`~kiq.errors.ArgumentError`, at once)."""
        w: Any = cls
        fewest, most, make, made_for = w._kiq_new
        if made_for is not w.kiq_options:
            fewest, most, make, made_for = w._kiq_new = new_jobs(w)
        if kwargs or not fewest <= len(args) <= most:
            raise _bad_arguments(w, args, kwargs)
        return make(args)  # type: ignore[no-any-return]

    @classmethod
    def perform_async(cls: type[_Performs[P]], *args: P.args, **kwargs: P.kwargs) -> Enqueued:
        """Enqueues a job to run now, to the one app this worker is registered in
        (Sidekiq's ``perform_async``); ``app.enqueue(X.new(...))`` names the app."""
        w: Any = cls
        return the_app(w, "perform_async").enqueue(w.new(*args, **kwargs))

    @classmethod
    def perform_in(
        cls: type[_Performs[P]], interval: float | dt.timedelta, *args: P.args, **kwargs: P.kwargs
    ) -> Enqueued:
        """Enqueues a job to run ``interval`` seconds (or a timedelta) from now."""
        w: Any = cls
        return the_app(w, "perform_in").enqueue(w.new(*args, **kwargs), delay=interval)

    @classmethod
    def perform_at(cls: type[_Performs[P]], when: dt.datetime | float, *args: P.args, **kwargs: P.kwargs) -> Enqueued:
        """Enqueues a job to run at ``when`` (a datetime or epoch seconds)."""
        w: Any = cls
        return the_app(w, "perform_at").enqueue(w.new(*args, **kwargs), at=when)

    @classmethod
    def set(cls: type[_Performs[P]], **options: Any) -> Configured[P]:
        """This worker with options changed for the next jobs (``queue``, ``retry``,
        ``unique_for``, ``expires_in``, or payload fields such as ``tags``):
        ``HardJob.set(queue="critical").perform_async("bob", 5)``."""
        return Configured(cls, options)  # type: ignore[arg-type]


Worker._kiq_new = new_jobs(Worker)


def is_worker(value: object) -> TypeGuard[WorkerLike]:
    """Whether ``value`` is a worker class or a function worker."""
    return isinstance(value, FunctionWorker) or (isinstance(value, type) and issubclass(value, Worker))


def check_arguments(w: WorkerLike, args_list: Sequence[Sequence[Any]]) -> None:
    """Raises :class:`~kiq.errors.ArgumentError` for the first argument list that does not fit ``w``."""
    fewest, most = w._kiq_arity
    for args in args_list:
        if not fewest <= len(args) <= most:
            raise _bad_arguments(w, tuple(args), {})


def _bad_arguments(w: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> ArgumentError | ConfigError:
    if kwargs:
        return ConfigError(
            f"{w.wire_name()}.new() takes positional arguments only (Sidekiq jobs have no keyword arguments); "
            f"got {sorted(kwargs)}"
        )
    if isinstance(w, FunctionWorker):
        return arguments_error(f"{w.fn.__name__}()", w.fn, args, method=False)
    return arguments_error(f"{w.__name__}.perform()", w.perform, args, method=True)


class FunctionWorker(Generic[P, R]):
    """A function turned into a worker by :func:`worker`.

    Calling it calls the function; ``.new(*args)`` builds a job for it.
    """

    def __init__(self, fn: Callable[P, R], options: WorkerOptions) -> None:
        self.fn = fn
        self.kiq_options = options
        self._kiq_arity = arity(fn, method=False)
        self._kiq_new = new_jobs(self)
        functools.update_wrapper(self, fn)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.fn(*args, **kwargs)

    def wire_name(self) -> str:
        return self.kiq_options.name or f"{self.fn.__module__}.{self.fn.__qualname__}"

    def new(self, *args: P.args, **kwargs: P.kwargs) -> Job:
        """A job calling the function with these positional arguments, which must
        fit its signature (else :class:`~kiq.errors.ArgumentError`, at once).

        Sidekiq jobs carry positional arguments only; pass a dict as the last
        argument where keyword-style data is wanted.
        """
        fewest, most, make, made_for = self._kiq_new
        if made_for is not self.kiq_options:
            fewest, most, make, made_for = self._kiq_new = new_jobs(self)
        if kwargs or not fewest <= len(args) <= most:
            raise _bad_arguments(self, args, kwargs)
        return make(args)

    def perform_async(self, *args: P.args, **kwargs: P.kwargs) -> Enqueued:
        """Enqueues a job to run now, to the one app this worker is registered in."""
        return the_app(self, "perform_async").enqueue(self.new(*args, **kwargs))

    def perform_in(self, interval: float | dt.timedelta, *args: P.args, **kwargs: P.kwargs) -> Enqueued:
        """Enqueues a job to run ``interval`` seconds (or a timedelta) from now."""
        return the_app(self, "perform_in").enqueue(self.new(*args, **kwargs), delay=interval)

    def perform_at(self, when: dt.datetime | float, *args: P.args, **kwargs: P.kwargs) -> Enqueued:
        """Enqueues a job to run at ``when`` (a datetime or epoch seconds)."""
        return the_app(self, "perform_at").enqueue(self.new(*args, **kwargs), at=when)

    def set(self, **options: Any) -> Configured[P]:
        """This worker with options changed for the next jobs; see :meth:`Worker.set`."""
        return Configured(self, options)

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
    hard_timeout: float | dt.timedelta | None = ...,
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
    hard_timeout: float | dt.timedelta | None = _UNSET,
    throttle: Throttle | None = _UNSET,
    rate: Rate | None = _UNSET,
) -> FunctionWorker[P, R] | Callable[[Callable[P, R]], FunctionWorker[P, R]]:
    """Makes a function (or an ``async def`` function) a worker: ``@worker`` or
    ``@worker(queue=..., retry=..., name=...)``."""
    options = WorkerOptions().updated(
        queue=queue, retry=retry, dead=dead, backtrace=backtrace, retry_queue=retry_queue, tags=tags, name=name,
        unique_for=unique_for, unique_until=unique_until, expires_in=expires_in, timeout=timeout, encrypt=encrypt,
        hard_timeout=hard_timeout,
        throttle=throttle, rate=rate,
    )

    def wrap(f: Callable[P, R]) -> FunctionWorker[P, R]:
        return FunctionWorker(f, options)

    return wrap(fn) if fn is not None else wrap


WorkerLike = type[Worker] | FunctionWorker[..., Any]
