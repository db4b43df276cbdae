"""Introspection: what Sidekiq's Web UI shows and does, for scripts.

    from kiq.api import Api
    api = Api(app)                      # or Api("redis://...")
    api.stats().processed
    [q.name for q in api.queues()]
    for job in api.retries.jobs():
        print(job.class_name, job.error_message)
    api.retries.retry(jid)              # "Retry Now"
    api.dead.delete(jid)
    api.processes()[0].quiet()          # the Busy page's Quiet button
    api.cancel(jid)                     # delete a waiting job, or cancel a running one
    api.batches()                       # kiq's batches, newest first (Pro's BatchSet)
    api.batch(bid)                      # one batch's status, or None
    api.limiters()                      # rate limiters: in use, capacity, waiters

Reads Sidekiq's keys, so it shows Ruby and Python jobs and processes alike.
The worker runtime never imports this module (as Sidekiq's server never
loads ``sidekiq/api``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from kiq import _kiq
from kiq.batch import BatchStatus

if TYPE_CHECKING:
    from kiq.app import Kiq

__all__ = [
    "ENCRYPTED_DATA", "Api", "BatchStatus", "JobRecord", "JobSet", "Process", "Queue", "Selection", "Stats", "Work", "display_args", "is_encrypted",
]

#: What Sidekiq's Web UI shows in place of an encrypted argument.
ENCRYPTED_DATA: str = _kiq.ENCRYPTED_DATA


def is_encrypted(item: Mapping[str, Any]) -> bool:
    """Whether a job's last argument is encrypted (Sidekiq Enterprise's ``encrypt``; any value but
    null and false, as Ruby reads it)."""
    flag = item.get(_kiq.ENCRYPT_FIELD)
    return flag is not None and flag is not False


def display_args(item: Mapping[str, Any]) -> list[Any]:
    """A job's ``args`` as Sidekiq's Web UI shows them: the last argument of an encrypted job is
    ``"[encrypted data]"``. Every listing (the CLI, a dashboard) shows args through this."""
    args = item.get("args")
    if not isinstance(args, list):
        return []
    if args and is_encrypted(item):
        return [*args[:-1], ENCRYPTED_DATA]
    return list(args)


def _time(value: Any) -> float | None:
    """A job timestamp in epoch seconds: a float is seconds, an int milliseconds (Sidekiq 8's rule)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if isinstance(value, float) else value / 1000.0


@dataclasses.dataclass(frozen=True)
class JobRecord:
    """One job as stored: in a queue, or a member of a job set with its score."""

    payload: str
    score: float | None = None

    @property
    def item(self) -> dict[str, Any]:
        try:
            parsed = json.loads(self.payload)
        except ValueError:
            return {}
        return parsed if isinstance(parsed, dict) else {}

    @property
    def class_name(self) -> str:
        item = self.item
        return str(item.get("display_class") or item.get("wrapped") or item.get("class") or "")

    @property
    def args(self) -> list[Any]:
        """The ``args`` as stored (an encrypted job's last one is its ciphertext)."""
        args = self.item.get("args")
        return args if isinstance(args, list) else []

    @property
    def display_args(self) -> list[Any]:
        """The args as the Web UI shows them: an encrypted job's (``"encrypt": true``)
        last argument is ``"[encrypted data]"``, never its ciphertext."""
        try:
            return _kiq.display_args(self.payload)
        except _kiq.CodecError:
            return []

    @property
    def encrypted(self) -> bool:
        """Whether the last argument is encrypted (Sidekiq Enterprise's ``encrypt``)."""
        return is_encrypted(self.item)

    @property
    def jid(self) -> str:
        return str(self.item.get("jid", ""))

    @property
    def queue(self) -> str:
        return str(self.item.get("queue", ""))

    @property
    def created_at(self) -> float | None:
        return _time(self.item.get("created_at"))

    @property
    def enqueued_at(self) -> float | None:
        return _time(self.item.get("enqueued_at"))

    @property
    def retry_count(self) -> int | None:
        count = self.item.get("retry_count")
        return count if isinstance(count, int) else None

    @property
    def error_class(self) -> str | None:
        return self.item.get("error_class")

    @property
    def error_message(self) -> str | None:
        return self.item.get("error_message")

    @property
    def error_backtrace(self) -> list[str]:
        value = self.item.get("error_backtrace")
        return _kiq.decode_backtrace(value) if isinstance(value, str) else []

    @property
    def at(self) -> float | None:
        """When a set member is due (schedule, retry) or died (dead)."""
        return self.score


@dataclasses.dataclass(frozen=True)
class Stats:
    processed: int
    failed: int
    scheduled_size: int
    retry_size: int
    dead_size: int
    processes_size: int
    #: Jobs waiting in all queues.
    enqueued: int
    #: Jobs waiting per queue.
    queues: dict[str, int]
    default_queue_latency: float


@dataclasses.dataclass(frozen=True)
class Work:
    """A job running in some process."""

    process: str
    tid: str
    queue: str
    run_at: int
    job: JobRecord


@dataclasses.dataclass(frozen=True)
class Selection:
    """A page of the jobs a :meth:`JobSet.select` / :meth:`Queue.select` matched."""

    jobs: list[JobRecord]
    #: Entries read to find them (at most ``max_scan``).
    scanned: int
    #: Entries in the set or queue.
    size: int
    #: Position to continue from (``start=``), or None when the end was reached.
    next: int | None


class _Listed:
    """Listing and bulk actions shared by job sets and queues; every read is a
    bounded window (``window`` entries per round trip, ``max_scan`` in all)."""

    api: Api
    kind: str
    queue_name: str | None = None

    def select(
        self,
        *,
        class_name: str | None = None,
        error: str | None = None,
        limit: int = 100,
        start: int = 0,
        max_scan: int = 100_000,
    ) -> Selection:
        """Up to ``limit`` jobs in the Web UI's order from position ``start``, of
        class ``class_name`` (its ``class``, or an ActiveJob's job class) and
        whose error contains ``error`` (case-insensitive)."""
        jobs, scanned, size, nxt = self.api.client.list_jobs(
            self.kind, self.queue_name, class_name=class_name, error=error, start=start, limit=limit,
            max_scan=max_scan,
        )
        return Selection([JobRecord(p, s) for p, s in jobs], scanned, size, nxt)

    def count(self, *, class_name: str | None = None, error: str | None = None,
              max_scan: int = 100_000) -> tuple[int, int, int]:
        """``(matching, scanned, size)``; without a filter, the size (one command)."""
        return self.api.client.count_jobs(self.kind, self.queue_name, class_name=class_name, error=error,
                                          max_scan=max_scan)

    def delete_all(self, *, class_name: str | None = None, error: str | None = None,
                   max_scan: int = 100_000) -> tuple[int, int]:
        """Deletes every matching job: ``(deleted, already gone)``."""
        done, gone, _ = self.api.client.act_on_jobs("delete", self.kind, self.queue_name, class_name=class_name,
                                                    error=error, max_scan=max_scan)
        return done, gone


class Queue(_Listed):
    def __init__(self, api: Api, name: str) -> None:
        self.api = api
        self.name = name
        self.kind, self.queue_name = "queue", name

    def __repr__(self) -> str:
        return f"<Queue {self.name}>"

    def size(self) -> int:
        return self.api.client.size("queue", self.name)

    def latency(self) -> float:
        """Seconds the oldest job has waited (0 when empty), as Sidekiq computes it."""
        oldest = self.api.client.window("queue", self.name, start=0, count=1)
        if not oldest:
            return 0.0
        job = JobRecord(oldest[0][0])
        at = job.enqueued_at or job.created_at
        return max(0.0, time.time() - at) if at else 0.0

    def jobs(self, start: int = 0, count: int = 100) -> list[JobRecord]:
        """Jobs next to run first."""
        return [JobRecord(p) for p, _ in self.api.client.window("queue", self.name, start=start, count=count)]

    def delete(self, jid: str) -> bool:
        start: int | None = 0
        while start is not None:  # window by window, never the whole queue at once
            page = self.select(start=start, limit=1000)
            for job in page.jobs:
                if job.jid == jid:
                    return self.api.client.remove("queue", self.name, job.payload)
            start = page.next
        return False

    def clear(self) -> None:
        self.api.client.clear("queue", self.name)


class JobSet(_Listed):
    """The ``schedule``, ``retry`` or ``dead`` sorted set."""

    def __init__(self, api: Api, name: str) -> None:
        self.api = api
        self.name = name
        self.kind = name

    def __repr__(self) -> str:
        return f"<JobSet {self.name}>"

    def size(self) -> int:
        return self.api.client.size(self.name)

    def jobs(self, start: int = 0, count: int = 100) -> list[JobRecord]:
        """Members in score order (soonest first; newest first for dead)."""
        return [JobRecord(m, s) for m, s in self.api.client.window(self.name, start=start, count=count)]

    def find(self, jid: str) -> list[JobRecord]:
        return [JobRecord(m, s) for m, s in self.api.client.find_job(self.name, jid)]

    def retry(self, jid: str) -> bool:
        """Runs the job now (the Web UI's "Retry Now" / "Add to queue")."""
        return any(self.api.client.enqueue_now(self.name, job.payload) for job in self.find(jid))

    def retry_all(self, *, class_name: str | None = None, error: str | None = None,
                  max_scan: int = 100_000) -> tuple[int, int]:
        """Runs every matching job now: ``(enqueued, already gone)``."""
        done, gone, _ = self.api.client.act_on_jobs("retry", self.kind, class_name=class_name, error=error,
                                                    max_scan=max_scan)
        return done, gone

    def kill(self, jid: str) -> bool:
        """Moves the job to the dead set."""
        return any(self.api.client.kill(self.name, job.payload) for job in self.find(jid))

    def delete(self, jid: str) -> bool:
        return any(self.api.client.remove(self.name, None, job.payload) for job in self.find(jid))

    def clear(self) -> None:
        self.api.client.clear(self.name)


@dataclasses.dataclass(frozen=True)
class Process:
    """A live Sidekiq or kiq process, from its heartbeat."""

    api: Api
    identity: str
    info: dict[str, Any]
    busy: int
    beat: float
    quiet: bool
    rss_kb: int

    @property
    def hostname(self) -> str:
        return str(self.info.get("hostname", ""))

    @property
    def pid(self) -> int:
        return int(self.info.get("pid", 0))

    @property
    def queues(self) -> list[str]:
        return list(self.info.get("queues", []))

    @property
    def concurrency(self) -> int:
        return int(self.info.get("concurrency", 0))

    @property
    def tag(self) -> str:
        return str(self.info.get("tag", ""))

    @property
    def labels(self) -> list[str]:
        return list(self.info.get("labels", []))

    @property
    def version(self) -> str:
        return str(self.info.get("version", ""))

    def signal(self, name: str) -> None:
        """Sends a signal the process picks up on its next heartbeat (TSTP, TERM, TTIN)."""
        self.api.admin.signal(self.identity, name)

    def quiet_down(self) -> None:
        """The Busy page's Quiet: stop fetching new jobs."""
        self.signal("TSTP")

    def stop(self) -> None:
        """The Busy page's Stop: stop gracefully."""
        self.signal("TERM")

    def dump_threads(self) -> None:
        self.signal("TTIN")


class Api:
    """Read and act on a Sidekiq keyspace; see the module docstring."""

    def __init__(self, target: Kiq | str | None = None, *, namespace: str | None = None) -> None:
        if target is None or isinstance(target, str):
            from kiq.app import DEFAULT_URL

            url = target or os.environ.get("REDIS_URL") or DEFAULT_URL
            self.client = _kiq.Client(url, namespace=namespace)
            #: The core's dashboard operations (windows, filters, bulk actions,
            #: summaries) that ``kiq.web`` uses.
            self.admin = _kiq.Admin(self.client)
        else:
            self.client = target.client
            # Kills trim the dead set with the app's own limits.
            self.admin = _kiq.Admin(self.client, dead_limit=target.dead_limit, dead_timeout=target.dead_timeout)
        self.scheduled = JobSet(self, "schedule")
        self.retries = JobSet(self, "retry")
        self.dead = JobSet(self, "dead")

    def queue(self, name: str) -> Queue:
        return Queue(self, name)

    def queues(self) -> list[Queue]:
        return [Queue(self, n) for n in self.client.queue_names()]

    def stats(self) -> Stats:
        sizes = {q.name: q.size() for q in self.queues()}
        processed, failed = self.client.totals()
        return Stats(
            processed=processed,
            failed=failed,
            scheduled_size=self.scheduled.size(),
            retry_size=self.retries.size(),
            dead_size=self.dead.size(),
            processes_size=len(self.processes()),
            enqueued=sum(sizes.values()),
            queues=sizes,
            default_queue_latency=self.queue("default").latency(),
        )

    def processes(self) -> list[Process]:
        """Processes with a live heartbeat (entries whose heartbeat expired are skipped)."""
        return [Process(self, p.identity, json.loads(p.info), p.busy, p.beat, p.quiet, p.rss_kb)
                for p in self.admin.processes()]

    def cancel(self, jid: str) -> str:
        """Cancels a job: one still waiting (scheduled, retrying or queued) is
        deleted, and ``"deleted"`` returned; otherwise the process running it
        is asked to cancel it (``"requested"``). That process sees the request
        at its next heartbeat (5 s): an async job's task is cancelled; a sync
        job sees ``kiq.current_job().cancelled`` and should call
        ``raise_if_cancelled()`` between steps. A cancelled job is not retried.
        A request for a job that never runs is dropped after a day."""
        if self.scheduled.delete(jid) or self.retries.delete(jid):
            return "deleted"
        for queue in self.queues():
            if queue.delete(jid):
                return "deleted"
        self.client.request_cancel(jid)
        return "requested"

    def batches(self, start: int = 0, count: int = 100) -> list[BatchStatus]:
        """kiq's batches, newest first (Pro's ``BatchSet``), without their jid
        lists; batches that expired are dropped from the listing."""
        _, found = _kiq.batch_list(self.client, start, count)
        return [BatchStatus(b) for b in found]

    def batch_count(self) -> int:
        """How many batches the listing holds (some may have expired since)."""
        total, _ = _kiq.batch_list(self.client, 0, 1)
        return int(total)

    def batch(self, bid: str) -> BatchStatus | None:
        """One batch's status, failed and dead jids included; None when it
        expired or never existed."""
        found = _kiq.batch_status(self.client, bid)
        return None if found is None else BatchStatus(found)

    def limiters(self, limit: int = 1000) -> list[_kiq.LimiterState]:
        """The rate limiters used in the last 7 days (newest first, at most
        ``limit``) and what they hold now, cluster-wide: ``kind``, ``name``,
        ``capacity``, ``interval`` (seconds), ``in_use`` (holders, uses this
        period or window, or the bucket's level), ``waiting`` (callers waiting
        for room), ``last_used`` (epoch seconds)."""
        return _kiq.limiter_states(self.client, limit)

    def work(self) -> list[Work]:
        """Jobs running right now in every process, oldest first."""
        out = [Work(p.identity, w.tid, w.queue, w.run_at, JobRecord(w.job.payload))
               for p in self.admin.processes() for w in p.work]
        return sorted(out, key=lambda w: w.run_at)
