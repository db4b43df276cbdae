"""A first kiq worker: ``python examples/first_worker.py`` (Redis at $REDIS_URL).

It enqueues three jobs, runs them, and stops on Ctrl-C (or SIGTERM).
"""

from __future__ import annotations

import logging

from kiq import Kiq, Worker, worker
from kiq.logs import configure

log = logging.getLogger(__name__)


class Greeter(Worker, queue="default", retry=5):
    """A class worker: ``perform`` takes the job's arguments."""

    def perform(self, name: str, times: int) -> None:
        for _ in range(times):
            log.info("hello, %s (job %s)", name, self.jid)


@worker(queue="default", retry=False)
def add(a: int, b: int) -> int:
    """A function worker: still callable as a function; ``add.new(1, 2)`` makes a job."""
    log.info("%d + %d = %d", a, b, a + b)
    return a + b


app = Kiq(queues={"default": 10}, workers=[Greeter, add])


def main() -> None:
    configure(logging.INFO, name=None)
    app.enqueue(Greeter.new("Ada", 2))
    app.enqueue(add.new(1, 2))
    app.enqueue(add.new(40, 2), delay=5)  # runs in about five seconds
    app.run()  # until SIGTERM or Ctrl-C; then a graceful stop


if __name__ == "__main__":
    main()
