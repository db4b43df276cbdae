"""Batches: jobs tracked as a group, with callbacks that fire exactly once.

Sidekiq Pro's documented API and semantics, on kiq's own Redis keys and
payload field::

    batch = app.batch(description="Import 2026-12-01", callback_queue="callbacks")
    batch.on("success", ImportDone, {"user_id": 7})          # a kiq worker...
    batch.on("death", "Billing::ImportFailed")               # ...or any class name (a Ruby worker)
    with batch.jobs():
        for row in rows:
            app.enqueue(ImportRow.new(row))
    print(batch.bid)

- ``complete`` fires once every job ran (succeeded, or failed and waits to
  retry), ``success`` once every job succeeded, ``death`` on the first job that
  dies (and in each ancestor). Empty batches fire too. Child batches (created
  inside a ``jobs()`` block, or inside a job of a batch) finish before their
  parent, and their callbacks run before the parent's.
- A callback is an ordinary job: its class is the target, its arguments
  ``(status, options)``: the :class:`BatchStatus` hash and the options given
  to :meth:`Batch.on`. Python workers may annotate the first as
  :class:`BatchStatus` (a ``dict`` with attributes).
- The bookkeeping is written in the same atomic step as each job's result,
  once per jid, so a job run twice, a crash between a job's end and its
  callback, or processes finishing the last jobs together never fire a
  callback twice or lose one.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import logging
import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from kiq import _kiq
from kiq.errors import BatchError, ConfigError, TimeoutError
from kiq.worker import FunctionWorker, Worker

if TYPE_CHECKING:
    from kiq.app import Kiq

__all__ = ["EVENTS", "Batch", "BatchStatus"]

logger = logging.getLogger("kiq")

#: The events a callback can be registered for (Pro's names).
EVENTS = ("complete", "success", "death")


class BatchStatus(dict[str, Any]):
    """A batch's status: the hash callback jobs receive as their first argument
    (Pro's ``Sidekiq::Batch::Status``), readable as a dict or by attribute.

    Callbacks get a snapshot taken when their event fired (with at most 100
    ``failed_jids`` and ``dead_jids``); :meth:`Batch.status` and
    :meth:`kiq.Kiq.batch_status` read the batch now, with every jid.
    """

    @property
    def bid(self) -> str:
        return str(self["bid"])

    @property
    def total(self) -> int:
        """Jobs added to the batch."""
        return int(self.get("total") or 0)

    @property
    def pending(self) -> int:
        """Jobs that have not succeeded yet."""
        return int(self.get("pending") or 0)

    @property
    def failures(self) -> int:
        """Jobs that failed and have not succeeded since (dead ones included)."""
        return int(self.get("failures") or 0)

    @property
    def created_at(self) -> float | None:
        value = self.get("created_at")
        return None if value is None else float(value)

    @property
    def description(self) -> str | None:
        return self.get("description")

    @property
    def parent_bid(self) -> str | None:
        return self.get("parent_bid")

    @property
    def child_count(self) -> int:
        return int(self.get("child_count") or 0)

    @property
    def complete(self) -> bool:
        """Every job ran once and every child completed (the ``complete`` event fired)."""
        return bool(self.get("complete"))

    @property
    def success(self) -> bool:
        """Every job and every child succeeded (the ``success`` event fired)."""
        return bool(self.get("success")) or self.get("event") == "success"

    @property
    def failed_jids(self) -> list[str]:
        return list(self.get("failed_jids") or [])

    @property
    def dead_jids(self) -> list[str]:
        return list(self.get("dead_jids") or [])

    @property
    def invalidated(self) -> bool:
        return bool(self.get("invalidated"))

    @property
    def event(self) -> str | None:
        """In a callback: the event that fired it."""
        return self.get("event")


@dataclasses.dataclass(frozen=True)
class _Callback:
    """One callback, as the core reads it (by attribute)."""

    event: str
    class_name: str
    queue: str
    retry: bool | int
    options: Mapping[str, Any]
    fields: Mapping[str, Any] | None
    #: A kiq worker's callback: the event counts as done once it ran (a class
    #: name may be a Ruby worker, whose end kiq never sees).
    awaited: bool


@dataclasses.dataclass(frozen=True)
class _Spec:
    """What a ``jobs()`` block works on, as the core reads it (by attribute)."""

    bid: str
    up: list[str]
    new: bool
    description: str | None
    callback_queue: str | None
    callbacks: list[_Callback]


@dataclasses.dataclass(frozen=True)
class _Open:
    """A ``jobs()`` block in progress: where enqueues made inside it go."""

    batch: Batch
    builder: _kiq.BatchBuilder


#: The innermost ``jobs()`` block open in this context.
_building: contextvars.ContextVar[_Open | None] = contextvars.ContextVar("kiq_batch_building", default=None)

#: The innermost ``jobs()`` block open in this context, if any: a C call, so
#: an enqueue outside any block learns it without a Python frame.
current_block = _building.get


def open_block(app: object) -> _kiq.BatchBuilder | None:
    """The builder enqueues of ``app`` go to here (inside one of its batches' ``jobs()`` blocks), if any."""
    block = _building.get()
    return block.builder if block is not None and block.batch.app is app else None


class Batch:
    """A batch of jobs; make one with :meth:`kiq.Kiq.batch`."""

    def __init__(
        self,
        app: Kiq,
        bid: str | None = None,
        *,
        description: str | None = None,
        callback_queue: str | None = None,
        ancestors: list[str] | None = None,
        exists: bool = False,
    ) -> None:
        self.app = app
        self._bid = bid or _kiq.new_bid()
        self._up = list(ancestors or [])
        self._exists = exists
        self._callbacks: list[_Callback] = []
        self._open = False
        self.description = description
        self.callback_queue = callback_queue

    def __repr__(self) -> str:
        return f"<Batch {self._bid}{' ' + repr(self.description) if self.description else ''}>"

    @property
    def bid(self) -> str:
        """The batch id (14 characters of URL-safe Base64, like Sidekiq Pro's)."""
        return self._bid

    @property
    def parent_bid(self) -> str | None:
        return self._up[0] if self._up else None

    def on(self, event: str, target: type[Worker] | FunctionWorker[..., Any] | str,
           options: Mapping[str, Any] | None = None) -> Batch:
        """Registers a callback for ``event`` (``"success"``, ``"complete"`` or
        ``"death"``): when it fires, a job of ``target`` (a kiq worker, or any
        class name, such as a Ruby worker ``"Billing::BatchDone"``) is pushed
        with the arguments ``(status, options)``, on the batch's
        ``callback_queue`` (else the worker's queue, else ``"default"``).
        Several callbacks may share an event. Set before the first ``jobs()``
        block. Returns the batch.

        A kiq worker's callback is *awaited*: the event counts as done (for a
        parent batch, whose own callbacks wait for it) once the callback job
        succeeded. A class name may be a Ruby worker, whose end kiq never
        sees: such a callback is pushed once and not awaited."""
        if self._exists:
            raise ConfigError(f"batch {self._bid} exists already: callbacks are set before its first jobs() block")
        retry: bool | int
        if isinstance(target, str):
            class_name, queue, retry, fields, awaited = target, "default", True, None, False
        elif isinstance(target, FunctionWorker) or (isinstance(target, type) and issubclass(target, Worker)):
            opts = target.kiq_options
            class_name, queue, retry, fields = target.wire_name(), opts.queue, opts.retry, opts.payload_options() or None
            awaited = True
        else:
            raise ConfigError(
                f"a batch callback target must be a kiq worker or a class name (str), not {type(target).__name__}"
            )
        if options is not None and not isinstance(options, Mapping):
            raise ConfigError(f"batch callback options must be a dict (Pro's options hash), not {type(options).__name__}")
        if not isinstance(event, str):
            raise ConfigError(f"a batch event is a str ({', '.join(EVENTS)}), not {event!r}")
        callback = _Callback(event, class_name, self.callback_queue or queue, retry, dict(options or {}), fields,
                             awaited)
        _kiq.check_batch_callback(callback)  # the core's checks, now rather than at the block's end
        self._callbacks.append(callback)
        return self

    def _spec(self) -> _Spec:
        callbacks = [dataclasses.replace(c, queue=self.callback_queue) if self.callback_queue else c
                     for c in self._callbacks]
        return _Spec(self._bid, self._up, not self._exists, self.description, self.callback_queue, callbacks)

    @contextlib.contextmanager
    def jobs(self) -> Iterator[Batch]:
        """Adds the jobs enqueued inside the block (``app.enqueue``,
        ``enqueue_bulk``, ``enqueue_all`` and their async forms, from this
        thread or asyncio task) to the batch; they are pushed when
        the block ends, atomically with the batch's registration, exactly
        once. If the block raises, nothing is pushed. A large block streams
        its jobs to Redis in chunks as it goes, but none runs, and no callback
        fires, before the block ends. A batch created inside the block is a
        child of this one and is pushed with it."""
        app = self.app
        if app.test_mode is not None:
            raise ConfigError("batches need Redis: a sandboxed Kiq (test_mode=\"sandbox\") cannot run them")
        if self._open:
            raise ConfigError(f"the jobs() block of batch {self._bid} is already open")
        builder = _kiq.BatchBuilder(app.client, self._spec())
        outer = _building.get()
        token = _building.set(_Open(self, builder))
        self._open = True
        try:
            yield self
        except BaseException:
            _building.reset(token)
            self._open = False
            try:
                builder.discard()
            except Exception as exc:  # noqa: BLE001 - the block's own error matters more
                logger.warning("kiq: batch %s: could not drop the jobs staged before its block raised (they expire "
                               "within a day and are never pushed): %s", self._bid, exc)
            raise
        _building.reset(token)
        self._open = False
        if outer is not None and outer.batch.app is app:
            outer.builder.defer(builder)  # pushed when the enclosing block ends, or never if it raises
        else:
            builder.commit()
        self._exists = True

    def invalidate(self) -> None:
        """Pro's ``invalidate_all``: the batch's jobs that have not started are
        skipped from now on (each process sees it within a second), logged and
        reported as aborted (``batch_invalidated``), and count as done, so the
        batch still completes and its callbacks still fire (with
        ``invalidated`` true in their status). Children are invalidated with it."""
        if not _kiq.batch_invalidate(self.app.client, self._bid):
            raise BatchError(f"batch {self._bid} does not exist (it expired or never existed)")

    @property
    def valid(self) -> bool:
        """False once this batch (or an ancestor) was invalidated: a job checks it
        between steps, as Pro's ``valid_within_batch?``."""
        return not _kiq.batch_invalidated(self.app.client, [self._bid, *self._up])

    def status(self) -> BatchStatus:
        """The batch as stored now; :class:`~kiq.errors.BatchError` if it expired or never existed."""
        return self.app.batch_status(self._bid)

    def wait(self, timeout: float | None = None, *, event: str = "success", interval: float = 0.05) -> BatchStatus:
        """Waits until ``event`` fired and returns the status. Waiting for
        ``"success"`` raises :class:`~kiq.errors.BatchError` as soon as the
        batch's ``death`` fired instead (a job of it, or of a child, died: a
        chain stopped); ``timeout`` (seconds) raises
        :class:`~kiq.errors.TimeoutError`."""
        if event not in EVENTS:
            raise ConfigError(f"unknown batch event {event!r}: use one of {', '.join(EVENTS)}")
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            status = self.status()
            if event in status["fired"]:
                return status
            if event == "success" and "death" in status["fired"]:
                where = f"jobs {status.dead_jids}" if status.dead_jids else "a job of a child batch"
                raise BatchError(f"batch {self._bid} cannot succeed: {where} died")
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"batch {self._bid}: no {event} within {timeout}s (pending {status.pending})")
            time.sleep(interval)


def status_of(app: Kiq, bid: str) -> BatchStatus:
    raw = _kiq.batch_status(app.client, bid)
    if raw is None:
        raise BatchError(f"batch {bid} does not exist (it expired or never existed)")
    return BatchStatus(raw)


def reopen(app: Kiq, bid: str) -> Batch:
    """An existing batch, to add jobs to (Pro's ``Sidekiq::Batch.new(bid)``)."""
    if not isinstance(bid, str):
        raise ConfigError(f"a batch id is a str, not {type(bid).__name__}")
    ancestors = _kiq.batch_ancestors(app.client, bid)
    if ancestors is None:
        raise BatchError(f"batch {bid} does not exist: it expired (30 days after its last jobs were added, a day "
                         "after it succeeded) or never existed")
    return Batch(app, bid, ancestors=ancestors, exists=True)


def parent_chain(app: Kiq, running_chain: list[str] | None) -> list[str]:
    """The ancestors of a batch created now: the batch whose ``jobs()`` block is open,
    else the batch of the running job."""
    block = _building.get()
    if block is not None and block.batch.app is app:
        return [block.batch.bid, *block.batch._up]
    return list(running_chain or [])
