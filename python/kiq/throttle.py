"""Throttles: worker options that cap a class's jobs per key, cluster-wide.

::

    class SyncAccount(Worker, throttle=Throttle(concurrency=1, key=lambda account_id, *_: f"acct-{account_id}")):
        ...                                     # one job per account at a time, across every process

    class CallPartner(Worker, rate=(10, 1)):    # at most 10 starts per second, across every process
        ...

The core checks them when it fetches jobs, before any takes a thread: a job
over its throttle is parked in the schedule set for a short pause that grows
each time (not a retry, not a failure), the jobs behind it in the queue go on,
and when a job of its key ends the next parked one comes back at once. A key
function, if given, runs once per job with the job's arguments.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from kiq import _kiq
from kiq.errors import ConfigError

__all__ = ["Rate", "Throttle", "rate_parts"]

#: ``(count, period_seconds)``: at most ``count`` starts in any ``period``.
Rate = tuple[int, int | float | dt.timedelta]


def rate_parts(rate: Rate | None) -> tuple[Any, Any]:
    """``(count, period)`` of a ``rate`` option (checked by the core)."""
    if rate is None:
        return None, None
    if not isinstance(rate, tuple) or len(rate) != 2:
        raise ConfigError(f"rate must be (count, period_seconds), e.g. (10, 1), not {rate!r}")
    return rate


class Throttle:
    """At most ``concurrency`` running jobs of a worker per key, and/or at
    most ``rate=(count, period_seconds)`` starts per key, cluster-wide.

    ``key(*args)`` returns the key (a str or int) from the job's arguments;
    without it the whole class shares one key. ``lock_timeout`` (seconds):
    how long a dead process's jobs keep their room (running jobs refresh it).
    """

    __slots__ = ("_spec",)

    def __init__(
        self,
        concurrency: int | None = None,
        *,
        key: Callable[..., str | int] | None = None,
        rate: Rate | None = None,
        lock_timeout: int | float | dt.timedelta = 60,
    ) -> None:
        count, period = rate_parts(rate)
        self._spec = _kiq.Throttle(
            concurrency=concurrency, key=key, rate_count=count, rate_period=period, lock_timeout=lock_timeout
        )

    @property
    def concurrency(self) -> int | None:
        return self._spec.concurrency

    @property
    def rate(self) -> tuple[int, float] | None:
        return self._spec.rate

    @property
    def key(self) -> Callable[..., str | int] | None:
        return self._spec.key

    @property
    def lock_timeout(self) -> float:
        return self._spec.lock_timeout

    def with_rate(self, rate: Rate) -> Throttle:
        """This throttle with a ``rate`` added (the ``rate=`` worker option)."""
        if self.rate is not None:
            raise ConfigError("give the rate once: in Throttle(rate=...) or as the worker's rate=, not both")
        return Throttle(self.concurrency, key=self.key, rate=rate, lock_timeout=self.lock_timeout)

    @property
    def spec(self) -> _kiq.Throttle:
        """The core's checked form."""
        return self._spec

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Throttle):
            return NotImplemented
        return (self.concurrency, self.rate, self.key, self.lock_timeout) == (
            other.concurrency, other.rate, other.key, other.lock_timeout)

    def __hash__(self) -> int:
        return hash((self.concurrency, self.rate, self.lock_timeout))

    def __repr__(self) -> str:
        return repr(self._spec)
