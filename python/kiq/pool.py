"""The worker threads: ``concurrency`` threads per queue.

Each thread loops in :meth:`Processor.run_lane`. Waiting for a job happens in
the core with the GIL released; a thread that finishes a job takes the next
ready one without releasing the GIL at all. At a stop, threads still running
when the deadline passes get :class:`~kiq.errors.Shutdown` raised inside them
(as Sidekiq raises its own), and their jobs go back to the queue.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time

from kiq.errors import Shutdown
from kiq.processor import Processor

__all__ = ["WorkerThreads"]

logger = logging.getLogger("kiq")


class WorkerThreads:
    def __init__(self, processor: Processor, queues: list[tuple[str, int]]) -> None:
        self.processor = processor
        self.threads: list[threading.Thread] = []
        for lane, (name, concurrency) in enumerate(queues):
            for n in range(concurrency):
                t = threading.Thread(target=self._main, args=(lane,), name=f"kiq-{name}-{n}", daemon=True)
                self.threads.append(t)

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def _main(self, lane: int) -> None:
        try:
            self.processor.run_lane(lane)
        except Shutdown:
            pass
        except BaseException:
            logger.exception("kiq worker thread %s stopped by an error", threading.current_thread().name)

    def join(self, deadline: float) -> list[threading.Thread]:
        """Waits until every thread ended or ``deadline`` (monotonic). Returns the live ones."""
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))
        return [t for t in self.threads if t.is_alive()]

    @staticmethod
    def interrupt(threads: list[threading.Thread]) -> None:
        """Raises :class:`Shutdown` in each thread (at its next Python bytecode)."""
        for t in threads:
            if t.ident is not None:
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(t.ident), ctypes.py_object(Shutdown))
