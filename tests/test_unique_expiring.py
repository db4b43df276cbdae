"""Unique jobs and expiring jobs."""

from __future__ import annotations

import json
import threading
import time

from kiq import Job, JobInfo, Reporter, Worker, worker
from support import wait_for


def locks(r) -> list[str]:
    return r.keys("kiq:unique:*")


def test_50_threads_enqueueing_the_same_job_put_one_in_redis(make_app, r):
    app = make_app()
    job = Job("Report", [42, {"b": 1, "a": 2}], unique_for=60)
    results = []
    barrier = threading.Barrier(50)

    def go() -> None:
        barrier.wait()
        results.append(app.enqueue(job))

    threads = [threading.Thread(target=go) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert r.llen("queue:default") == 1
    pushed = [x for x in results if not x.skipped]
    assert len(pushed) == 1 and len(results) == 50
    winner = json.loads(r.lrange("queue:default", 0, -1)[0])["jid"]
    assert pushed[0] == winner
    assert all(x.held_by == winner for x in results if x.skipped), "the skip says which job holds the lock"
    # Equal args in another key order collide; different args never do.
    assert app.enqueue(Job("Report", [42, {"a": 2, "b": 1}], unique_for=60)).skipped
    for other in ([43, {"b": 1, "a": 2}], [42, {"b": 1, "a": 3}], [42]):
        assert not app.enqueue(Job("Report", other, unique_for=60)).skipped
    assert not app.enqueue(Job("Report", [42, {"b": 1, "a": 2}], queue="other", unique_for=60)).skipped
    assert not app.enqueue(Job("Other", [42, {"b": 1, "a": 2}], unique_for=60)).skipped
    assert r.llen("queue:default") == 5


def test_unlocked_on_success(make_app, r):
    ran: list[int] = []

    @worker(name="Once", unique_for=60)
    def once(n: int) -> None:
        ran.append(n)

    app = make_app(workers=[once])
    assert not app.enqueue(once.new(1)).skipped
    assert app.enqueue(once.new(1)).skipped
    assert len(locks(r)) == 1
    app.start()
    wait_for(lambda: ran == [1] and not locks(r), what="ran and unlocked")
    assert not app.enqueue(once.new(1)).skipped, "free again after success"


def test_failure_keeps_the_lock_and_retries_death_releases_it(make_app, r):
    @worker(name="Flaky", unique_for=60, retry=1)
    def flaky(n: int) -> None:
        raise RuntimeError("no")

    app = make_app(workers=[flaky])
    app.enqueue(flaky.new(1))
    app.start()
    wait_for(lambda: r.zcard("retry") == 1, what="in the retry set")
    assert len(locks(r)) == 1 and app.enqueue(flaky.new(1)).skipped, "a failing job keeps its lock"
    for m in r.zrange("retry", 0, -1):
        r.zadd("retry", {m: time.time() - 1}, xx=True)
    wait_for(lambda: r.zcard("dead") == 1, what="dead after its retry")
    wait_for(lambda: not locks(r), what="death releases the lock")
    assert not app.enqueue(flaky.new(1)).skipped


def test_unique_until_start_releases_when_the_job_starts(make_app, r):
    gate = threading.Event()
    started = threading.Event()

    @worker(name="Starter", unique_for=60, unique_until="start")
    def starter() -> None:
        started.set()
        gate.wait(10)

    app = make_app(workers=[starter])
    app.enqueue(starter.new())
    app.start()
    assert started.wait(5)
    wait_for(lambda: not locks(r), what="unlocked at start")
    assert not app.enqueue(starter.new()).skipped, "a new one may be enqueued while the first runs"
    gate.set()


def test_scheduled_unique_job_holds_its_lock_until_its_time_plus_unique_for(make_app, r):
    app = make_app()
    app.enqueue(Job("Later", [1], unique_for=30), delay=600)
    [key] = locks(r)
    assert 600 + 25 < r.ttl(key) <= 630
    assert app.enqueue(Job("Later", [1], unique_for=30)).skipped


def test_lock_expires_after_unique_for(make_app, r):
    app = make_app()
    app.enqueue(Job("Short", [1], unique_for=0.3))
    assert app.enqueue(Job("Short", [1], unique_for=0.3)).skipped
    time.sleep(0.4)
    assert not app.enqueue(Job("Short", [1], unique_for=0.3)).skipped


def test_bulk_unique(make_app, r):
    app = make_app()
    jids = app.enqueue_bulk(Job("B", unique_for=60), [[1], [2], [1], [3], [2]])
    assert [getattr(j, "skipped", False) for j in jids] == [False, False, True, False, True]
    assert r.llen("queue:default") == 3


class Aborts(Reporter):
    def __init__(self) -> None:
        self.reasons: list[tuple[str, str]] = []

    def handle_aborted(self, job: JobInfo, reason: str) -> None:
        self.reasons.append((job.jid, reason))


def test_a_job_expired_before_it_can_run_is_not_run(make_app, r, caplog):
    ran: list[str] = []

    class Timely(Worker, name="Timely", expires_in=1):
        def perform(self, tag: str) -> None:
            ran.append(tag)

    rep = Aborts()
    app = make_app(workers=[Timely], extra_reporters=[rep])
    late = app.enqueue(Timely.new("late"), sync=True)
    time.sleep(1.2)  # it waits in the queue past its expiry
    on_time = app.enqueue(Timely.new("on time"))
    app.start()
    wait_for(lambda: ran == ["on time"], what="the timely job")
    wait_for(lambda: rep.reasons == [(late, "expired")], what="handle_aborted(expired)")
    time.sleep(0.2)
    assert ran == ["on time"] and on_time not in dict(rep.reasons)
    assert r.get("kiq:stat:expired") == "1" and r.zcard("retry") == 0 and r.zcard("dead") == 0
    assert any("job_aborted" in m and "reason=expired" in m for m in caplog.messages)


def test_expiry_counts_from_the_scheduled_time(make_app, r):
    app = make_app()
    app.enqueue(Job("Sched", [1], expires_in=60), delay=3600, sync=True)
    [(member, score)] = r.zrange("schedule", 0, -1, withscores=True)
    assert abs(json.loads(member)["expires_at"] - (score + 60)) < 0.01


def test_unique_and_expiring_jobs_from_ruby_payloads_are_ordinary(make_app, r):
    # Payloads without kiq's fields take no lock and never expire.
    ran: list[int] = []

    @worker(name="Plain")
    def plain(n: int) -> None:
        ran.append(n)

    r.lpush("queue:default", json.dumps({"class": "Plain", "args": [1], "jid": "a" * 24, "retry": True,
                                         "unique_for": 60}))
    app = make_app(workers=[plain])
    app.start()
    wait_for(lambda: ran == [1], what="ran")
    assert not locks(r)
