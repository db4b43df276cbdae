"""Chains (kiq.workflow.chain) on child batches: steps in order, each after the
previous one succeeded; a dying step stops the chain and fires its death."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import redis

from kiq import BatchStatus, Job, Kiq, current_job, worker
from kiq.errors import BatchError, ConfigError
from kiq.workflow import chain
from support import wait_for


def recorder() -> tuple[list[tuple[str, int, float, float]], Any, Any]:
    log: list[tuple[str, int, float, float]] = []
    lock = threading.Lock()
    calls: list[BatchStatus] = []

    @worker(name="Flow.Step")
    def step(name: str, n: int) -> None:
        start = time.monotonic()
        job = current_job()
        assert job is not None and job.bid is not None, "every step's job belongs to a batch"
        if name == "boom":
            raise ValueError("step 2 fails")
        time.sleep(0.002)
        with lock:
            log.append((name, n, start, time.monotonic()))

    @worker(name="Flow.Done")
    def done(status: BatchStatus, options: dict[str, Any]) -> None:
        calls.append(status)

    return log, step, (done, calls)


def test_a_chain_runs_its_steps_in_order(make_app, r: redis.Redis) -> None:
    log, step, (done, calls) = recorder()
    app: Kiq = make_app(queues={"default": 10}, workers=[step, done])
    flow = chain(step.new("first", 0), [step.new("group", i) for i in range(100)], step.new("last", 0),
                 description="three steps")
    flow.on("success", done, {"chain": "three"})
    overall = flow.start(app)
    app.start()
    status = overall.wait(timeout=60)
    assert status.child_count == 3 and status.success and status.total == 0
    wait_for(lambda: calls, what="the chain's success callback")
    assert [c.bid for c in calls] == [overall.bid]
    first = [e for e in log if e[0] == "first"]
    group = [e for e in log if e[0] == "group"]
    last = [e for e in log if e[0] == "last"]
    assert (len(first), len(group), len(last)) == (1, 100, 1)
    assert first[0][3] <= min(e[2] for e in group), "step 2 starts after step 1 succeeded"
    assert max(e[3] for e in group) <= last[0][2], "step 3 starts after every job of step 2 succeeded"
    assert r.llen("queue:default") == 0 and r.zcard("schedule") == 0


def test_a_failure_in_step_two_stops_step_three(make_app, r: redis.Redis) -> None:
    log, step, (done, calls) = recorder()
    app: Kiq = make_app(queues={"default": 5}, workers=[step, done])
    flow = chain(step.new("first", 0), [step.new("group", 1), Job("Flow.Step", ["boom", 2], retry=0)],
                 step.new("last", 0))
    flow.on("death", done, {"chain": "stopped"})
    overall = flow.start(app)
    app.start()
    with pytest.raises(BatchError, match="cannot succeed"):
        overall.wait(timeout=30)
    wait_for(lambda: calls, what="the chain's death callback")
    time.sleep(0.5)
    assert [c.event for c in calls] == ["death"] and calls[0].bid == overall.bid
    assert {e[0] for e in log} == {"first", "group"}, "step 3 never ran"
    assert r.zcard("dead") == 1
    status = app.batch_status(overall.bid)
    assert status.child_count == 2 and not status.success


def test_chain_steps_are_checked_when_the_chain_is_made(make_app) -> None:
    with pytest.raises(ConfigError, match="must be a kiq.Job or a non-empty list"):
        chain(Job("A"), [])
    with pytest.raises(ConfigError, match="at least one step"):
        chain()
    with pytest.raises(ConfigError, match="encrypted jobs may only be in the first step"):
        chain(Job("A"), Job("B", [1, {"secret": 1}], encrypt=True))
    with pytest.raises(ConfigError, match="must be a kiq.Job"):
        chain(Job("A"), "B")  # type: ignore[arg-type]
