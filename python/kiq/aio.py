"""asyncio: ``async def`` jobs run on an event loop thread kiq owns.

A queue's worker threads still bound how many of its jobs run at once: a
thread that takes an async job hands the coroutine to the loop and waits
(without the GIL) for it to finish, so async and sync workers share the same
per-queue limits and can be mixed freely. At a stop's deadline the jobs still
running on the loop are cancelled and handed back to their queues.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import threading
from collections.abc import Coroutine
from typing import Any

from kiq.errors import JobCancelledError, JobTimeoutError
from kiq.logs import _current, _server

#: How often a thread waiting for an async job checks whether it was cancelled.
CANCEL_POLL = 0.25

__all__ = ["AsyncRunner"]


class AsyncRunner:
    """The event loop thread and the jobs running on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.stopping = False
        self._inflight: set[concurrent.futures.Future[Any]] = set()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._main, name="kiq-asyncio", daemon=True)
        self._thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float | None) -> Any:
        """Runs ``coro`` on the loop and waits for its result (raises what it raises).

        The coroutine sees the calling thread's context variables (the job's
        log context, a test's sandbox scope)."""
        fut = asyncio.run_coroutine_threadsafe(self._guard(coro, timeout, contextvars.copy_context()), self.loop)
        with self._lock:
            self._inflight.add(fut)
        # The job this thread runs, if any, is watched for a cancellation.
        job, server = _current.get(), _server.get()
        watch = job is not None and server is not None
        try:
            while not concurrent.futures.wait([fut], timeout=CANCEL_POLL if watch else None).done:
                if server.is_cancelled(job):
                    fut.cancel()
                    raise JobCancelledError("the job was cancelled on request")
            return fut.result()
        finally:
            with self._lock:
                self._inflight.discard(fut)

    @staticmethod
    async def _guard(coro: Coroutine[Any, Any, Any], timeout: float | None, ctx: contextvars.Context) -> Any:
        for var, value in ctx.items():
            var.set(value)  # in this task's own context only
        if timeout is None:
            return await coro
        try:
            return await asyncio.wait_for(coro, timeout)
        except asyncio.TimeoutError:
            raise JobTimeoutError(f"the job was cancelled after its timeout of {timeout:g}s") from None

    def cancel_all(self) -> int:
        """Cancels every job running on the loop (a stop's deadline passed)."""
        self.stopping = True
        with self._lock:
            running = list(self._inflight)
        for fut in running:
            fut.cancel()
        return len(running)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self.loop.close()
