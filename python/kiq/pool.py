"""The worker threads: ``concurrency`` threads per queue, or one per queue
when every worker is ``async def`` (a thread then only hands each job to the
event loop; the queue's concurrency still bounds the jobs running there).

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
    def __init__(self, processor: Processor, queues: list[tuple[str, int]], hand_off_only: bool = False) -> None:
        self.processor = processor
        self.queues = queues
        self.stopping = False
        #: Threads per queue (in queue order).
        self.wanted = [1 if hand_off_only else concurrency for _, concurrency in queues]
        #: (lane, thread) for every worker thread, replacements included.
        self.slots: list[tuple[int, threading.Thread]] = [
            (lane, self._thread(lane, f"kiq-{name}-{n}"))
            for lane, (name, _) in enumerate(queues)
            for n in range(self.wanted[lane])
        ]

    @property
    def threads(self) -> list[threading.Thread]:
        return [t for _, t in self.slots]

    def _thread(self, lane: int, name: str) -> threading.Thread:
        return threading.Thread(target=self._main, args=(lane,), name=name, daemon=True)

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def _main(self, lane: int) -> None:
        while True:
            try:
                self.processor.run_lane(lane)
                return
            except Shutdown:
                return
            except BaseException:  # noqa: BLE001 - a kiq bug must not cost the queue a thread
                logger.exception("kiq worker thread %s stopped by an error; it starts over",
                                 threading.current_thread().name)
                time.sleep(0.1)  # an error that recurs at once must not spin

    def revive(self) -> list[int]:
        """Replaces worker threads that died (logged at ERROR); returns the
        live threads per queue, which the core's ``/ready`` compares with the
        queue's concurrency."""
        alive = [0] * len(self.queues)
        for i, (lane, t) in enumerate(self.slots):
            if not t.is_alive() and t.ident is not None and not self.stopping:
                logger.error("kiq worker thread %s of queue %r died; starting a new one", t.name, self.queues[lane][0])
                t = self._thread(lane, t.name)
                self.slots[i] = (lane, t)
                t.start()
            if t.is_alive():
                alive[lane] += 1
        return alive

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
