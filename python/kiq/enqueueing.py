"""Enqueueing: the four ways a :class:`~kiq.Kiq` pushes jobs (one, a bulk push
of one template, several of any classes, and their ``async`` forms), with
tracing and the sandbox. Every push decision past reading the
:class:`~kiq.Job` is the core's producer (``rust/src/producer.rs``)."""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import datetime as dt
import functools
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from kiq import _kiq
from kiq.batch import current_block, open_block
from kiq.errors import ConfigError
from kiq.job import Enqueued, Job
from kiq.sandbox import Sandbox
from kiq.tracing import Tracing
from kiq.worker import WorkerLike, check_arguments, is_worker

__all__ = ["Enqueueing", "Seconds", "seconds"]

logger = logging.getLogger("kiq")
T = TypeVar("T")
#: Below this an ``at`` value looks like a relative delay, not an epoch time (Sidekiq's rule).
_EPOCH_FLOOR = 1_000_000_000
Seconds = int | float | dt.timedelta
#: ``_new_str(Enqueued, jid)``: an Enqueued that went in, without the Python ``__new__`` a skipped one needs.
_new_str = str.__new__


def seconds(value: Seconds, name: str) -> float:
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} must be a number of seconds or a timedelta, not {value!r}")
    return float(value)


def _results(jids: list[str], skipped: dict[str, str | None]) -> list[str]:
    if not skipped:
        return jids
    return [Enqueued(j, skipped[j] or "") if j in skipped else j for j in jids]


async def _off_loop(call: Callable[[], T]) -> T:
    """Runs a blocking call on the default executor, with the caller's context variables."""
    ctx = contextvars.copy_context()
    return await asyncio.get_running_loop().run_in_executor(None, ctx.run, call)


class Enqueueing:
    """The enqueue methods of :class:`~kiq.Kiq` (which sets what is declared here)."""

    _sandbox: Sandbox | None
    _client: _kiq.Client | None
    _tracing: Tracing | None
    _keyring: _kiq.Keyring | None
    _throwaway_keyring: _kiq.Keyring | None
    timestamps: str

    @property
    def client(self) -> _kiq.Client:
        raise NotImplementedError

    def flush(self, timeout: Seconds | None = None) -> None:
        raise NotImplementedError

    @staticmethod
    def _when(delay: Seconds | None, at: dt.datetime | float | None) -> float | None:
        if delay is not None and at is not None:
            raise ConfigError("give either delay or at, not both")
        if delay is not None:
            return time.time() + seconds(delay, "delay")
        if at is None:
            return None
        if isinstance(at, dt.datetime):
            return at.timestamp()
        if isinstance(at, bool) or not isinstance(at, (int, float)):
            raise ConfigError(f"at must be a datetime or epoch seconds, not {at!r}")
        if at < _EPOCH_FLOOR:
            raise ConfigError(f"at={at!r} looks like a relative delay; pass delay= for that, or an epoch time")
        return float(at)

    def enqueue(
        self,
        job: Job,
        *,
        delay: Seconds | None = None,
        at: dt.datetime | float | None = None,
        sync: bool = False,
    ) -> Enqueued:
        """Enqueues a job and returns its jid (an :class:`~kiq.Enqueued`).

        With the push buffer (the default) it returns once the job is
        buffered (on disk too with ``buffer_path``); ``sync=True`` returns only
        once it is in Redis. ``delay`` (seconds or a timedelta) or ``at`` (a
        datetime or epoch seconds) schedules it; a time already past pushes it
        now. Arguments that JSON cannot carry raise
        :class:`~kiq.errors.CodecError` here, never later at run time. A unique
        job (``unique_for``) is pushed synchronously, its lock taken in the same
        step; if another job holds the lock the result says so
        (``.skipped``, ``.held_by``) and nothing is enqueued.
        """
        if not isinstance(job, Job):
            raise ConfigError(f"enqueue() takes a kiq.Job (e.g. MyWorker.new(...)), not {type(job).__name__}")
        client = self._client
        if (client is not None and self._tracing is None and self._sandbox is None and delay is None and at is None
                and current_block() is None):
            # The common call (no batch block open), with as few Python steps as it takes.
            jid, held = client.push(job, sync=sync)
            if held is None:
                return _new_str(Enqueued, jid)
            return self._skipped(job, jid, held)
        if self._tracing is not None:
            with self._tracing.publish([job]) as traced:
                return self._enqueue(traced[0], delay, at, sync)
        return self._enqueue(job, delay, at, sync)

    def _enqueue(self, job: Job, delay: Seconds | None, at: dt.datetime | float | None, sync: bool) -> Enqueued:
        if self._sandbox is not None:
            return Enqueued(self._record(job, self._when(delay, at)))
        client = self._client or self.client
        jid, held = client.push(job, at=None if delay is None and at is None else self._when(delay, at), sync=sync,
                                batch=open_block(self))
        if held is not None:
            return self._skipped(job, jid, held)
        return _new_str(Enqueued, jid)

    @staticmethod
    def _skipped(job: Job, jid: str, held: str) -> Enqueued:
        logger.info("kiq: skipped enqueueing %s %s: not unique (lock held by %s)", job.class_name, jid,
                    held or "an unknown job")
        return Enqueued(jid, held)

    def enqueue_bulk(
        self,
        template: Job | WorkerLike | str,
        args_list: Iterable[Sequence[Any]],
        *,
        delay: Seconds | None = None,
        at: dt.datetime | float | None = None,
        sync: bool = False,
    ) -> list[str]:
        """Pushes one job per argument list in a single round trip (Sidekiq's ``push_bulk``).
        For a unique template, skipped jobs are :class:`~kiq.Enqueued` with ``.skipped`` set.

        ``template`` is a worker, a :class:`Job` whose class and options every
        job shares, or a class name. Returns the jids in order.
        """
        job = self._template(template)
        if is_worker(template):
            args_list = list(args_list)
            check_arguments(template, args_list)
        if self._tracing is not None:
            args_list = list(args_list)
            with self._tracing.publish([job], batch=len(args_list)) as traced:
                return self._enqueue_bulk(traced[0], args_list, delay, at, sync)
        return self._enqueue_bulk(job, args_list, delay, at, sync)

    def _enqueue_bulk(
        self, job: Job, args_list: Iterable[Sequence[Any]], delay: Seconds | None, at: dt.datetime | float | None,
        sync: bool,
    ) -> list[str]:
        if self._sandbox is not None:
            when = self._when(delay, at)
            return [self._record(dataclasses.replace(job, args=list(a), jid=None), when) for a in args_list]
        jids, skipped = self.client.push_bulk(job, args_list, at=self._when(delay, at), sync=sync,
                                              batch=open_block(self))
        return _results(jids, skipped)

    def enqueue_all(
        self,
        jobs: Iterable[Job],
        *,
        delay: Seconds | None = None,
        at: dt.datetime | float | None = None,
        sync: bool = False,
    ) -> list[str]:
        """Pushes several jobs (of any classes) in a single round trip. Returns the jids."""
        when = self._when(delay, at)
        jobs = list(jobs)
        for job in jobs:
            if not isinstance(job, Job):
                raise ConfigError(f"enqueue_all() takes kiq.Job objects, not {type(job).__name__}")
        if self._tracing is not None and jobs:
            with self._tracing.publish(jobs, batch=len(jobs)) as traced:
                return self._enqueue_all(traced, when, sync)
        return self._enqueue_all(jobs, when, sync)

    def _enqueue_all(self, jobs: list[Job], when: float | None, sync: bool) -> list[str]:
        if self._sandbox is not None:
            return [self._record(job, when) for job in jobs]
        jids, skipped = self.client.push_jobs(jobs, at=when, sync=sync, batch=open_block(self))
        return _results(jids, skipped)

    def _record(self, job: Job, at: float | None) -> str:
        """Sandbox mode: the job, encoded as a push would, kept in memory."""
        assert self._sandbox is not None
        jid, payload, when = _kiq.encode_job(
            job, at=at, timestamps=self.timestamps, keyring=self._sandbox_keyring() if job.encrypt else None,
        )
        self._sandbox.add(job.class_name, list(job.args), job.queue, jid, payload, when, encrypted=job.encrypt)
        return jid

    def _sandbox_keyring(self) -> _kiq.Keyring:
        """The app's keys, or (an app configured without any) a throwaway key: a sandboxed
        encrypted job's payload is encrypted as a push would write it; its args stay readable."""
        if self._keyring is not None:
            return self._keyring
        if self._throwaway_keyring is None:
            self._throwaway_keyring = _kiq.Keyring({1: os.urandom(32)})
        return self._throwaway_keyring

    async def enqueue_async(
        self,
        job: Job,
        *,
        delay: Seconds | None = None,
        at: dt.datetime | float | None = None,
        sync: bool = False,
    ) -> Enqueued:
        """:meth:`enqueue` for ``async`` code (FastAPI and the like): never blocks the event loop."""
        if self._sandbox is not None:
            return self.enqueue(job, delay=delay, at=at)  # in memory: nothing to wait for
        return await _off_loop(functools.partial(self.enqueue, job, delay=delay, at=at, sync=sync))

    async def enqueue_bulk_async(
        self,
        template: Job | WorkerLike | str,
        args_list: Iterable[Sequence[Any]],
        *,
        delay: Seconds | None = None,
        at: dt.datetime | float | None = None,
        sync: bool = False,
    ) -> list[str]:
        """:meth:`enqueue_bulk` for ``async`` code."""
        call = functools.partial(self.enqueue_bulk, template, list(args_list), delay=delay, at=at, sync=sync)
        if self._sandbox is not None:
            return call()
        return await _off_loop(call)

    async def flush_async(self, timeout: Seconds | None = None) -> None:
        """:meth:`flush` for ``async`` code."""
        await _off_loop(functools.partial(self.flush, timeout))

    @staticmethod
    def _template(template: Job | WorkerLike | str) -> Job:
        if isinstance(template, Job):
            return template
        if isinstance(template, str):
            return Job(template)
        if is_worker(template):
            return template.kiq_options.job(template.wire_name(), ())  # arguments come later
        raise ConfigError(f"expected a Job, a worker or a class name, not {template!r}")

