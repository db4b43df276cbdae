"""Running one job: find its worker, call it, report the outcome to the core.

This is the per-job hot path of every worker thread, so it is written for
speed: no Redis round trip (the core batches results), no logging call
unless the logger is enabled, and locals bound once per thread.
"""

from __future__ import annotations

import dataclasses
import logging
import traceback
from collections.abc import Callable, Mapping
from typing import Any

from kiq import _kiq
from kiq.errors import Shutdown, UnknownWorkerError
from kiq.worker import FunctionWorker, Worker, WorkerLike, WorkerOptions

__all__ = ["Processor", "Registered", "register"]

logger = logging.getLogger("kiq")

UNREADABLE_MESSAGE = "!!! ERROR MESSAGE THREW AN ERROR !!!"


@dataclasses.dataclass(frozen=True, slots=True)
class Registered:
    """A worker as the processor sees it."""

    name: str
    options: WorkerOptions
    #: Runs one job: ``call(args, jid)``.
    call: Callable[[list[Any], str], Any]


def register(w: WorkerLike) -> Registered:
    """The processor's view of a worker class or function worker."""
    if isinstance(w, type) and issubclass(w, Worker):
        cls = w

        def call(args: list[Any], jid: str) -> Any:
            instance = cls()
            instance.jid = jid
            return instance.perform(*args)

        return Registered(cls.wire_name(), cls.kiq_options, call)
    if isinstance(w, FunctionWorker):
        fn = w.fn
        return Registered(w.wire_name(), w.kiq_options, lambda args, _jid: fn(*args))
    raise TypeError(f"{w!r} is not a kiq worker: subclass kiq.Worker or decorate a function with @kiq.worker")


def error_class(exc: BaseException) -> str:
    """The exception's class name as the Web UI shows it (builtins unqualified)."""
    t = type(exc)
    return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


def error_message(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:
        return UNREADABLE_MESSAGE


def backtrace_lines(exc: BaseException) -> list[str]:
    """Frames innermost first, in Ruby's ``file:line:in `name'`` form, without kiq's own frame."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename != __file__]
    return [f"{f.filename}:{f.lineno}:in `{f.name}'" for f in reversed(frames)]


class Processor:
    """Runs the jobs of one server's lanes on the calling threads."""

    def __init__(self, server: _kiq.Server, workers: Mapping[str, Registered]) -> None:
        self.server = server
        self.workers = dict(workers)

    def run_lane(self, lane: int) -> None:
        """Takes and runs jobs of one lane until the server stops."""
        server = self.server
        next_job = server.next_job
        complete = server.complete
        workers = self.workers
        while True:
            d = next_job(lane)
            if d is None:
                return
            reg = workers.get(d.class_name)
            if reg is None:
                self.unknown(d)
                continue
            try:
                reg.call(d.args, d.jid)
            except Shutdown:
                server.abandon(d)
                return
            except BaseException as exc:  # noqa: BLE001 - every failure is recorded, as Sidekiq's retry does
                # SystemExit or KeyboardInterrupt from a job fail that job
                # only; the thread keeps serving its queue.
                self.failed(d, reg, exc)
            else:
                complete(d)

    def failed(self, d: _kiq.Delivery, reg: Registered | None, exc: BaseException) -> None:
        opts = reg.options if reg is not None else None
        wanted = d.backtrace if d.backtrace is not None else (opts.backtrace if opts else False)
        lines = backtrace_lines(exc) if wanted else None
        if opts is None:
            self.server.fail(d, error_class(exc), error_message(exc), backtrace=lines)
        else:
            self.server.fail(
                d,
                error_class(exc),
                error_message(exc),
                backtrace=lines,
                retry=opts.retry,
                dead=opts.dead,
                backtrace_option=opts.backtrace,
                retry_queue=opts.retry_queue,
            )

    def unknown(self, d: _kiq.Delivery) -> None:
        known = ", ".join(sorted(self.workers)) or "none"
        exc = UnknownWorkerError(
            f"no worker is registered for class {d.class_name!r} in this process (registered: {known})"
        )
        logger.error("job %s of unknown class %r failed: %s", d.jid, d.class_name, exc)
        self.failed(d, None, exc)
