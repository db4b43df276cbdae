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
from collections.abc import Callable, Coroutine
from typing import Any

from kiq.errors import JobCancelledError, JobTimeoutError
from kiq.logs import _current

__all__ = ["AsyncRunner"]


class AsyncRunner:
    """The event loop thread and the jobs running on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.stopping = False
        #: Each running job's future, and the job (None outside one) for cancellation requests.
        self._inflight: dict[concurrent.futures.Future[Any], Any] = {}
        self._cancelled: set[concurrent.futures.Future[Any]] = set()
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
            self._inflight[fut] = _current.get()
        try:
            return fut.result()
        except concurrent.futures.CancelledError:
            if fut in self._cancelled:
                raise JobCancelledError("the job was cancelled on request") from None
            raise
        finally:
            with self._lock:
                self._inflight.pop(fut, None)
                self._cancelled.discard(fut)

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

    def cancel_requested(self, is_cancelled: Callable[[Any], bool]) -> int:
        """Cancels the running jobs whose cancellation was asked; returns how many."""
        with self._lock:
            asked = [fut for fut, job in self._inflight.items()
                     if job is not None and fut not in self._cancelled and is_cancelled(job)]
            self._cancelled.update(asked)
        for fut in asked:
            fut.cancel()
        return len(asked)

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
