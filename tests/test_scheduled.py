"""The scheduler poller: due jobs move to their queues once, future ones wait."""

from __future__ import annotations

import json
import time

from kiq import Worker, worker
from support import wait_for


def test_scheduled_job_runs_once_due(make_app, r):
    ran: list[float] = []

    @worker(name="Later")
    def later(at: float) -> None:
        ran.append(time.time() - at)

    app = make_app(workers=[later])
    app.enqueue(later.new(time.time() + 1.0), delay=1.0)
    app.enqueue(later.new(0), delay=3600)
    app.start()
    wait_for(lambda: ran, timeout=5, what="scheduled job")
    assert -0.05 <= ran[0] < 0.6, ran
    time.sleep(0.3)
    assert len(ran) == 1 and r.zcard("schedule") == 1


def test_moved_job_gets_enqueued_at_and_loses_at(make_app, r):
    member = json.dumps({"class": "NoopJob", "args": [9], "queue": "q2", "jid": "a" * 24, "at": 1, "x": 1})
    r.zadd("schedule", {member: time.time() - 1})
    app = make_app(queues={"other": 1})
    app.start()
    [raw] = wait_for(lambda: r.lrange("queue:q2", 0, -1), what="moved")
    job = json.loads(raw)
    assert list(job)[:2] == ["retry", "class"] and job["retry"] is True
    assert "at" not in job and abs(job["enqueued_at"] - time.time()) < 5 and job["x"] == 1
    assert r.smembers("queues") == {"q2"}


def test_many_processes_move_each_job_exactly_once(make_app, r):
    runs: list[int] = []

    class Once(Worker, name="Once"):
        def perform(self, n: int) -> None:
            runs.append(n)

    now = time.time()
    members = {json.dumps({"class": "Once", "args": [i], "queue": "default", "jid": f"{i:024x}"}): now - 1 for i in range(300)}
    r.zadd("schedule", members)
    apps = [make_app(workers=[Once], poll_interval_average=0.05) for _ in range(3)]
    for app in apps:
        app.start()
    wait_for(lambda: len(runs) >= 300, what="300 runs")
    time.sleep(0.3)
    assert sorted(runs) == list(range(300))


def test_scheduler_can_be_left_to_another_system(make_app, r):
    r.zadd("schedule", {json.dumps({"class": "X", "args": [], "jid": "b" * 24}): time.time() - 5})
    make_app(scheduler=False).start()
    time.sleep(0.5)
    assert r.zcard("schedule") == 1
