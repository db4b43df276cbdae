"""Declarative throttles, checked by the core at fetch: never two jobs of one
key at once across processes, every job runs, a throttled backlog at the head
of a queue does not hold up the other jobs in it, rates hold by the
admission times, holds go back when jobs end and expire when a process dies."""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import textwrap
import time
from typing import Any

import pytest
import redis

from kiq import Job, Kiq, Throttle, Worker, current_job, errors, worker
from support import wait_for

WORKERS = textwrap.dedent(
    """
    import sys, time
    import redis
    from kiq import Kiq, Throttle, Worker, worker

    url, port = sys.argv[1], int(sys.argv[2])
    r = redis.Redis(port=port)

    class SyncUser(Worker, name="SyncUser", throttle=Throttle(concurrency=1, key=lambda user, n: f"user-{user}")):
        def perform(self, user: int, n: int) -> None:
            running = r.incr(f"running:{user}")    # enter, recorded in Redis
            r.zadd("most", {"at-once": running}, gt=True)
            time.sleep(0.04)
            r.decr(f"running:{user}")              # exit
            r.sadd("done", self.jid)

    @worker(name="Quick")
    def quick(enqueued_at: float) -> None:
        r.rpush("quick", time.time() - enqueued_at)

    app = Kiq(url, queues={"default": 10}, workers=[SyncUser, quick], poll_interval_average=0.2,
              heartbeat_interval=0.5, shutdown_timeout=5)
    app.start()
    print("started", flush=True)
    sys.stdin.readline()
    app.stop()
    """
)


def quick_latencies(r: redis.Redis) -> list[float]:
    return sorted(float(x) for x in r.lrange("quick", 0, -1))


def test_one_job_per_user_at_once_across_two_processes_and_the_queue_keeps_moving(
    redis_url: str, redis_server: Any, r: redis.Redis
) -> None:
    app = Kiq(redis_url)
    # Each user's 10 jobs one after another: the worst case for the head of the queue.
    app.enqueue_bulk(Job("SyncUser"), [[u, n] for u in range(100) for n in range(10)], sync=True)
    ps = [subprocess.Popen([sys.executable, "-c", WORKERS, redis_url, str(redis_server.port)],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        for p in ps:
            assert p.stdout is not None and p.stdout.readline().strip() == "started"
        started = time.monotonic()
        pushed = 0
        while r.scard("done") < 1000 and time.monotonic() - started < 120:
            app.enqueue(Job("Quick", [time.time()]), sync=True)  # joins the queue behind what waits there
            pushed += 1
            time.sleep(0.05)
        drained = time.monotonic() - started
        wait_for(lambda: r.llen("quick") == pushed, timeout=20, what="every quick job")
        during = quick_latencies(r)
        assert r.scard("done") == 1000, "all 1,000 complete"
        assert r.zscore("most", "at-once") == 1, "never two jobs of one user at once"
        wait_for(lambda: not r.keys("kiq:throttle|*"), what="every hold given back")
        assert r.zcard("schedule") == 0, "nothing left parked"

        # The head of the queue: 200 jobs of one user (8 s if run one by one),
        # then 20 jobs of another class, which run at once all the same.
        r.delete("quick", "done")
        app.enqueue_bulk(Job("SyncUser"), [[7, n] for n in range(200)], sync=True)
        app.enqueue_bulk(Job("Quick"), [[time.time()] for _ in range(20)], sync=True)
        wait_for(lambda: r.llen("quick") == 20, timeout=20, what="the jobs behind the throttled head")
        behind = quick_latencies(r)
        done_meanwhile = r.scard("done")
    finally:
        for p in ps:
            p.communicate("stop\n", timeout=30)
    print(f"1000 throttled jobs in {drained:.2f}s (2 processes x 10 threads, 40 ms each: 2.0 s of threads at "
          f"best); {pushed} jobs of another class pushed meanwhile waited median "
          f"{statistics.median(during) * 1000:.0f} ms, max {during[-1] * 1000:.0f} ms; behind 200 jobs of one "
          f"user: median {statistics.median(behind) * 1000:.0f} ms, max {behind[-1] * 1000:.0f} ms "
          f"({done_meanwhile} of the user's jobs ran meanwhile)")
    # Pushed meanwhile, they wait for the (runnable) jobs queued before them, never for the whole backlog.
    assert during[-1] < drained, (during, drained)
    # Behind a throttled head they do not wait for it: far less than its 8 s.
    assert behind[-1] < 2.0, behind
    assert done_meanwhile < 50, "the user's jobs still ran one at a time"


def test_a_rate_holds_by_admission_times(make_app: Any, r: redis.Redis) -> None:
    admitted: list[float] = []

    @worker(name="Partner", rate=(5, 1.0))
    def partner(n: int) -> None:
        job = current_job()
        assert job is not None and job.admitted_at is not None
        admitted.append(job.admitted_at)

    app = make_app(queues={"default": 5}, workers=[partner], poll_interval_average=0.05)
    app.enqueue_bulk(partner, [[i] for i in range(15)], sync=True)
    app.start()
    wait_for(lambda: len(admitted) == 15, timeout=30, what="every job")
    ms = sorted(round(t * 1000) for t in admitted)
    assert max(sum(1 for u in ms[i:] if u < t + 1000) for i, t in enumerate(ms)) <= 5, ms
    assert ms[-1] - ms[0] >= 2000, "15 starts at 5 per second take 2 s at least"


def test_holds_go_back_when_jobs_fail_and_keys_are_per_class(make_app: Any, r: redis.Redis) -> None:
    ran: list[str] = []

    @worker(name="Boom", retry=False, throttle=Throttle(concurrency=1))
    def boom(n: int) -> None:
        ran.append(f"boom{n}")
        raise ValueError("no")

    @worker(name="Other", throttle=Throttle(concurrency=1))
    def other(n: int) -> None:
        ran.append(f"other{n}")

    app = make_app(queues={"default": 4}, workers=[boom, other], poll_interval_average=0.05)
    app.enqueue_bulk(boom, [[i] for i in range(3)], sync=True)
    app.enqueue_bulk(other, [[i] for i in range(3)], sync=True)
    app.start()
    wait_for(lambda: len(ran) == 6, timeout=20, what="all six, one at a time per class")
    wait_for(lambda: not r.zcard("kiq:throttle|Boom|") and not r.zcard("kiq:throttle|Other|"),
             what="every hold given back")


def test_a_failing_key_function_fails_the_job_through_the_retry_path(make_app: Any, r: redis.Redis) -> None:
    def key(account: str) -> Any:
        if account == "missing":
            raise KeyError(account)
        return {"not": "a str"}

    @worker(name="BadKey", throttle=Throttle(concurrency=2, key=key))
    def bad_key(account: str) -> None:
        raise AssertionError("never runs")

    app = make_app(queues={"default": 2}, workers=[bad_key])
    app.enqueue(bad_key.new("missing"), sync=True)
    app.enqueue(bad_key.new("other"), sync=True)
    app.start()
    wait_for(lambda: r.zcard("retry") == 2, what="both failed")
    errors_seen = sorted(json.loads(m)["error_class"] + ": " + json.loads(m)["error_message"]
                         for m in r.zrange("retry", 0, -1))
    assert errors_seen == [
        "KeyError: the throttle key function raised: 'missing'",
        "kiq.errors.ConfigError: the throttle key function must return a str (or an int), not dict",
    ], errors_seen


HOLDER = textwrap.dedent(
    """
    import sys, time
    from kiq import Kiq, Throttle, worker

    @worker(name="Long", throttle=Throttle(concurrency=1, lock_timeout=2))
    def long(n: int) -> None:
        print("running", n, flush=True)
        time.sleep(600)

    app = Kiq(sys.argv[1], queues={"default": 1}, workers=[long], leader_ttl=None, orphan_check_interval=None)
    app.start()
    time.sleep(600)
    """
)


def test_a_dead_process_frees_its_throttle_after_lock_timeout(make_app: Any, redis_url: str, r: redis.Redis) -> None:
    victim = subprocess.Popen([sys.executable, "-c", HOLDER, redis_url], stdout=subprocess.PIPE, text=True)
    try:
        app = Kiq(redis_url)
        app.enqueue(Job("Long", [1]), sync=True)
        assert victim.stdout is not None and victim.stdout.readline().split() == ["running", "1"]
        os.kill(victim.pid, signal.SIGKILL)
        killed = time.time()
    finally:
        victim.kill()
        victim.wait()
        if victim.stdout is not None:
            victim.stdout.close()
    started: list[float] = []

    @worker(name="Long", throttle=Throttle(concurrency=1, lock_timeout=2))
    def long(n: int) -> None:
        started.append(time.time())

    second = make_app(queues={"default": 1}, workers=[long], poll_interval_average=0.1, leader_ttl=None,
                      orphan_check_interval=None)
    second.start()
    second.enqueue(long.new(2), sync=True)
    wait_for(lambda: started, timeout=15, what="the next job of the key")
    assert 0.5 < started[0] - killed < 6, "it waited for the dead holder's lock to expire (2 s), not longer"


def test_bad_throttles_are_refused_by_name() -> None:
    for make, message in (
        (lambda: Throttle(concurrency=0), "concurrency must be at least 1, not 0"),
        (lambda: Throttle(), "needs concurrency=N, rate=.count, period_seconds., or both"),
        (lambda: Throttle(rate=(5,)), r"rate must be \(count, period_seconds\)"),  # type: ignore[arg-type]
        (lambda: Throttle(rate=(0, 1)), "count must be at least 1, not 0"),
        (lambda: Throttle(rate=(5, -1)), "period must be a positive number of seconds"),
        (lambda: Throttle(1, key="user"), "key must be a function"),  # type: ignore[arg-type]
        (lambda: Throttle(1, lock_timeout=0.5), "lock_timeout must be at least 1 second"),
        (lambda: Throttle(1, rate=(1, 1)).with_rate((2, 1)), "give the rate once"),
    ):
        with pytest.raises(errors.ConfigError, match=message):
            make()
    with pytest.raises(errors.ConfigError, match="throttle must be a kiq.Throttle"):
        class Bad(Worker, throttle=3):  # type: ignore[arg-type]
            pass


def test_prefetch_is_refused_with_throttled_workers(make_app: Any) -> None:
    """A fetched job takes its throttle's slot: a prefetched one would hold it while it waits."""

    @worker(name="OnePerUser", throttle=Throttle(1))
    def one(user: int) -> None:
        pass

    with pytest.raises(errors.ConfigError, match=r"prefetch cannot be used with throttled workers \(OnePerUser\)"):
        make_app(workers=[one], prefetch=5).start()
    # The default, "auto", is simply off with throttles.
    app = make_app(workers=[one])
    app.start()
    app.stop(timeout=5)
    with pytest.raises(errors.ConfigError, match='prefetch must be an int >= 0 or "auto", not -1'):
        Kiq(prefetch=-1)
    with pytest.raises(errors.ConfigError, match='prefetch must be an int >= 0 or "auto", not \'fast\''):
        Kiq(prefetch="fast")  # type: ignore[arg-type]
