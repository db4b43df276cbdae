"""Nothing lost: kill -9 of a worker, Redis going away mid-flight, a crashed
enqueuer's spool, leader election, a rolling restart. Every job is counted."""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import redis

from kiq import Job, Kiq, Worker
from support import RedisServer, free_port, wait_for

VICTIM = textwrap.dedent(
    """
    import sys, threading
    from kiq import Kiq, Worker

    class Slow(Worker, name="Slow"):
        def perform(self, n):
            threading.Event().wait(600)   # in this process, jobs never finish

    app = Kiq(sys.argv[1], queues={"default": 100}, workers=[Slow], heartbeat_interval=0.5,
              heartbeat_ttl=3, leader_ttl=2, orphan_check_interval=1)
    app.start()
    print(app.identity, flush=True)
    threading.Event().wait(600)
    """
)


def start_victim(script: str, redis_url: str) -> tuple[subprocess.Popen[str], str, str]:
    """Starts a victim process; returns it, its identity and its in-progress list of ``default``."""
    victim = subprocess.Popen([sys.executable, "-c", script, redis_url], stdout=subprocess.PIPE, text=True)
    assert victim.stdout is not None
    identity = victim.stdout.readline().strip()
    return victim, identity, f"kiq:wip|{identity}|default"


def kill_and_rescue(victim: subprocess.Popen[str], make_app, worker) -> None:
    """kill -9 of the victim, then a rescuer with fast recovery settings running ``worker``."""
    victim.kill()
    victim.wait()
    assert victim.stdout is not None
    victim.stdout.close()
    make_app(queues={"default": 10}, workers=[worker], heartbeat_interval=0.5, leader_ttl=2,
             orphan_check_interval=1).start()


def test_kill_9_with_prefetched_jobs_loses_none(make_app, redis_url, r):
    """A victim with 10 threads and prefetch=40 holds 50 jobs (10 running, 40 waiting for a
    thread) when it is killed: the rescuer runs all 80, none lost."""
    done: list[int] = []
    lock = threading.Lock()

    class Slow(Worker, name="Slow"):
        def perform(self, n: int) -> None:
            with lock:
                done.append(n)

    Kiq(redis_url).enqueue_bulk(Slow, [[i] for i in range(80)], sync=True)
    script = VICTIM.replace('queues={"default": 100}', 'queues={"default": 10}, prefetch=40')
    victim, _, wip = start_victim(script, redis_url)
    wait_for(lambda: r.llen(wip) == 50, what="10 running + 40 prefetched in the victim")
    assert r.llen("queue:default") == 30
    kill_and_rescue(victim, make_app, Slow)
    wait_for(lambda: len(set(done)) == 80, timeout=20, what="all 80 jobs done")
    assert sorted(done) == list(range(80)), "each job ran once: the victim ran none"
    assert not r.exists(wip) and r.zcard("dead") == 0


def test_kill_9_with_100_jobs_in_flight(make_app, redis_url, r):
    done: list[int] = []
    lock = threading.Lock()

    class Slow(Worker, name="Slow"):
        def perform(self, n: int) -> None:
            time.sleep(0.01)
            with lock:
                done.append(n)

    Kiq(redis_url).enqueue_bulk(Slow, [[i] for i in range(150)], sync=True)
    victim, identity, wip = start_victim(VICTIM, redis_url)
    wait_for(lambda: r.llen(wip) == 100, what="100 jobs in flight in the victim")
    rescuer = make_app(queues={"default": 10}, workers=[Slow], heartbeat_interval=0.5, leader_ttl=2,
                       orphan_check_interval=1)
    rescuer.start()
    wait_for(lambda: len(done) == 50, what="the 50 jobs not in flight")
    victim.kill()
    victim.wait()
    victim.stdout.close()
    killed = time.monotonic()
    # Documented: recovered within heartbeat_ttl (3 s here, the dead process's
    # heartbeat expiring) + leader handover (leader_ttl, 2 s) + orphan_check_interval (1 s).
    wait_for(lambda: len(set(done)) == 150, timeout=20, what="all 150 jobs done")
    took = time.monotonic() - killed
    assert took < 3 + 2 + 1 + 2, f"recovery took {took:.1f}s"
    assert sorted(set(done)) == list(range(150))
    assert len(done) - 150 <= 100, "duplicates at most the in-flight jobs"
    assert not r.exists(wip) and not r.sismember("processes", identity)



SHORT_VICTIM = textwrap.dedent(
    """
    import asyncio, os, sys, threading
    from kiq import Kiq, Worker

    out = os.open(sys.argv[2], os.O_WRONLY | os.O_APPEND | os.O_CREAT)

    class Short(Worker, name="Short"):
        def perform(self, n):
            os.write(out, (self.jid + "\\n").encode())   # one unbuffered write: survives kill -9

    class ShortAsync(Worker, name="Short"):
        async def perform(self, n):
            await asyncio.sleep(0)   # it suspends once, as a real coroutine would
            os.write(out, (self.jid + "\\n").encode())

    app = Kiq(sys.argv[1], queues={"default": 10}, workers=[ShortAsync if sys.argv[3] == "async" else Short],
              heartbeat_interval=0.5,
              heartbeat_ttl=3, leader_ttl=2, orphan_check_interval=1)
    app.start()
    print(app.identity, flush=True)

    def watch():
        # The most jobs out at once (running or prefetched), for the test.
        most = 0
        while True:
            most = max(most, app._server.out(0))
            with open(sys.argv[2] + ".tmp", "w") as f:
                f.write(str(most))
            os.replace(sys.argv[2] + ".tmp", sys.argv[2] + ".out")   # never seen half written
            threading.Event().wait(0.002)

    threading.Thread(target=watch, daemon=True).start()
    threading.Event().wait(600)
    """
)


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_kill_9_mid_drain_of_short_jobs_with_the_automatic_prefetch(make_app, redis_url, r, tmp_path, kind):
    """A victim draining short jobs at the default (automatic) prefetch, so it holds more jobs
    than threads (``async def`` jobs too: held ones wait for a free slot), is killed mid-drain.
    Every job records its jid (an unbuffered write, so what ran before the kill is on disk):
    none lost, and a job runs twice only if it was in the victim's in-progress list when it died
    (ran, result not yet written)."""
    n = 20_000
    jids = Kiq(redis_url).enqueue_bulk(Job("Short"), [[i] for i in range(n)], sync=True)
    ran_file = tmp_path / "ran"
    victim = subprocess.Popen([sys.executable, "-c", SHORT_VICTIM, redis_url, str(ran_file), kind],
                              stdout=subprocess.PIPE, text=True)
    assert victim.stdout is not None
    wip = f"kiq:wip|{victim.stdout.readline().strip()}|default"
    lines = lambda: ran_file.read_text().count("\n") if ran_file.exists() else 0  # noqa: E731
    wait_for(lambda: lines() >= 3000, timeout=30, what="the victim ran 3,000 jobs")
    victim.kill()
    victim.wait()
    victim.stdout.close()
    most = int((tmp_path / "ran.out").read_text() or 0)
    assert most > 10, f"the victim prefetched (at most {most} jobs out with 10 threads)"
    in_flight = {json.loads(j)["jid"] for j in r.lrange(wip, 0, -1)}
    assert 0 < lines() < n, "killed mid-drain"
    fd = os.open(ran_file, os.O_WRONLY | os.O_APPEND)

    class Short(Worker, name="Short"):
        def perform(self, n: int) -> None:
            os.write(fd, (self.jid + "\n").encode())

    try:
        make_app(queues={"default": 10}, workers=[Short], heartbeat_interval=0.5, leader_ttl=2,
                 orphan_check_interval=1).start()
        wait_for(lambda: len(set(ran_file.read_text().split())) == n, timeout=60, what="every job ran")
        wait_for(lambda: not r.exists(wip) and r.llen("queue:default") == 0, what="queue and in-progress list empty")
    finally:
        os.close(fd)
    twice = ran_once_or_in_flight(ran_file, jids, in_flight)
    print(f"most out {most}, in flight at death {len(in_flight)}, ran twice {len(twice)}")


def ran_once_or_in_flight(ran_file: Path, jids: list[str], in_flight: set[str]) -> set[str]:
    """Checks the jids the victim and the rescuer recorded: every job ran, none three times,
    and only jobs in the victim's in-progress lists at its death twice. Returns those."""
    ran = ran_file.read_text().split()
    assert set(ran) == set(jids), "none lost"
    runs = collections.Counter(ran)
    twice = {j for j, c in runs.items() if c > 1}
    assert max(runs.values()) <= 2, "none ran three times"
    assert twice <= in_flight, "only jobs in the victim's in-progress lists at its death ran again"
    return twice


STRAGGLER_VICTIM = textwrap.dedent(
    """
    import os, sys, threading, time
    from kiq import Kiq, Worker

    out = os.open(sys.argv[2], os.O_WRONLY | os.O_APPEND | os.O_CREAT)

    class Mostly(Worker, name="Mostly"):
        def perform(self, n):
            if n % 400 == 0:
                time.sleep(0.3)   # a straggler among quick jobs: results behind it are cut past it
            os.write(out, (self.jid + "\\n").encode())

    app = Kiq(sys.argv[1], queues={f"s{k}": 3 for k in range(4)}, workers=[Mostly], heartbeat_interval=0.5,
              heartbeat_ttl=3, leader_ttl=2, orphan_check_interval=1)
    app.start()
    print(app.identity, flush=True)
    threading.Event().wait(600)
    """
)


def test_kill_9_mid_drain_with_stragglers_in_four_queues(make_app, redis_url, r, tmp_path):
    """Four queues of 3 threads each drain quick jobs with a slow one every 400, so results are
    cut off the in-progress lists past jobs still running (read and pushed back), and most of
    the time a slow one runs in each queue: a kill -9 mid-drain loses none, and only jobs in
    the victim's lists at its death run twice."""
    n, queues = 8_000, [f"s{k}" for k in range(4)]
    producer = Kiq(redis_url)
    jids = [j for q in queues for j in producer.enqueue_bulk(Job("Mostly", queue=q), [[i] for i in range(n)], sync=True)]
    ran_file = tmp_path / "ran"
    victim = subprocess.Popen([sys.executable, "-c", STRAGGLER_VICTIM, redis_url, str(ran_file)],
                              stdout=subprocess.PIPE, text=True)
    assert victim.stdout is not None
    identity = victim.stdout.readline().strip()
    wips = [f"kiq:wip|{identity}|{q}" for q in queues]
    lines = lambda: ran_file.read_text().count("\n") if ran_file.exists() else 0  # noqa: E731
    wait_for(lambda: lines() >= 6_000, timeout=60, what="the victim ran 6,000 jobs")
    victim.kill()
    victim.wait()
    victim.stdout.close()
    in_flight = {json.loads(j)["jid"] for w in wips for j in r.lrange(w, 0, -1)}
    assert 0 < lines() < 4 * n, "killed mid-drain"
    fd = os.open(ran_file, os.O_WRONLY | os.O_APPEND)

    class Mostly(Worker, name="Mostly"):
        def perform(self, n: int) -> None:
            os.write(fd, (self.jid + "\n").encode())

    try:
        make_app(queues={q: 3 for q in queues}, workers=[Mostly], heartbeat_interval=0.5, leader_ttl=2,
                 orphan_check_interval=1).start()
        wait_for(lambda: len(set(ran_file.read_text().split())) == 4 * n, timeout=60, what="every job ran")
        wait_for(lambda: not any(r.exists(w) for w in wips) and not any(r.llen(f"queue:{q}") for q in queues),
                 what="queues and in-progress lists empty")
    finally:
        os.close(fd)
    twice = ran_once_or_in_flight(ran_file, jids, in_flight)
    print(f"in flight at death {len(in_flight)}, ran twice {len(twice)}")


ASYNC_VICTIM = textwrap.dedent(
    """
    import asyncio, sys, threading
    from kiq import Kiq, Worker

    class SlowAsync(Worker, name="SlowAsync"):
        async def perform(self, n):
            await asyncio.Event().wait()   # in this process, jobs never finish

    app = Kiq(sys.argv[1], queues={"default": 20}, workers=[SlowAsync], heartbeat_interval=0.5,
              heartbeat_ttl=3, leader_ttl=2, orphan_check_interval=1)
    app.start()
    print(app.identity, flush=True)
    threading.Event().wait(600)
    """
)


def test_kill_9_with_async_jobs_in_flight(make_app, redis_url, r):
    """Async jobs handed to the loop (no thread waits for each) still count against the queue's
    concurrency until they end, and a kill -9 leaves them to the rescuer: every job runs."""
    done: list[int] = []
    lock = threading.Lock()

    class SlowAsync(Worker, name="SlowAsync"):
        async def perform(self, n: int) -> None:
            with lock:
                done.append(n)

    Kiq(redis_url).enqueue_bulk(SlowAsync, [[i] for i in range(60)], sync=True)
    victim, _, wip = start_victim(ASYNC_VICTIM, redis_url)
    wait_for(lambda: r.llen(wip) == 20, what="20 async jobs in flight in the victim")
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:  # the loop holds them all; the fetcher takes no more
        assert r.llen(wip) == 20 and r.llen("queue:default") == 40
        time.sleep(0.05)
    kill_and_rescue(victim, make_app, SlowAsync)
    wait_for(lambda: len(set(done)) == 60, timeout=20, what="all 60 jobs done")
    assert sorted(done) == list(range(60)), "each job ran once (none had run in the victim)"
    assert not r.exists(wip)


OUTAGE_WORKERS = 20


def test_redis_outage_while_enqueueing_and_processing(tmp_path: Path) -> None:
    server = RedisServer(None, "--appendonly", "yes", "--appendfsync", "always").start()
    done: set[int] = set()
    lock = threading.Lock()

    class Counted(Worker, name="Counted"):
        def perform(self, n: int) -> None:
            time.sleep(0.002)
            with lock:
                done.add(n)

    app = Kiq(server.url, queues={"default": OUTAGE_WORKERS}, workers=[Counted], heartbeat_interval=0.5,
              poll_interval_average=0.5, shutdown_timeout=10)
    try:
        app.start()
        enqueued: list[str] = []
        redis_down, redis_up, produced_while_down = threading.Event(), threading.Event(), threading.Event()

        def produce(first: int, last: int) -> None:
            for i in range(first, last):
                enqueued.append(app.enqueue(Counted.new(i)))
                if i % 100 == 0:
                    time.sleep(0.05)

        def producer_main() -> None:
            # Phases tied to the outage, not to wall-clock guesses, so a slow
            # machine cannot make the outage miss the enqueueing.
            produce(0, 3000)
            redis_down.wait(60)
            produce(3000, 7000)  # while Redis is down: must not block or fail
            produced_while_down.set()
            redis_up.wait(60)
            produce(7000, 10_000)

        producer = threading.Thread(target=producer_main)
        producer.start()
        wait_for(lambda: len(done) > 500, what="processing under way")
        client = redis.Redis(port=server.port)
        client.shutdown(save=True)  # AOF on: the data comes back, the script cache does not
        client.close()
        down = time.monotonic()
        redis_down.set()
        assert produced_while_down.wait(30), "enqueueing went on while Redis was down"
        in_memory = app.buffer_stats()
        time.sleep(max(0.0, 5 - (time.monotonic() - down)))
        server.start()
        assert time.monotonic() - down >= 5
        redis_up.set()
        producer.join(60)
        app.flush(60)
        wait_for(lambda: len(done) == 10_000, timeout=90, what="all 10,000 jobs processed")
        assert done == set(range(10_000)) and len(enqueued) == 10_000
        assert in_memory is not None and in_memory["jobs"] > 0, "jobs waited in the buffer during the outage"
        assert app.stop().requeued == 0
    finally:
        app.stop(1)
        server.close()


SPOOLER = textwrap.dedent(
    """
    import sys
    from kiq import Job, Kiq

    app = Kiq(sys.argv[1], buffer_path=sys.argv[2], spool_fsync="never")
    with open(sys.argv[3], "w") as out:
        for i in range(5000):
            out.write(app.enqueue(Job("Spooled", [i])) + "\\n")
    print("enqueued", flush=True)
    import time
    time.sleep(600)
    """
)


def test_spool_survives_kill_9_and_a_truncated_file(tmp_path: Path) -> None:
    port = free_port()
    spool = tmp_path / "spool"
    jids_file = tmp_path / "jids"
    proc = subprocess.Popen([sys.executable, "-c", SPOOLER, f"redis://127.0.0.1:{port}/0", str(spool), str(jids_file)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "enqueued"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    jids = jids_file.read_text().split()
    assert len(jids) == 5000
    # Cut the file mid-record, as a crash during a write would.
    log = spool / "spool.log"
    os.truncate(log, log.stat().st_size - 5)
    server = RedisServer(port).start()
    try:
        out = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(
                """
                import logging, sys
                from kiq import Kiq
                logging.basicConfig(level=logging.WARNING)
                app = Kiq(sys.argv[1], buffer_path=sys.argv[2])
                app.client  # opening the spool loads what it holds
                app.flush(30)
                print("flushed", flush=True)
                """), server.url, str(spool)],
            capture_output=True, text=True, timeout=60,
        )
        assert out.returncode == 0 and "flushed" in out.stdout, out.stderr
        assert "damaged or cut off" in out.stderr, out.stderr
        check = redis.Redis(port=port, decode_responses=True)
        arrived = [json.loads(p)["jid"] for p in check.lrange("queue:default", 0, -1)]
        check.close()
        assert len(arrived) == len(set(arrived)) == 4999, len(arrived)
        assert set(arrived) == set(jids[:4999]), "every intact job arrived; only the cut one is missing"
        assert list(spool.glob("spool.log.corrupt-*")), "the damaged file is kept for inspection"
    finally:
        server.close()


ELECTOR = textwrap.dedent(
    """
    import sys, time
    from kiq import Kiq

    app = Kiq(sys.argv[1], leader_ttl=1, orphan_check_interval=None, heartbeat_interval=0.5)
    app.start()
    was = False
    end = time.monotonic() + 20
    while time.monotonic() < end:
        now = app.is_leader
        if now != was:
            print("lead" if now else "follow", time.monotonic(), flush=True)
            was = now
        time.sleep(0.005)
    """
)


def test_one_leader_at_a_time_and_handover_within_the_ttl(redis_url, r) -> None:
    procs = [subprocess.Popen([sys.executable, "-c", ELECTOR, redis_url], stdout=subprocess.PIPE, text=True)
             for _ in range(3)]
    lines: list[list[tuple[str, float]]] = [[] for _ in procs]

    def read(i: int) -> None:
        assert procs[i].stdout is not None
        for line in procs[i].stdout:
            what, t = line.split()
            lines[i].append((what, float(t)))

    readers = [threading.Thread(target=read, args=(i,), daemon=True) for i in range(3)]
    for t in readers:
        t.start()
    wait_for(lambda: sum(1 for ls in lines if ls and ls[-1][0] == "lead") == 1, what="a leader")
    time.sleep(2)
    leader = next(i for i, ls in enumerate(lines) if ls and ls[-1][0] == "lead")
    procs[leader].kill()
    killed = time.monotonic()
    wait_for(lambda: any(ls and ls[-1][0] == "lead" for i, ls in enumerate(lines) if i != leader), timeout=5,
             what="a new leader")
    handover = min(t for i, ls in enumerate(lines) if i != leader for what, t in ls if what == "lead" and t > killed)
    assert handover - killed < 1.0 + 0.3, f"handover took {handover - killed:.2f}s (lease 1 s)"
    time.sleep(1)
    for p in procs:
        p.kill()
        p.wait()
        if p.stdout:
            p.stdout.close()
    # Leadership intervals of different processes never overlap.
    intervals = []
    for i, ls in enumerate(lines):
        start = None
        for what, t in ls:
            if what == "lead":
                start = t
            elif start is not None:
                intervals.append((start, t, i))
                start = None
        if start is not None:
            intervals.append((start, killed if i == leader else time.monotonic(), i))
    intervals.sort()
    for (s1, e1, p1), (s2, e2, p2) in zip(intervals, intervals[1:]):
        assert s2 >= e1 or p1 == p2, f"process {p1} led until {e1} but {p2} from {s2}"


def test_leadership_is_released_on_stop(make_app, r) -> None:
    app = make_app(leader_ttl=30)
    app.start()
    wait_for(lambda: app.is_leader, what="leadership")
    assert r.get("kiq:leader") == app.identity
    app.stop()
    assert r.get("kiq:leader") is None


def test_poison_pill_goes_to_the_dead_set(make_app, r) -> None:
    payload = json.dumps({"class": "Crashy", "args": [], "jid": "c" * 24, "retry": True, "queue": "default"})
    ran: list[int] = []

    class Crashy(Worker, name="Crashy"):
        def perform(self) -> None:
            ran.append(1)

    # Three earlier recoveries already: a fourth makes it a poison pill.
    r.hset("kiq:recoveries", "c" * 24, 3)
    r.lpush("kiq:wip|gone:1:aaaaaaaaaaaa|default", payload)
    app = make_app(workers=[Crashy], leader_ttl=2, orphan_check_interval=1)
    app.start()
    [dead] = wait_for(lambda: r.zrange("dead", 0, -1), what="the poison pill in the dead set")
    job = json.loads(dead)
    assert job["error_class"] == "kiq.errors.PoisonPillError" and "blamed for 4 process deaths" in job["error_message"]
    assert ran == [] and not r.exists("kiq:wip|gone:1:aaaaaaaaaaaa|default")


def test_rolling_restart_loses_nothing(make_app, redis_url, r) -> None:
    class Step(Worker, name="Step"):
        def perform(self, n: int) -> None:
            time.sleep(0.005)
            r.rpush("done", n)

    a = make_app(queues={"default": 10}, workers=[Step])
    Kiq(redis_url).enqueue_bulk(Step, [[i] for i in range(2000)], sync=True)
    a.start()
    wait_for(lambda: r.llen("done") > 200, what="A under way")
    b = make_app(queues={"default": 10}, workers=[Step])
    b.start()
    a.quiet()
    result = a.stop(timeout=2)
    assert result.error is None
    wait_for(lambda: len(set(r.lrange("done", 0, -1))) == 2000, timeout=60, what="all 2,000 done")
    assert sorted(int(x) for x in set(r.lrange("done", 0, -1))) == list(range(2000))
    assert r.llen("done") == 2000, "no job ran twice"
