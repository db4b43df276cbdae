"""Capsules: several queues sharing one pool of threads, fetched in Sidekiq's
strict or weighted order; idle waits on every queue; nothing lost when a
process dies, replies are lost or a key has the wrong type."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any

import pytest
import redis

from kiq import Capsule, Job, Kiq, Throttle, current_job, worker
from kiq.errors import ConfigError
from support import wait_for


class Ran:
    """Every job run, in order, by (queue, n)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.order: list[tuple[str, int]] = []

    def add(self, queue: str, n: int) -> None:
        with self.lock:
            self.order.append((queue, n))

    def __len__(self) -> int:
        return len(self.order)


def fill(url: str, queues: dict[str, int]) -> None:
    app = Kiq(url, buffer=False)
    for q, n in queues.items():
        app.enqueue_bulk(Job("Rec", queue=q), [[q, i] for i in range(n)])


def recorder(ran: Ran, pause: float = 0.0) -> Any:
    @worker(name="Rec")
    def rec(queue: str, n: int) -> None:
        if pause:
            time.sleep(pause)
        job = current_job()
        assert job is not None and job.queue == queue, f"job {queue}/{n} ran from {job and job.queue}"
        ran.add(queue, n)

    return rec


@pytest.mark.parametrize(("prefetch", "window", "per"), [("auto", 3 + 1024, 3000), (0, 3, 200)])
def test_strict_order_empties_each_queue_before_the_next(make_app, redis_url, r, prefetch, window, per) -> None:
    ran = Ran()
    fill(redis_url, {"low": per, "mid": per, "high": per})
    app = make_app(queues=[Capsule(["high", "mid", "low"], concurrency=3)], workers=[recorder(ran)], prefetch=prefetch)
    app.start()
    wait_for(lambda: len(ran) == 3 * per, what=f"{3 * per} jobs")
    queues = [q for q, _ in ran.order]
    # A fetch takes up to the free slots from the first queue that has jobs,
    # and the process holds at most `window` jobs (3 threads, plus 1,024 with
    # the automatic prefetch of short jobs): at most that many end out of
    # order, but for a job whose thread waits for the GIL meanwhile (one per thread).
    assert queues.index("mid") >= per - window and queues.index("low") >= 2 * per - window, queues[per - 15:per + 15]
    late = [i for i, q in enumerate(queues) if q == "high" and i >= per + window]
    assert len(late) <= 3, late
    assert sorted(ran.order) == sorted((q, i) for q in ("low", "mid", "high") for i in range(per)), "each once"
    assert r.llen("queue:high") == r.llen("queue:mid") == r.llen("queue:low") == 0
    # The last results may still be on their way to Redis.
    wait_for(lambda: all(r.llen(k) == 0 for k in r.keys("kiq:wip*")), what="every result written")


def test_weighted_order_takes_queues_in_proportion_to_their_weights(make_app, redis_url, r) -> None:
    ran = Ran()
    fill(redis_url, {"a": 600, "b": 600})
    # One slot and no prefetch: each fetch takes one job, from a queue drawn by
    # weight. (With the automatic prefetch a fetch of short jobs takes up to 1,027
    # from the queue drawn: the weights then hold per fetch, not per job.)
    app = make_app(queues=[Capsule({"a": 3, "b": 1}, concurrency=1)], workers=[recorder(ran)], prefetch=0)
    app.start()
    wait_for(lambda: len(ran) == 1200, timeout=30, what="1200 jobs")
    first = [q for q, _ in ran.order[:400]]
    share = first.count("a") / len(first)
    assert 0.65 < share < 0.85, f"a ran {share:.2f} of the first 400 jobs, expected about 0.75"
    assert len(set(ran.order)) == 1200


def test_an_idle_capsule_picks_up_a_push_to_any_of_its_queues(make_app, redis_url, r) -> None:
    ran = Ran()
    rec = recorder(ran)
    app = make_app(queues=[Capsule(["q1", "q2", "q3"], concurrency=4)], workers=[rec])
    app.start()
    producer = Kiq(redis_url, buffer=False)
    time.sleep(0.3)  # every queue is empty: the fetcher waits on all three
    for k, q in enumerate(["q3", "q1", "q2", "q3"]):
        t0 = time.monotonic()
        producer.enqueue(Job("Rec", queue=q, args=[q, k]))
        wait_for(lambda k=k: len(ran) == k + 1, timeout=2, what=f"job {k} on {q} picked up")
        took = time.monotonic() - t0
        assert took < 0.5, f"pickup from {q} took {took:.3f}s"
        if k == 1:
            time.sleep(2.5)  # past the 2 s blocking wait: the waits start over
    assert [q for q, _ in ran.order] == ["q3", "q1", "q2", "q3"]
    t0 = time.monotonic()
    app.stop()
    assert time.monotonic() - t0 < 2, "every blocked wait ended at the stop"


def test_capsules_beside_single_queues_and_in_the_process_info(make_app, redis_url, r) -> None:
    ran = Ran()
    fill(redis_url, {"solo": 50, "x": 50, "y": 50})
    app = make_app(queues=[Capsule(["solo"], 2), Capsule(["x,2", "y,1"], 5)], workers=[recorder(ran)],
                   heartbeat_interval=0.2)
    app.start()
    wait_for(lambda: len(ran) == 150, what="150 jobs")
    key = f"{app.identity}"
    info = json.loads(wait_for(lambda: r.hget(key, "info"), what="the heartbeat"))
    assert info["queues"] == ["solo", "x", "y"]
    assert info["concurrency"] == 7
    assert info["capsules"]["x,y"] == {"concurrency": 5, "mode": "weighted", "weights": {"x": 2, "y": 1}}
    assert info["capsules"]["solo"]["mode"] == "strict"
    assert info["weights"] == [{"solo": 0}, {"x": 2, "y": 1}]


def test_capsule_configuration_errors_name_the_problem(make_app) -> None:
    with pytest.raises(ConfigError, match="in two capsules"):
        Kiq(queues=[Capsule(["a", "b"], 2), Capsule(["b"], 1)])
    with pytest.raises(ConfigError, match="lists a queue twice"):
        Capsule(["a", "a"], 2)
    with pytest.raises(ConfigError, match="weight"):
        Capsule({"a": -1}, 2)
    with pytest.raises(ConfigError, match="weight"):
        Capsule(["a,x"], 2)
    with pytest.raises(ConfigError, match="concurrency"):
        Capsule(["a"], 0)
    with pytest.raises(ConfigError, match="at least one queue"):
        Capsule([], 3)
    with pytest.raises(ConfigError, match="kiq.Capsule"):
        Kiq(queues=["a", "b"])  # type: ignore[list-item]
    with pytest.raises(ConfigError, match="invalid queue name"):
        make_app(queues=[Capsule(["ok", "not ok"], 2)]).start()
    c = Capsule(["a,3", "b"], 4)
    assert (c.name, c.mode, c.queues) == ("a,b", "weighted", (("a", 3), ("b", 0)))
    assert c.with_concurrency(9) == Capsule({"a": 3, "b": 0}, 9)
    assert Capsule({"a": 1, "b": 1}, 1).mode == "random"


def test_a_wrong_type_in_progress_key_holds_back_only_its_queue(make_app, redis_url, r) -> None:
    """The second queue's in-progress list is a string: the first queue's jobs
    (fetched in the same call, before the error) are still run, once; the
    second queue's jobs wait in their queue until the key is fixed."""
    ran = Ran()
    fill(redis_url, {"first": 30, "second": 30})
    app = make_app(queues=[Capsule(["first", "second"], concurrency=50)], workers=[recorder(ran)])
    wip = f"kiq:wip|{app.identity}|second"
    r.set(wip, "in the way")
    order = r.lrange("queue:second", 0, -1)
    app.start()
    wait_for(lambda: len(ran) == 30, what="the first queue's jobs")
    time.sleep(0.5)
    assert len(ran) == 30 and r.lrange("queue:second", 0, -1) == order, "the second queue's jobs stay put, in order"
    r.delete(wip)
    wait_for(lambda: len(ran) == 60, timeout=10, what="the second queue's jobs once the key is fixed")
    assert sorted(ran.order) == sorted((q, i) for q in ("first", "second") for i in range(30)), "each once"


def test_exactly_once_over_a_capsule_when_replies_are_lost(redis_server: Any, r: redis.Redis) -> None:
    """A proxy drops 10% of Redis's replies: a lost fetch reply is read back
    with each job's queue, so every job of every queue runs once."""
    from lossy_proxy import LossyProxy

    proxy = LossyProxy(redis_server.port, loss=0.10)
    counts: dict[tuple[str, int], int] = {}
    lock = threading.Lock()

    @worker(name="Rec")
    def rec(queue: str, n: int) -> None:
        with lock:
            counts[(queue, n)] = counts.get((queue, n), 0) + 1

    queues = ["c1", "c2", "c3"]
    n = 1500
    app = Kiq(proxy.url, workers=[rec], queues=[Capsule(dict.fromkeys(queues, 1), concurrency=6)],
              poll_interval_average=0.2, heartbeat_interval=0.5, shutdown_timeout=5)
    producer = Kiq(proxy.url, shutdown_timeout=5)
    app.start()
    try:
        for i in range(n):
            producer.enqueue(Job("Rec", queue=queues[i % 3], args=[queues[i % 3], i]))
            if i % 30 == 0:
                time.sleep(0.002)
        producer.flush(120)
        wait_for(lambda: len(counts) == n, timeout=120, what=f"all {n} jobs ran")
        time.sleep(1.0)
    finally:
        app.stop(5)
        proxy.close()
    dups = sum(c - 1 for c in counts.values())
    assert proxy.lost >= 10, "replies were lost"
    assert len(counts) == n and dups == 0
    assert all(r.llen(f"queue:{q}") == 0 for q in queues)
    assert int(r.get("stat:processed") or 0) == n


VICTIM = textwrap.dedent(
    """
    import sys, threading
    from kiq import Capsule, Kiq, Worker

    class Slow(Worker, name="Rec"):
        def perform(self, queue, n):
            threading.Event().wait(600)   # in this process, jobs never finish

    app = Kiq(sys.argv[1], queues=[Capsule(["k1", "k2"], concurrency=30)], workers=[Slow],
              heartbeat_interval=0.5, heartbeat_ttl=3, leader_ttl=2, orphan_check_interval=1)
    app.start()
    print(app.identity, flush=True)
    threading.Event().wait(600)
    """
)


def test_kill_9_of_a_capsule_returns_each_job_to_its_own_queue(make_app, redis_url, r) -> None:
    ran = Ran()
    fill(redis_url, {"k1": 20, "k2": 20})
    victim = subprocess.Popen([sys.executable, "-c", VICTIM, redis_url], stdout=subprocess.PIPE, text=True)
    assert victim.stdout is not None
    identity = victim.stdout.readline().strip()
    wip1, wip2 = f"kiq:wip|{identity}|k1", f"kiq:wip|{identity}|k2"
    wait_for(lambda: r.llen(wip1) + r.llen(wip2) == 30, what="30 jobs in flight in the victim")
    assert r.llen(wip1) == 20 and r.llen(wip2) == 10, "strict: k1 first"
    victim.kill()
    victim.wait()
    victim.stdout.close()
    make_app(queues=[Capsule(["k2"], 5), Capsule(["k1"], 5)], workers=[recorder(ran)], heartbeat_interval=0.5,
             leader_ttl=2, orphan_check_interval=1).start()
    wait_for(lambda: len(ran) == 40, timeout=20, what="all 40 jobs run by the rescuer")
    assert sorted(ran.order) == sorted((q, i) for q in ("k1", "k2") for i in range(20)), "each once, from its queue"
    assert not r.exists(wip1) and not r.exists(wip2)
    assert not r.keys(f"kiq:fetch*|{identity}|*"), "the dead fetcher's batch copy is gone"


def test_throttled_jobs_of_a_capsule_are_checked_per_queue_and_parked_back_to_their_own(make_app, r) -> None:
    """A throttle checked at fetch (a static key) and one checked at dispatch
    (a key function) over a capsule of two queues: never two at once per key,
    each job runs once and from the queue it was pushed to (a parked job goes
    back to its own queue through the schedule set)."""
    lock = threading.Lock()
    running: dict[str, int] = {}
    most: dict[str, int] = {}
    ran = Ran()

    def body(key: str, queue: str, n: int) -> None:
        job = current_job()
        assert job is not None and job.queue == queue, f"{queue}/{n} ran from {job and job.queue}"
        with lock:
            running[key] = running.get(key, 0) + 1
            most[key] = max(most.get(key, 0), running[key])
        time.sleep(0.01)
        with lock:
            running[key] -= 1
        ran.add(queue, n)

    @worker(name="Static", throttle=Throttle(concurrency=1))
    def static(queue: str, n: int) -> None:
        body("static", queue, n)

    @worker(name="Keyed", throttle=Throttle(concurrency=1, key=lambda queue, n: f"k{n % 2}"))
    def keyed(queue: str, n: int) -> None:
        body(f"k{n % 2}", queue, n)

    app = make_app(queues=[Capsule({"t1": 1, "t2": 1}, concurrency=6)], workers=[static, keyed],
                   poll_interval_average=0.05)
    for q in ("t1", "t2"):
        app.enqueue_bulk(Job("Static", queue=q), [[q, i] for i in range(6)], sync=True)
        app.enqueue_bulk(Job("Keyed", queue=q), [[q, 100 + i] for i in range(6)], sync=True)
    app.start()
    wait_for(lambda: len(ran) == 24, timeout=60, what="all 24 jobs")
    assert most == {"static": 1, "k0": 1, "k1": 1}, most
    expected = [(q, i) for q in ("t1", "t2") for i in [*range(6), *range(100, 106)]]
    assert sorted(ran.order) == sorted(expected), "each once"
    wait_for(lambda: r.zcard("schedule") == 0 and r.llen("queue:t1") == r.llen("queue:t2") == 0, what="nothing left")
