"""Reporters: objects told about every job's life, isolated from the jobs.

Subclass :class:`Reporter`, override the handlers you need, and pass
instances as ``Kiq(extra_reporters=[...])``. For each job a reporter sees, in
order: ``handle_started``, then one of ``handle_success`` /
``handle_failure`` / ``handle_aborted`` / ``handle_rescheduled`` (after
``handle_failure``, ``handle_death`` when the job went to the dead set), then ``handle_stopped``.

Each reporter runs on a thread of its own, fed by a queue, so a reporter that
is slow or raises never slows down or breaks job processing: its first error
is logged with its name (later ones are counted), and if it falls more than
``backlog`` events behind, the oldest new events are dropped and counted.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from types import TracebackType
from typing import Any

from kiq import _kiq

__all__ = ["JobInfo", "Reporter"]

logger = logging.getLogger("kiq")


class JobInfo:
    """What a reporter is told about a job. The last argument of an encrypted
    job is ``"[encrypted data]"`` here, as in Sidekiq's Web UI: only the job
    itself sees the secret."""

    __slots__ = ("args", "class_name", "enqueued_at", "jid", "overrated", "queue", "retry_count")

    def __init__(
        self,
        class_name: str,
        jid: str,
        queue: str,
        args: list[Any],
        retry_count: int | None,
        enqueued_at: float | None,
        overrated: int = 0,
    ) -> None:
        self.class_name = class_name
        self.jid = jid
        self.queue = queue
        self.args = args
        #: The job's ``retry_count`` before this run (None on its first run).
        self.retry_count = retry_count
        #: Epoch seconds it was last pushed to its queue, if known.
        self.enqueued_at = enqueued_at
        #: Times it was rescheduled over a rate limit before this run (Sidekiq Enterprise's ``overrated``).
        self.overrated = overrated

    @classmethod
    def of(cls, d: _kiq.Delivery) -> JobInfo:
        args = d.args
        if d.encrypted and args:
            args = [*args[:-1], _kiq.ENCRYPTED_DATA]
        return cls(d.class_name, d.jid, d.queue, args, d.retry_count, d.enqueued_at, d.overrated)

    def __repr__(self) -> str:
        return f"<JobInfo {self.class_name} jid={self.jid} queue={self.queue}>"


class Reporter:
    """Base class of reporters; every handler does nothing by default."""

    #: Events a reporter may fall behind by before new ones are dropped.
    backlog: int = 100_000

    def handle_started(self, job: JobInfo) -> None:
        """The job is about to run."""

    def handle_success(self, job: JobInfo, elapsed: float) -> None:
        """The job returned; ``elapsed`` is its run time in seconds."""

    def handle_failure(self, job: JobInfo, error: BaseException, traceback: TracebackType | None) -> None:
        """The job raised ``error``; it goes to the retry set, the dead set or nowhere as its options say."""

    def handle_death(self, job: JobInfo, error: BaseException) -> None:
        """The job ran out of retries and went to the dead set (Sidekiq's death handlers); called
        after ``handle_failure``. Not called for jobs dropped instead (``retry=False``, ``dead=False``)."""

    def handle_aborted(self, job: JobInfo, reason: str) -> None:
        """The job did not complete for ``reason`` (``"shutdown"``: handed back at a stop; ``"expired"``)."""

    def handle_rescheduled(self, job: JobInfo, reason: str, at: float) -> None:
        """The job was rescheduled to run at ``at`` (epoch seconds), not failed:
        ``reason`` ``"over_limit"`` (a rate limiter's :class:`~kiq.errors.OverLimit`)."""

    def handle_stopped(self, job: JobInfo) -> None:
        """The job's life in this process ended (after any of the above)."""

    @property
    def name(self) -> str:
        return type(self).__qualname__


#: (handler name, job, extra arguments)
Event = tuple[str, JobInfo, tuple[Any, ...]]


class ReporterThread:
    """Feeds one reporter its events on a thread of its own."""

    def __init__(self, reporter: Reporter) -> None:
        self.reporter = reporter
        self.events: queue.SimpleQueue[Event | None] = queue.SimpleQueue()
        self.errors = 0
        self.dropped = 0
        self.thread = threading.Thread(target=self._run, name=f"kiq-reporter-{reporter.name}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def put(self, event: Event) -> None:
        if self.events.qsize() >= self.reporter.backlog:
            self.dropped += 1
            if self.dropped == 1:
                logger.warning("kiq reporter %s is %d events behind; dropping new events", self.reporter.name,
                               self.reporter.backlog)
            return
        self.events.put(event)

    def _run(self) -> None:
        reporter = self.reporter
        events = self.events
        while True:
            batch = [events.get()]
            while True:
                try:
                    batch.append(events.get_nowait())
                except queue.Empty:
                    break
            for event in batch:
                if event is None:
                    return
                handler, job, extra = event
                try:
                    getattr(reporter, handler)(job, *extra)
                except Exception:
                    self.errors += 1
                    if self.errors == 1:
                        logger.exception("kiq reporter %s raised in %s (further errors are counted, not logged)",
                                         reporter.name, handler)
            # Let events pile up a little: one wake-up (and GIL hand-off) per
            # millisecond rather than one per event.
            time.sleep(0.001)

    def stop(self, timeout: float) -> None:
        """Lets the reporter finish the events it has, for up to ``timeout`` seconds."""
        self.events.put(None)
        self.thread.join(timeout)
        if self.errors > 1 or self.dropped:
            logger.warning("kiq reporter %s: %d errors, %d events dropped", self.reporter.name, self.errors,
                           self.dropped)
