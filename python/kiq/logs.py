"""Logging: kiq's job events through stdlib ``logging``, and per-job context.

kiq logs under the ``kiq`` logger and never touches the root logger's
handlers; the package adds a ``NullHandler`` so nothing prints unless the
application configures logging. Each job logs (from the thread running it):

- ``job_started`` and ``job_success`` (with ``elapsed`` seconds) at INFO,
- ``job_failure`` (with ``error`` class, message, ``retry_count``, ``max_retries``,
  ``went``: retry, dead or discard, and for a retry ``retry`` as ``"2/25"`` and
  ``next_retry_at``) at WARNING,
- ``job_dead`` (a job that just went to the dead set, with its error) at WARNING,
- ``job_aborted`` (with ``reason``) at WARNING,

each record carrying the fields in ``record.kiq`` (``event``, ``class``,
``queue``, ``jid``, ...). :class:`JsonFormatter` writes one JSON object per
line with ``"source": "kiq"``; :class:`PlainFormatter` a readable line. Inside
``perform``, :func:`current_job` tells which job runs, and
:class:`JobContextFilter` stamps ``jid``, ``queue`` and ``job_class`` onto the
application's own records.
"""

from __future__ import annotations

import contextvars
import json
import logging
import time
import traceback
from typing import TYPE_CHECKING, Any

from kiq.errors import JobCancelledError

if TYPE_CHECKING:
    from kiq.batch import Batch

__all__ = ["JobContext", "JobContextFilter", "JsonFormatter", "PlainFormatter", "configure", "current_job"]


class JobContext:
    """The job running in this thread (or task)."""

    __slots__ = ("_delivery", "_server", "class_name", "jid", "queue", "retry_count")

    def __init__(
        self, class_name: str, jid: str, queue: str, retry_count: int | None, delivery: Any = None, server: Any = None
    ) -> None:
        self.class_name = class_name
        self.jid = jid
        self.queue = queue
        #: How many times it failed before (None on its first run).
        self.retry_count = retry_count
        self._delivery = delivery
        self._server = server

    @property
    def bid(self) -> str | None:
        """The kiq batch this job belongs to (None outside a batch, and in a callback job)."""
        d = self._delivery
        return None if d is None else getattr(d, "bid", None)

    @property
    def batch(self) -> Batch | None:
        """This job's batch (Pro's ``batch``): reopen it to add jobs
        (``with current_job().batch.jobs(): ...``), read ``valid`` after an
        ``invalidate()``, or ``invalidate()`` it. None outside a batch."""
        if self.bid is None:
            return None
        from kiq.batch import Batch

        app = _app.get()
        if app is None:
            return None
        chain = list(self._delivery.batch_chain)
        return Batch(app, chain[0], ancestors=chain[1:], exists=True)

    @property
    def cancelled(self) -> bool:
        """Whether cancelling this job was asked (seen within a heartbeat of the request)."""
        return self._server is not None and bool(self._server.is_cancelled(self._delivery))

    @property
    def admitted_at(self) -> float | None:
        """When its worker's throttle admitted it (epoch seconds, Redis's clock); None if unthrottled."""
        return getattr(self._delivery, "admitted_at", None)

    def raise_if_cancelled(self) -> None:
        """Raises :class:`~kiq.errors.JobCancelledError` if cancelling this job was asked;
        long sync jobs call it between steps (Python threads cannot be stopped from outside)."""
        if self.cancelled:
            raise JobCancelledError(f"job {self.jid} was cancelled on request")

    def __repr__(self) -> str:
        return f"<JobContext {self.class_name} jid={self.jid} queue={self.queue}>"


_current: contextvars.ContextVar[Any] = contextvars.ContextVar("kiq_current_job", default=None)
#: The server of the worker thread (set once per thread), which knows what was cancelled.
_server: contextvars.ContextVar[Any] = contextvars.ContextVar("kiq_server", default=None)
#: The app of the worker thread (set once per thread), for batches reopened from a job.
_app: contextvars.ContextVar[Any] = contextvars.ContextVar("kiq_app", default=None)


def current_job() -> JobContext | None:
    """The job this code runs in, or None outside a job."""
    d = _current.get()
    if d is None or isinstance(d, JobContext):
        return d
    return JobContext(d.class_name, d.jid, d.queue, d.retry_count, d, _server.get())


class JobContextFilter(logging.Filter):
    """Adds ``jid``, ``queue`` and ``job_class`` of the running job (or None) to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        job = current_job()
        record.jid = job.jid if job else None
        record.queue = job.queue if job else None
        record.job_class = job.class_name if job else None
        return True


def _utc(created: float) -> str:
    """``2026-12-01T10:00:00.123Z`` (cheaper than datetime for every log line)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int(created % 1 * 1000):03d}Z"


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields: dict[str, Any] = dict(getattr(record, "kiq", None) or {})
    if "jid" not in fields:
        job = current_job()
        if job is not None:
            fields.update({"class": job.class_name, "queue": job.queue, "jid": job.jid})
    return fields


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, ``"source": "kiq"``, and the event's fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": _utc(record.created),
            "level": record.levelname.lower(),
            "source": "kiq",
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
            "thread": record.threadName,
        }
        out.update(_fields(record))
        if record.exc_info:
            out["exception"] = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        return json.dumps(out, ensure_ascii=False, default=str)


class PlainFormatter(logging.Formatter):
    """``2026-12-01T10:00:00.123Z INFO kiq job_success class=HardJob jid=... queue=default elapsed=0.001``."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = _utc(record.created)
        fields = _fields(record)
        event = fields.pop("event", None)
        head = event if event is not None else record.getMessage()
        tail = " ".join(f"{k}={v}" for k, v in fields.items())
        line = f"{stamp} {record.levelname} {record.name} {head}" + (f" {tail}" if tail else "")
        if record.exc_info:
            line += "\n" + "".join(traceback.format_exception(*record.exc_info)).rstrip()
        return line


def configure(level: int | str = logging.INFO, *, json_format: bool = False, name: str | None = "kiq") -> logging.Handler:
    """Sends a logger's records to stderr in kiq's format (plain or JSON).

    By default only the ``kiq`` logger is touched; ``name=None`` configures
    the root logger, so the application's own loggers (in job code) print
    the same way; ``kiq run`` does that. Returns the handler so it can be removed.
    """
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if json_format else PlainFormatter())
    log = logging.getLogger(name)
    log.addHandler(handler)
    log.setLevel(level)
    return handler
