"""kiq: Sidekiq-compatible background jobs for Python, with a Rust core.

Python services enqueue and run jobs on the same Redis as Ruby Sidekiq, in
both directions, with Sidekiq's retry, schedule and dead-set semantics::

    from kiq import Kiq, Worker

    class HardJob(Worker, queue="default", retry=5, name="HardJob"):
        def perform(self, name: str, count: int) -> None: ...

    app = Kiq(queues={"default": 25}, workers=[HardJob])
    app.enqueue(HardJob.new("bob", 5))
    app.run()
"""

from kiq import errors
from kiq._kiq import __version__
from kiq.app import Kiq, StopResult
from kiq.job import Job
from kiq.worker import FunctionWorker, Worker, WorkerOptions, worker

__all__ = [
    "FunctionWorker",
    "Job",
    "Kiq",
    "StopResult",
    "Worker",
    "WorkerOptions",
    "__version__",
    "errors",
    "worker",
]
