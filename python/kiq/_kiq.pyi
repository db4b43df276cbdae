"""Type stubs of the native module ``kiq._kiq`` (the Rust core's bindings)."""

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, final

from kiq.job import Job, PeriodicEntry
from kiq.worker import WorkerOptions

__version__: str
__all__ = [
    "ACTIVE_JOB_WRAPPER",
    "Admin",
    "BATCH_FIELD",
    "BatchBuilder",
    "BatchError",
    "BUILD_INFO",
    "PRO_BATCH_FIELD",
    "batch_ancestors",
    "batch_invalidate",
    "batch_invalidated",
    "batch_list",
    "batch_status",
    "check_batch_callback",
    "new_bid",
    "ClassMetrics",
    "JobView",
    "Page",
    "ProcessView",
    "QueueStat",
    "Summary",
    "WorkView",
    "BufferFullError",
    "Client",
    "CodecError",
    "ConfigError",
    "DEFAULT_MAX_RESCHEDULES",
    "Grant",
    "Limiter",
    "LimiterState",
    "OverLimit",
    "Throttle",
    "decide_reschedule",
    "limiter_states",
    "Crontab",
    "CrontabError",
    "ConnectionError",
    "DecryptionError",
    "Delivery",
    "ENCRYPTED_DATA",
    "ENCRYPT_FIELD",
    "Fate",
    "KiqError",
    "Keyring",
    "Server",
    "SIDEKIQ_ACTIVE_JOB_WRAPPER",
    "ShutdownError",
    "TRACE_CONTEXT_FIELDS",
    "TimeoutError",
    "UndeliverableError",
    "__version__",
    "active_job_args",
    "check_job",
    "check_worker_options",
    "decide_failure",
    "decode_backtrace",
    "display_args",
    "drain_logs",
    "encode_backtrace",
    "encode_job",
    "new_jid",
    "read_envelope",
    "run_ready",
    "runtime_started",
    "set_log_level",
    "unwrap_active_job",
    "wake_logs",
]

ACTIVE_JOB_WRAPPER: str
#: How the core was built: ``"rustc <version>, <target>, <profile>"``.
BUILD_INFO: str
SIDEKIQ_ACTIVE_JOB_WRAPPER: str
TRACE_CONTEXT_FIELDS: tuple[str, ...]
#: The payload field saying the last argument is encrypted (Sidekiq Enterprise's ``encrypt``).
ENCRYPT_FIELD: str
#: What Sidekiq's Web UI shows in place of an encrypted argument: ``"[encrypted data]"``.
ENCRYPTED_DATA: str
#: kiq's batch-id payload field (``kiq_bid``), and Sidekiq Pro's (``bid``), which kiq never writes.
BATCH_FIELD: str
PRO_BATCH_FIELD: str
#: Reschedules over a rate limit before the retry path (Sidekiq Enterprise's 20).
DEFAULT_MAX_RESCHEDULES: int

class KiqError(Exception):
    """Base class of every error kiq raises."""

class ConnectionError(KiqError):
    """Redis could not be reached or a command failed."""

class CodecError(KiqError):
    """A job or argument does not fit Sidekiq's JSON format."""

class ConfigError(KiqError):
    """A setting given to kiq is invalid."""

class TimeoutError(KiqError):
    """A wait ran out of time."""

class ShutdownError(KiqError):
    """The component was stopped and accepts no more work."""

class CrontabError(ConfigError):
    """A crontab expression is invalid; the message names the field and text."""

class BufferFullError(KiqError):
    """The push buffer stayed full (Redis away or too slow) for its whole timeout."""

class UndeliverableError(KiqError):
    """Redis refused jobs for a reason retrying cannot fix (a key of the wrong type, an ACL); they were kept aside."""

class BatchError(KiqError):
    """A batch cannot do what was asked: it expired or never existed, or it already succeeded."""

class OverLimit(KiqError):
    """A rate limiter had no room within its wait_timeout. Raised inside a job, it reschedules the job (Sidekiq
    Enterprise's rule) instead of failing it."""

class DecryptionError(KiqError):
    """An encrypted job argument could not be decrypted: unknown key version, altered data, or a value outside the
    Marshal subset kiq reads. The job takes the retry path; the message never quotes the plaintext."""

@final
class Keyring:
    """Keys by version for Sidekiq Enterprise's encryption; never shows a key."""

    def __new__(
        cls, keys: Mapping[int, bytes] | Callable[[int], bytes | None], active_version: int | None = None
    ) -> Keyring: ...
    @property
    def active_version(self) -> int:
        """The version new jobs are encrypted with."""
    @property
    def versions(self) -> list[int]:
        """The versions known so far (those of a callable as they are asked for)."""
    def encrypt(self, value: Any) -> str:
        """The encrypted argument for ``value``, as Sidekiq Enterprise writes it."""
    def decrypt(self, text: str) -> Any:
        """The value inside an encrypted argument; raises ``DecryptionError``."""

def read_envelope(text: str) -> tuple[str, bytes, bytes, int, bytes]:
    """The parts of an encrypted argument: ``(cipher, tag, iv, version, blob)``."""

@final
class Client:
    """A connection pool to one Redis and the means to push jobs to it."""

    def __new__(
        cls,
        url: str,
        *,
        pool_size: int = 5,
        namespace: str | None = None,
        timestamps: str = "seconds",
        response_timeout: float = 5.0,
        connect_timeout: float = 2.0,
        tls_ca_file: str | os.PathLike[str] | None = None,
        tls_cert_file: str | os.PathLike[str] | None = None,
        tls_key_file: str | os.PathLike[str] | None = None,
        buffer: bool = False,
        flush_interval: float = 0.01,
        buffer_max_bytes: int = 67108864,
        buffer_full_timeout: float = 10.0,
        buffer_path: str | os.PathLike[str] | None = None,
        spool_fsync: str = "interval",
        undeliverable_path: str | os.PathLike[str] | None = None,
        keyring: Keyring | None = None,
    ) -> Client: ...
    def push(
        self,
        job: Job,
        *,
        at: float | None = None,
        sync: bool = False,
        batch: BatchBuilder | None = None,
    ) -> tuple[str, str | None]:
        """Pushes one job; returns ``(jid, held_by)``, ``held_by`` None unless a unique job was skipped.
        With ``batch`` the job joins that batch's ``jobs()`` block instead."""
    def push_bulk(
        self,
        template: Job,
        args_list: Iterable[Sequence[Any]],
        *,
        at: float | None = None,
        sync: bool = False,
        batch: BatchBuilder | None = None,
    ) -> tuple[list[str], dict[str, str | None]]:
        """Pushes one job like ``template`` (its args and jid ignored) per argument list in one round trip;
        returns the jids and the skipped unique ones."""
    def push_jobs(
        self,
        jobs: Iterable[Job],
        *,
        at: float | None = None,
        sync: bool = False,
        batch: BatchBuilder | None = None,
    ) -> tuple[list[str], dict[str, str | None]]:
        """Pushes jobs in one round trip; returns the jids and the skipped unique ones."""
    def flush(self, timeout: float) -> None:
        """Waits until every buffered job is in Redis; raises TimeoutError after ``timeout`` seconds."""
    def buffer_stats(self) -> dict[str, Any] | None:
        """The push buffer's jobs, bytes, flushed count, failing error and spool size."""
    def dump(self, dir: str | os.PathLike[str]) -> int:
        """Writes every buffered job not yet in Redis to a new spool directory; returns how many."""
    def replay_undeliverable(self, path: str | os.PathLike[str]) -> tuple[int, int]:
        """Pushes the jobs of a dead-letter file again: ``(pushed, still refused)``."""
    @property
    def url(self) -> str:
        """The Redis URL, password removed."""
    @property
    def spool_report(self) -> tuple[list[str], int]:
        """What opening the spool found: damage descriptions, and jobs carried over from an earlier run."""
    def ping(self) -> float:
        """Round-trip time of a PING, in seconds."""
    def command(self, *args: str) -> Any:
        """Runs one Redis command and returns its reply as Python values."""
    def size(self, kind: str, name: str | None = None) -> int:
        """Entries in a set ("schedule", "retry", "dead") or queue ("queue", ``name``)."""
    def window(
        self, kind: str, name: str | None = None, *, start: int = 0, count: int = 100
    ) -> list[tuple[str, float | None]]:
        """``count`` entries from display position ``start`` as ``(payload, score)``, score None for a queue."""
    def remove(self, kind: str, name: str | None, member: str) -> bool:
        """Removes one entry equal to ``member``; False if there was none."""
    def clear(self, kind: str, name: str | None = None) -> None:
        """Deletes a set, or a queue and its name (in one step)."""
    def queue_names(self) -> list[str]:
        """The known queue names, sorted."""
    def totals(self) -> tuple[int, int]:
        """``(processed, failed)`` all-time counters."""
    def find_job(self, set: str, jid: str) -> list[tuple[str, float]]:
        """``(member, score)`` of each entry of "schedule", "retry" or "dead" with this jid."""
    def list_jobs(
        self,
        kind: str,
        name: str | None = None,
        *,
        class_name: str | None = None,
        error: str | None = None,
        start: int = 0,
        limit: int = 100,
        window: int = 500,
        max_scan: int = 100_000,
    ) -> tuple[list[tuple[str, float | None]], int, int, int | None]:
        """Matching jobs of a set or queue, a window at a time: ``(jobs, scanned, size, next)``."""
    def count_jobs(
        self,
        kind: str,
        name: str | None = None,
        *,
        class_name: str | None = None,
        error: str | None = None,
        window: int = 500,
        max_scan: int = 100_000,
    ) -> tuple[int, int, int]:
        """How many jobs of a set or queue match: ``(matches, scanned, size)``."""
    def act_on_jobs(
        self,
        action: str,
        kind: str,
        name: str | None = None,
        *,
        class_name: str | None = None,
        error: str | None = None,
        window: int = 500,
        max_scan: int = 100_000,
    ) -> tuple[int, int, int]:
        """Runs now ("retry") or deletes ("delete") every matching job: ``(done, gone, scanned)``."""
    def request_cancel(self, jid: str) -> None:
        """Asks the process running job ``jid`` to cancel it (seen at its next heartbeat)."""
    def enqueue_now(self, set: str, member: str) -> bool:
        """Moves a member of a job set to its queue now; False if it was gone."""
    def kill(self, set: str, member: str, *, dead_limit: int = 10_000, dead_timeout: float = 15_552_000.0) -> bool:
        """Moves a member of a job set to the dead set; False if it was gone."""
    @property
    def namespace_prefix(self) -> str: ...

@final
class Delivery:
    """One job handed to a Python thread."""

    def clock_start(self) -> None:
        """An async job's coroutine starts now: its run time counts from here."""
    def clock_stop(self) -> None:
        """An async job's coroutine returned or raised: its run time ends here."""

    @property
    def class_name(self) -> str: ...
    @property
    def jid(self) -> str: ...
    @property
    def queue(self) -> str: ...
    @property
    def lane(self) -> int: ...
    @property
    def expires_at(self) -> float | None: ...
    @property
    def args(self) -> list[Any]: ...
    @property
    def kwargs(self) -> dict[str, Any] | None: ...
    @property
    def settled(self) -> bool: ...
    @property
    def encrypted(self) -> bool:
        """Whether the job's last argument was encrypted (decrypted in ``args``; False once settled)."""
    @property
    def payload(self) -> str | None: ...
    @property
    def trace_context(self) -> list[tuple[str, str]]: ...
    @property
    def retry_count(self) -> int | None: ...
    @property
    def enqueued_at(self) -> float | None: ...
    @property
    def bid(self) -> str | None:
        """The kiq batch of a batch job (None for other jobs, callbacks included)."""
    @property
    def batch_chain(self) -> list[str]:
        """A batch job's batch and its ancestors, or an awaited callback's (nearest first); else empty."""
    @property
    def batch_event(self) -> str | None:
        """On a batch callback job, its event; else None."""
    @property
    def batch_invalidated(self) -> bool:
        """The job's batch was invalidated: skip it (``Server.skip``)."""
    @property
    def overrated(self) -> int:
        """Times the job was rescheduled over a rate limit before (``overrated``, 0 if never)."""
    @property
    def admitted_at(self) -> float | None:
        """When its worker's throttle admitted it (epoch seconds, Redis's clock); None if not throttled."""

@final
class BatchBuilder:
    """The jobs of one ``jobs()`` block of a batch, until the block ends; built
    from a spec object's attributes (``bid``, ``up``, ``new``, ``description``,
    ``callback_queue``, ``callbacks``)."""

    def __new__(cls, client: Client, spec: Any) -> BatchBuilder: ...
    @property
    def bid(self) -> str: ...
    @property
    def chain(self) -> list[str]: ...
    def __len__(self) -> int: ...
    def commit(self) -> int:
        """Ends the block: creates or reopens the batch and pushes its jobs, exactly once; returns how many
        callbacks fired at once."""
    def discard(self) -> None:
        """The block raised: drops what it staged; nothing was pushed."""
    def defer(self, child: BatchBuilder) -> None:
        """A child batch's block ended inside this one's: it is committed with this one."""

def batch_status(client: Client, bid: str) -> dict[str, Any] | None:
    """A batch's status (failed and dead jids included), or None when it expired or never existed."""

def batch_list(client: Client, start: int = 0, count: int = 100) -> tuple[int, list[dict[str, Any]]]:
    """Up to ``count`` batches from the ``start``-th, newest first, and how many the listing holds."""

def batch_ancestors(client: Client, bid: str) -> list[str] | None:
    """A batch's ancestors (nearest first); None when it is gone."""

def batch_invalidate(client: Client, bid: str) -> bool:
    """Marks a batch invalid; False when it is gone."""

def batch_invalidated(client: Client, chain: list[str]) -> bool:
    """Whether any batch of ``chain`` was invalidated."""

def check_batch_callback(spec: Any) -> None:
    """Checks a callback spec the way a builder will (raises ``ConfigError``/``CodecError``)."""

def new_bid() -> str:
    """A new batch id (14 characters of URL-safe Base64)."""

@final
class Fate:
    """Where a failed job went: ``went`` is "retry", "dead" or "discard"."""

    @property
    def went(self) -> str: ...
    @property
    def retry_count(self) -> int:
        """The job's ``retry_count`` after this failure (0 after its first)."""
    @property
    def max_retries(self) -> int | None:
        """Retries it may have; None when a ``retry_for`` window limits it instead."""
    @property
    def retry_at(self) -> float | None:
        """When the next retry runs (epoch seconds), when it went to the retry set."""

@final
class Server:
    """The fetchers, result writer and scheduler of one Kiq process."""

    def __new__(
        cls,
        client: Client,
        identity: str,
        queues: Sequence[tuple[Sequence[tuple[str, int]], int]],
        *,
        hostname: str,
        tag: str | None = None,
        labels: Sequence[str] | None = None,
        max_retries: int = 25,
        dead_limit: int = 10_000,
        dead_timeout: float = 15_552_000.0,
        poll_interval_average: float | None = None,
        average_scheduled_poll_interval: float = 5.0,
        scheduler: bool = True,
        heartbeat: bool = True,
        heartbeat_interval: float = 5.0,
        heartbeat_ttl: float = 60.0,
        metrics: bool = True,
        leader_ttl: float | None = 30.0,
        orphan_check_interval: float | None = 60.0,
        max_recoveries: int = 3,
        periodics: Iterable[PeriodicEntry] | None = None,
        periodic_clock: tuple[float, float, float] | None = None,
        health: str | None = None,
        max_jobs: int | None = None,
        prefetch: int | None = None,
        max_memory_bytes: int | None = None,
        stuck_after: float | None = None,
        quiet: bool = False,
        workers: Mapping[str, WorkerOptions] | None = None,
    ) -> Server: ...
    def next_job(self, lane: int, timeout: float | None = None) -> Delivery | None:
        """The next job of queue number ``lane``; None once the server stops (or on timeout)."""
    def complete(self, delivery: Delivery) -> None: ...
    def set_expired_to_python(self, on: bool) -> None:
        """Expired jobs reach Python (to be reported) instead of being dropped in the core."""
    def expire(self, delivery: Delivery) -> None: ...
    def skip(self, delivery: Delivery) -> None:
        """The job's batch was invalidated: not run, done for its batch, not counted as processed."""
    def fail(
        self,
        delivery: Delivery,
        error_class: str,
        error_message: str,
        *,
        backtrace: list[str] | None = None,
    ) -> Fate:
        """Records the failure (the worker's registered options apply where the payload has none);
        returns where the job went."""
    def wants_backtrace(self, delivery: Delivery) -> bool:
        """Whether a failure of this job keeps a backtrace (its own option, else its worker's)."""
    def abandon(self, delivery: Delivery) -> None: ...
    def recover_dead(self, identity: str, timed_out: dict[str, float]) -> tuple[int, int, int]:
        """Recovers another process known to be dead (a swarm's child that exited) at once;
        jobs in ``timed_out`` (jid -> hard_timeout) fail with JobTimeoutError. Returns
        ``(requeued, poisoned, timed_out)``."""
    def reschedule(self, delivery: Delivery, *, max_reschedules: int = 20, delay: float | None = None) -> float | None:
        """Over a rate limit: the job goes to the schedule set (``overrated`` + 1) and the time it runs next is
        returned; None once it was rescheduled ``max_reschedules`` times (the delivery is then untouched)."""
    def set_quiet(self, quiet: bool) -> None: ...
    @property
    def state(self) -> str: ...
    @property
    def health_address(self) -> str | None: ...
    def is_cancelled(self, delivery: Delivery) -> bool: ...
    @property
    def in_progress_keys(self) -> str:
        """Glob of this process's in-progress lists, namespace applied."""
    @property
    def is_leader(self) -> bool:
        """Whether this process is the kiq leader now."""
    @property
    def busy(self) -> int:
        """Jobs running now (the heartbeat's ``busy``)."""
    def next_signal(self, timeout: float) -> str | None:
        """A signal sent through Redis ("TSTP", "TERM" or "TTIN") within ``timeout`` seconds, else None."""
    def out(self, lane: int) -> int:
        """Jobs of queue number ``lane`` fetched and not finished."""
    def capacity(self, lane: int) -> int:
        """Jobs queue number ``lane`` may hold now: its concurrency plus the prefetch
        (the automatic one only while its recent jobs are short)."""
    def report_threads(self, alive: list[int], wanted: list[int]) -> None:
        """Live and wanted worker threads per queue (in queue order), which ``/ready`` compares."""
    def results_waiting(self) -> tuple[int, float | None]:
        """``(waiting, paused)``: job results waiting to be written to Redis, and
        for how many seconds fetching has been paused for them without a break
        (None while it is not: 8,000 or more must wait)."""
    def gil_wait_stats(self) -> tuple[int, float]:
        """``(waits, seconds)``: how often a thread slept for a job, and the total
        time those threads then waited to get the GIL back."""
    def begin_stop(self) -> int: ...
    def finish_stop(self, timeout: float) -> tuple[int, int]: ...

@final
class Crontab:
    """A crontab parsed by the core; times are epoch seconds, UTC."""

    def __new__(cls, expr: str) -> Crontab: ...
    def matches(self, secs: int) -> bool: ...
    def next_after(self, secs: int) -> int | None: ...
    def __eq__(self, value: object, /) -> bool: ...
    def __hash__(self) -> int: ...

def run_ready(
    server: Server,
    lane: int,
    runners: dict[str, Callable[[list[Any], str, dict[str, Any] | None], Any]],
    set_current: Callable[[Delivery], Any],
    reset_current: Callable[[Any], Any],
    limit: int,
) -> tuple[Delivery | None, Any, BaseException | None] | None:
    """Runs up to ``limit`` ready jobs of queue number ``lane`` whose class is
    in ``runners``, each as the current job. None once none is ready or
    ``limit`` ran; ``(None, None, None)`` when the server stops; ``(delivery,
    None, None)`` for a started job the caller runs itself; ``(delivery,
    token, exception)`` for a job that raised, still current."""
def encode_backtrace(lines: list[str]) -> str:
    """Encodes backtrace lines as Sidekiq's ``error_backtrace`` (JSON, zlib, Base64)."""

def decode_backtrace(value: str) -> list[str]:
    """Decodes an ``error_backtrace`` value written by Sidekiq or kiq."""

def encode_job(
    job: Job,
    *,
    at: float | None = None,
    timestamps: str = "seconds",
    keyring: Keyring | None = None,
) -> tuple[str, str, float | None]:
    """The payload a push of ``job`` would write, without Redis: ``(jid, payload, at)``; encrypted with
    ``keyring``."""

def decide_failure(
    payload: str,
    queue: str,
    error_class: str,
    error_message: str,
    *,
    backtrace: list[str] | None = None,
    worker: WorkerOptions | None = None,
    max_retries: int = 25,
    timestamps: str = "seconds",
) -> tuple[Fate, str | None]:
    """What the retry path does with a failed payload: its fate and the payload to keep (None when discarded)."""

def check_job(job: Job) -> None:
    """Checks a job's class name, arguments and options; raises ConfigError naming the first wrong one."""

def check_worker_options(options: WorkerOptions) -> None:
    """Checks a worker's options; raises ConfigError naming the first wrong one."""

def display_args(payload: str) -> list[Any]:
    """A job's args as shown: an encrypted job's last argument is ``"[encrypted data]"``."""

def decide_reschedule(
    payload: str, *, max_reschedules: int = 20, delay: float | None = None
) -> tuple[float, str] | None:
    """What a job over a rate limit becomes, without Redis: ``(at, payload)``, or None past ``max_reschedules``."""

def new_jid() -> str:
    """A new 24-hex-digit job id."""

@final
class Grant:
    """Room taken in a limiter (give it back with ``Limiter.release``)."""

    @property
    def token(self) -> str: ...
    @property
    def acquired_at(self) -> float:
        """Epoch seconds by Redis's clock when the room was taken (0.0 for an unlimited limiter)."""
    @property
    def points(self) -> int: ...

@final
class Limiter:
    """One rate limiter: a validated definition bound to a client's Redis (without a client it always has room)."""

    def __new__(
        cls,
        client: Client | None,
        kind: str,
        name: str = "",
        *,
        size: int | None = None,
        interval: str | float | Any | None = None,
        wait_timeout: float | Any | None = None,
        lock_timeout: float | Any | None = None,
    ) -> Limiter: ...
    def acquire(self, points: int | None = None) -> Grant:
        """Takes room, waiting without the GIL up to ``wait_timeout``; raises ``OverLimit`` when there is none."""
    def acquire_async(self, points: int, done: Callable[[Grant | None, BaseException | None], object]) -> None:
        """``acquire`` for asyncio: ``done(grant, None)`` or ``done(None, error)`` is called from a core thread."""
    def release(self, grant: Grant) -> None:
        """Gives the room back (a concurrent slot; a no-op for the other kinds)."""
    def release_async(self, grant: Grant, done: Callable[[bool | None, BaseException | None], object]) -> None: ...
    @property
    def kind(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def capacity(self) -> int: ...
    @property
    def interval(self) -> float: ...
    @property
    def wait_timeout(self) -> float: ...

@final
class LimiterState:
    """A limiter's state now, cluster-wide."""

    @property
    def kind(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def capacity(self) -> int: ...
    @property
    def interval(self) -> float: ...
    @property
    def in_use(self) -> float: ...
    @property
    def waiting(self) -> int: ...
    @property
    def last_used(self) -> float: ...

def limiter_states(client: Client, max: int = 1000) -> list[LimiterState]:
    """The limiters used lately (newest first, at most ``max``) and their state."""

@final
class Throttle:
    """A worker's throttle, checked by the core when its jobs are fetched."""

    def __new__(
        cls,
        *,
        concurrency: int | None = None,
        key: Callable[..., str | int] | None = None,
        rate_count: int | None = None,
        rate_period: float | Any | None = None,
        lock_timeout: float | Any | None = None,
    ) -> Throttle: ...
    @property
    def concurrency(self) -> int | None: ...
    @property
    def rate(self) -> tuple[int, float] | None: ...
    @property
    def key(self) -> Callable[..., str | int] | None: ...
    @property
    def lock_timeout(self) -> float: ...

def unwrap_active_job(args: str) -> tuple[str, list[Any], dict[str, Any] | None]:
    """``(job_class, args, kwargs)`` of an ActiveJob wrapper job's ``args`` JSON."""

def active_job_args(
    job_class: str,
    args: Sequence[Any],
    kwargs: Mapping[str, Any] | None = None,
    *,
    queue: str = "default",
    priority: int | None = None,
    locale: str = "en",
    timezone: str = "UTC",
) -> list[Any]:
    """The ``args`` of a wrapper job that runs Ruby ActiveJob class ``job_class``."""

def set_log_level(level: str) -> None: ...
def drain_logs(timeout: float) -> tuple[list[tuple[str, str, str]], int]: ...

# -- the dashboard's core operations (kiq.web, kiq.api.Api.admin) ------------

@final
class JobView:
    """One job as a dashboard shows it: the shown class (``display_class``,
    else ActiveJob's ``wrapped``, else ``class``), each shown argument as JSON
    text (an encrypted job's last one is ``ENCRYPTED_DATA``), times in epoch
    seconds whatever unit the payload used."""

    @property
    def payload(self) -> str: ...
    @property
    def score(self) -> float | None: ...
    @property
    def jid(self) -> str: ...
    @property
    def class_name(self) -> str: ...
    @property
    def raw_class(self) -> str: ...
    @property
    def queue(self) -> str: ...
    @property
    def args(self) -> list[str]: ...
    @property
    def encrypted(self) -> bool: ...
    @property
    def retry(self) -> str | None: ...
    @property
    def retry_count(self) -> int | None: ...
    @property
    def created_at(self) -> float | None: ...
    @property
    def enqueued_at(self) -> float | None: ...
    @property
    def failed_at(self) -> float | None: ...
    @property
    def retried_at(self) -> float | None: ...
    @property
    def error_class(self) -> str | None: ...
    @property
    def error_message(self) -> str | None: ...
    @property
    def tags(self) -> list[str]: ...
    @property
    def bid(self) -> str | None: ...
    @property
    def unreadable(self) -> bool: ...
    @property
    def backtrace(self) -> list[str]:
        """Decoded ``error_backtrace`` (job pages only)."""
    @property
    def extras(self) -> list[tuple[str, str]]:
        """Fields outside Sidekiq's standard set, as (name, JSON text) (job pages only)."""

@final
class Page:
    """A window of jobs; ``next`` (offset to continue from) and ``scanned`` describe a filtered search."""

    @property
    def total(self) -> int: ...
    @property
    def jobs(self) -> list[JobView]: ...
    @property
    def next(self) -> int | None: ...
    @property
    def scanned(self) -> int: ...

@final
class QueueStat:
    @property
    def name(self) -> str: ...
    @property
    def size(self) -> int: ...
    @property
    def latency(self) -> float: ...

@final
class Summary:
    """Sidekiq's ``Stats``, read the same way."""

    @property
    def processed(self) -> int: ...
    @property
    def failed(self) -> int: ...
    @property
    def scheduled(self) -> int: ...
    @property
    def retries(self) -> int: ...
    @property
    def dead(self) -> int: ...
    @property
    def processes(self) -> int: ...
    @property
    def busy(self) -> int: ...
    @property
    def enqueued(self) -> int: ...
    @property
    def queues(self) -> list[QueueStat]: ...
    @property
    def default_latency(self) -> float: ...

@final
class WorkView:
    @property
    def tid(self) -> str: ...
    @property
    def queue(self) -> str: ...
    @property
    def run_at(self) -> int: ...
    @property
    def job(self) -> JobView: ...

@final
class ProcessView:
    @property
    def identity(self) -> str: ...
    @property
    def info(self) -> str:
        """The heartbeat's ``info`` JSON as the process wrote it."""
    @property
    def hostname(self) -> str: ...
    @property
    def pid(self) -> int: ...
    @property
    def tag(self) -> str: ...
    @property
    def labels(self) -> list[str]: ...
    @property
    def queues(self) -> list[str]: ...
    @property
    def concurrency(self) -> int: ...
    @property
    def version(self) -> str: ...
    @property
    def started_at(self) -> float: ...
    @property
    def embedded(self) -> bool: ...
    @property
    def busy(self) -> int: ...
    @property
    def beat(self) -> float: ...
    @property
    def quiet(self) -> bool: ...
    @property
    def rss_kb(self) -> int: ...
    @property
    def rtt_us(self) -> int: ...
    @property
    def work(self) -> list[WorkView]: ...

@final
class ClassMetrics:
    @property
    def class_name(self) -> str: ...
    @property
    def processed(self) -> int: ...
    @property
    def failed(self) -> int: ...
    @property
    def ms(self) -> int: ...
    @property
    def per_minute(self) -> list[int]: ...

@final
class Admin:
    """What a dashboard reads and does, sharing a ``Client``'s connections.
    ``set`` is "schedule", "retry" or "dead"; jobs in a set are named by
    Sidekiq's ``"<score>-<jid>"`` keys."""

    def __new__(cls, client: Client, *, dead_limit: int = 10_000, dead_timeout: float = 15_552_000.0) -> Admin: ...
    def window(self, set: str, start: int, count: int, *, queue: str | None = None,
               newest_first: bool = False) -> Page:
        """``count`` jobs from offset ``start`` (of the queue named ``queue`` when given): one ZRANGE/LRANGE."""
    def search(self, set: str, start: int, want: int, budget: int, *, class_name: str | None = None,
               queue: str | None = None, text: str | None = None, newest_first: bool = False) -> Page:
        """Up to ``want`` jobs matching the filter from offset ``start``, examining at most ``budget`` entries."""
    def job(self, set: str, key: str) -> JobView | None:
        """The job named by ``key``, with its decoded backtrace and extras."""
    def act(self, set: str, action: str, keys: list[str]) -> int:
        """"retry", "add_to_queue", "kill" or "delete" on the named jobs; returns how many."""
    def act_all(self, set: str, action: str, *, class_name: str | None = None, queue: str | None = None,
                text: str | None = None) -> int:
        """The action on every job the filter keeps (every job without one); returns how many."""
    def queue_delete(self, name: str, jid: str) -> bool: ...
    def queue_clear(self, name: str) -> int: ...
    def signal(self, identity: str, signal: str) -> None:
        """"TSTP" (quiet), "TERM" (stop) or "TTIN", picked up at the process's next heartbeat."""
    def summary(self) -> Summary: ...
    def redis_info(self) -> list[tuple[str, str]]: ...
    def history(self, days: int) -> list[tuple[str, int, int]]:
        """``(date, processed, failed)`` per UTC day, newest first."""
    def metrics(self, minutes: int) -> list[ClassMetrics]:
        """Per-class execution metrics of the last ``minutes`` minutes (at most 480), busiest first."""
    def processes(self) -> list[ProcessView]: ...
def wake_logs() -> None:
    """Makes a ``drain_logs`` call waiting in another thread return now."""

def runtime_started() -> bool:
    """Whether this process has started the core's runtime (its threads)."""
