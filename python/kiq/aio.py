"""asyncio: ``async def`` jobs run on an event loop thread kiq owns.

A worker thread that takes an async job hands its coroutine to the loop and
goes on to its next job at once; the loop settles the job when it ends. So
the loop runs many jobs per iteration and no thread waits per job. A queue's
concurrency still bounds its async jobs: a thread takes a job only while
fewer than the concurrency of its queue's jobs run (the core's lane counts
them), and an async job ends when the loop settles it. Hand-offs are
batched: threads append to one list and wake the loop only when it was not
woken already. At a stop the threads wait for the loop's jobs (as they would
for their own); at the deadline the jobs still running are cancelled and
handed back to their queues. On Python 3.12+ a job's task starts eagerly
(``eager_start``): it runs up to its first real wait as the loop takes it, so
a job that finishes without waiting costs no loop iteration of its own (about
half of a task's cost, measured on 3.12) and is settled there and then. Only the job's own task: tasks the
job creates start as asyncio's default says (on the next iteration), so user
code sees the usual ordering.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

from kiq.errors import JobCancelledError, JobTimeoutError

__all__ = ["AsyncRunner", "clocked"]

#: Whether ``asyncio.Task`` takes ``eager_start`` (Python 3.12+).
EAGER = sys.version_info >= (3, 12)

#: Called on the loop thread when a job's coroutine ended: (its delivery, the error or None).
Settle = Callable[[Any, BaseException | None], object]


class AsyncRunner:
    """The event loop thread and the jobs running on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.stopping = False
        #: Each running job's task: its delivery, settle and count (touched on the loop thread; read by
        #: cancel_requested). The done callback finds them here (no per-job partial to build).
        self._inflight: dict[asyncio.Task[Any], tuple[Any, Settle, list[int]]] = {}
        self._cancelled: set[asyncio.Task[Any]] = set()
        #: Jobs handed over and not yet started by the loop: (coroutine, context, delivery, settle, count).
        self._incoming: collections.deque[
            tuple[Coroutine[Any, Any, Any], contextvars.Context, Any, Settle, list[int]]] = collections.deque()
        self._woken = False
        #: Jobs handed over without a count of their own and not settled yet
        #: (a worker thread keeps its own); ``_idle`` is notified when a count drops to 0.
        self._tally = [0]
        #: Taken directly on the per-job paths: a Condition's own ``with`` runs two Python-level methods.
        self._tally_lock = threading.Lock()
        self._idle = threading.Condition(self._tally_lock)
        self._thread = threading.Thread(target=self._main, name="kiq-asyncio", daemon=True)
        self._thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def submit(self, coro: Coroutine[Any, Any, Any], timeout: float | None, d: Any, settle: Settle,
               mine: list[int] | None = None) -> None:
        """Starts ``coro`` on the loop without waiting; ``settle(d, error)`` runs
        there when it ends. The coroutine sees the calling thread's context
        variables (the job's log context, a test's sandbox scope). ``mine``
        counts the caller's jobs not settled yet (see :meth:`wait_idle`)."""
        if timeout is not None:
            coro = _timed(coro, timeout)
        tally = self._tally if mine is None else mine
        with self._tally_lock:
            tally[0] += 1
        self._incoming.append((coro, contextvars.copy_context(), d, settle, tally))
        if not self._woken:
            # Ordered after the append: the loop clears the flag before it drains.
            self._woken = True
            self.loop.call_soon_threadsafe(self._start)

    def _start(self) -> None:
        """On the loop: starts every job handed over since the last wake-up."""
        self._woken = False
        incoming, loop, inflight, done = self._incoming, self.loop, self._inflight, self._done
        task_of = asyncio.Task
        while incoming:
            coro, ctx, d, settle, tally = incoming.popleft()
            if self.stopping:
                # Handed over after the stop's deadline: never started (not even
                # eagerly), cancelled, and so back to its queue.
                task = task_of(coro, loop=loop, context=ctx)
                task.cancel()
            elif EAGER:
                task = task_of(coro, loop=loop, context=ctx, eager_start=True)  # type: ignore[call-arg]
                if task.done():
                    # It never waited: settled now, not by a callback on the next round.
                    try:
                        ctx.run(self._ended, task, d, settle, tally)
                    except Exception as exc:  # noqa: BLE001 - as the loop treats a failing callback
                        loop.call_exception_handler({"message": "kiq: settling an async job failed",
                                                     "exception": exc, "task": task})
                    continue
            else:
                task = task_of(coro, loop=loop, context=ctx)
            inflight[task] = (d, settle, tally)
            task.add_done_callback(done, context=ctx)

    def _done(self, task: asyncio.Task[Any]) -> None:
        d, settle, tally = self._inflight.pop(task)
        self._ended(task, d, settle, tally)

    def _ended(self, task: asyncio.Task[Any], d: Any, settle: Settle, tally: list[int]) -> None:
        """Settles the job of a task that ended, and counts it off."""
        exc: BaseException | None
        if task.cancelled():
            exc = (JobCancelledError("the job was cancelled on request") if task in self._cancelled
                   else asyncio.CancelledError())
            self._cancelled.discard(task)
        else:
            exc = task.exception()
        try:
            settle(d, exc)
        finally:
            with self._tally_lock:
                tally[0] -= 1
                if tally[0] == 0:
                    self._idle.notify_all()

    def wait_idle(self, timeout: float | None = None, mine: list[int] | None = None) -> bool:
        """Waits (without holding the GIL) until the jobs counted in ``mine``
        (default: handed over without a count of their own) have been settled.
        Waits in slices, so a stop's :class:`~kiq.errors.Shutdown` reaches a
        worker thread waiting here."""
        tally = self._tally if mine is None else mine
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._idle:
            while tally[0]:
                left = 0.2 if deadline is None else min(0.2, deadline - time.monotonic())
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def idle(self) -> bool:
        """Whether no job runs on the loop or waits to start there."""
        return not self._inflight and not self._incoming

    def cancel_requested(self, is_cancelled: Callable[[Any], bool]) -> int:
        """Cancels the running jobs whose cancellation was asked; returns how many."""
        asked = [t for t, (d, _, _) in list(self._inflight.items()) if t not in self._cancelled and is_cancelled(d)]
        self._cancelled.update(asked)
        for t in asked:
            self.loop.call_soon_threadsafe(t.cancel)
        return len(asked)

    def cancel_all(self) -> int:
        """Cancels every job running on the loop (a stop's deadline passed)."""
        self.stopping = True
        running = list(self._inflight)
        for t in running:
            self.loop.call_soon_threadsafe(t.cancel)
        return len(running)

    def close(self) -> None:
        """Cancels what still runs, waits briefly for those jobs to be handed back, and stops the loop."""
        if not self.idle():
            self.cancel_all()
            deadline = time.monotonic() + 5
            while not self.idle() and time.monotonic() < deadline:
                time.sleep(0.01)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self.loop.close()


async def clocked(d: Any, run: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> Any:
    """Runs an async job, ``run(*args)``, with its run time measured from its
    first step to its end (``d``: its ``kiq._kiq.Delivery``), not from the
    hand-off to the loop: the time spent queued for the loop is not the
    job's, as a sync job's wait for the GIL before it starts is not. Its
    queue's automatic prefetch judges from this whether its jobs are short.
    The job's coroutine is made here, once this one runs: a job cancelled
    before it starts (a stop's deadline) leaves no coroutine never awaited."""
    d.clock_start()
    try:
        return await run(*args)
    finally:
        d.clock_stop()


async def _timed(coro: Coroutine[Any, Any, Any], timeout: float) -> Any:
    try:
        return await asyncio.wait_for(coro, timeout)
    except asyncio.TimeoutError:
        raise JobTimeoutError(f"the job was cancelled after its timeout of {timeout:g}s") from None
