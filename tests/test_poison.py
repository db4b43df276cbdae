"""Poison pills: the job that keeps killing its processes goes to the dead
set; the innocent jobs that happened to run beside it do not."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from typing import Any

import redis

from kiq import Job
from support import wait_for

VICTIM = textwrap.dedent(
    """
    import os, sys, time
    import redis
    from kiq import Kiq, worker

    r = redis.Redis.from_url(sys.argv[1])

    @worker(name="Bomb")
    def bomb(*_: object) -> None:
        os._exit(1)  # kills the whole process, as a segfault or an OOM kill would

    @worker(name="Innocent")
    def innocent(n: int) -> None:
        time.sleep(float(sys.argv[2]))
        r.rpush("done", n)

    app = Kiq(sys.argv[1], queues={"default": 6}, workers=[bomb, innocent], heartbeat_interval=0.3,
              heartbeat_ttl=1.5, leader_ttl=None, orphan_check_interval=None)
    app.start()
    time.sleep(120)
    """
)


def crash_loop(redis_url: str, r: redis.Redis, done: Any, innocent_seconds: float, most: int) -> int:
    """Runs victim processes one after another (a supervisor restarting a crashing
    service) until `done()`; returns how many died."""
    deaths = 0
    for _ in range(most):
        victim = subprocess.Popen([sys.executable, "-c", VICTIM, redis_url, str(innocent_seconds)])
        try:
            while victim.poll() is None and not done():
                time.sleep(0.05)
        finally:
            if victim.poll() is None:
                victim.kill()
            victim.wait()
        if done():
            return deaths
        deaths += 1
        # The rescuer hands the dead victim's jobs back once its heartbeat expires.
        wait_for(lambda: not [k for k in r.keys("kiq:wip|*") if r.llen(k)], timeout=15,
                 what="the dead victim's jobs handed back")
    return deaths


def test_the_bomb_is_buried_and_its_neighbours_run(make_app: Any, redis_url: str, r: redis.Redis) -> None:
    r.lpush("queue:default", json.dumps({"class": "Bomb", "args": [], "jid": "b" * 24, "retry": True,
                                         "queue": "default"}))
    for i in range(5):
        r.lpush("queue:default", json.dumps({"class": "Innocent", "args": [i], "jid": f"{i:024d}", "retry": True,
                                             "queue": "default"}))
    r.sadd("queues", "default")
    rescuer = make_app(queues={"elsewhere": 1}, heartbeat_interval=0.3, leader_ttl=1, orphan_check_interval=0.3)
    rescuer.start()

    def done() -> bool:
        return r.zcard("dead") == 1 and len(set(r.lrange("done", 0, -1))) == 5

    deaths = crash_loop(redis_url, r, done, 0.5, 12)
    [dead] = r.zrange("dead", 0, -1)
    job = json.loads(dead)
    assert job["jid"] == "b" * 24 and job["error_class"] == "kiq.errors.PoisonPillError"
    assert "blamed for 4 process deaths" in job["error_message"] and "nothing else running" in job["error_message"]
    assert "kiq_suspect" not in job
    assert sorted(set(int(n) for n in r.lrange("done", 0, -1))) == [0, 1, 2, 3, 4], "every innocent ran"
    assert deaths == 5, f"one death with everyone in flight, then four of the bomb alone ({deaths})"
    assert r.llen("queue:default") == 0 and r.zcard("retry") == 0
    assert r.hgetall("kiq:recoveries") == {}, "innocents are never blamed; the buried bomb's count is gone"


def test_a_bomb_without_a_jid_is_caught_by_its_digest(make_app: Any, redis_url: str, r: redis.Redis) -> None:
    r.lpush("queue:default", json.dumps({"class": "Bomb", "args": ["no jid"], "queue": "default"}))
    r.lpush("queue:default", json.dumps({"class": "Innocent", "args": [7], "jid": "i" * 24, "queue": "default"}))
    r.sadd("queues", "default")
    rescuer = make_app(queues={"elsewhere": 1}, heartbeat_interval=0.3, leader_ttl=1, orphan_check_interval=0.3,
                       max_recoveries=1)
    rescuer.start()

    def done() -> bool:
        return r.zcard("dead") == 1 and r.llen("done") >= 1

    deaths = crash_loop(redis_url, r, done, 0.2, 8)
    [dead] = r.zrange("dead", 0, -1)
    assert json.loads(dead)["args"] == ["no jid"]
    assert json.loads(dead)["error_class"] == "kiq.errors.PoisonPillError"
    assert r.lrange("done", 0, -1) == ["7"]
    assert deaths == 3, deaths


def test_a_buried_batch_job_dies_for_its_batch(make_app: Any, redis_url: str, r: redis.Redis) -> None:
    """Burying a poison pill counts as its death for its batch, in the same step: death and
    complete fire once, so the batch does not wait forever for a job that will never end."""
    app = make_app(queues={"elsewhere": 1}, heartbeat_interval=0.3, leader_ttl=1, orphan_check_interval=0.3,
                   max_recoveries=1)
    batch = app.batch(description="with a bomb", callback_queue="callbacks")
    batch.on("death", "Cb").on("complete", "Cb").on("success", "Cb")
    with batch.jobs():
        app.enqueue(Job("Bomb", ["in a batch"]), sync=True)
        app.enqueue(Job("Innocent", [7]), sync=True)
    app.start()

    def done() -> bool:  # the innocent's success written too (not only run), so no victim is left to run it
        return r.zcard("dead") == 1 and r.scard(f"kiq:batch|{batch.bid}|done") == 1

    deaths = crash_loop(redis_url, r, done, 0.2, 8)
    assert deaths == 3, deaths
    wait_for(lambda: r.llen("queue:callbacks") == 2, timeout=10, what="death and complete callbacks")
    events = sorted(json.loads(p)["kiq_callback"] for p in r.lrange("queue:callbacks", 0, -1))
    assert events == ["complete", "death"]
    status = app.batch_status(batch.bid)
    [dead] = r.zrange("dead", 0, -1)
    assert (status.total, status.pending, status.failures) == (2, 1, 1)
    assert status.dead_jids == [json.loads(dead)["jid"]]
    # At least once: it runs again if a death beat the write of its success.
    assert set(r.lrange("done", 0, -1)) == {"7"}


HOG = textwrap.dedent(
    """
    import resource, sys, time
    from kiq import Kiq, worker

    @worker(name="Hog")
    def hog() -> None:
        chunks = []
        while True:  # 200 MB/s, until the process is recycled
            chunks.append(bytearray(10 << 20))
            time.sleep(0.05)

    app = Kiq(sys.argv[1], queues={"default": 2}, workers=[hog], max_memory_bytes=300 << 20,
              shutdown_timeout=0.5, heartbeat_interval=0.3, leader_ttl=1, orphan_check_interval=0.3,
              max_recoveries=1)
    app.run()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, flush=True)
    """
)


def test_a_job_that_blows_the_memory_limit_every_time_is_a_poison_pill(redis_url: str, r: redis.Redis) -> None:
    r.lpush("queue:default", json.dumps({"class": "Hog", "args": [], "jid": "h" * 24, "queue": "default"}))
    r.sadd("queues", "default")
    peaks = []
    for _ in range(4):
        proc = subprocess.run([sys.executable, "-c", HOG, redis_url], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        peaks.append(int(proc.stdout.split()[-1]) // 1024)
        if r.zcard("dead"):
            break
    [dead] = r.zrange("dead", 0, -1)
    job = json.loads(dead)
    assert job["error_class"] == "kiq.errors.PoisonPillError" and "recycled for memory" in job["error_message"]
    assert len(peaks) == 2, f"buried after the second recycle blamed on it: peaks {peaks} MB"
    assert max(peaks) < 600, f"resident memory is checked often: peaks {peaks} MB against a 300 MB limit"
    print(f"memory recycles: peak RSS {peaks} MB with a 300 MB limit")
