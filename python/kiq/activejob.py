"""Jobs for Ruby ActiveJob classes, and ActiveJob jobs run by Python workers.

Rails' Sidekiq adapter pushes a *wrapper* job: ``class`` is
``ActiveJob::QueueAdapters::SidekiqAdapter::JobWrapper`` (``Sidekiq::ActiveJob::Wrapper``
from Sidekiq 8), ``wrapped`` the ActiveJob class, and ``args`` one hash holding
the job's ActiveJob-encoded ``arguments``. kiq reads both wrapper names: a
Python worker named as the ActiveJob class (``name="WelcomeJob"``) runs such
jobs with their arguments decoded, Ruby keyword arguments passed as keyword
arguments. :func:`active_job` builds the wrapper job for a Ruby ActiveJob class.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from kiq import _kiq
from kiq.errors import ConfigError
from kiq.job import DEFAULT_QUEUE, Job

__all__ = ["SIDEKIQ_WRAPPER", "WRAPPER", "active_job", "is_wrapper"]

#: The wrapper class Rails writes (Rails 6 and 7); Sidekiq 7.3+ and 8 define it too.
WRAPPER = _kiq.ACTIVE_JOB_WRAPPER
#: The wrapper class Sidekiq 8's adapter writes; Sidekiq before 7.3.3 does not know it.
SIDEKIQ_WRAPPER = _kiq.SIDEKIQ_ACTIVE_JOB_WRAPPER


def is_wrapper(class_name: str) -> bool:
    return class_name in (WRAPPER, SIDEKIQ_WRAPPER)


def active_job(
    job_class: str,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    *,
    queue: str = DEFAULT_QUEUE,
    retry: bool | int = True,
    priority: int | None = None,
    locale: str = "en",
    timezone: str = "UTC",
    wrapper: str = WRAPPER,
    **options: Any,
) -> Job:
    """A job that runs Ruby ActiveJob class ``job_class`` (``perform_later``'s equivalent)::

        app.enqueue(active_job("WelcomeJob", [user_id], {"locale": "de"}, queue="mailers"))

    runs ``WelcomeJob#perform(user_id, locale: "de")`` in a Rails app whose
    ActiveJob adapter is Sidekiq. ``args`` and ``kwargs`` follow Sidekiq's
    JSON rules; dicts arrive as string-keyed hashes, ``kwargs`` as keyword
    arguments. ``wrapper`` may be :data:`SIDEKIQ_WRAPPER` for a cluster on
    Sidekiq 8 only. Other ``options`` become payload fields, as in :class:`Job`.
    """
    if not isinstance(job_class, str) or not job_class:
        raise ConfigError(f"active_job() needs the ActiveJob class name, not {job_class!r}")
    if not is_wrapper(wrapper):
        raise ConfigError(f"wrapper must be {WRAPPER!r} or {SIDEKIQ_WRAPPER!r}, not {wrapper!r}")
    if isinstance(args, (str, bytes)) or not isinstance(args, Sequence):
        raise ConfigError(f"active_job() args must be a list or tuple, not {type(args).__name__}")
    if kwargs is not None and not isinstance(kwargs, Mapping):
        raise ConfigError(f"active_job() kwargs must be a dict, not {type(kwargs).__name__}")
    if priority is not None and (isinstance(priority, bool) or not isinstance(priority, int)):
        raise ConfigError(f"priority must be an int or None, not {priority!r}")
    envelope = _kiq.active_job_args(job_class, list(args), None if kwargs is None else dict(kwargs), queue=queue,
                                    priority=priority, locale=locale, timezone=timezone)
    return Job(wrapper, envelope, queue=queue, retry=retry, options={"wrapped": job_class, **options})
