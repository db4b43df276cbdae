"""Running one job: find its worker, call it, report the outcome to the core.

This is the per-job hot path of every worker thread, so it is written for
speed: no Redis round trip (the core batches results), no logging call
unless the logger is enabled, and locals bound once per thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import inspect
import logging
import math
import time
import traceback
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from kiq import _kiq
from kiq.aio import AsyncRunner, clocked
from kiq.errors import JobCancelledError, JobTimeoutError, OverLimit, Shutdown, UnknownWorkerError
from kiq.batch import BatchStatus
from kiq.logs import _app, _current, _server
from kiq.reporters import JobInfo, ReporterThread
from kiq.tracing import Tracing
from kiq.worker import FunctionWorker, Worker, WorkerLike, WorkerOptions

if TYPE_CHECKING:
    from kiq.limiter import Limiters

__all__ = ["HardLimits", "Processor", "Registered", "register"]

#: Jobs a thread runs from the core per call of ``run_ready`` at most.
READY_BATCH = 64

logger = logging.getLogger("kiq")

UNREADABLE_MESSAGE = "!!! ERROR MESSAGE THREW AN ERROR !!!"
#: How a cancelled async job ends (a stop's deadline, unless cancelled on request).
CANCELLED = (asyncio.CancelledError, concurrent.futures.CancelledError)


@dataclasses.dataclass(frozen=True, slots=True)
class Registered:
    """A worker as the processor sees it."""

    name: str
    options: WorkerOptions
    #: Runs one job, ``call(args, jid, kwargs)``; for an async worker it returns the coroutine.
    #: ``kwargs`` is None except for ActiveJob jobs with Ruby keyword arguments.
    call: Callable[[list[Any], str, dict[str, Any] | None], Any]
    is_async: bool = False
    #: The worker class or function worker registered (registering it again is a no-op).
    source: object = dataclasses.field(default=None, compare=False)


def register(w: WorkerLike) -> Registered:
    """The processor's view of a worker class or function worker."""
    if isinstance(w, type) and issubclass(w, Worker):
        cls = w

        def call(args: list[Any], jid: str, kwargs: dict[str, Any] | None) -> Any:
            instance = cls()
            instance.jid = jid
            return instance.perform(*args) if kwargs is None else instance.perform(*args, **kwargs)

        return Registered(cls.wire_name(), cls.kiq_options, call, inspect.iscoroutinefunction(cls.perform), cls)
    if isinstance(w, FunctionWorker):
        fn = w.fn
        def call_fn(args: list[Any], _jid: str, kwargs: dict[str, Any] | None) -> Any:
            return fn(*args) if kwargs is None else fn(*args, **kwargs)

        return Registered(w.wire_name(), w.kiq_options, call_fn, inspect.iscoroutinefunction(fn), w)
    raise TypeError(f"{w!r} is not a kiq worker: subclass kiq.Worker or decorate a function with @kiq.worker")


class HardLimits(Protocol):
    """Told when a job of a worker with ``hard_timeout`` starts and ends (a
    swarm's child tells its parent, which kills the child if the end is late)."""

    def started(self, jid: str, limit: float) -> None: ...

    def ended(self, jid: str) -> None: ...


def runner(reg: Registered, limits: HardLimits | None = None) -> Callable[[list[Any], str, dict[str, Any] | None], Any]:
    """How a thread runs one job of this worker: directly, with its timeout,
    and with its hard limit watched from outside. For an async worker it
    returns the coroutine to hand to the loop (timed there)."""
    run = reg.call if reg.is_async else _timed(reg)
    hard = reg.options.hard_timeout
    if hard is None or limits is None:
        return run  # the per-job path of other workers stays as it was
    started, ended = limits.started, limits.ended
    if reg.is_async:

        async def limited_async(args: list[Any], jid: str, kwargs: dict[str, Any] | None) -> Any:
            started(jid, hard)
            try:
                return await run(args, jid, kwargs)
            finally:
                ended(jid)

        return limited_async

    def limited(args: list[Any], jid: str, kwargs: dict[str, Any] | None) -> Any:
        started(jid, hard)
        try:
            return run(args, jid, kwargs)
        finally:
            ended(jid)

    return limited


def _timed(reg: Registered) -> Callable[[list[Any], str, dict[str, Any] | None], Any]:
    call, timeout = reg.call, reg.options.timeout
    if timeout is None:
        return call

    def timed(args: list[Any], jid: str, kwargs: dict[str, Any] | None) -> Any:
        start = time.monotonic()
        result = call(args, jid, kwargs)
        took = time.monotonic() - start
        if took > timeout:
            raise JobTimeoutError(
                f"the job ran {took:.1f}s, past its timeout of {timeout:g}s (a sync job cannot be stopped, so it "
                "ran to the end)"
            )
        return result

    return timed


def callback_args(args: list[Any]) -> list[Any]:
    """A batch callback's arguments: its status hash as a :class:`~kiq.batch.BatchStatus` (still a dict)."""
    if args and isinstance(args[0], dict):
        return [BatchStatus(args[0]), *args[1:]]
    return args


def error_class(exc: BaseException) -> str:
    """The exception's class name as the Web UI shows it (builtins unqualified)."""
    t = type(exc)
    return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


def error_message(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:
        return UNREADABLE_MESSAGE


def backtrace_lines(exc: BaseException) -> list[str]:
    """Frames innermost first, in Ruby's ``file:line:in `name'`` form, without kiq's own frame."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename != __file__]
    return [f"{f.filename}:{f.lineno}:in `{f.name}'" for f in reversed(frames)]


class Watch:
    """The log lines and reporter events of one job: the ladder's hooks,
    built only when something listens (INFO logging, reporters, tracing), so
    an unobserved job pays one ``None`` check per hook."""

    __slots__ = ("d", "fields", "info", "job", "processor", "reporters", "start")

    def __init__(self, d: _kiq.Delivery, processor: Processor) -> None:
        self.d = d
        self.processor = processor
        self.reporters = reporters = processor.reporters
        self.job = JobInfo.of(d) if reporters else None
        self.fields = {"class": d.class_name, "queue": d.queue, "jid": d.jid}
        self.info = logger.isEnabledFor(logging.INFO)
        if self.info:
            logger.info("job_started %s jid=%s queue=%s", d.class_name, d.jid, d.queue,
                        extra={"kiq": {"event": "job_started", **self.fields}})
        self._put("handle_started")
        self.start = time.perf_counter()

    def _put(self, event: str, *args: Any) -> None:
        for r in self.reporters:
            r.put((event, self.job, args))  # type: ignore[arg-type]

    def success(self) -> None:
        elapsed = time.perf_counter() - self.start
        d = self.d
        if self.info:
            logger.info("job_success %s jid=%s queue=%s elapsed=%.6f", d.class_name, d.jid, d.queue, elapsed,
                        extra={"kiq": {"event": "job_success", **self.fields, "elapsed": round(elapsed, 6)}})
        self._put("handle_success", elapsed)

    def failure(self, exc: BaseException, fate: _kiq.Fate | None) -> None:
        self._put("handle_failure", exc, exc.__traceback__)
        if fate is not None and fate.went == "dead":
            self._put("handle_death", exc)

    def stopped(self) -> None:
        self._put("handle_stopped")

    def aborted(self, reason: str) -> None:
        d = self.d
        logger.warning("job_aborted %s jid=%s queue=%s reason=%s", d.class_name, d.jid, d.queue, reason,
                       extra={"kiq": {"event": "job_aborted", **self.fields, "reason": reason}})
        self._put("handle_aborted", reason)

    def settle(self, d: _kiq.Delivery, exc: BaseException | None) -> None:
        """For the loop: the processor's ladder with this watch."""
        self.processor.settle(d, exc, self)


async def _traced(tracing: Tracing, d: _kiq.Delivery, coro: Coroutine[Any, Any, Any]) -> Any:
    """An async job's coroutine inside its consumer span (on the loop, in the job's context)."""
    with tracing.process(d):
        return await coro


class Processor:
    """Runs the jobs of one server's lanes on the calling threads (async jobs on the loop)."""

    def __init__(
        self,
        server: _kiq.Server,
        workers: Mapping[str, Registered],
        reporters: Sequence[ReporterThread] = (),
        aio: AsyncRunner | None = None,
        tracing: Tracing | None = None,
        app: Any = None,
        limits: HardLimits | None = None,
        limiters: Limiters | None = None,
    ) -> None:
        self.server = server
        #: The app's defaults for jobs rescheduled over a rate limit.
        self.limiters = limiters
        self.tracing = tracing
        #: The Kiq the jobs run in (for batches reopened from a job).
        self.app = app
        self.workers = dict(workers)
        self.reporters = list(reporters)
        self.aio = aio
        if aio is None and any(reg.is_async for reg in self.workers.values()):
            raise RuntimeError("async workers need the asyncio runner")
        self.runners = {name: runner(reg, limits) for name, reg in self.workers.items()}
        # Expired jobs are dropped in the core, unless reporters are to hear of them.
        hand_up = getattr(server, "set_expired_to_python", None)
        if hand_up is not None:
            hand_up(bool(self.reporters) or tracing is not None)
        #: Async workers' timeouts, by name (their runners return coroutines).
        self.async_timeouts = {name: reg.options.timeout for name, reg in self.workers.items() if reg.is_async}

    def run_lane(self, lane: int) -> None:
        """Takes and runs jobs of one lane until the server stops; then waits
        for the async jobs it handed to the loop, as for a job of its own."""
        mine = [0]  # this thread's async jobs not settled yet
        try:
            self._run_lane(lane, mine)
        finally:
            if self.aio is not None:
                self.aio.wait_idle(mine=mine)

    def _run_lane(self, lane: int, mine: list[int]) -> None:
        server = self.server
        next_job = server.next_job
        complete = server.complete
        runners = self.runners
        async_timeouts = self.async_timeouts
        submit = self.aio.submit if self.aio is not None else None
        settle = self.settle
        reporters = self.reporters
        tracing = self.tracing
        observe = bool(reporters) or tracing is not None
        enabled = logger.isEnabledFor
        set_current = _current.set
        reset_current = _current.reset
        _server.set(server)  # this thread's context: what current_job().cancelled asks
        _app.set(self.app)  # and where current_job().batch pushes
        # Ready jobs of sync workers run from the core (kiq._kiq.run_ready)
        # while nothing observes them: no reporter, no tracing, no INFO log
        # (checked once per call, so a level raised meanwhile is seen within
        # READY_BATCH jobs). The rest come back to this loop.
        plain = {name: run for name, run in runners.items() if name not in async_timeouts}
        run_ready = _kiq.run_ready if isinstance(server, _kiq.Server) and plain and not observe else None
        info = logging.INFO
        while True:
            ran = None
            try:
                if run_ready is not None and not enabled(info):
                    ran = run_ready(server, lane, plain, set_current, reset_current, READY_BATCH)
                d = next_job(lane) if ran is None else ran[0]
            except Shutdown:
                raise
            except BaseException as exc:  # noqa: BLE001 - the thread must outlive any one job
                # The core failed that job already (its arguments could not be
                # turned into Python objects); this thread serves the next one.
                logger.error("kiq: a job of lane %d could not be handed to a worker thread and was failed: %s: %s",
                             lane, error_class(exc), error_message(exc))
                continue
            if d is None:
                return
            token = ran[1] if ran is not None and ran[1] is not None else set_current(d)
            try:
                if ran is not None and ran[1] is not None:
                    # It ran in the core and raised; it is still the current job.
                    if not settle(d, ran[2]):
                        return
                    continue
                expires_at = d.expires_at
                if expires_at is not None and time.time() > expires_at:
                    self.expired(d)
                    continue
                if d.batch_invalidated:
                    self.skipped(d)
                    continue
                watch = Watch(d, self) if observe or enabled(logging.INFO) else None
                name = d.class_name
                run = runners.get(name)
                if run is None:
                    settle(d, self.unknown(d), watch)
                    continue
                args = d.args if d.batch_event is None else callback_args(d.args)
                if name in async_timeouts:
                    # The worker is called inside the job's task (clocked): whatever it raises,
                    # even before its coroutine exists, settles the job there.
                    coro = clocked(d, run, args, d.jid, d.kwargs)
                    if tracing is not None:
                        coro = _traced(tracing, d, coro)
                    submit(coro, async_timeouts[name], d, watch.settle if watch is not None else settle, mine)  # type: ignore[misc]
                    continue
                try:
                    if tracing is None:
                        run(args, d.jid, d.kwargs)
                    else:
                        with tracing.process(d):
                            run(args, d.jid, d.kwargs)
                except BaseException as exc:  # noqa: BLE001 - every failure is recorded, as Sidekiq's retry does
                    # SystemExit or KeyboardInterrupt from a job fail that job
                    # only; the thread keeps serving its queue.
                    if not settle(d, exc, watch):
                        return
                else:
                    if watch is None:
                        complete(d)
                    else:
                        settle(d, None, watch)
            except Shutdown:
                if not d.settled:
                    server.abandon(d)
                return
            except BaseException as exc:  # noqa: BLE001 - an error outside perform ends its job, not the thread
                self.contain(d, exc)
            finally:
                reset_current(token)

    def settle(self, d: _kiq.Delivery, exc: BaseException | None, watch: Watch | None = None) -> bool:
        """The outcome ladder, for sync jobs on their thread and async ones on
        the loop: done, handed back (a stop), cancelled on request,
        rescheduled over a limit, or failed through the retry path. False
        means the thread is to stop (a stop interrupted it)."""
        go_on = True
        try:
            if exc is None:
                self.server.complete(d)
                if watch is not None:
                    watch.success()
            elif isinstance(exc, Shutdown) or (isinstance(exc, CANCELLED) and self.aio is not None
                                               and self.aio.stopping):
                self.server.abandon(d)  # back to its queue
                if watch is not None:
                    watch.aborted("shutdown")
                go_on = False
            elif isinstance(exc, JobCancelledError):
                self.cancelled(d, watch.job if watch is not None else None)
            elif not (isinstance(exc, OverLimit) and self.over_limit(d, exc, watch.job if watch is not None else None)):
                fate = self.failed(d, exc)
                if watch is not None:
                    watch.failure(exc, fate)
        except Shutdown:
            raise
        except BaseException as err:  # noqa: BLE001 - an error outside perform ends its job, not the thread
            self.contain(d, err)
        if watch is not None:
            watch.stopped()
        return go_on

    def contain(self, d: _kiq.Delivery, exc: BaseException) -> None:
        """An error outside ``perform`` (a reporter, a log handler, a hook, kiq
        itself) ends that job, failed through the retry path if it was not
        settled yet, and never the worker thread."""
        try:
            if not d.settled:
                self.server.fail(d, error_class(exc), f"kiq failed while running this job: {error_message(exc)}")
            logger.error("kiq: an error outside perform ended job %s jid=%s (the worker thread goes on)",
                         d.class_name, d.jid, exc_info=(type(exc), exc, exc.__traceback__))
        except Exception:  # noqa: BLE001, S110 - last line of defence: the thread must survive
            pass

    def expired(self, d: _kiq.Delivery) -> None:
        """A job that did not start before its ``expires_at``: dropped, counted, logged, reported."""
        self._not_run(d, "expired", self.server.expire)

    def skipped(self, d: _kiq.Delivery) -> None:
        """A job of an invalidated batch: not run, done for its batch, logged and reported as aborted."""
        self._not_run(d, "batch_invalidated", self.server.skip)

    def _not_run(self, d: _kiq.Delivery, reason: str, settle: Callable[[_kiq.Delivery], None]) -> None:
        job = JobInfo.of(d) if self.reporters else None
        settle(d)
        logger.warning("job_aborted %s jid=%s queue=%s reason=%s", d.class_name, d.jid, d.queue, reason,
                       extra={"kiq": {"event": "job_aborted", "class": d.class_name, "queue": d.queue, "jid": d.jid,
                                      "reason": reason}})
        for r in self.reporters:
            r.put(("handle_started", job, ()))  # type: ignore[arg-type]
            r.put(("handle_aborted", job, (reason,)))  # type: ignore[arg-type]
            r.put(("handle_stopped", job, ()))  # type: ignore[arg-type]

    def cancelled(self, d: _kiq.Delivery, job: JobInfo | None = None) -> None:
        """A job that ended on a cancellation request: done, not retried; logged and reported."""
        self.server.complete(d)
        logger.warning("job_aborted %s jid=%s queue=%s reason=cancelled", d.class_name, d.jid, d.queue,
                       extra={"kiq": {"event": "job_aborted", "class": d.class_name, "queue": d.queue, "jid": d.jid,
                                      "reason": "cancelled"}})
        for r in self.reporters:
            r.put(("handle_aborted", job, ("cancelled",)))  # type: ignore[arg-type]

    def over_limit(self, d: _kiq.Delivery, exc: OverLimit, job: JobInfo | None = None) -> bool:
        """``OverLimit`` escaped the job: it is rescheduled through the schedule
        set (``overrated`` + 1), not failed, unless it was rescheduled as often
        as its limiter (or the app) allows: then False, and the caller fails it."""
        lim = getattr(exc, "limiter", None)
        defaults = self.limiters
        cap = getattr(lim, "reschedule", None)
        if cap is None:
            cap = defaults.reschedule if defaults is not None else _kiq.DEFAULT_MAX_RESCHEDULES
        backoff = getattr(lim, "backoff", None) or (defaults.backoff if defaults is not None else None)
        delay = None
        before = d.overrated
        if backoff is not None and before < cap:
            try:
                delay = float(backoff(lim, job or JobInfo.of(d), exc))
                if not (math.isfinite(delay) and delay >= 0):
                    raise ValueError(f"it returned {delay!r}, not a number of seconds >= 0")
            except Exception as err:  # noqa: BLE001 - a broken backoff must not lose the job
                logger.error("kiq: the backoff of %r failed for job %s (the default delay applies): %s", lim,
                             d.jid, err)
                delay = None
        at = self.server.reschedule(d, max_reschedules=cap, delay=delay)
        if at is None:
            return False
        if logger.isEnabledFor(logging.INFO):
            logger.info("job_rescheduled %s jid=%s queue=%s reason=over_limit at=%.3f overrated=%d", d.class_name,
                        d.jid, d.queue, at, before + 1,
                        extra={"kiq": {"event": "job_rescheduled", "class": d.class_name, "queue": d.queue,
                                       "jid": d.jid, "reason": "over_limit", "at": at, "error": error_message(exc)}})
        if self.reporters:
            info = job or JobInfo.of(d)
            for r in self.reporters:
                r.put(("handle_rescheduled", info, ("over_limit", at)))
        return True

    def failed(self, d: _kiq.Delivery, exc: BaseException) -> _kiq.Fate:
        """Hands the failure to the core's retry path (the worker's options were
        registered with the server at start) and logs where the job went."""
        lines = backtrace_lines(exc) if self.server.wants_backtrace(d) else None
        cls, message = error_class(exc), error_message(exc)
        fate = self.server.fail(d, cls, message, backtrace=lines)
        if logger.isEnabledFor(logging.WARNING):
            fields = {"class": d.class_name, "queue": d.queue, "jid": d.jid, "error": cls, "error_message": message}
            logger.warning(
                "job_failure %s jid=%s queue=%s error=%s: %s; %s",
                d.class_name,
                d.jid,
                d.queue,
                cls,
                message,
                fate_text(fate),
                exc_info=(type(exc), exc, exc.__traceback__),
                extra={"kiq": {"event": "job_failure", **fields, **fate_fields(fate)}},
            )
            if fate.went == "dead":
                logger.warning("job_dead %s jid=%s queue=%s error=%s: %s (retry_count=%d)", d.class_name, d.jid,
                               d.queue, cls, message, fate.retry_count,
                               extra={"kiq": {"event": "job_dead", **fields, "retry_count": fate.retry_count}})
        return fate

    def unknown(self, d: _kiq.Delivery) -> UnknownWorkerError:
        """The error of a job whose class no registered worker has."""
        known = ", ".join(sorted(n for n in self.workers if not n.startswith("kiq."))) or "none"
        return UnknownWorkerError(
            f"no worker is registered for class {d.class_name!r} in this process (registered: {known})"
            + script_hint(d.class_name, self.workers)
        )


def script_hint(class_name: str, registered: Mapping[str, Registered]) -> str:
    """Why a job misses a worker that differs only by ``__main__``: its module ran as a script."""
    _, _, short = class_name.rpartition(".")
    for name in registered:
        module, _, other = name.rpartition(".")
        if other == short and name != class_name and "__main__" in (module, class_name.rpartition(".")[0]):
            return (
                f". {name!r} and {class_name!r} are one worker seen from two sides: a module run as a script "
                "(python tasks.py) is named __main__, so its workers' names start with __main__ while code that "
                f"imports it calls them by module. Give the worker a fixed name (name={short!r} in its options), "
                "or start workers with kiq run MODULE:app"
            )
    return ""


def fate_text(fate: _kiq.Fate) -> str:
    """Where a failed job went, for the failure log line."""
    limit = "its retry_for window" if fate.max_retries is None else str(fate.max_retries)
    if fate.went == "retry" and fate.retry_at is not None:
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(fate.retry_at))
        return (f"retry {fate.retry_count + 1} of {limit} at {when} (in {max(0.0, fate.retry_at - time.time()):.0f}s),"
                f" retry_count={fate.retry_count}")
    if fate.max_retries == 0 and fate.went == "discard":
        return "not retried (retry: false), dropped"
    where = "moved to the dead set" if fate.went == "dead" else "dropped (dead: false)"
    return f"out of retries ({fate.retry_count} of {limit}), {where}, retry_count={fate.retry_count}"


def fate_fields(fate: _kiq.Fate) -> dict[str, Any]:
    """The fate as structured log fields."""
    out: dict[str, Any] = {"retry_count": fate.retry_count, "max_retries": fate.max_retries, "went": fate.went}
    if fate.retry_at is not None:
        out["retry"] = f"{fate.retry_count + 1}/{fate.max_retries if fate.max_retries is not None else '-'}"
        out["next_retry_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(fate.retry_at))
    return out
