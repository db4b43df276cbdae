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

import logging as _logging

from kiq import errors
from kiq._kiq import __version__
from kiq.activejob import active_job
from kiq.app import Kiq, StopResult
from kiq.batch import Batch, BatchStatus
from kiq.capsule import Capsule
from kiq.crontab import Crontab
from kiq.job import Enqueued, Job
from kiq.logs import JobContext, current_job
from kiq.limiter import Limiter
from kiq.reporters import JobInfo, Reporter
from kiq.throttle import Throttle
from kiq.worker import FunctionWorker, Worker, WorkerOptions, worker

# A library never configures logging for the application; records of the
# ``kiq`` logger go nowhere until it does.
_logging.getLogger("kiq").addHandler(_logging.NullHandler())

__all__ = [
    "Batch",
    "BatchStatus",
    "Capsule",
    "Crontab",
    "Enqueued",
    "FunctionWorker",
    "Job",
    "JobContext",
    "JobInfo",
    "Kiq",
    "Limiter",
    "Reporter",
    "StopResult",
    "Throttle",
    "Worker",
    "WorkerOptions",
    "__version__",
    "active_job",
    "current_job",
    "errors",
    "worker",
]
