"""The minimal ACL kiq documents (kiq.acl) is enough: a producer, a worker
process (retries, the dead set, the scheduler, leader election, periodic jobs,
recovery of a killed process's jobs) and the admin reads and actions of
kiq.api, all run under exactly those commands, and Redis denies nothing."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from typing import Any

import redis

from kiq import Job, Kiq, Throttle, acl, errors, worker
from kiq.api import Api
from support import RedisServer, wait_for

VICTIM = textwrap.dedent(
    """
    import sys, threading
    from kiq import Kiq, worker

    @worker(name="Slow")
    def slow(n: int) -> None:
        threading.Event().wait(600)

    app = Kiq(sys.argv[1], queues={"slow": 5}, workers=[slow], heartbeat_interval=0.3, heartbeat_ttl=1.5,
              leader_ttl=None, orphan_check_interval=None)
    app.start()
    print(app.identity, flush=True)
    threading.Event().wait(600)
    """
)


def workload(url: str, r: redis.Redis) -> None:
    """Everything kiq does to Redis, as three roles would do it."""
    ran: list[Any] = []

    @worker(name="Ok")
    def ok(n: int) -> None:
        ran.append(n)

    @worker(name="Cb")
    def cb(status: dict[str, Any], options: dict[str, Any]) -> None:
        ran.append(("cb", options["n"]))

    @worker(name="Fails", retry=1)
    def fails(n: int) -> None:
        raise ValueError("no")

    @worker(name="Slow")
    def slow(n: int) -> None:
        ran.append(("slow", n))

    @worker(name="Throttled", throttle=Throttle(concurrency=1, key=lambda n: f"k{n % 2}"), rate=(50, 1))
    def throttled(n: int) -> None:
        time.sleep(0.01)
        ran.append(("throttled", n))

    @worker(name="Overrated")
    def overrated(n: int) -> None:
        ran.append(("overrated", n))
        raise errors.OverLimit("rescheduled, not failed")

    # Producer: buffered, synchronous, bulk, scheduled, unique, expiring.
    producer = Kiq(url)
    producer.enqueue(ok.new(1))
    producer.enqueue(ok.new(2), sync=True)
    producer.enqueue_bulk(ok, [[3], [4]])
    producer.enqueue(ok.new(5), delay=0.2)
    producer.enqueue(Job("Ok", [6], unique_for=60))
    producer.enqueue(Job("Ok", [7], expires_in=60))
    producer.enqueue(fails.new(8))
    producer.enqueue_bulk(throttled, [[i] for i in range(6)])
    producer.enqueue(overrated.new(1))
    producer.flush(5)
    # Batches: a nested batch with callbacks, a block that staged a chunk and raised, a reopen.
    batch = producer.batch(description="acl")
    batch.on("success", cb, {"n": 20}).on("complete", "Cb", {"n": 21})
    with batch.jobs():
        producer.enqueue(ok.new(11))
        child = producer.batch()
        child.on("success", cb, {"n": 22})
        with child.jobs():
            producer.enqueue_bulk(ok, [[12], [13]])
    try:
        with producer.batch().jobs():
            producer.enqueue_bulk(ok, [[0]] * 10_001)
            raise KeyError("staged, then dropped")
    except KeyError:
        pass
    with producer.batch(batch.bid).jobs():
        producer.enqueue(ok.new(14))
    assert batch.valid

    # Rate limiters, as a web request uses them: a waiter woken by a release, each kind, OverLimit.
    lim = producer.limiter.concurrent("acl-c", 1, wait_timeout=5)
    got: list[float] = []

    def wait_for_slot() -> None:
        with lim.within_limit() as hold:
            got.append(hold.acquired_at or 0.0)

    with lim.within_limit():
        waiter = threading.Thread(target=wait_for_slot)
        waiter.start()
        time.sleep(0.2)
    waiter.join(5)
    assert got, "the waiter got the slot"
    for lim in (producer.limiter.bucket("acl-b", 5, "second"), producer.limiter.window("acl-w", 5, 1),
                producer.limiter.leaky("acl-l", 5, 1), producer.limiter.points("acl-p", 5, 1)):
        with lim.within_limit():
            pass
    try:
        with producer.limiter.window("acl-w", 1, 60, wait_timeout=0).within_limit(), \
                producer.limiter.window("acl-w", 1, 60, wait_timeout=0).within_limit():
            pass
    except errors.OverLimit:
        pass

    # A process killed with jobs in flight, recovered by the worker below.
    victim = subprocess.Popen([sys.executable, "-c", VICTIM, url], stdout=subprocess.PIPE, text=True)
    assert victim.stdout is not None
    victim.stdout.readline()
    Kiq(url).enqueue_bulk(Job("Slow", queue="slow"), [[i] for i in range(3)], sync=True)
    wait_for(lambda: any(r.llen(k) == 3 for k in r.keys("kiq:wip|*")), what="the victim holding three jobs")
    victim.kill()
    victim.wait()
    victim.stdout.close()

    # Worker process: leader, scheduler, periodic job, recovery, retries, dead set, cancel.
    app = Kiq(url, queues={"default": 5, "slow": 1}, workers=[ok, fails, slow, cb, throttled, overrated],
              heartbeat_interval=0.3,
              poll_interval_average=0.1, leader_ttl=1, orphan_check_interval=0.3, max_retries=1,
              periodics=[("* * * * *", ok, {"args": [99]})], periodic_clock=(time.time() - 61, time.time(), 1.0),
              health_address="127.0.0.1:0", max_memory_bytes=1 << 40)
    app.start()
    try:
        wait_for(lambda: {1, 2, 3, 4, 5, 6, 7} <= set(ran), timeout=20, what="the producer's jobs")
        batch.wait(20)
        wait_for(lambda: {("cb", 20), ("cb", 21), ("cb", 22)} <= set(ran), timeout=20, what="the batch callbacks")
        wait_for(lambda: {("slow", i) for i in range(3)} <= set(ran), timeout=20, what="the recovered jobs")
        wait_for(lambda: 99 in ran, timeout=20, what="the periodic job")
        wait_for(lambda: {("throttled", i) for i in range(6)} <= set(ran), timeout=20, what="the throttled jobs")
        wait_for(lambda: ("overrated", 1) in ran and r.zcard("schedule") >= 1, timeout=20, what="a reschedule")
        metrics = urllib.request.urlopen(f"http://{app.health_address}/metrics", timeout=5).read().decode()
        assert 'kiq_limiter_capacity{kind="concurrent",name="acl-c"} 1' in metrics
        # Admin: what the CLI, kiq.api and the dashboards read and do.
        api = Api(url)
        api.stats()
        [q.size() and q.latency() for q in api.queues()]
        api.work()
        assert {s.name for s in api.limiters()} >= {"acl-c", "acl-b", "acl-w", "acl-l", "acl-p"}
        [p.quiet_down() for p in api.processes() if False]  # noqa: SIM115 - the signal below is enough
        for p in api.processes():
            p.dump_threads()
        producer.enqueue(fails.new(9), sync=True)
        wait_for(lambda: api.retries.size() >= 1, timeout=20, what="a retry")
        jid = api.retries.jobs()[0].jid
        api.retries.retry(jid)
        wait_for(lambda: api.dead.size() >= 1, timeout=30, what="a dead job")
        dead = api.dead.jobs()[0].jid
        api.dead.retry(dead)
        producer.enqueue(ok.new(10), delay=600, sync=True)
        sched = api.scheduled.jobs()[0].jid
        api.scheduled.kill(sched)
        api.dead.delete(sched)
        api.cancel("f" * 24)
        api.queue("default").jobs()
        # The dashboard's reads and actions.
        adm = api.admin
        adm.summary()
        adm.redis_info()
        adm.history(7)
        adm.metrics(60)
        adm.processes()
        adm.window("dead", 0, 10)
        adm.search("dead", 0, 10, 1000, class_name="Fails")
        adm.act_all("dead", "delete", class_name="Nothing")
        adm.queue_clear("nothing")
        api.batches()
        api.batch(batch.bid)
        batch.invalidate()
    finally:
        app.stop(5)


def test_the_documented_acl_is_enough_and_redis_denies_nothing() -> None:
    server = RedisServer().start()
    try:
        admin = redis.Redis(port=server.port, decode_responses=True)
        admin.execute_command("ACL", "SETUSER", "kiq", *acl.rules("secret"))
        url = f"redis://kiq:secret@127.0.0.1:{server.port}/0"
        admin.execute_command("CONFIG", "RESETSTAT")
        workload(url, admin)
        denied = admin.execute_command("ACL", "LOG")
        assert denied == [], f"Redis denied kiq commands: {denied}"
        used = {k.removeprefix("cmdstat_") for k in admin.info("commandstats")}
        tests_own = {"auth", "hello", "client|setinfo", "select", "acl|setuser", "acl|log", "config|resetstat", "keys", "info", "llen", "lrange", "zcard",
                     "zrange", "get", "hgetall", "lpush", "sadd", "flushall"}
        assert used - set(acl.COMMANDS) - tests_own == set(), "every command kiq sent is documented"
    finally:
        server.close()


def test_a_workload_without_a_recovery_command_fails_loudly() -> None:
    """The orphan check needs LRANGE; an ACL without it is denied (ACL LOG),
    and kiq logs the failure instead of skipping recovery silently."""
    server = RedisServer().start()
    try:
        admin = redis.Redis(port=server.port, decode_responses=True)
        rules = [r for r in acl.rules("secret", roles=["worker"]) if r != "+lrange"]
        admin.execute_command("ACL", "SETUSER", "kiq", *rules)
        url = f"redis://kiq:secret@127.0.0.1:{server.port}/0"
        admin.lpush("kiq:wip|gone:1:aaaaaaaaaaaa|default", json.dumps({"class": "X", "args": [], "jid": "x" * 24}))
        app = Kiq(url, queues={"other": 1}, leader_ttl=1, orphan_check_interval=0.3, heartbeat_interval=0.3)
        app.start()
        try:
            wait_for(lambda: any(e.get("object") == "lrange" for e in _log(admin)), what="the denied LRANGE")
        finally:
            app.stop(2)
        assert admin.llen("kiq:wip|gone:1:aaaaaaaaaaaa|default") == 1, "not recovered, and not lost"
    finally:
        server.close()


def _log(admin: redis.Redis) -> list[dict[str, Any]]:
    out = []
    for entry in admin.execute_command("ACL", "LOG"):
        if isinstance(entry, dict):
            out.append(entry)
        else:
            out.append(dict(zip(entry[::2], entry[1::2])))
    return out


def test_an_older_acl_without_transactions_still_pushes_every_job_once(caplog: Any) -> None:
    """A producer ACL from before kiq pushed batches as a transaction (no
    MULTI, EXEC or EVAL): the first batch is refused up front, kiq says so once
    and pushes through push.lua from then on; every job lands once."""
    server = RedisServer().start()
    try:
        admin = redis.Redis(port=server.port, decode_responses=True)
        rules = [r for r in acl.rules("secret", roles=["producer"]) if r not in ("+multi", "+exec", "+eval")]
        admin.execute_command("ACL", "SETUSER", "kiq", *rules)
        url = f"redis://kiq:secret@127.0.0.1:{server.port}/0"
        app = Kiq(url)
        try:
            with caplog.at_level("WARNING", logger="kiq"):
                for start in range(0, 30_000, 10_000):
                    app.enqueue_bulk("Noop", [[i] for i in range(start, start + 10_000)])
                    app.flush(30)
        finally:
            app.stop(5)
        args = [json.loads(p)["args"][0] for p in admin.lrange("queue:default", 0, -1)]
        assert sorted(args) == list(range(30_000)), "every job once"
        warned = [r for r in caplog.records if "Redis refuses the transaction" in r.getMessage()]
        assert len(warned) == 1, [r.getMessage() for r in caplog.records]
        assert not [r for r in caplog.records if r.levelname == "ERROR"], "a refused fast path is no push failure"
    finally:
        server.close()
