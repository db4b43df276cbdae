"""Type stubs of the native module ``kiq._kiq`` (the Rust core's bindings)."""

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, final

__version__: str
__all__ = [
    "ACTIVE_JOB_WRAPPER",
    "BUILD_INFO",
    "BufferFullError",
    "Client",
    "CodecError",
    "ConfigError",
    "Crontab",
    "CrontabError",
    "ConnectionError",
    "Delivery",
    "Fate",
    "KiqError",
    "Server",
    "SIDEKIQ_ACTIVE_JOB_WRAPPER",
    "ShutdownError",
    "TRACE_CONTEXT_FIELDS",
    "TimeoutError",
    "__version__",
    "active_job_args",
    "decide_failure",
    "decode_backtrace",
    "display_args",
    "drain_logs",
    "encode_backtrace",
    "encode_job",
    "new_jid",
    "set_log_level",
    "unwrap_active_job",
    "wake_logs",
]

ACTIVE_JOB_WRAPPER: str
#: How the core was built: ``"rustc <version>, <target>, <profile>"``.
BUILD_INFO: str
SIDEKIQ_ACTIVE_JOB_WRAPPER: str
TRACE_CONTEXT_FIELDS: tuple[str, ...]

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
    ) -> Client: ...
    def push(
        self,
        class_name: str,
        args: Sequence[Any],
        *,
        queue: str = "default",
        retry: bool | int | None = None,
        options: Mapping[str, Any] | None = None,
        jid: str | None = None,
        at: float | None = None,
        sync: bool = False,
        unique_for: float | None = None,
        unique_until: str | None = None,
        expires_in: float | None = None,
    ) -> tuple[str, str | None]:
        """Pushes one job; returns ``(jid, held_by)``, ``held_by`` None unless a unique job was skipped."""
    def push_bulk(
        self,
        class_name: str,
        args_list: Iterable[Sequence[Any]],
        *,
        queue: str = "default",
        retry: bool | int | None = None,
        options: Mapping[str, Any] | None = None,
        at: float | None = None,
        sync: bool = False,
        unique_for: float | None = None,
        unique_until: str | None = None,
        expires_in: float | None = None,
    ) -> tuple[list[str], dict[str, str | None]]:
        """Pushes one job per argument list in one round trip; returns the jids and the skipped unique ones."""
    def push_jobs(
        self,
        jobs: Iterable[tuple[Any, ...]],
        *,
        sync: bool = False,
    ) -> tuple[list[str], dict[str, str | None]]:
        """Pushes ``(class_name, args, queue, retry, options, jid, at, unique_for, unique_until, expires_in)``
        jobs in one round trip; returns the jids and the skipped unique ones."""
    def flush(self, timeout: float) -> None:
        """Waits until every buffered job is in Redis; raises TimeoutError after ``timeout`` seconds."""
    def buffer_stats(self) -> dict[str, Any] | None:
        """The push buffer's jobs, bytes, flushed count, failing error and spool size."""
    @property
    def spool_report(self) -> tuple[list[str], int]:
        """What opening the spool found: damage descriptions, and jobs carried over from an earlier run."""
    def ping(self) -> float:
        """Round-trip time of a PING, in seconds."""
    def command(self, *args: str) -> Any:
        """Runs one Redis command and returns its reply as Python values."""
    def key(self, kind: str, name: str | None = None) -> str:
        """The Redis key of a kind ("queue", "retry", "process", ...), namespace applied."""
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
    def payload(self) -> str | None: ...
    @property
    def backtrace(self) -> bool | int | None: ...
    @property
    def trace_context(self) -> list[tuple[str, str]]: ...
    @property
    def retry_count(self) -> int | None: ...
    @property
    def enqueued_at(self) -> float | None: ...

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
        queues: Sequence[tuple[str, int]],
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
        periodics: Iterable[tuple[Any, ...]] | None = None,
        periodic_clock: tuple[float, float, float] | None = None,
        health: str | None = None,
        max_jobs: int | None = None,
        max_memory_bytes: int | None = None,
    ) -> Server: ...
    def next_job(self, lane: int, timeout: float | None = None) -> Delivery | None:
        """The next job of queue number ``lane``; None once the server stops (or on timeout)."""
    def complete(self, delivery: Delivery) -> None: ...
    def expire(self, delivery: Delivery) -> None: ...
    def fail(
        self,
        delivery: Delivery,
        error_class: str,
        error_message: str,
        *,
        backtrace: list[str] | None = None,
        retry: bool | int | None = None,
        dead: bool | None = None,
        backtrace_option: bool | int | None = None,
        retry_queue: str | None = None,
        retry_in: float | None = None,
    ) -> Fate:
        """Records the failure; returns where the job went."""
    def abandon(self, delivery: Delivery) -> None: ...
    def set_quiet(self, quiet: bool) -> None: ...
    @property
    def state(self) -> str: ...
    @property
    def health_address(self) -> str | None: ...
    def is_cancelled(self, delivery: Delivery) -> bool: ...
    @property
    def is_leader(self) -> bool:
        """Whether this process is the kiq leader now."""
    @property
    def busy(self) -> int:
        """Jobs running now (the heartbeat's ``busy``)."""
    def next_signal(self, timeout: float) -> str | None:
        """A signal sent through Redis ("TSTP", "TERM" or "TTIN") within ``timeout`` seconds, else None."""
    def out(self, lane: int) -> int: ...
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

def encode_backtrace(lines: list[str]) -> str:
    """Encodes backtrace lines as Sidekiq's ``error_backtrace`` (JSON, zlib, Base64)."""

def decode_backtrace(value: str) -> list[str]:
    """Decodes an ``error_backtrace`` value written by Sidekiq or kiq."""

def encode_job(
    class_name: str,
    args: Sequence[Any],
    *,
    queue: str = "default",
    retry: bool | int | None = None,
    options: Mapping[str, Any] | None = None,
    jid: str | None = None,
    at: float | None = None,
    unique_for: float | None = None,
    unique_until: str | None = None,
    expires_in: float | None = None,
    timestamps: str = "seconds",
) -> tuple[str, str, float | None]:
    """The payload a push would write, without Redis: ``(jid, payload, at)``."""

def decide_failure(
    payload: str,
    queue: str,
    error_class: str,
    error_message: str,
    *,
    backtrace: list[str] | None = None,
    retry: bool | int | None = None,
    dead: bool | None = None,
    backtrace_option: bool | int | None = None,
    retry_queue: str | None = None,
    max_retries: int = 25,
    timestamps: str = "seconds",
) -> tuple[Fate, str | None]:
    """What the retry path does with a failed payload: its fate and the payload to keep (None when discarded)."""

def display_args(payload: str) -> list[Any]:
    """A job's args as shown: an encrypted job's last argument is ``"[encrypted data]"``."""

def new_jid() -> str:
    """A new 24-hex-digit job id."""

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
def wake_logs() -> None:
    """Makes a ``drain_logs`` call waiting in another thread return now."""
