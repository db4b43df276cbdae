"""The swarm (``kiq run -p N``, ``app.run(processes=N)``) against a real
redis-server: children supervised and recovered at once, signals, phased
restarts, memory limits, hard time limits, health, one leader.

Every job records its run (``HINCRBY runs <n> 1``), so a lost job or a job run
twice shows. No process of a swarm outlives its test (``swarm_support``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from kiq import Job, Kiq, worker
from kiq.errors import ConfigError
from kiq.swarm import preloading, processes
from kiq.swarm.forksafe import problems
from kiq.swarm.health import aggregate
from support import free_port, wait_for
from swarm_support import Swarm, alive

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the swarm is Linux-only (/proc, prctl)")

#: Short intervals: heartbeats, polls and stops take tenths of seconds here.
FAST = "heartbeat_interval=0.2, poll_interval_average=0.2, shutdown_timeout=3"

NAPS = textwrap.dedent(
    f"""
    import os, time
    import redis
    from kiq import Kiq, worker

    r = redis.Redis.from_url(os.environ["REDIS_URL"])

    @worker(name="Nap")
    def nap(n: int) -> None:
        time.sleep(float(os.environ.get("NAP", "0.1")))
        r.hincrby("runs", n, 1)

    app = Kiq(queues={{"default": int(os.environ.get("CONCURRENCY", "10"))}}, workers=[nap], {FAST})
    """
)


@pytest.fixture
def swarms(tmp_path: Path, redis_url: str) -> Iterator[Callable[..., Swarm]]:
    """Starts swarms in ``tmp_path`` (``jobs.py`` there is the app); none outlives the test."""
    started: list[Swarm] = []

    def start(*args: str, target: str = "jobs:app", env: dict[str, str] | None = None,
              argv: list[str] | None = None) -> Swarm:
        s = (Swarm(tmp_path, argv, redis_url, env) if argv is not None
             else Swarm.kiq_run(tmp_path, target, redis_url, *args, env=env))
        started.append(s)
        return s

    yield start
    for s in started:
        s.close()


def write(tmp_path: Path, text: str, name: str = "jobs.py") -> None:
    (tmp_path / name).write_text(text)


def push(redis_url: str, class_name: str, args: list[list[Any]], queue: str = "default") -> None:
    Kiq(redis_url, buffer=False).enqueue_bulk(class_name, args, sync=True)


def runs(r: redis.Redis) -> dict[int, int]:
    return {int(k): int(v) for k, v in r.hgetall("runs").items()}


def pid_of(identity: str) -> int:
    return int(identity.split(":")[-2])


def wip_lists(r: redis.Redis, identity: str) -> list[str]:
    return [k for k in r.keys(f"kiq:wip|{identity}|*") if r.llen(k)]


# -- without Redis -----------------------------------------------------------------------------


def test_processes_count_and_hard_timeout_needs_a_swarm(make_app: Callable[..., Kiq]) -> None:
    assert processes(3) == 3 and processes("2") == 2
    assert processes("auto") == len(os.sched_getaffinity(0))
    for bad in (0, -1, "x", True, 1.5):
        with pytest.raises(ConfigError, match="processes must be a whole number >= 1 or \"auto\""):
            processes(bad)  # type: ignore[arg-type]

    @worker(name="Spin", hard_timeout=2)
    def spin() -> None: ...

    with pytest.raises(ConfigError, match="hard_timeout must be a positive number"):
        worker(name="Bad", hard_timeout=0)(lambda: None)
    app = make_app(workers=[spin])
    with pytest.raises(ConfigError, match=r"worker Spin sets hard_timeout.*kiq run --processes N"):
        app.start()
    assert not app.running


def test_fork_safety_names_what_runs() -> None:
    release = threading.Event()
    t = threading.Thread(target=release.wait, name="busy-thread", daemon=True)
    t.start()
    try:
        found = problems()
        assert any("'busy-thread'" in p for p in found), found
    finally:
        release.set()
        t.join()


def test_a_preload_defers_the_spool_and_a_swarm_refuses_an_app_that_opened_it(
    make_app: Callable[..., Kiq], tmp_path: Path
) -> None:
    with preloading():
        deferred = make_app(buffer_path=tmp_path / "deferred")
    assert deferred._client is None and not (tmp_path / "deferred").exists(), "the spool opens in each child"
    eager = make_app(buffer_path=tmp_path / "eager")
    with pytest.raises(ConfigError, match=r"opened its Redis client when it was built.*kiq.swarm.preloading"):
        eager.run(processes=2)  # refused before anything forks


def test_metrics_are_summed_and_per_child() -> None:
    child = textwrap.dedent(
        """\
        # HELP kiq_jobs_running Jobs running now.
        # TYPE kiq_jobs_running gauge
        kiq_jobs_running {n}
        # HELP kiq_jobs_finished_total Jobs this process finished, by outcome.
        # TYPE kiq_jobs_finished_total counter
        kiq_jobs_finished_total{{outcome="success"}} {n}
        # HELP kiq_job_running_seconds Longest.
        # TYPE kiq_job_running_seconds gauge
        kiq_job_running_seconds {n}
        """
    )
    text = aggregate({0: child.format(n=2), 1: child.format(n=5)})
    lines = text.splitlines()
    for want in ("kiq_jobs_running 7", 'kiq_jobs_finished_total{outcome="success"} 7', "kiq_job_running_seconds 5",
                 'kiq_child_jobs_running{child="0"} 2', 'kiq_child_jobs_finished_total{child="1",outcome="success"} 5',
                 "# TYPE kiq_jobs_finished_total counter", "# TYPE kiq_child_jobs_finished_total counter"):
        assert want in lines, f"{want}\n{text}"


# -- against Redis ---------------------------------------------------------------------------------


def test_cpu_bound_jobs_all_run_in_one_process_and_in_a_swarm(tmp_path: Path, redis_url: str, r: redis.Redis,
                                                              swarms: Callable[..., Swarm]) -> None:
    write(tmp_path, textwrap.dedent(
        f"""
        import os, time
        import redis
        from kiq import Kiq, worker

        r = redis.Redis.from_url(os.environ["REDIS_URL"])

        @worker(name="Burn")
        def burn(n: int) -> None:
            end = time.thread_time() + 0.005  # 5 ms of pure Python
            while time.thread_time() < end:
                pass
            r.hincrby("runs", n, 1)

        app = Kiq(queues={{"default": 4}}, workers=[burn], {FAST})
        """))
    for args in ((), ("-p", "2")):
        r.delete("runs")
        push(redis_url, "Burn", [[i] for i in range(300)])
        s = swarms(*args)
        wait_for(lambda: len(runs(r)) == 300, timeout=60, what=f"300 CPU-bound jobs run with {args}")
        assert set(runs(r).values()) == {1}
        assert s.stop() == 0
        s.assert_no_orphans()


def test_a_killed_child_is_restarted_and_its_jobs_are_back_within_seconds(
    tmp_path: Path, redis_url: str, r: redis.Redis, swarms: Callable[..., Swarm]
) -> None:
    write(tmp_path, NAPS)
    push(redis_url, "Nap", [[i] for i in range(2000)])
    s = swarms("-p", "2", env={"CONCURRENCY": "50", "NAP": "0.1"})
    s.wait_children(2)

    def busy_child() -> str | None:
        for identity in r.smembers("processes"):
            if sum(r.llen(k) for k in r.keys(f"kiq:wip|{identity}|*")) >= 50:
                return str(identity)
        return None

    victim = wait_for(busy_child, timeout=30, what="a child with 50 jobs in flight")
    in_flight = {json.loads(p)["args"][0] for k in wip_lists(r, victim) for p in r.lrange(k, 0, -1)}
    os.kill(pid_of(victim), signal.SIGKILL)
    killed_at = time.monotonic()
    wait_for(lambda: not wip_lists(r, victim), timeout=5, interval=0.01, what="the killed child's jobs back")
    back_in = time.monotonic() - killed_at
    print(f"the killed child's {len(in_flight)} jobs were back in {back_in:.2f}s")
    # Its heartbeat goes right after its jobs are back (in that order, see orphans.rs).
    wait_for(lambda: not r.sismember("processes", victim), timeout=2, interval=0.01,
             what="the dead child off the Busy page")
    wait_for(lambda: len(runs(r)) == 2000, timeout=90, what="all 2,000 jobs run")
    twice = {n for n, count in runs(r).items() if count > 1}
    assert twice <= in_flight, "only jobs that were running when the child died may run again"
    assert len(s.wait_children(2)) == 2 and pid_of(victim) not in s.children(), "the parent started a new child"
    assert s.messages("was killed by SIGKILL")
    assert s.stop() == 0
    s.assert_no_orphans()


def test_children_of_a_killed_parent_stop_gracefully(tmp_path: Path, redis_url: str, r: redis.Redis,
                                                     swarms: Callable[..., Swarm]) -> None:
    write(tmp_path, NAPS)
    push(redis_url, "Nap", [[i] for i in range(40)])
    s = swarms("-p", "2", env={"CONCURRENCY": "5", "NAP": "1"})
    kids = s.wait_children(2)
    wait_for(lambda: sum(r.llen(k) for k in r.keys("kiq:wip|*")) >= 10, timeout=30, what="both children busy")
    os.kill(s.pid, signal.SIGKILL)
    s.proc.wait(10)
    killed_at = time.monotonic()
    wait_for(lambda: not any(alive(p) for p in kids), timeout=15, what="the orphaned children stopped")
    took = time.monotonic() - killed_at
    print(f"the children stopped {took:.1f}s after their parent was killed (shutdown timeout 3s)")
    assert took < 3 + 5, "within the shutdown timeout (plus a little for the hand-back)"
    assert not r.keys("kiq:wip|*"), "every unfinished job went back to its queue"
    assert not r.smembers("processes")
    waiting = {json.loads(p)["args"][0] for p in r.lrange("queue:default", 0, -1)}
    assert set(runs(r)) | waiting == set(range(40)), "every job ran or waits in its queue"
    assert not set(runs(r)) & waiting and set(runs(r).values()) == {1}
    # Told by the parent-death signal (SIGTERM) or by their link's end, whichever came first.
    told = s.messages("the swarm's parent is gone; stopping gracefully") + s.messages("got SIGTERM: ")
    assert {m["pid"] for m in told} == kids, told
    assert {m["pid"] for m in s.messages("stopped: StopResult(")} == kids, "each stopped gracefully"
    s.assert_no_orphans()


def test_a_phased_restart_loses_nothing_keeps_capacity_and_loads_new_code(
    tmp_path: Path, redis_url: str, r: redis.Redis, swarms: Callable[..., Swarm]
) -> None:
    script = textwrap.dedent(
        f"""
        import logging, os, time
        import redis
        from kiq import Kiq, worker
        from kiq.logs import configure

        VERSION = "v1"
        r = redis.Redis.from_url(os.environ["REDIS_URL"])

        @worker(name="Tick")
        def tick(n: int) -> None:
            time.sleep(0.02)
            r.hincrby("runs", n, 1)
            r.sadd("versions", VERSION)

        app = Kiq(queues={{"default": 5}}, workers=[tick], {FAST})

        if __name__ == "__main__":
            configure(logging.INFO, json_format=True, name=None)
            app.run(processes=2)
        """
    )
    write(tmp_path, script, "tick.py")
    s = swarms(argv=["tick.py"])
    first = s.wait_children(2)
    s.wait_message("is fetching", 2)
    produced = 0
    stop = threading.Event()
    capacity: list[int] = []
    producer = Kiq(redis_url, buffer=False)

    def produce() -> None:
        nonlocal produced
        while not stop.is_set():
            producer.enqueue_bulk("Tick", [[produced + i] for i in range(10)], sync=True)
            produced += 10
            time.sleep(0.05)

    def sample() -> None:
        while not stop.is_set():
            members = r.smembers("processes")
            capacity.append(sum(1 for m in members if r.hget(m, "quiet") == "false"))
            time.sleep(0.05)

    threads = [threading.Thread(target=produce), threading.Thread(target=sample)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        write(tmp_path, script.replace('VERSION = "v1"', 'VERSION = "v2"'), "tick.py")
        s.signal(signal.SIGUSR2)
        s.wait_message("phased restart done", timeout=90)
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join()
    wait_for(lambda: len(runs(r)) == produced, timeout=30, what=f"all {produced} jobs run")
    assert set(runs(r).values()) == {1}, "each job ran exactly once"
    assert not set(range(produced)) - set(runs(r)), "none lost"
    print(f"phased restart: {produced} jobs, fewest fetching processes seen {min(capacity)} (N=2)")
    assert min(capacity) >= 1, "capacity never below N-1"
    assert r.smembers("versions") >= {"v2"}, "the new children run the new code"
    second = s.children()
    assert len(second) == 2 and not second & first, "every child was replaced"
    # Broken code: the first new child dies before it fetches, and the restart stops there.
    write(tmp_path, script.replace('VERSION = "v1"', 'raise RuntimeError("typo")'), "tick.py")
    s.signal(signal.SIGUSR2)
    s.wait_message("phased restart aborted", timeout=60)
    assert s.children() == second, "the old children keep running"
    assert s.stop() == 0
    s.assert_no_orphans()


def test_a_job_past_its_hard_timeout_kills_its_child_and_fails(tmp_path: Path, redis_url: str, r: redis.Redis,
                                                               swarms: Callable[..., Swarm]) -> None:
    write(tmp_path, NAPS + textwrap.dedent(
        """
        @worker(name="Spin", hard_timeout=1, retry=3)
        def spin() -> None:
            while True:  # never returns, never checks anything
                pass

        app.register(spin)
        """))
    push(redis_url, "Spin", [[]])
    push(redis_url, "Nap", [[0], [1]])
    s = swarms("-p", "1", env={"CONCURRENCY": "3", "NAP": "2"})
    [first] = s.wait_children(1)
    wait_for(lambda: r.zcard("retry") == 1, timeout=30, what="the spinning job in the retry set")
    [failed] = [json.loads(p) for p in r.zrange("retry", 0, -1)]
    assert failed["class"] == "Spin" and failed["error_class"] == "kiq.errors.JobTimeoutError"
    assert "hard_timeout of 1s" in failed["error_message"] and failed["retry_count"] == 0
    assert "kiq_suspect" not in failed
    wait_for(lambda: runs(r) == {0: 1, 1: 1}, timeout=30, what="the neighbours handed back and run")
    assert r.zcard("dead") == 0 and not r.hgetall("kiq:recoveries"), "nobody was blamed"
    [second] = s.wait_children(1)
    assert second != first
    assert s.messages("ran past its hard_timeout of 1s; killing child #0")
    assert s.stop() == 0
    s.assert_no_orphans()


def test_a_hard_timeout_failure_follows_the_workers_registered_options(tmp_path: Path, redis_url: str,
                                                                      r: redis.Redis,
                                                                      swarms: Callable[..., Swarm]) -> None:
    """The payload says nothing of retries (as a hand-written push may): the options the worker
    registered with the server apply, so ``retry=0`` sends the killed job straight to the dead set."""
    write(tmp_path, NAPS + textwrap.dedent(
        """
        @worker(name="Spin", hard_timeout=1, retry=0, backtrace=True)
        def spin() -> None:
            while True:
                pass

        app.register(spin)
        """))
    now = time.time()
    r.sadd("queues", "default")
    r.lpush("queue:default", json.dumps({"class": "Spin", "queue": "default", "args": [], "jid": "a" * 24,
                                         "created_at": now, "enqueued_at": now}))
    s = swarms("-p", "1", env={"CONCURRENCY": "2"})
    s.wait_children(1)
    wait_for(lambda: r.zcard("dead") == 1, timeout=30, what="the killed job in the dead set")
    [dead] = [json.loads(p) for p in r.zrange("dead", 0, -1)]
    assert dead["jid"] == "a" * 24 and dead["error_class"] == "kiq.errors.JobTimeoutError"
    assert r.zcard("retry") == 0 and r.llen("queue:default") == 0
    assert s.stop() == 0
    s.assert_no_orphans()


def test_a_batch_job_past_its_hard_timeout_dies_for_its_batch(tmp_path: Path, redis_url: str, r: redis.Redis,
                                                              swarms: Callable[..., Swarm]) -> None:
    """The job failed for its child's death counts for its batch like one that raised: death and
    complete fire (once each), so the batch does not wait forever."""
    write(tmp_path, NAPS + textwrap.dedent(
        """
        @worker(name="Spin", hard_timeout=1, retry=0)
        def spin() -> None:
            while True:
                pass

        @worker(name="Done")
        def done(status, options) -> None:
            r.rpush("callbacks", status["event"])

        app.register(spin)
        app.register(done)
        """))
    client = Kiq(redis_url, buffer=False)
    batch = client.batch(description="one spins")
    batch.on("death", "Done").on("complete", "Done").on("success", "Done")
    with batch.jobs():
        # The payload carries retry: 0 (a push by class name, as from Ruby, carries the pusher's options).
        client.enqueue_bulk(Job("Spin", retry=0), [[]], sync=True)
        client.enqueue_bulk("Nap", [[0]], sync=True)
    s = swarms("-p", "1", env={"CONCURRENCY": "3", "NAP": "0.1"})
    s.wait_children(1)
    wait_for(lambda: sorted(r.lrange("callbacks", 0, -1)) == ["complete", "death"], timeout=30,
             what="death and complete fired")
    status = client.batch_status(batch.bid)
    assert (status.total, status.pending, status.failures) == (2, 1, 1)
    assert status.dead_jids == status.failed_jids and len(status.dead_jids) == 1
    [dead] = [json.loads(p) for p in r.zrange("dead", 0, -1)]
    assert dead["class"] == "Spin" and dead["error_class"] == "kiq.errors.JobTimeoutError"
    time.sleep(0.5)  # a second firing would have arrived by now
    assert sorted(r.lrange("callbacks", 0, -1)) == ["complete", "death"] and runs(r) == {0: 1}
    assert s.stop() == 0
    s.assert_no_orphans()


def test_a_child_above_max_memory_is_replaced_new_one_first(tmp_path: Path, redis_url: str, r: redis.Redis,
                                                            swarms: Callable[..., Swarm]) -> None:
    write(tmp_path, textwrap.dedent(
        f"""
        import os, time
        import redis
        from kiq import Kiq, worker

        r = redis.Redis.from_url(os.environ["REDIS_URL"])

        @worker(name="Grow")
        def grow() -> None:
            hog = []
            for _ in range(20):  # 10 MiB every 50 ms, pages touched
                hog.append(b"x" * (10 << 20))
                time.sleep(0.05)
            time.sleep(1)  # held a while: a busy machine may sample late
            r.incr("grown")

        app = Kiq(queues={{"default": 1}}, workers=[grow], {FAST})
        """))
    s = swarms("-p", "1", "--max-memory", "150")
    [first] = s.wait_children(1)
    s.wait_message("is fetching")
    push(redis_url, "Grow", [[]])
    [seen] = s.wait_message("above --max-memory")
    mib = float(seen["message"].split(" uses ")[1].split(" MiB")[0])
    print(f"replaced at {mib:.0f} MiB (limit 150 MiB)")
    assert 150 < mib < 300, "sampled often enough not to overshoot by 2x"
    wait_for(lambda: not alive(first), timeout=30, what="the old child drained and stopped")
    assert r.get("grown") == "1", "its job finished before it stopped"
    [second] = s.wait_children(1)
    assert second != first
    # The parent logs the exit once it reaped the child, which may come just after it is gone.
    s.wait_message(f"child #0 (pid {first}) exited with status 0")
    assert s.stop() == 0
    s.assert_no_orphans()


def test_signals_and_the_web_uis_stop(tmp_path: Path, redis_url: str, r: redis.Redis,
                                      swarms: Callable[..., Swarm]) -> None:
    write(tmp_path, NAPS)
    s = swarms("-p", "2")
    s.wait_message("is fetching", 2)
    victim = wait_for(lambda: sorted(r.smembers("processes")) if r.scard("processes") == 2 else None)[0]
    r.lpush(f"{victim}-signals", "TERM")  # the Web UI's Stop on one child
    s.wait_message("stopped by itself", 1)
    s.wait_message("is fetching", 3)
    assert pid_of(victim) not in s.wait_children(2)
    s.signal(signal.SIGTTIN)
    dumps = s.wait_message("thread kiq-swarm-link", 2)
    assert len({d["pid"] for d in dumps}) == 2, "each child logs its threads"
    s.signal(signal.SIGTSTP)
    wait_for(lambda: [r.hget(m, "quiet") for m in r.smembers("processes")] == ["true", "true"], timeout=10,
             what="both children quiet")
    # A child that dies while the swarm is quiet is replaced by a quiet one.
    quiet_victim = sorted(r.smembers("processes"))[0]
    os.kill(pid_of(quiet_victim), signal.SIGKILL)
    s.wait_message("up (quiet)", 1)
    wait_for(lambda: len(m := r.smembers("processes")) == 2 and quiet_victim not in m, timeout=10,
             what="the replacement's heartbeat")
    push(redis_url, "Nap", [[1]])
    time.sleep(0.5)
    assert r.hgetall("runs") == {} and r.llen("queue:default") == 1, "a quiet swarm fetches nothing"
    assert [r.hget(m, "quiet") for m in r.smembers("processes")] == ["true", "true"]
    assert s.stop() == 0
    s.assert_no_orphans()


def test_health_one_leader_sync_and_async_workers_and_per_child_spools(
    tmp_path: Path, redis_url: str, r: redis.Redis, swarms: Callable[..., Swarm]
) -> None:
    spool = tmp_path / "spool"
    write(tmp_path, textwrap.dedent(
        f"""
        import asyncio, os, time
        import redis
        from kiq import Kiq, worker

        r = redis.Redis.from_url(os.environ["REDIS_URL"])

        @worker(name="SyncJob")
        def sync_job(n: int) -> None:
            r.hincrby("runs", n, 1)

        @worker(name="AsyncJob")
        async def async_job(n: int) -> None:
            await asyncio.sleep(0.01)
            r.hincrby("runs", n, 1)

        @worker(name="Chain")
        def chain(n: int) -> None:
            app.enqueue(sync_job.new(n + 1000))  # through this child's buffer and spool

        app = Kiq(queues={{"default": 5}}, workers=[sync_job, async_job, chain], {FAST}, leader_ttl=1,
                  orphan_check_interval=0.5, buffer_path={str(spool)!r},
                  periodics=[("* * * * *", "Beat", {{"queue": "beats"}})],
                  periodic_clock=(1_800_000_000.0, time.time(), 60.0))
        """))
    port = free_port()
    s = swarms("-p", "2", "--health", f"127.0.0.1:{port}")
    base = f"http://127.0.0.1:{port}"

    def get(path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(base + path, timeout=5) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except OSError:
            return 0, ""

    wait_for(lambda: get("/ready")[0] == 200, timeout=30, what="/ready once both children fetch")
    status, body = get("/live")
    assert status == 200 and json.loads(body)["role"] == "swarm"
    push(redis_url, "SyncJob", [[i] for i in range(10)])
    push(redis_url, "AsyncJob", [[i] for i in range(10, 20)])
    push(redis_url, "Chain", [[i] for i in range(5)])
    # A process that died long ago without a heartbeat: the leader's recovery hands its job back.
    r.rpush("kiq:wip|ghost:1:abcdefabcdef|default", json.dumps({"class": "SyncJob", "args": [99], "jid": "g" * 24,
                                                                 "retry": True, "queue": "default"}))
    want = set(range(20)) | {1000, 1001, 1002, 1003, 1004, 99}
    wait_for(lambda: set(runs(r)) == want, timeout=30, what="sync, async, chained and recovered jobs run")
    assert set(runs(r).values()) == {1}
    wait_for(lambda: r.llen("queue:beats") >= 3, timeout=30, what="three periodic minutes enqueued")
    minutes = [json.loads(p)["kiq_periodic_at"] for p in r.lrange("queue:beats", 0, -1)]
    assert len(minutes) == len(set(minutes)), "each minute enqueued once, by one leader"
    leader = r.get("kiq:leader")
    assert leader in r.smembers("processes")
    finished = 'kiq_jobs_finished_total{outcome="success"} 31'  # 10 sync, 10 async, 5 chains, 5 chained, 1 recovered
    text = wait_for(lambda: t if finished in (t := get("/metrics")[1]).splitlines() else None, timeout=15,
                    what="the children's counters summed")
    lines = text.splitlines()
    assert "kiq_leader 1" in lines, text
    assert sorted(ln.rsplit(" ", 1)[1] for ln in lines if ln.startswith("kiq_child_leader{")) == ["0", "1"], text
    assert len([ln for ln in lines if ln.startswith("kiq_swarm_child_resident_bytes{")]) == 2, text
    assert len(s.messages("recovered 1 jobs from dead processes")) == 1, "orphan recovery ran on the leader only"
    # Each child spools in its own directory; the parent opened none.
    assert sorted(p.name for p in spool.iterdir()) == ["0", "1"]
    assert (spool / "0" / "spool.log").exists() and (spool / "1" / "spool.log").exists()
    follower = next(m for m in r.smembers("processes") if m != leader)
    r.lpush(f"{follower}-signals", "TSTP")  # the Web UI's Quiet on one child
    wait_for(lambda: get("/ready")[0] == 503, timeout=15, what="/ready 503 with a quiet child")
    reason = json.loads(get("/ready")[1])["reason"]
    assert reason.startswith("1 of 2 children are fetching") and "quiet" in reason, reason
    assert s.stop() == 0
    s.assert_no_orphans()


def test_the_parent_refuses_to_fork_with_threads_and_says_why(tmp_path: Path, redis_url: str, r: redis.Redis,
                                                              swarms: Callable[..., Swarm]) -> None:
    write(tmp_path, NAPS + textwrap.dedent(
        """
        import threading
        threading.Thread(target=time.sleep, args=(600,), name="metrics-pusher", daemon=True).start()
        """), "threaded.py")
    write(tmp_path, NAPS + 'app.enqueue(nap.new(7))  # connects at import\n', "eager.py")
    env = {**os.environ, "REDIS_URL": redis_url}
    for module, said in (("threaded", "Python threads 'metrics-pusher'"),
                         ("eager", f"created its Redis client at {tmp_path / 'eager.py'}:")):
        proc = subprocess.run([sys.executable, "-m", "kiq", "run", f"{module}:app", "-p", "2"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2, proc.stderr
        assert "cannot fork the swarm's children: this process is not single-threaded" in proc.stderr
        assert said in proc.stderr and "--no-preload" in proc.stderr, proc.stderr
    # Without preload each child imports the app itself: the threads are its own.
    s = swarms("-p", "2", "--no-preload", target="threaded:app")
    push(redis_url, "Nap", [[1], [2]])
    # Job 7 too: eager.py's enqueue at import reached Redis when that refused parent exited.
    wait_for(lambda: runs(r) == {1: 1, 2: 1, 7: 1}, timeout=60, what="jobs run by fresh-interpreter children")
    assert s.stop() == 0
    s.assert_no_orphans()


def test_children_crashing_in_a_loop_are_restarted_with_backoff_and_the_bomb_buried(
    tmp_path: Path, redis_url: str, r: redis.Redis, swarms: Callable[..., Swarm]
) -> None:
    write(tmp_path, textwrap.dedent(
        f"""
        import os
        from kiq import Kiq, worker

        @worker(name="Bomb")
        def bomb() -> None:
            os._exit(3)  # as a segfault would: the whole child dies

        app = Kiq(queues={{"default": 2}}, workers=[bomb], max_recoveries=2, {FAST})
        """))
    push(redis_url, "Bomb", [[]])
    s = swarms("-p", "1")
    wait_for(lambda: r.zcard("dead") == 1, timeout=60, what="the bomb buried as a poison pill")
    [dead] = [json.loads(p) for p in r.zrange("dead", 0, -1)]
    assert dead["error_class"] == "kiq.errors.PoisonPillError" and "blamed for 3 process deaths" in dead["error_message"]
    said = [m["message"] for m in s.messages("child #0")]
    assert any("exited with status 3" in m and "starting a new one" in m and " in " not in m for m in said), said
    assert any("crashing in a loop (2 crashes" in m and "starting a new one in 1s" in m for m in said), said
    assert any("crashing in a loop (3 crashes" in m and "starting a new one in 2s" in m for m in said), said
    s.wait_children(1)
    assert s.stop() == 0
    s.assert_no_orphans()
