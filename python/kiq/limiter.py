"""Rate limiters, cluster-wide through Redis (Sidekiq Enterprise's kinds).

``app.limiter`` makes them; each is one Redis round trip per use while there
is room, in sync or async code, inside jobs or anywhere else (a web request)::

    stripe = app.limiter.concurrent("stripe", 5, wait_timeout=5, lock_timeout=30)
    with stripe.within_limit():                 # at most 5 at once, across every process
        charge(card)

    github = app.limiter.bucket("github", 5000, "hour")
    async with github.within_limit():           # never blocks the event loop
        await fetch(url)

    gql = app.limiter.points("shopify", 1000, "minute")
    with gql.within_limit(points=50): ...

When there is no room within ``wait_timeout`` seconds,
:class:`~kiq.errors.OverLimit` is raised. Raised inside a job (and not caught
there), it reschedules the job instead of failing it: ``overrated`` counts the
reschedules, the delay is ``300 * overrated + rand(300) + 1`` seconds unless
``backoff`` says otherwise, and after ``reschedule`` times (20; 0: never) the
job takes the normal retry path. Limiters are kiq's own: they never share
state with Ruby Sidekiq Enterprise's, even on the same Redis.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

from kiq import _kiq
from kiq.errors import ConfigError, KiqError, OverLimit

if TYPE_CHECKING:
    from kiq.app import Kiq
    from kiq.reporters import JobInfo

__all__ = ["Backoff", "Hold", "Limiter", "Limiters"]

logger = logging.getLogger("kiq")

Seconds = int | float | dt.timedelta
Interval = str | int | float | dt.timedelta
#: ``backoff(limiter, job, error) -> seconds`` (``job.overrated``: reschedules so far).
Backoff = Callable[["Limiter | None", "JobInfo", OverLimit], float]


def _check_backoff(backoff: Backoff | None, reschedule: int | None) -> None:
    if backoff is not None and not callable(backoff):
        raise ConfigError(f"backoff must be a function (limiter, job, error) -> seconds, not {backoff!r}")
    if reschedule is not None and (isinstance(reschedule, bool) or not isinstance(reschedule, int) or reschedule < 0):
        raise ConfigError(f"reschedule must be an int >= 0 (0: never reschedule), not {reschedule!r}")


class Limiter:
    """One limiter; use :meth:`within_limit`. Cheap to make (no Redis round
    trip), so per-call names like ``f"stripe-{account_id}"`` are fine."""

    __slots__ = ("_core", "backoff", "reschedule")

    def __init__(self, core: _kiq.Limiter, backoff: Backoff | None = None, reschedule: int | None = None) -> None:
        _check_backoff(backoff, reschedule)
        self._core = core
        #: Chooses a job's delay when this limiter reschedules it (None: the app's, else the default).
        self.backoff = backoff
        #: Reschedules before the retry path (None: the app's, 20 by default).
        self.reschedule = reschedule

    @property
    def kind(self) -> str:
        return self._core.kind

    @property
    def name(self) -> str:
        return self._core.name

    @property
    def capacity(self) -> int:
        """Its size, count or points (0 for unlimited)."""
        return self._core.capacity

    @property
    def interval(self) -> float:
        """Seconds: its period, window or drain time (a concurrent limiter's lock timeout)."""
        return self._core.interval

    @property
    def wait_timeout(self) -> float:
        return self._core.wait_timeout

    def within_limit(self, points: int = 1) -> Hold:
        """A context manager (``with`` or ``async with``) holding room for its
        block: ``points`` of it for bucket, window, leaky and points limiters.
        Entering waits up to ``wait_timeout`` (without the GIL, or without
        blocking the event loop), then raises :class:`~kiq.errors.OverLimit`."""
        return Hold(self, points)

    def __repr__(self) -> str:
        return repr(self._core)


class Hold:
    """Room in a limiter for one block (:meth:`Limiter.within_limit`)."""

    __slots__ = ("_grant", "_limiter", "_points", "acquired_at")

    def __init__(self, limiter: Limiter, points: int) -> None:
        self._limiter = limiter
        self._points = points
        self._grant: _kiq.Grant | None = None
        #: When the room was taken (epoch seconds, Redis's clock; 0.0 for an
        #: unlimited limiter), once the block was entered.
        self.acquired_at: float | None = None

    def _over(self, exc: OverLimit) -> OverLimit:
        exc.limiter = self._limiter  # type: ignore[attr-defined]  # read when a job is rescheduled
        return exc

    def __enter__(self) -> Hold:
        try:
            self._grant = self._limiter._core.acquire(self._points)
        except OverLimit as exc:
            raise self._over(exc) from None
        self.acquired_at = self._grant.acquired_at
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        grant, self._grant = self._grant, None
        if grant is not None:
            try:
                self._limiter._core.release(grant)
            except KiqError as err:
                self._release_failed(err, exc)

    async def __aenter__(self) -> Hold:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[_kiq.Grant] = loop.create_future()
        core = self._limiter._core

        def settle(grant: _kiq.Grant | None, error: BaseException | None) -> None:
            if fut.cancelled():
                if grant is not None:  # the caller gave up meanwhile: give the room back
                    core.release_async(grant, _ignore)
            elif error is not None:
                fut.set_exception(self._over(error) if isinstance(error, OverLimit) else error)
            else:
                assert grant is not None
                fut.set_result(grant)

        core.acquire_async(self._points, lambda g, e: loop.call_soon_threadsafe(settle, g, e))
        self._grant = await fut
        self.acquired_at = self._grant.acquired_at
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        grant, self._grant = self._grant, None
        if grant is None:
            return
        loop = asyncio.get_running_loop()
        done: asyncio.Future[bool] = loop.create_future()

        def settle(ok: bool | None, error: BaseException | None) -> None:
            if done.cancelled():
                return
            if error is not None:
                done.set_exception(error)
            else:
                done.set_result(bool(ok))

        self._limiter._core.release_async(grant, lambda ok, e: loop.call_soon_threadsafe(settle, ok, e))
        try:
            await done
        except KiqError as err:
            self._release_failed(err, exc)

    def _release_failed(self, err: KiqError, raised: BaseException | None) -> None:
        """A release Redis did not take: the slot frees itself after ``lock_timeout``. Raised, unless the
        block raised already (its own error is the one to see)."""
        if raised is None:
            raise err
        logger.warning("kiq: could not give back room in %r (it frees itself after lock_timeout): %s",
                       self._limiter, err)


def _ignore(_result: Any, _error: BaseException | None) -> None:
    pass


class Limiters:
    """``app.limiter``: makes limiters on the app's Redis (in a sandboxed
    app they always have room), and holds the defaults for jobs rescheduled
    over a limit: ``backoff`` (None: Sidekiq Enterprise's formula) and
    ``reschedule`` (20)."""

    def __init__(self, app: Kiq) -> None:
        self._app = app
        self.backoff: Backoff | None = None
        self.reschedule: int = _kiq.DEFAULT_MAX_RESCHEDULES

    def configure(self, *, backoff: Backoff | None = None, reschedule: int | None = None) -> None:
        """Sets the app-wide defaults for rescheduled jobs."""
        _check_backoff(backoff, reschedule)
        self.backoff = backoff
        if reschedule is not None:
            self.reschedule = reschedule

    def _make(self, kind: str, name: str, backoff: Backoff | None, reschedule: int | None, **params: Any) -> Limiter:
        client = None if self._app.test_mode == "sandbox" else self._app.client
        return Limiter(_kiq.Limiter(client, kind, name, **params), backoff, reschedule)

    def concurrent(
        self, name: str, size: int, *, wait_timeout: Seconds = 5, lock_timeout: Seconds = 30,
        backoff: Backoff | None = None, reschedule: int | None = None,
    ) -> Limiter:
        """At most ``size`` holders at once; a holder that dies frees its slot after ``lock_timeout``."""
        return self._make("concurrent", name, backoff, reschedule, size=size, wait_timeout=wait_timeout,
                          lock_timeout=lock_timeout)

    def bucket(
        self, name: str, count: int, interval: str, *, wait_timeout: Seconds = 5,
        backoff: Backoff | None = None, reschedule: int | None = None,
    ) -> Limiter:
        """At most ``count`` per calendar ``"second"``, ``"minute"``, ``"hour"`` or ``"day"`` (UTC)."""
        return self._make("bucket", name, backoff, reschedule, size=count, interval=interval,
                          wait_timeout=wait_timeout)

    def window(
        self, name: str, count: int, interval: Interval, *, wait_timeout: Seconds = 5,
        backoff: Backoff | None = None, reschedule: int | None = None,
    ) -> Limiter:
        """At most ``count`` in any ``interval`` (seconds, or a calendar name): a sliding window."""
        return self._make("window", name, backoff, reschedule, size=count, interval=interval,
                          wait_timeout=wait_timeout)

    def leaky(
        self, name: str, size: int, interval: Interval, *, wait_timeout: Seconds = 5,
        backoff: Backoff | None = None, reschedule: int | None = None,
    ) -> Limiter:
        """Bursts of up to ``size``, then ``size`` per ``interval`` as the bucket drains."""
        return self._make("leaky", name, backoff, reschedule, size=size, interval=interval,
                          wait_timeout=wait_timeout)

    def points(
        self, name: str, points: int, interval: Interval, *, wait_timeout: Seconds = 5,
        backoff: Backoff | None = None, reschedule: int | None = None,
    ) -> Limiter:
        """A budget of ``points`` refilled at ``points`` per ``interval``; each
        ``within_limit(points=n)`` takes ``n`` (GraphQL-style cost budgets)."""
        return self._make("points", name, backoff, reschedule, size=points, interval=interval,
                          wait_timeout=wait_timeout)

    def unlimited(self, name: str = "unlimited") -> Limiter:
        """Always has room, never touches Redis (tests, or a limit switched off)."""
        return Limiter(_kiq.Limiter(None, "unlimited", name))
