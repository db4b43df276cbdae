"""The Kiq application object: its configuration, its Redis client and
batches; the enqueue methods come from ``enqueueing.py`` and the running
process (start, quiet, stop, run) from ``running.py``.

A :class:`Kiq` is owned by the application (no global state; several may
coexist with different Redis URLs). Enqueueing needs no ``start()``; running
jobs does.
"""

from __future__ import annotations

import atexit
import datetime as dt
import logging
import os
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from kiq import _kiq, corelog
from kiq.aio import AsyncRunner
from kiq.batch import Batch, BatchStatus, parent_chain, reopen, status_of
from kiq.capsule import Capsule
from kiq.errors import ConfigError, KiqError, UndeliverableError
from kiq.identity import new_identity
from kiq.instrument import Instrumenter
from kiq.crontab import Crontab
from kiq.enqueueing import Enqueueing, Seconds, seconds
from kiq.running import Running, StopResult, say
from kiq.job import Job, PeriodicEntry
from kiq.logs import current_job
from kiq.limiter import Limiters
from kiq.paths import default_state_dir, undeliverable_path, unsent_dir
from kiq.pool import WorkerThreads
from kiq.processor import HardLimits, Registered, register
from kiq.reporters import Reporter, ReporterThread
from kiq.sandbox import Sandbox, default_mode
from kiq.swarm import preload
from kiq.tracing import Tracing
from kiq.worker import WorkerLike, bind, check_arguments, is_worker
from kiq.workflow import NextStep

__all__ = ["Kiq", "StopResult"]

def _flush_at_exit(ref: weakref.ReferenceType[Kiq]) -> None:
    app = ref()
    if app is not None and app._client is not None:
        app._flush_at_exit(app._client)


logger = logging.getLogger("kiq")


DEFAULT_URL = "redis://localhost:6379/0"
#: The wire-name prefix of kiq's own workers (kiq.workflow.NextStep).
_KIQ_OWN = "kiq."


class Kiq(Running, Enqueueing):
    """A Sidekiq-compatible job queue client and worker process.

    Args:
        redis_url: ``redis://[user:password@]host:port/db`` or ``rediss://``;
            defaults to ``$REDIS_URL``, then ``redis://localhost:6379/0``.
        queues: queue name → the most jobs of that queue run at once, each
            queue with threads of its own, e.g. ``{"default": 25, "events": 5}``;
            or a list of :class:`~kiq.Capsule`, each serving several queues
            with one pool of threads in Sidekiq's strict or weighted order.
        workers: worker classes and ``@worker`` functions this process runs.
        pool_size: Redis connections shared by short commands.
        namespace: key prefix for Sidekiq 6 apps that use ``redis-namespace``.
        timestamps: ``"seconds"`` (float seconds, read by Sidekiq 6.4–8.x) or
            ``"milliseconds"`` (Sidekiq 8's integers, for all-8.x clusters).
        shutdown_timeout: seconds running jobs get on stop (Sidekiq's ``-t``, 25).
        max_retries: retries of a job with ``retry: true`` (25).
        dead_limit: dead-set size cap (10,000, trimmed as Sidekiq trims).
        dead_timeout: seconds a dead job is kept (180 days).
        scheduler: move due scheduled and retry jobs (on by default).
        poll_interval_average: fixed average seconds between scheduler polls,
            ignoring the process count (Sidekiq's ``poll_interval_average``).
        average_scheduled_poll_interval: seconds per live process between
            polls (Sidekiq's default 5).
        identity: the process identity; ``hostname:pid:<12 hex>`` by default.
        tls_ca_file: for ``rediss://``, a PEM file of CA certificates to trust
            instead of the system's.
        tls_cert_file, tls_key_file: a client certificate and key (PEM) for
            Redis servers that require mutual TLS.
        tag: shown next to the process on Sidekiq's Busy page (Sidekiq's ``-g``).
        labels: more tags for the Busy page.
        extra_reporters: :class:`~kiq.reporters.Reporter` instances told about every job.
        buffer: buffer enqueues in memory and flush them to Redis from a core
            thread (``enqueue`` returns at once; pass ``sync=True`` to wait for
            Redis); while Redis is away, jobs wait, compressed, and are pushed
            in order once it is back. ``False`` makes every enqueue synchronous.
        flush_interval: seconds between flushes of the buffer (Kiq's 10 ms).
        buffer_max_bytes: memory the buffer may hold; a full buffer makes
            ``enqueue`` wait up to ``buffer_full_timeout`` seconds for room,
            then raise :class:`~kiq.errors.BufferFullError`.
        buffer_path: a directory for an on-disk spool: buffered jobs survive a
            crash or ``kill -9`` and are flushed by the next start with the
            same path (one process per path).
        spool_fsync: ``"always"`` (fsync every enqueue: survives power loss),
            ``"interval"`` (fsync once per flush interval) or ``"never"``;
            all survive the process dying.
        leader_ttl: lease of the kiq leader (``kiq:leader``); a dead leader is
            replaced within about this many seconds. ``None`` never leads.
        orphan_check_interval: how often the leader recovers the in-progress
            jobs of processes whose heartbeat expired (and at its start).
            ``None`` turns recovery off in this process.
        max_recoveries: recoveries after which a job is a poison pill and goes
            to the dead set (Sidekiq Pro's 3).
        periodics: cron entries the leader enqueues, each ``(crontab,
            worker)`` or ``(crontab, worker, options)``, where ``worker`` is a
            worker or a class name and ``options`` may give ``args``,
            ``queue``, ``retry`` and any job option (``unique_for``,
            ``expires_in``, payload fields such as ``tags``).
        periodic_clock: a testing aid: ``(start, wall_start, speed)`` runs the
            periodic scheduler on the simulated time ``start + (now -
            wall_start) × speed``.
        heartbeat_interval: seconds between heartbeats (Sidekiq 6's 5).
        heartbeat_ttl: seconds a heartbeat lives (Sidekiq's 60; a process
            that died vanishes from the Busy page this long after).
        metrics: write per-class execution metrics for Sidekiq 7/8's Metrics tab.
        test_mode: ``"sandbox"`` keeps enqueued jobs in memory and never
            connects to Redis; read and run them with :mod:`kiq.testing`.
            ``None`` (the default) is live, except while kiq's pytest plugin
            runs tests: then it is sandboxed unless the test opts into Redis.
        health_address: ``"HOST:PORT"`` on which the running process answers
            HTTP health checks (``/live``, ``/ready``) from a core thread;
            ``"0.0.0.0:8080"`` for Kubernetes probes, port 0 for any free port
            (read back from :attr:`health_address`). Off by default.
        prefetch: jobs each queue fetches beyond its concurrency, to wait in
            the process for a free thread so threads do not wait for a
            fetch's round trip. ``"auto"`` (the default): once a queue's
            recent jobs average under 100 µs (until they average 400 µs),
            up to 1,024 more (4 × its
            concurrency if that is more; fewer for payloads averaging over
            8 kB); once they are slower, none (Sidekiq's behaviour: a
            process takes only jobs a thread can start now): threads asleep
            take the held jobs, and those left once every thread is busy go
            back to their queue; and none in a process with a throttle.
            ``0`` never prefetches; ``N`` always fetches up to N more. Held
            jobs start only while fewer than the concurrency run, async
            ones too. The cost: those jobs wait here
            even if another process is idle, and a crash hands them back as it
            does running ones (they had not started). A fixed N is refused
            with throttled workers (a fetched job takes its throttle's slot).
        max_jobs: recycle the process after it finished this many jobs: it
            quiets and stops gracefully (``run()`` returns, ``kiq run``
            exits 0) for its supervisor to start a fresh one; a cure for
            leaking job code (Celery's ``max_tasks_per_child``).
        max_memory_bytes: recycle the process, likewise, once its resident
            memory passes this (checked every 0.2 s; Linux). Jobs still running
            at the stop's deadline are judged as a crash's (a job that blows
            the limit every time ends as a poison pill). Under a swarm
            (``run(processes=N)``) it is each child's limit, which the parent
            enforces by replacing the child.
        stuck_after: seconds after which a running job counts as stuck:
            ``/ready`` answers 503 naming it (``/live`` stays 200; whether to
            restart is the orchestrator's call). A job stuck in C code holding
            the GIL cannot be stopped from inside the process; the
            ``kiq_job_running_seconds`` metric shows it either way.
        state_dir: where kiq keeps jobs that could not reach Redis (the
            dead-letter file of jobs Redis refused, and the jobs a process
            still held when it exited); default ``$KIQ_STATE_DIR``, else
            ``$XDG_STATE_HOME/kiq``, else ``~/.local/state/kiq`` (see :mod:`kiq.paths`).
        tracing: ``"link"`` or ``"child"`` turns on OpenTelemetry spans and
            trace propagation through the job's ``traceparent`` fields, as
            Ruby's Sidekiq instrumentation does (see :mod:`kiq.tracing`);
            needs ``opentelemetry-api``.
        encryption_keys: keys for jobs whose last argument is encrypted in
            Sidekiq Enterprise's format (``encrypt=True``): ``{version:
            key}`` with 32-byte keys, or a callable ``version -> key`` (asked
            once per version, e.g. from a secret manager). Jobs fetched with
            ``"encrypt": true`` are decrypted with the key of their version.
            Keys are never shown in ``repr``, logs or errors.
        encryption_version: the version new jobs are encrypted with (Sidekiq
            Enterprise's ``active_version``); defaults to the highest key's,
            and is required with a callable.
    """

    def __init__(
        self,
        redis_url: str | None = None,
        *,
        queues: Mapping[str, int] | Sequence[Capsule] | None = None,
        workers: Iterable[WorkerLike] = (),
        pool_size: int = 5,
        namespace: str | None = None,
        timestamps: str = "seconds",
        shutdown_timeout: Seconds = 25,
        max_retries: int = 25,
        dead_limit: int = 10_000,
        dead_timeout: Seconds = dt.timedelta(days=180),
        scheduler: bool = True,
        poll_interval_average: Seconds | None = None,
        average_scheduled_poll_interval: Seconds = 5,
        identity: str | None = None,
        tls_ca_file: str | os.PathLike[str] | None = None,
        tls_cert_file: str | os.PathLike[str] | None = None,
        tls_key_file: str | os.PathLike[str] | None = None,
        buffer: bool = True,
        flush_interval: Seconds = 0.01,
        buffer_max_bytes: int = 64 << 20,
        buffer_full_timeout: Seconds = 10,
        buffer_path: str | os.PathLike[str] | None = None,
        spool_fsync: str = "interval",
        tag: str = "",
        labels: Iterable[str] = (),
        extra_reporters: Iterable[Reporter] = (),
        leader_ttl: Seconds | None = 30,
        orphan_check_interval: Seconds | None = 60,
        max_recoveries: int = 3,
        periodics: Iterable[tuple[Any, ...]] = (),
        periodic_clock: tuple[float, float, float] | None = None,
        heartbeat_interval: Seconds = 5,
        heartbeat_ttl: Seconds = 60,
        metrics: bool = True,
        test_mode: str | None = None,
        health_address: str | None = None,
        max_jobs: int | None = None,
        max_memory_bytes: int | None = None,
        prefetch: int | Literal["auto"] = "auto",
        tracing: str | None = None,
        state_dir: str | os.PathLike[str] | None = None,
        stuck_after: Seconds | None = None,
        encryption_keys: Mapping[int, bytes] | Callable[[int], bytes | None] | None = None,
        encryption_version: int | None = None,
    ) -> None:
        if test_mode not in (None, "sandbox"):
            raise ConfigError(f'test_mode must be None or "sandbox", not {test_mode!r}')
        sandboxed = test_mode == "sandbox" or (test_mode is None and default_mode.sandbox)
        self._sandbox = Sandbox() if sandboxed else None
        #: Why this app is sandboxed when nobody asked (kiq's pytest plugin), for error messages.
        self._sandboxed_by = default_mode.why if sandboxed and test_mode is None else ""
        self.redis_url = redis_url or os.environ.get("REDIS_URL") or DEFAULT_URL
        self.queues = self._check_queues(queues if queues is not None else {"default": 25})
        if isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 1:
            raise ConfigError(f"pool_size must be an int >= 1, not {pool_size!r}")
        if timestamps not in ("seconds", "milliseconds"):
            raise ConfigError(f'timestamps must be "seconds" or "milliseconds", not {timestamps!r}')
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ConfigError(f"max_retries must be an int >= 0, not {max_retries!r}")
        if isinstance(dead_limit, bool) or not isinstance(dead_limit, int) or dead_limit < 1:
            raise ConfigError(f"dead_limit must be an int >= 1, not {dead_limit!r}")
        self.pool_size = pool_size
        self.namespace = namespace
        self.timestamps = timestamps
        self.shutdown_timeout = seconds(shutdown_timeout, "shutdown_timeout")
        self.max_retries = max_retries
        self.dead_limit = dead_limit
        self.dead_timeout = seconds(dead_timeout, "dead_timeout")
        self.scheduler = scheduler
        self.poll_interval_average = (
            None if poll_interval_average is None else seconds(poll_interval_average, "poll_interval_average")
        )
        self.average_scheduled_poll_interval = seconds(
            average_scheduled_poll_interval, "average_scheduled_poll_interval"
        )
        for name, value in (
            ("shutdown_timeout", self.shutdown_timeout),
            ("dead_timeout", self.dead_timeout),
            ("average_scheduled_poll_interval", self.average_scheduled_poll_interval),
        ):
            if value < 0:
                raise ConfigError(f"{name} must not be negative")
        if self.poll_interval_average is not None and self.poll_interval_average <= 0:
            raise ConfigError("poll_interval_average must be positive")
        self.identity = identity or new_identity()
        self.buffer = buffer
        self.flush_interval = seconds(flush_interval, "flush_interval")
        self.buffer_max_bytes = buffer_max_bytes
        self.buffer_full_timeout = seconds(buffer_full_timeout, "buffer_full_timeout")
        self.buffer_path = buffer_path
        self.spool_fsync = spool_fsync
        if spool_fsync not in ("always", "interval", "never"):
            raise ConfigError(f'spool_fsync must be "always", "interval" or "never", not {spool_fsync!r}')
        if buffer_path is not None and not buffer:
            raise ConfigError("buffer_path needs buffer=True")
        self.tag = tag
        self.labels = [str(label) for label in labels]
        self.extra_reporters = list(extra_reporters)
        for rep in self.extra_reporters:
            if not isinstance(rep, Reporter):
                raise ConfigError(f"extra_reporters takes kiq.Reporter instances, not {rep!r}")
        self.leader_ttl = None if leader_ttl is None else seconds(leader_ttl, "leader_ttl")
        self.orphan_check_interval = (
            None if orphan_check_interval is None else seconds(orphan_check_interval, "orphan_check_interval")
        )
        if isinstance(max_recoveries, bool) or not isinstance(max_recoveries, int) or max_recoveries < 0:
            raise ConfigError(f"max_recoveries must be an int >= 0, not {max_recoveries!r}")
        self.max_recoveries = max_recoveries
        self.periodics = [self._periodic(p) for p in periodics]
        self.periodic_clock = periodic_clock
        self.heartbeat_interval = seconds(heartbeat_interval, "heartbeat_interval")
        self.heartbeat_ttl = seconds(heartbeat_ttl, "heartbeat_ttl")
        if not 0 < self.heartbeat_interval < self.heartbeat_ttl:
            raise ConfigError("heartbeat_interval must be positive and shorter than heartbeat_ttl (60 s)")
        self.metrics = metrics
        self.health_address = health_address
        for name, limit in (("max_jobs", max_jobs), ("max_memory_bytes", max_memory_bytes)):
            if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
                raise ConfigError(f"{name} must be a positive int or None, not {limit!r}")
        self.max_jobs = max_jobs
        self.max_memory_bytes = max_memory_bytes
        if prefetch != "auto" and (isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 0):
            raise ConfigError(f"prefetch must be an int >= 0 or \"auto\", not {prefetch!r}")
        self.prefetch = prefetch
        self.stuck_after = None if stuck_after is None else seconds(stuck_after, "stuck_after")
        if self.stuck_after is not None and self.stuck_after <= 0:
            raise ConfigError(f"stuck_after must be a positive number of seconds, not {stuck_after!r}")
        self._tracing = None if tracing is None else Tracing(tracing)
        if encryption_keys is None and encryption_version is not None:
            raise ConfigError("encryption_version needs encryption_keys")
        # The keys live in the core; this object never keeps them.
        self._keyring = None if encryption_keys is None else _kiq.Keyring(encryption_keys, encryption_version)
        self._throwaway_keyring: _kiq.Keyring | None = None  # sandbox mode without keys
        #: Instrumentation hooks: ``app.instrument.attach(handler)``; see :mod:`kiq.instrument`.
        self.instrument = Instrumenter()
        #: Rate limiters on this app's Redis: ``app.limiter.concurrent(...)``; see :mod:`kiq.limiter`.
        self.limiter = Limiters(self)
        self.tls_ca_file, self.tls_cert_file, self.tls_key_file = tls_ca_file, tls_cert_file, tls_key_file
        self._workers: dict[str, Registered] = {}
        self._client: _kiq.Client | None = None
        self._server: _kiq.Server | None = None
        self._threads: WorkerThreads | None = None
        self._reporters: list[ReporterThread] = []
        self._aio: AsyncRunner | None = None
        self._running_main = False
        self._listener: threading.Thread | None = None
        self._lock = threading.Lock()
        self._stop_requested = threading.Event()
        self.state_dir = Path(state_dir) if state_dir is not None else default_state_dir()
        #: Set by a second stop signal to run(): stop() then waits for no running job.
        self._hurry = threading.Event()
        #: The link to a swarm's parent, in a swarm's child (it watches hard_timeout).
        self._swarm: HardLimits | None = None
        #: Start without fetching (a swarm's child started while the swarm is quiet).
        self._start_quiet = False
        #: Called (in the thread that called start()) once the process fetches.
        self._on_started: list[Callable[[], None]] = []
        # kiq's own worker: chains (kiq.workflow) run their next step from any process.
        self.register(NextStep, *workers)
        if buffer_path is not None and self._sandbox is None and not preload.deferring():
            # Jobs an earlier run left in the spool go to Redis now, not at the first enqueue
            # (a swarm's preload leaves that to each child's start).
            _ = self.client

    @classmethod
    def _periodic(cls, entry: tuple[Any, ...]) -> PeriodicEntry:
        """A periodics entry as the core takes it; bad entries fail here, at construction."""
        if not isinstance(entry, tuple) or len(entry) not in (2, 3):
            raise ConfigError(f"a periodic entry is (crontab, worker) or (crontab, worker, options), not {entry!r}")
        expr, target = entry[0], entry[1]
        opts = dict(entry[2]) if len(entry) == 3 else {}
        if not isinstance(expr, str):
            raise ConfigError(f"a periodic entry's crontab must be a str, not {expr!r}")
        Crontab(expr)  # raises CrontabError naming the field
        job = cls._template(target)
        args = opts.pop("args", ())
        if isinstance(args, (str, bytes)) or not isinstance(args, (list, tuple)):
            raise ConfigError(f"periodic args must be a list, not {args!r}")
        if is_worker(target):
            check_arguments(target, [args])
        queue = opts.pop("queue", job.queue)
        retry = opts.pop("retry", job.retry)
        unique_for = opts.pop("unique_for", job.unique_for)
        unique_until = opts.pop("unique_until", job.unique_until)
        expires_in = opts.pop("expires_in", job.expires_in)
        encrypt = opts.pop("encrypt", job.encrypt)
        payload = {**job.options, **opts}
        return PeriodicEntry(expr, Job(job.class_name, list(args), queue, retry, payload, None, unique_for,
                                       unique_until, expires_in, encrypt))

    @staticmethod
    def _check_queues(queues: Mapping[str, int] | Sequence[Capsule]) -> dict[str, int] | tuple[Capsule, ...]:
        if isinstance(queues, Sequence) and not isinstance(queues, (str, bytes)) and queues:
            capsules = tuple(queues)
            for c in capsules:
                if not isinstance(c, Capsule):
                    raise ConfigError(f"queues given as a list must hold kiq.Capsule values, not {c!r}")
            names = [n for c in capsules for n, _ in c.queues]
            twice = sorted({n for n in names if names.count(n) > 1})
            if twice:
                raise ConfigError(f"queue {twice[0]!r} is in two capsules")
            return capsules
        if not isinstance(queues, Mapping) or not queues:
            raise ConfigError('queues must be a non-empty mapping of queue name to concurrency, e.g. {"default": 25}, '
                              'or a list of kiq.Capsule')
        out: dict[str, int] = {}
        for name, n in queues.items():
            if not isinstance(name, str) or not name:
                raise ConfigError(f"queue names must be non-empty str, not {name!r}")
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ConfigError(f"queue {name!r} needs an int concurrency >= 1, not {n!r}")
            out[name] = n
        return out

    def __repr__(self) -> str:
        return f"<Kiq {self.identity} queues={self.queues}>"

    # -- workers ---------------------------------------------------------

    def register(self, *workers: WorkerLike) -> None:
        """Adds workers this process runs (before :meth:`start`). Registering a
        worker again is a no-op; two different workers under one name are an error.
        A worker registered in only this app enqueues here with ``perform_async``
        and the other Sidekiq verbs."""
        added = []
        for w in workers:
            reg = register(w)
            existing = self._workers.get(reg.name)
            if existing is not None:
                if existing.source is w:
                    continue
                raise ConfigError(
                    f"two different workers are registered under the name {reg.name!r}: {existing.source!r} and "
                    f"{w!r}; give one of them another name="
                )
            added.append((w, reg))
        if self._server is not None and added:
            raise ConfigError("register workers before start()")
        for w, reg in added:
            self._workers[reg.name] = reg
            bind(w, self)

    @property
    def workers(self) -> dict[str, Registered]:
        """The application's registered workers by wire name (kiq's own, such as
        the step of a chain, run too but are not listed)."""
        return {name: w for name, w in self._workers.items() if not name.startswith(_KIQ_OWN)}

    # -- client ----------------------------------------------------------

    @property
    def client(self) -> _kiq.Client:
        """The native client (created on first use)."""
        if self._sandbox is not None:
            raise ConfigError(f"a sandboxed Kiq (test_mode=\"sandbox\") never connects to Redis{self._why_sandboxed()}")
        with self._lock:
            if self._client is None:
                preload.note_client(self)
                corelog.start()
                self._client = _kiq.Client(
                    self.redis_url,
                    pool_size=self.pool_size,
                    namespace=self.namespace,
                    timestamps=self.timestamps,
                    tls_ca_file=self.tls_ca_file,
                    tls_cert_file=self.tls_cert_file,
                    tls_key_file=self.tls_key_file,
                    buffer=self.buffer,
                    flush_interval=self.flush_interval,
                    buffer_max_bytes=self.buffer_max_bytes,
                    buffer_full_timeout=self.buffer_full_timeout,
                    buffer_path=self.buffer_path,
                    spool_fsync=self.spool_fsync,
                    undeliverable_path=str(undeliverable_path(self.state_dir, self.identity, self.buffer_path)),
                    keyring=self._keyring,
                )
                if self.buffer:
                    # Jobs still buffered when the interpreter exits are flushed first.
                    atexit.register(_flush_at_exit, weakref.ref(self))
                problems, carried = self._client.spool_report
                for problem in problems:
                    logger.error("kiq spool: %s", problem)
                if carried:
                    logger.warning("kiq spool %s: %d jobs from an earlier run were not in Redis yet; flushing them",
                                   self.buffer_path, carried)
            return self._client

    def _flush_at_exit(self, client: _kiq.Client) -> None:
        """At interpreter exit: waits (saying so on stderr) for buffered jobs to
        reach Redis; what cannot is saved to disk, with the command that
        delivers it later. Nothing ``enqueue`` returned for is lost."""
        try:
            client.flush(0.5)
            return
        except UndeliverableError as exc:
            say(str(exc))
            return
        except KiqError:
            pass
        stats = client.buffer_stats() or {}
        limit = self.shutdown_timeout
        say(f"waiting up to {limit:g}s for {stats.get('jobs', 0)} buffered jobs to reach Redis at {client.url} "
             "(Ctrl-C stops waiting and saves them to disk; Kiq(shutdown_timeout=...) sets the wait)")
        try:
            client.flush(limit)
            say("all buffered jobs are in Redis")
            return
        except UndeliverableError as exc:
            say(str(exc))
            return
        except (KiqError, KeyboardInterrupt):
            pass
        left = (client.buffer_stats() or {}).get("jobs", 0)
        if self.buffer_path is not None:
            path = self.buffer_path
            say(f"{left} jobs are not in Redis yet; they are safe in the spool at {path}: the next process started "
                 f"with buffer_path={str(path)!r} delivers them, or deliver them now with: kiq spool push {path}")
            return
        target = unsent_dir(self.state_dir, self.identity)
        try:
            saved = client.dump(str(target))
        except KiqError as exc:
            say(f"{left} jobs could not reach Redis at {client.url}, and could not be saved to {target}: {exc}")
            return
        say(f"{saved} jobs could not reach Redis at {client.url} within {limit:g}s; saved to {target}. Deliver "
             f"them with: kiq spool push {target} (or start a Kiq with buffer_path={str(target)!r})")

    def flush(self, timeout: Seconds | None = None) -> None:
        """Waits until every buffered job (and every job of the spool) is in
        Redis (``timeout`` seconds, default ``shutdown_timeout``); raises
        :class:`~kiq.errors.TimeoutError` if Redis could not take them in time
        (they stay buffered), and :class:`~kiq.errors.UndeliverableError`
        naming the jobs Redis refused for good since the last ``flush`` (a key
        of the wrong type, an ACL: they were set aside in the dead-letter file)."""
        if self._client is not None:
            limit = self.shutdown_timeout if timeout is None else seconds(timeout, "timeout")
            self._client.flush(limit)

    def buffer_stats(self) -> dict[str, Any] | None:
        """The push buffer: ``jobs`` and ``bytes`` held, ``flushed`` so far, ``failing`` (the last error
        while Redis is away), ``spool_bytes``. None when enqueues are synchronous (or sandboxed)."""
        if self._sandbox is not None:
            return None
        return self.client.buffer_stats()

    # -- batches ---------------------------------------------------------

    def batch(self, bid: str | None = None, *, description: str | None = None,
              callback_queue: str | None = None) -> Batch:
        """A new batch (Pro's ``Sidekiq::Batch.new``), or with ``bid`` an
        existing one reopened to add jobs (:class:`~kiq.errors.BatchError` if it
        expired or never existed). A new batch made inside another batch's
        ``jobs()`` block, or inside a job of a batch, is that batch's child.
        See :mod:`kiq.batch`."""
        if self._sandbox is not None:
            raise ConfigError("batches need Redis: a sandboxed Kiq (test_mode=\"sandbox\") cannot run them")
        if bid is not None:
            if description is not None or callback_queue is not None:
                raise ConfigError("description and callback_queue are set when a batch is created, not when reopened")
            return reopen(self, bid)
        if description is not None and not isinstance(description, str):
            raise ConfigError(f"a batch description is a str, not {type(description).__name__}")
        job = current_job()
        running = list(job._delivery.batch_chain) if job is not None and job.bid is not None else None
        return Batch(self, description=description, callback_queue=callback_queue,
                     ancestors=parent_chain(self, running))

    def batch_status(self, bid: str) -> BatchStatus:
        """A batch's status now (Pro's ``Batch::Status``): ``total``, ``pending``,
        ``failures``, ``created_at``, ``complete``, ``failed_jids``,
        ``dead_jids``, ``parent_bid``, ``child_count``, ``description``...;
        :class:`~kiq.errors.BatchError` if it expired or never existed."""
        if self._sandbox is not None:
            raise ConfigError("batches need Redis: a sandboxed Kiq (test_mode=\"sandbox\") has none")
        return status_of(self, bid)

    def _why_sandboxed(self) -> str:
        if not self._sandboxed_by:
            return ""
        return (f" (it was built while {self._sandboxed_by} sandboxes every Kiq; a test that wants Redis marks itself "
                "@pytest.mark.kiq_live or uses the kiq_redis / kiq_app fixtures, and builds its app inside the test)")

    @property
    def test_mode(self) -> str | None:
        """``"sandbox"`` while enqueued jobs stay in memory (see :mod:`kiq.testing`), else None."""
        return "sandbox" if self._sandbox is not None else None

    def __enter__(self) -> Kiq:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
