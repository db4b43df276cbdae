"""The running process of a :class:`~kiq.Kiq`: ``start`` (the core's server,
the worker threads, reporters, the signal listener), ``quiet``, ``stop``
with its deadline, and ``run`` (signals, or a swarm). Configuration and
enqueueing live in ``app.py`` and ``enqueueing.py``."""

from __future__ import annotations

import atexit
import logging
import signal
import sys
import threading
import time
import traceback
import weakref
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Any, cast

from kiq import _kiq, corelog
from kiq.aio import AsyncRunner
from kiq.capsule import Capsule
from kiq.errors import ConfigError, KiqError, ShutdownError
from kiq.identity import hostname
from kiq.limiter import Limiters
from kiq.pool import WorkerThreads
from kiq.instrument import Instrumenter
from kiq.processor import HardLimits, Processor, Registered
from kiq.reporters import Reporter, ReporterThread
from kiq.sandbox import Sandbox
from kiq.tracing import Tracing
from kiq.enqueueing import Seconds, seconds

if TYPE_CHECKING:
    from kiq.app import Kiq

__all__ = ["Running", "StopResult", "say", "tell"]

logger = logging.getLogger("kiq")

#: Seconds fetching may stay paused for job results Redis does not take
#: before the process says so on stderr (the core pauses it while at least
#: 8,000 results wait; a writer that only lags pauses it for milliseconds).
RESULTS_STUCK_AFTER = 30.0


def say(message: str) -> None:
    """A line on stderr, whether or not logging is configured (jobs at stake at exit)."""
    try:
        print(f"kiq: {message}", file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


def _stop_at_exit(ref: weakref.ReferenceType[Running]) -> None:
    """A started app still running at interpreter exit stops gracefully first: its
    jobs go back to their queues, and no thread of it is left inside the core
    (``pthread_exit`` unwinding through the core's frames can crash the process)."""
    app = ref()
    if app is not None and app.running:
        logger.warning("process %s still running at exit; stopping it (call stop() or use run())", app.identity)
        app.stop()


def tell(message: str) -> None:
    """Logs what the person at the terminal must see at WARNING, and also prints
    it to stderr when logging is not configured (``kiq`` has only its NullHandler)."""
    logger.warning(message)
    log: logging.Logger | None = logger
    while log is not None:
        if any(not isinstance(h, logging.NullHandler) for h in log.handlers):
            return
        log = log.parent if log.propagate else None
    print(f"kiq: {message}", file=sys.stderr, flush=True)



class StopResult:
    """What :meth:`Kiq.stop` did."""

    __slots__ = ("error", "requeued", "timed_out", "unwritten")

    def __init__(self, requeued: int = 0, unwritten: int = 0, timed_out: int = 0, error: str | None = None) -> None:
        #: Jobs handed back to their queues (not started, or still running at the deadline).
        self.requeued = requeued
        #: Results that could not be written to Redis in time (their jobs were requeued).
        self.unwritten = unwritten
        #: Jobs still running when the deadline passed.
        self.timed_out = timed_out
        #: Why unfinished jobs could not be handed back (Redis unreachable); they
        #: then stay in this process's in-progress lists.
        self.error = error

    def __repr__(self) -> str:
        return (
            f"StopResult(requeued={self.requeued}, unwritten={self.unwritten}, timed_out={self.timed_out}, "
            f"error={self.error!r})"
        )


class Running:
    """The process methods of :class:`~kiq.Kiq` (which sets what is declared here)."""

    # Configuration (app.py).
    identity: str
    queues: dict[str, int] | tuple[Capsule, ...]
    tag: str
    labels: list[str]
    shutdown_timeout: float
    heartbeat_interval: float
    heartbeat_ttl: float
    metrics: bool
    leader_ttl: float | None
    orphan_check_interval: float | None
    max_recoveries: int
    periodics: list[Any]
    periodic_clock: tuple[float, float, float] | None
    max_retries: int
    dead_limit: int
    dead_timeout: float
    poll_interval_average: float | None
    average_scheduled_poll_interval: float
    scheduler: bool
    max_jobs: int | None
    max_memory_bytes: int | None
    prefetch: int | str
    stuck_after: float | None
    buffer_path: Any
    extra_reporters: list[Reporter]
    instrument: Instrumenter
    limiter: Limiters
    _sandbox: Sandbox | None
    _tracing: Tracing | None
    _workers: dict[str, Registered]
    _swarm: HardLimits | None
    _on_started: list[Callable[[], None]]
    # The running process, set here.
    _lock: threading.Lock
    _stop_requested: threading.Event
    _hurry: threading.Event
    _start_quiet: bool
    _server: _kiq.Server | None
    _threads: WorkerThreads | None
    _reporters: list[ReporterThread]
    _aio: AsyncRunner | None
    _running_main: bool
    _listener: threading.Thread | None
    _health_address: str | None

    @property
    def capsules(self) -> tuple[Capsule, ...]:
        """The queues as capsules: one per queue of a ``{name: concurrency}`` mapping."""
        if isinstance(self.queues, dict):
            return tuple(Capsule([name], n) for name, n in self.queues.items())
        return self.queues

    @property
    def client(self) -> _kiq.Client:
        raise NotImplementedError

    @property
    def workers(self) -> dict[str, Registered]:
        raise NotImplementedError

    def flush(self, timeout: Seconds | None = None) -> None:
        raise NotImplementedError

    def buffer_stats(self) -> dict[str, Any] | None:
        raise NotImplementedError

    def _why_sandboxed(self) -> str:
        raise NotImplementedError

    # -- server ----------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def health_address(self) -> str | None:
        """Where health checks are answered: the bound ``host:port`` while
        running (the real port when 0 was asked), else the configured one."""
        server = self._server
        if server is not None and server.health_address is not None:
            return server.health_address
        return self._health_address

    @health_address.setter
    def health_address(self, value: str | None) -> None:
        if value is not None and (not isinstance(value, str) or ":" not in value):
            raise ConfigError(f'health_address must be "HOST:PORT", e.g. "0.0.0.0:8080", not {value!r}')
        self._health_address = value

    @property
    def is_leader(self) -> bool:
        """Whether this process is the kiq leader now (periodic jobs and orphan
        recovery run only there). Answered locally, without a round trip."""
        server = self._server
        return server is not None and server.is_leader

    def start(self) -> None:
        """Starts fetching and running jobs; returns once the threads run."""
        if self._sandbox is not None:
            raise ConfigError(
                f"a sandboxed Kiq does not fetch from Redis; run its jobs with kiq.testing.drain(app){self._why_sandboxed()}"
            )
        with self._lock:
            if self._server is not None:
                raise ConfigError("this Kiq is already started")
        if self._swarm is None:
            limited = sorted(name for name, reg in self._workers.items() if reg.options.hard_timeout is not None)
            if limited:
                raise ConfigError(
                    f"worker {limited[0]} sets hard_timeout, which only a swarm enforces (its parent kills a child "
                    "whose job runs past it): start the workers with kiq run --processes N (one supervised child "
                    "is enough: -p 1) or app.run(processes=N)"
                )
        corelog.start()
        server = _kiq.Server(
            self.client,
            self.identity,
            [([*c.queues], c.concurrency) for c in self.capsules],
            hostname=hostname(),
            tag=self.tag,
            labels=self.labels,
            heartbeat_interval=self.heartbeat_interval,
            heartbeat_ttl=self.heartbeat_ttl,
            metrics=self.metrics,
            leader_ttl=self.leader_ttl,
            orphan_check_interval=self.orphan_check_interval,
            max_recoveries=self.max_recoveries,
            periodics=self.periodics,
            periodic_clock=self.periodic_clock,
            max_retries=self.max_retries,
            dead_limit=self.dead_limit,
            dead_timeout=self.dead_timeout,
            poll_interval_average=self.poll_interval_average,
            average_scheduled_poll_interval=self.average_scheduled_poll_interval,
            scheduler=self.scheduler,
            health=self._health_address,
            max_jobs=self.max_jobs,
            prefetch=self._prefetch(),
            max_memory_bytes=self.max_memory_bytes,
            stuck_after=self.stuck_after,
            quiet=self._start_quiet,
            workers={name: reg.options for name, reg in self._workers.items()},
        )
        reporters = self._start_reporters()
        aio = AsyncRunner() if any(w.is_async for w in self._workers.values()) else None
        processor = Processor(server, self._workers, reporters, aio, self._tracing, app=self, limits=self._swarm,
                              limiters=self.limiter)
        # An app of async workers only: a thread hands each job to the loop and comes back at once, so
        # one per queue keeps up, where one per concurrency slot would mostly wait for the GIL. (kiq's own
        # worker, a chain's next step, is sync: a few Redis round trips on that thread when a step ends.)
        hand_off_only = aio is not None and all(w.is_async for w in self.workers.values())
        threads = WorkerThreads(processor, [(c.name, c.concurrency) for c in self.capsules],
                                hand_off_only=hand_off_only)
        with self._lock:
            self._server, self._threads, self._reporters, self._aio = server, threads, reporters, aio
        if not self._running_main:
            # run() cleared them before its signal handlers could set them.
            self._stop_requested.clear()
            self._hurry.clear()
        threads.start()
        server.report_threads(threads.revive(), threads.wanted)
        listener = threading.Thread(target=self._listen, args=(server,), name="kiq-signals", daemon=True)
        self._listener = listener
        listener.start()
        # A process that exits without stop() stops first, while its threads can still leave the core.
        atexit.register(_stop_at_exit, weakref.ref(self))
        logger.info("process %s started: queues %s, %d workers", self.identity, self.queues, len(self._workers))
        for hook in self._on_started:
            hook()

    def quiet(self) -> None:
        """Stops fetching new jobs; running ones finish (Sidekiq's TSTP)."""
        self.configure(quiet=True)

    def configure(self, *, quiet: bool) -> None:
        """Changes the running process (Kiq's ``configure``): ``quiet=True``
        stops fetching (running jobs finish, the heartbeat says quiet),
        ``quiet=False`` resumes."""
        server = self._server
        if server is not None:
            server.set_quiet(quiet)
            logger.info("process %s %s", self.identity, "quiet" if quiet else "resumed")

    def _listen(self, server: _kiq.Server) -> None:
        """Acts on signals sent through Redis (the Web UI's Quiet and Stop buttons)."""
        told = False
        while self._server is server:
            told = self._results_stuck(server, told)
            threads = self._threads
            if threads is not None:
                server.report_threads(threads.revive(), threads.wanted)  # dead threads replaced; /ready sees it
            aio = self._aio
            if aio is not None:
                aio.cancel_requested(server.is_cancelled)  # async jobs are cancelled from here
            sig = server.next_signal(1.0)
            if sig in ("TERM", "RECYCLE"):
                if sig == "TERM":
                    logger.info("process %s: stop requested through Redis", self.identity)
                else:
                    logger.info("process %s: recycling (max_jobs or max_memory_bytes reached), stopping gracefully",
                                self.identity)
                if self._running_main:
                    self._stop_requested.set()
                else:
                    threading.Thread(target=self.stop, name="kiq-remote-stop", daemon=True).start()
                return
            if sig == "TSTP":
                logger.info("process %s: quiet requested through Redis", self.identity)
            elif sig == "TTIN":
                self.dump_threads()

    def _results_stuck(self, server: _kiq.Server, told: bool) -> bool:
        """Says once, on stderr too when logging is not configured, that this
        process stopped taking jobs because its results cannot be written
        (and logs when they are again). Returns whether it is saying so."""
        waiting, paused = server.results_waiting()
        if paused is not None and paused >= RESULTS_STUCK_AFTER:
            if not told:
                tell(f"{waiting:,} job results of process {self.identity} have waited {paused:.0f}s to be written to "
                     "Redis (the ERROR log says why); it takes no new jobs until they are written, and if it dies "
                     "meanwhile its jobs in progress run again")
            return True
        if told and paused is None:
            logger.warning("process %s: its job results are written again; it takes jobs again", self.identity)
            return False
        return told

    @staticmethod
    def dump_threads() -> None:
        """Logs every thread's stack at WARNING (Sidekiq's TTIN)."""
        names = {t.ident: t.name for t in threading.enumerate()}
        for ident, frame in sys._current_frames().items():
            stack = "".join(traceback.format_stack(frame)).rstrip()
            logger.warning("thread %s (%s):\n%s", names.get(ident, "?"), ident, stack)

    def stop(self, timeout: Seconds | None = None) -> StopResult:
        """Stops gracefully: no new fetches, running jobs get ``timeout``
        seconds (default ``shutdown_timeout``), then every job not finished,
        running or never started, goes back to its queue. None is lost."""
        limit = self.shutdown_timeout if timeout is None else seconds(timeout, "timeout")
        deadline = time.monotonic() + limit
        with self._lock:
            server, threads, reporters, aio = self._server, self._threads, self._reporters, self._aio
            self._server = self._threads = self._aio = None
            self._reporters = []
        if server is None or threads is None:
            self._flush_before_stop(deadline)
            return StopResult()
        threads.stopping = True
        server.begin_stop()
        self._join_listener()
        alive = self._join_workers(threads, deadline)
        if alive:
            if self._hurry.is_set():
                logger.warning("handing %d running jobs back to their queues now", len(alive))
            else:
                logger.warning("%d jobs still running after %.1fs; handing them back to their queues", len(alive),
                               limit)
            if aio is not None:
                aio.cancel_all()  # async jobs: cancelled on the loop
            threads.interrupt(alive)
            alive = threads.join(time.monotonic() + 1.0)
        if aio is not None:
            aio.close()
        try:
            requeued, unwritten = server.finish_stop(max(5.0, deadline - time.monotonic()))
        except KiqError as exc:
            self._stop_reporters(reporters)
            logger.error(
                "kiq %s: could not hand unfinished jobs back to their queues (%s); they stay in its "
                "in-progress lists (%s)",
                self.identity,
                exc,
                server.in_progress_keys,
            )
            return StopResult(timed_out=len(alive), error=str(exc))
        self._stop_reporters(reporters)
        self._flush_before_stop(deadline)
        result = StopResult(requeued, unwritten, len(alive))
        logger.info("process %s stopped: %s", self.identity, result)
        return result

    def _join_workers(self, threads: WorkerThreads, deadline: float) -> list[threading.Thread]:
        """Waits for the worker threads until ``deadline`` (monotonic), or until a
        second stop signal to :meth:`run` says not to wait. Returns the live ones."""
        while True:
            alive = threads.join(min(deadline, time.monotonic() + 0.1))
            if not alive or time.monotonic() >= deadline or self._hurry.is_set():
                return alive

    def _join_listener(self) -> None:
        """The signal listener returns within 50 ms of a stop's start; joined so no thread waits in the core after."""
        listener, self._listener = self._listener, None
        if listener is not None and listener is not threading.current_thread():
            listener.join(5.0)

    def _flush_before_stop(self, deadline: float) -> None:
        """Jobs enqueued by this process (jobs enqueuing jobs, too) reach Redis before a stop returns."""
        try:
            self.flush(max(1.0, deadline - time.monotonic()))
        except KiqError as exc:
            left = self.buffer_stats() or {}
            where = f"; they are in the spool at {self.buffer_path}" if self.buffer_path else ""
            logger.error("kiq %s: %s buffered jobs are not in Redis yet (%s)%s", self.identity, left.get("jobs"), exc,
                         where)

    def _prefetch(self) -> int | None:
        """The core's prefetch: a number, or None for the automatic one. Held
        jobs wait in the core until fewer than the concurrency run, async ones
        too (a thread hands an async job to the loop and takes the next)."""
        if self.prefetch != "auto":
            return int(self.prefetch)
        return None

    def _start_reporters(self) -> list[ReporterThread]:
        """A thread per reporter (and one for instrumentation handlers), started."""
        reporters = [ReporterThread(r) for r in self.extra_reporters]
        if self.instrument.attached:
            reporters.append(ReporterThread(self.instrument))
        for rt in reporters:
            rt.start()
        return reporters

    @staticmethod
    def _stop_reporters(reporters: list[ReporterThread]) -> None:
        deadline = time.monotonic() + 5.0
        for rt in reporters:
            rt.stop(max(0.0, deadline - time.monotonic()))

    def run(self, processes: int | str | None = None, *, preload: bool = True) -> None:
        """Starts, then blocks until SIGTERM or SIGINT (or the Web UI's Stop),
        then stops gracefully.

        As with Sidekiq, SIGTSTP quiets the process (no new fetches) and
        SIGTTIN logs every thread's stack. Must be called from the main thread.

        ``processes=N`` (or ``"auto"``: one per usable core) runs a swarm
        instead (see :mod:`kiq.swarm`): this process becomes the parent of
        N children, each running the workers, supervised and restarted;
        ``preload=False`` makes each child import the app itself rather
        than fork from this process. Code after ``run()`` runs in the parent
        once the swarm has stopped.
        """
        if processes is not None:
            from kiq.swarm import run as run_swarm  # noqa: PLC0415 - the swarm stays off the single-process path

            run_swarm(cast("Kiq", self), processes, preload=preload)
            return
        if threading.current_thread() is not threading.main_thread():
            raise ShutdownError("Kiq.run() handles signals and must run in the main thread")
        stop = self._stop_requested
        signalled = False
        stop.clear()
        self._hurry.clear()

        def on_stop(signum: int, _frame: FrameType | None) -> None:
            nonlocal signalled
            name = signal.Signals(signum).name
            if not signalled:
                # The first signal; a stop may be under way already (the Web UI's, a swarm parent's).
                signalled = True
                already = "already " if stop.is_set() else ""
                stop.set()
                tell(f"got {name}: {already}stopping gracefully; running jobs get up to {self.shutdown_timeout:g}s "
                     "to finish (SIGINT or SIGTERM again hands them back to their queues at once)")
            elif not self._hurry.is_set():
                self._hurry.set()
                tell(f"got {name} again: handing running jobs back to their queues now")

        def on_quiet(_signum: int, _frame: FrameType | None) -> None:
            logger.info("got SIGTSTP, quieting")
            self.quiet()

        def on_ttin(_signum: int, _frame: FrameType | None) -> None:
            self.dump_threads()

        previous = {sig: signal.signal(sig, on_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        previous[signal.SIGTSTP] = signal.signal(signal.SIGTSTP, on_quiet)
        previous[signal.SIGTTIN] = signal.signal(signal.SIGTTIN, on_ttin)
        self._running_main = True
        try:
            self.start()
            while not stop.wait(1.0):
                pass
        finally:
            self._running_main = False
            try:
                self.stop()
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    def request_stop(self) -> None:
        """Makes a running :meth:`run` return (after a graceful stop)."""
        self._stop_requested.set()
