"""Workflows on batches: chains of steps, each started when the previous one succeeded.

::

    from kiq.workflow import chain

    flow = chain(Fetch.new(day), [Resize.new(i) for i in images], Publish.new(day), description="daily")
    flow.on("death", Alert, {"day": day})      # callbacks of the whole chain
    batch = flow.start(app)                     # one batch: wait on it, inspect it
    batch.wait(timeout=600)

A step is a job or a group of jobs (a list; its jobs run in parallel). The
chain is built as in Sidekiq Pro's "Really Complex Workflows with Batches":
one overall batch, and each step a child batch of it whose ``success``
callback (kiq's own ``kiq.workflow.NextStep`` worker, registered in every
app) reopens the overall batch and adds the next step as a new child. The
overall batch therefore succeeds exactly when the last step does. A step
whose job dies stops the chain there: the later steps are never pushed, and
the death propagates to the overall batch, whose ``death`` callbacks fire.
A step that fails without dying (a job retrying) holds the chain until it
succeeds. The later steps wait in the callback's options, in Redis, as JSON:
their arguments are stored in clear, so encrypted jobs may only be in the
first step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from kiq.batch import Batch, BatchStatus
from kiq.errors import ConfigError
from kiq.job import Job
from kiq.logs import _app
from kiq.worker import FunctionWorker, Worker

if TYPE_CHECKING:
    from kiq.app import Kiq

__all__ = ["Chain", "NextStep", "chain"]

Step = Job | Sequence[Job]


def _group(step: Step, index: int) -> list[Job]:
    jobs = [step] if isinstance(step, Job) else list(step) if isinstance(step, Sequence) else None
    if not jobs or not all(isinstance(j, Job) for j in jobs):
        raise ConfigError(f"chain step {index} must be a kiq.Job or a non-empty list of them, not {step!r}")
    return jobs


def _stored(job: Job, index: int) -> dict[str, Any]:
    """A later step's job as it waits in Redis (JSON)."""
    if job.encrypt:
        raise ConfigError(f"chain step {index}: encrypted jobs may only be in the first step (later steps wait in "
                          "Redis as JSON, their arguments in clear)")
    return {"class": job.class_name, "args": list(job.args), "queue": job.queue, "retry": job.retry,
            "options": dict(job.options), "expires_in": job.expires_in}


def _job(stored: Mapping[str, Any]) -> Job:
    return Job(stored["class"], stored["args"], stored["queue"], stored["retry"], stored["options"],
               expires_in=stored.get("expires_in"))


class Chain:
    """Steps run one after the other; see :func:`chain`."""

    def __init__(self, steps: Sequence[Step], description: str | None = None,
                 callback_queue: str | None = None) -> None:
        if not steps:
            raise ConfigError("a chain needs at least one step")
        self.groups = [_group(s, i + 1) for i, s in enumerate(steps)]
        # Checked now: later steps are stored as JSON until their turn.
        self.later = [[_stored(j, i + 2) for j in g] for i, g in enumerate(self.groups[1:])]
        self.description = description
        self.callback_queue = callback_queue
        self.callbacks: list[tuple[str, type[Worker] | FunctionWorker[..., Any] | str, Mapping[str, Any] | None]] = []

    def on(self, event: str, target: type[Worker] | FunctionWorker[..., Any] | str,
           options: Mapping[str, Any] | None = None) -> Chain:
        """A callback of the whole chain (its overall batch): ``"success"`` once
        the last step succeeded, ``"death"`` when a step's job died, ``"complete"``."""
        self.callbacks.append((event, target, options))
        return self

    def start(self, app: Kiq) -> Batch:
        """Creates the overall batch with the first step in it; returns the overall batch."""
        overall = app.batch(description=self.description, callback_queue=self.callback_queue)
        for event, target, options in self.callbacks:
            overall.on(event, target, options)
        plan = {"chain": overall.bid, "label": self.description or f"chain {overall.bid}", "total": len(self.groups),
                "callback_queue": self.callback_queue}
        with overall.jobs():
            _add_step(app, plan, 1, self.groups[0], self.later)
        return overall


def _add_step(app: Kiq, plan: dict[str, Any], number: int, jobs: list[Job], later: list[list[dict[str, Any]]]) -> None:
    """Inside the overall batch's jobs() block: step ``number`` as a child batch of it."""
    step = app.batch(description=f"{plan['label']}: step {number}/{plan['total']}",
                     callback_queue=plan["callback_queue"])
    if later:
        step.on("success", NextStep, {**plan, "step": number + 1, "steps": later})
    with step.jobs():
        app.enqueue_all(jobs)


class NextStep(Worker, name="kiq.workflow.NextStep", queue="default"):
    """The success callback of a chain's step: adds the next step to the chain."""

    def perform(self, status: BatchStatus, options: dict[str, Any]) -> None:
        app = _app.get()
        if app is None:
            raise ConfigError("kiq.workflow.NextStep runs inside a kiq worker process")
        steps = options["steps"]
        plan = {k: options[k] for k in ("chain", "label", "total", "callback_queue")}
        overall = app.batch(options["chain"])
        with overall.jobs():
            _add_step(app, plan, options["step"], [_job(j) for j in steps[0]], steps[1:])


def chain(*steps: Step, description: str | None = None, callback_queue: str | None = None) -> Chain:
    """A chain of steps (jobs, or lists of jobs run in parallel), each started
    when the previous one succeeded; ``.start(app)`` pushes it and returns its
    overall batch."""
    return Chain(steps, description, callback_queue)
