"""Instrumentation hooks: Kiq's job events with measurements and metadata.

``app.instrument.attach(handler)`` calls ``handler(event, measurements,
metadata)`` for every event, or only for the events listed:

- ``"job.started"``: ``{"value": 1}``, metadata ``class``, ``queue``
- ``"job.success"``: ``{"timing": seconds}``, metadata ``class``, ``queue``
- ``"job.failure"``: ``{"value": 1}``, metadata ``class``, ``queue``, ``error`` (the exception's class name)
- ``"job.aborted"``: ``{"value": 1}``, metadata ``class``, ``queue``, ``reason``
- ``"job.rescheduled"``: ``{"value": 1}``, metadata ``class``, ``queue``, ``reason`` (``"over_limit"``), ``at``

Handlers run on a reporter thread, never on the job's; with nothing
attached, no event is even built.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any

from kiq.errors import ConfigError
from kiq.processor import error_class
from kiq.reporters import JobInfo, Reporter

__all__ = ["EVENTS", "Handler", "Instrumenter"]

logger = logging.getLogger("kiq")

EVENTS = ("job.started", "job.success", "job.failure", "job.aborted", "job.rescheduled")
Handler = Callable[[str, dict[str, Any], dict[str, Any]], None]


class Instrumenter(Reporter):
    """Holds the attached handlers; a reporter of the app while any is attached."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._handlers: list[tuple[Handler, frozenset[str]]] = []
        self._failed: set[int] = set()

    @property
    def name(self) -> str:
        return "instrumentation"

    def attach(self, handler: Handler, events: Iterable[str] = EVENTS) -> None:
        """Calls ``handler(event, measurements, metadata)`` for the given events."""
        wanted = frozenset(events)
        unknown = wanted - set(EVENTS)
        if unknown:
            raise ConfigError(f"unknown instrumentation events {sorted(unknown)}; known: {list(EVENTS)}")
        with self._lock:
            self._handlers = [*self._handlers, (handler, wanted)]

    def detach(self, handler: Handler) -> None:
        with self._lock:
            self._handlers = [(h, e) for h, e in self._handlers if h is not handler]

    @property
    def attached(self) -> bool:
        return bool(self._handlers)

    def _emit(self, event: str, measurements: dict[str, Any], metadata: dict[str, Any]) -> None:
        for handler, wanted in self._handlers:
            if event in wanted:
                try:
                    handler(event, measurements, metadata)
                except Exception:
                    if id(handler) not in self._failed:
                        self._failed.add(id(handler))
                        logger.exception("kiq instrumentation handler %r raised on %s (logged once)", handler, event)

    def handle_started(self, job: JobInfo) -> None:
        self._emit("job.started", {"value": 1}, {"class": job.class_name, "queue": job.queue})

    def handle_success(self, job: JobInfo, elapsed: float) -> None:
        self._emit("job.success", {"timing": elapsed}, {"class": job.class_name, "queue": job.queue})

    def handle_failure(self, job: JobInfo, error: BaseException, traceback: TracebackType | None) -> None:
        meta = {"class": job.class_name, "queue": job.queue, "error": error_class(error)}
        self._emit("job.failure", {"value": 1}, meta)

    def handle_aborted(self, job: JobInfo, reason: str) -> None:
        self._emit("job.aborted", {"value": 1}, {"class": job.class_name, "queue": job.queue, "reason": reason})

    def handle_rescheduled(self, job: JobInfo, reason: str, at: float) -> None:
        meta = {"class": job.class_name, "queue": job.queue, "reason": reason, "at": at}
        self._emit("job.rescheduled", {"value": 1}, meta)
