"""Testing kiq code without Redis: sandbox mode, assertions, and ``drain``.

    from kiq import Kiq
    from kiq.testing import assert_enqueued, drain

    def test_signup_sends_mail():
        app = Kiq(test_mode="sandbox", workers=[WelcomeMail])
        signup(app, "ada@example.com")
        assert_enqueued(app, WelcomeMail, args=["ada@example.com"])
        drain(app)                       # runs it inline, through the real worker

The pytest plugin (installed with kiq) gives the fixtures ``kiq_sandbox`` (a
sandboxed app) and ``kiq_redis`` (a real redis-server on a free port, for
tests that want one). Matching takes any subset of ``class_name`` (or a
worker), ``args``, ``kwargs``, ``queue``, ``at`` and ``delay`` (times within a second).
ActiveJob jobs are listed and matched as their job class and plain arguments.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import time
from collections.abc import Iterator, Sequence
from typing import Any, TypedDict, Unpack

from kiq import _kiq
from kiq.activejob import is_wrapper
from kiq.aio import AsyncRunner
from kiq.app import Kiq
from kiq.errors import ConfigError
from kiq.processor import Processor
from kiq.reporters import ReporterThread
from kiq.redis_server import RedisServer
from kiq.sandbox import Sandbox, SandboxJob, _scope, current_scope
from kiq.tracing import TRACE_FIELDS
from kiq.worker import WorkerLike, is_worker

__all__ = [
    "RedisServer",
    "Match",
    "SandboxJob",
    "assert_enqueued",
    "clear",
    "drain",
    "enqueued",
    "refute_enqueued",
    "sandbox_scope",
    "sandboxed",
    "wait_until",
]

def _sandbox(app: Kiq) -> Any:
    box = app._sandbox
    if box is None:
        raise ConfigError("kiq.testing needs an app in sandbox mode: Kiq(test_mode=\"sandbox\")")
    return box


def enqueued(app: Kiq, *, scope: str = "sandbox", state: str | None = "queued") -> list[SandboxJob]:
    """Jobs waiting to run, oldest first: this thread's (or :func:`sandbox_scope`'s), or every
    one with ``scope="shared"``. ``state="retry"`` or ``"dead"`` lists failed jobs
    instead; ``state=None`` lists all."""
    if scope not in ("sandbox", "shared"):
        raise ConfigError(f'scope must be "sandbox" or "shared", not {scope!r}')
    return list(_sandbox(app).select(scope, state))


def _name(worker: WorkerLike | str | None, class_name: str | None) -> str | None:
    if worker is None:
        return class_name
    if isinstance(worker, str):
        return worker
    if is_worker(worker):
        return worker.wire_name()
    raise ConfigError(f"expected a worker or a class name, not {worker!r}")


def _matches(job: SandboxJob, want: dict[str, Any]) -> bool:
    for key, value in want.items():
        if key == "class_name" and job.class_name != value:
            return False
        if key == "args" and job.args != list(value):
            return False
        if key == "kwargs" and job.kwargs != dict(value):
            return False
        if key == "queue" and job.queue != value:
            return False
        if key == "at":
            at = value.timestamp() if hasattr(value, "timestamp") else value
            if job.at is None or abs(job.at - float(at)) > 1.0:
                return False
        if key == "delay":
            secs = value.total_seconds() if hasattr(value, "total_seconds") else value
            if job.delay is None or abs(job.delay - float(secs)) > 1.0:
                return False
    return True


class Match(TypedDict, total=False):
    """What :func:`assert_enqueued` and :func:`refute_enqueued` compare; absent keys match anything."""

    class_name: str
    args: Sequence[Any]
    #: Keyword arguments of an ActiveJob job (built with :func:`kiq.activejob.active_job`).
    kwargs: dict[str, Any]
    queue: str
    #: Run time: a datetime or epoch seconds (within a second).
    at: dt.datetime | float
    #: Seconds (or a timedelta) from the enqueue to the run time (within a second).
    delay: dt.timedelta | float
    #: ``"sandbox"`` (this thread's or scope's jobs, the default) or ``"shared"`` (all).
    scope: str


def _find(app: Kiq, worker: WorkerLike | str | None, match: Match) -> tuple[dict[str, Any], list[SandboxJob]]:
    unknown = set(match) - set(Match.__annotations__)
    if unknown:
        raise ConfigError(f"unknown field(s) {sorted(unknown)} to match on; use {sorted(Match.__annotations__)}")
    want: dict[str, Any] = {k: v for k, v in match.items() if k != "scope"}
    name = _name(worker, match.get("class_name"))
    if name is not None:
        want["class_name"] = name
    jobs = enqueued(app, scope=match.get("scope", "sandbox"))
    return want, [j for j in jobs if _matches(j, want)]


def assert_enqueued(app: Kiq, worker: WorkerLike | str | None = None, /, **match: Unpack[Match]) -> SandboxJob:
    """Asserts a waiting job matches every given field (and ``worker``); returns the first that does."""
    want, found = _find(app, worker, match)
    if found:
        return found[0]
    jobs = enqueued(app, scope=match.get("scope", "sandbox"))
    seen = "\n  ".join(f"{j.class_name}{j.args} queue={j.queue} at={j.at}" for j in jobs) or "(none)"
    raise AssertionError(f"no enqueued job matches {want}; enqueued:\n  {seen}")


def refute_enqueued(app: Kiq, worker: WorkerLike | str | None = None, /, **match: Unpack[Match]) -> None:
    """Asserts no waiting job matches every given field (and ``worker``)."""
    want, found = _find(app, worker, match)
    if found:
        job = found[0]
        raise AssertionError(f"expected no job matching {want}, but {job.class_name}{job.args} was enqueued")


def clear(app: Kiq, *, scope: str = "sandbox") -> None:
    """Forgets the sandbox's jobs (this scope's, or every one with ``scope="shared"``)."""
    _sandbox(app).clear(scope)


@contextlib.contextmanager
def sandboxed(app: Kiq) -> Iterator[Kiq]:
    """Puts an existing app (the one your code enqueues to) in sandbox mode for
    the block, with an empty sandbox; its Redis client is not used inside."""
    if app.running:
        raise ConfigError("cannot sandbox a running Kiq; stop it first")
    saved = app._sandbox
    app._sandbox = Sandbox()
    try:
        yield app
    finally:
        app._sandbox = saved


@contextlib.contextmanager
def sandbox_scope() -> Iterator[None]:
    """A scope of its own for the jobs enqueued inside (an asyncio task, say)."""
    token = _scope.set(object())
    try:
        yield
    finally:
        _scope.reset(token)


class _Delivery:
    """What the processor reads of a job, for one sandboxed run."""

    def __init__(self, job: SandboxJob) -> None:
        item = job.item
        self.job = job
        self.class_name = job.class_name
        self.jid = job.jid
        self.queue = job.queue
        self.lane = 0
        # An ActiveJob job's arguments, as the sandbox unwrapped them, and an encrypted job's in clear,
        # as a worker gets them; else the payload's.
        self.encrypted = job.encrypted
        self.args = (list(job.args) if job.encrypted or is_wrapper(item.get("class", ""))
                     else list(item.get("args", [])))
        self.kwargs = job.kwargs
        self.trace_context = [(k, v) for k in TRACE_FIELDS if isinstance(v := item.get(k), str)]
        self.retry_count = item.get("retry_count")
        self.enqueued_at = item.get("enqueued_at")
        self.expires_at = item.get("expires_at")
        overrated = item.get("overrated")
        self.overrated = overrated if isinstance(overrated, int) and overrated > 0 else 0
        self.admitted_at = None
        self.payload = job.payload
        # Batches need Redis: no sandboxed job belongs to one.
        self.bid: str | None = None
        self.batch_chain: list[str] = []
        self.batch_event: str | None = None
        self.batch_invalidated = False
        #: Completed, failed, expired or abandoned.
        self.settled = False

    def clock_start(self) -> None:
        """An async job's coroutine starts (run times are not kept here)."""

    def clock_stop(self) -> None:
        """An async job's coroutine ended."""


@dataclasses.dataclass
class _DrainServer:
    """The processor's server, in memory: runs the given jobs, applies the retry path."""

    app: Kiq
    pending: list[SandboxJob]
    ran: int = 0

    def next_job(self, lane: int, timeout: float | None = None) -> _Delivery | None:
        return _Delivery(self.pending.pop(0)) if self.pending else None

    def is_cancelled(self, d: _Delivery) -> bool:
        return False

    def complete(self, d: _Delivery) -> None:
        d.settled = True
        self.ran += 1
        _sandbox(self.app).remove(d.job)

    def expire(self, d: _Delivery) -> None:
        d.settled = True
        _sandbox(self.app).remove(d.job)

    def abandon(self, d: _Delivery) -> None:
        d.settled = True

    def reschedule(self, d: _Delivery, max_reschedules: int = 20, delay: float | None = None) -> float | None:
        """Over a rate limit: rescheduled as the core would (it runs again in this drain)."""
        decided = _kiq.decide_reschedule(d.job.payload, max_reschedules=max_reschedules, delay=delay)
        if decided is None:
            return None
        d.settled = True
        self.ran += 1
        d.job.at, d.job.payload = decided
        d.job.state = "queued"
        return decided[0]

    def wants_backtrace(self, d: _Delivery) -> bool:
        return True  # the core keeps it or not, by the job's and its worker's options

    def fail(self, d: _Delivery, error_class: str, error_message: str, backtrace: list[str] | None = None) -> _kiq.Fate:
        d.settled = True
        self.ran += 1
        reg = self.app.workers.get(d.class_name)
        fate, payload = _kiq.decide_failure(
            d.job.payload, d.queue, error_class, error_message, backtrace=backtrace,
            worker=reg.options if reg is not None else None, max_retries=self.app.max_retries,
            timestamps=self.app.timestamps,
        )
        job = d.job
        if payload is None:
            _sandbox(self.app).remove(job)
            return fate
        job.payload, job.at = payload, fate.retry_at
        job.queue = json.loads(payload).get("queue", job.queue)
        job.state = fate.went
        return fate


def drain(app: Kiq, *, scope: str = "sandbox", retries: bool = True, max_runs: int = 10_000) -> int:
    """Runs the enqueued jobs inline, through the real worker code, the app's
    reporters and Sidekiq's retry rules, until none is left to run (jobs the
    running ones enqueue run too). With ``retries``, a failed job is retried
    at once (its backoff skipped) until it succeeds or dies; dead jobs stay in
    the sandbox with ``state == "dead"``. Scheduled jobs run regardless of
    their time. Returns how many runs there were."""
    box = _sandbox(app)
    token = _scope.set(current_scope())  # jobs the async ones enqueue (on the loop thread) land here too
    reporters = app._start_reporters()
    aio = AsyncRunner() if any(w.is_async for w in app.workers.values()) else None
    total = 0
    try:
        while total < max_runs:
            states = ("queued", "retry") if retries else ("queued",)
            batch = [j for j in box.select(scope, None) if j.state in states]
            if not batch:
                break
            for j in batch:
                j.state = "running"
            server = _DrainServer(app, batch)
            Processor(server, app.workers, reporters, aio, app._tracing,  # type: ignore[arg-type]
                      app=app, limiters=app.limiter).run_lane(0)
            total += server.ran
            for j in batch:  # a job whose run was abandoned goes back to waiting
                if j.state == "running":
                    j.state = "queued"
    finally:
        _scope.reset(token)
        if aio is not None:
            aio.close()
        app._stop_reporters(reporters)
    return total


def wait_until(predicate: Any, timeout: float = 5.0) -> bool:
    """Polls ``predicate`` until true or ``timeout``; for tests of code that enqueues from other threads."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True

