"""Graceful stop: running jobs get their time, then everything unfinished goes
back to its queue. Counted job by job, in-process and with a real SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

from kiq import Throttle, Worker, worker
from support import wait_for


def test_stop_waits_for_running_jobs_and_requeues_the_unstarted(make_app, r):
    done: list[int] = []
    started = threading.Semaphore(0)

    class Slow(Worker, name="Slow"):
        def perform(self, n: int) -> None:
            started.release()
            time.sleep(0.3)
            done.append(n)

    app = make_app(queues={"default": 4}, workers=[Slow])
    app.enqueue_bulk(Slow, [[i] for i in range(20)])
    app.start()
    for _ in range(4):
        assert started.acquire(timeout=5)
    result = app.stop(timeout=5)
    assert result.timed_out == 0
    queued = r.lrange("queue:default", 0, -1)
    assert len(done) + len(queued) == 20, (done, result)
    assert len(done) >= 4, "running jobs were allowed to finish"
    assert r.keys("kiq:wip|*") == []
    order = [json.loads(j)["args"][0] for j in reversed(queued)]
    assert order == sorted(order), "the queue still runs oldest first"


def test_jobs_past_the_deadline_are_interrupted_and_requeued(make_app, r):
    done: list[int] = []
    interrupted: list[int] = []
    started = threading.Semaphore(0)

    class Spin(Worker, name="Spin"):
        def perform(self, n: int) -> None:
            started.release()
            try:
                end = time.monotonic() + 30
                while time.monotonic() < end:
                    time.sleep(0.01)
                done.append(n)
            except BaseException:
                interrupted.append(n)
                raise

    app = make_app(queues={"default": 3}, workers=[Spin])
    app.enqueue_bulk(Spin, [[i] for i in range(5)])
    app.start()
    # Three started (three fetched is not enough: a thread starts its job a moment after the fetch).
    for _ in range(3):
        assert started.acquire(timeout=5)
    t0 = time.monotonic()
    result = app.stop(timeout=0.3)
    assert time.monotonic() - t0 < 5
    assert sorted(interrupted) == [0, 1, 2] and done == []
    assert r.llen("queue:default") == 5, "the 3 interrupted and the 2 never fetched are all back"
    order = [json.loads(j)["args"][0] for j in reversed(r.lrange("queue:default", 0, -1))]
    assert order == [0, 1, 2, 3, 4], "requeued jobs are the next to run, oldest first"
    assert result.requeued == 3
    assert r.get("stat:failed") is None, "a stop is not a failure"


SCRIPT = textwrap.dedent(
    """
    import sys, time
    import redis
    from kiq import Kiq, Worker

    url, seconds, timeout = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
    r = redis.Redis.from_url(url)

    class Slow(Worker, name="Slow"):
        def perform(self, n):
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                time.sleep(0.01)
            r.rpush("done", n)

    app = Kiq(url, queues={"default": 5}, workers=[Slow], shutdown_timeout=timeout)
    app.enqueue_bulk(Slow, [[i] for i in range(40)])
    print("ready", flush=True)
    app.run()
    print("exited", flush=True)
    """
)


def run_and_term(redis_url: str, job_seconds: float, timeout: float) -> subprocess.CompletedProcess[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, redis_url, str(job_seconds), str(timeout)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_sigterm_with_room_to_finish(redis_url, r):
    result = run_and_term(redis_url, job_seconds=0.4, timeout=10)
    assert result.returncode == 0, result.stderr
    assert "exited" in result.stdout
    done = [int(x) for x in r.lrange("done", 0, -1)]
    queued = r.llen("queue:default")
    assert len(done) == len(set(done)), "no job ran twice"
    assert len(done) + queued == 40, (len(done), queued)
    assert len(done) >= 5 and r.keys("kiq:wip|*") == []


def test_sigterm_with_jobs_outliving_the_timeout(redis_url, r):
    result = run_and_term(redis_url, job_seconds=20, timeout=0.5)
    assert result.returncode == 0, result.stderr
    assert r.llen("done") == 0
    assert r.llen("queue:default") == 40, "every job is back in its queue"
    assert r.keys("kiq:wip|*") == []


EXIT_SCRIPT = textwrap.dedent(
    """
    import sys, time
    import redis
    from kiq import Kiq, Worker

    url, mode = sys.argv[1], sys.argv[2]
    r = redis.Redis.from_url(url)

    class Slow(Worker, name="Slow"):
        def perform(self, n):
            time.sleep(0.2)
            r.rpush("done", n)

    app = Kiq(url, queues={"default": 2}, workers=[Slow], shutdown_timeout=5)
    app.enqueue_bulk(Slow, [[i] for i in range(20)])
    app.start()
    while not r.llen("done"):
        time.sleep(0.01)
    if mode == "stop":
        app.stop()

    class Node:
        def __init__(self):
            self.me = self

    # Cyclic garbage keeps the interpreter's final collection busy past the
    # moments kiq's threads used to wake up in the core.
    junk = [Node() for _ in range(1_500_000)]
    """
)


def test_exit_after_stop_or_without_it_is_clean_and_loses_nothing(redis_url, r):
    """No kiq thread is inside the core when the interpreter finalizes (pthread_exit
    unwinding through the core's frames crashed the process), with or without stop()."""
    for mode in ("stop", "no-stop"):
        r.flushall()
        run = subprocess.run([sys.executable, "-c", EXIT_SCRIPT, redis_url, mode], capture_output=True, text=True,
                             timeout=60)
        assert run.returncode == 0, (mode, run.returncode, run.stderr[-2000:])
        done = [int(x) for x in r.lrange("done", 0, -1)]
        assert len(done) == len(set(done)) and len(done) + r.llen("queue:default") == 20, mode
        assert r.keys("kiq:wip|*") == [], "stopped at exit: nothing left in progress"


def test_a_second_signal_hands_running_jobs_back_at_once(redis_url, r):
    """Ctrl-C stops gracefully and says a second one hurries; the second hands running jobs back and exits."""
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, redis_url, "60", "30"],  # 60 s jobs, a 30 s shutdown timeout
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline().strip() == "ready"
    wait_for(lambda: sum(r.llen(k) for k in r.keys("kiq:wip|*")) == 5, what="5 jobs running")
    proc.send_signal(signal.SIGINT)
    first = proc.stderr.readline()
    assert "got SIGINT: stopping gracefully; running jobs get up to 30s" in first, first
    assert "SIGINT or SIGTERM again hands them back" in first
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert time.monotonic() - t0 < 10, "it did not wait for the 30 s timeout"
    assert "got SIGINT again: handing running jobs back to their queues now" in err
    assert r.llen("done") == 0 and r.llen("queue:default") == 40, "every job is back in its queue"
    assert r.keys("kiq:wip|*") == []


def test_prefetched_jobs_wait_in_the_process_and_a_stop_hands_them_back(make_app, r):
    """prefetch=6 with 2 threads: 8 jobs taken from the queue, 2 running; at the stop the 6 not
    started go back to the queue, in order, and every job is counted once."""
    done: list[int] = []
    started = threading.Semaphore(0)

    class Slow(Worker, name="SlowPrefetch"):
        def perform(self, n: int) -> None:
            started.release()
            time.sleep(0.3)
            done.append(n)

    app = make_app(queues={"default": 2}, workers=[Slow], prefetch=6)
    app.enqueue_bulk(Slow, [[i] for i in range(20)])
    app.start()
    for _ in range(2):
        assert started.acquire(timeout=5)
    wait_for(lambda: r.llen("queue:default") == 12, what="2 running + 6 prefetched taken from the queue")
    assert sum(r.llen(k) for k in r.keys("kiq:wip|*")) == 8
    result = app.stop(timeout=5)
    assert result.timed_out == 0
    queued = [json.loads(j)["args"][0] for j in r.lrange("queue:default", 0, -1)]
    assert sorted(done + queued) == list(range(20)), (done, queued)
    assert r.keys("kiq:wip|*") == []
    assert list(reversed(queued)) == sorted(queued), "the queue still runs oldest first"


class _HeldWatch:
    """Polls how many jobs an app's queue has out (fetched, not finished: running or waiting
    for a thread), keeping the most seen. (Its in-progress list also holds finished jobs
    until their results are written, so its length would overstate it.)"""

    def __init__(self, app) -> None:
        self.most = 0
        self._app = app
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.0005):
            server = self._app._server
            if server is not None:
                self.most = max(self.most, server.out(0))

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(5)
        return self.most


def _auto_prefetch_run(make_app, r, extra_workers=()) -> int:
    """2 threads; one job holds a thread for a while, the other thread runs 3,000 quick jobs
    (the lane learns they are short). Every job records its jid, and each must run exactly
    once. Returns the most jobs the process held at once."""
    ran: list[str] = []
    lock = threading.Lock()
    release = threading.Event()

    class Quick(Worker, name="AutoQuick"):
        def perform(self, n: int) -> None:
            with lock:
                ran.append(self.jid)
                if len(ran) == 3000:
                    release.set()

    class Hold(Worker, name="AutoHold"):
        def perform(self) -> None:
            release.wait(30)
            with lock:
                ran.append(self.jid)

    app = make_app(queues={"default": 2}, workers=[Quick, Hold, *extra_workers])
    jids = [app.enqueue(Hold.new())] + app.enqueue_bulk(Quick, [[i] for i in range(3000)])
    app.flush(10)
    watch = _HeldWatch(app)
    app.start()
    try:
        wait_for(lambda: len(ran) == 3001, timeout=60, what="every job ran")
    finally:
        most = watch.stop()
        release.set()
        app.stop(timeout=5)
    assert sorted(ran) == sorted(jids), "each job ran once"
    assert r.llen("queue:default") == 0 and r.keys("kiq:wip|*") == []
    return most


def test_auto_prefetch_holds_more_jobs_while_they_are_short_and_loses_none(make_app, r):
    """The default prefetch: with short jobs the process holds up to 2 + 1,024 jobs."""
    most = _auto_prefetch_run(make_app, r)
    assert 2 < most <= 2 + 1024, most


class _Held:
    """A process with 2 threads that learned its jobs are short (600 quick ones ran), then
    holds `n` slow ones pushed at once (all fetched, for the automatic prefetch). `ran` gets
    every job's jid as it ends; `jids` are all the jobs pushed."""

    def __init__(self, make_app, r, n: int, slow: float) -> None:
        self.ran: list[str] = []
        lock = threading.Lock()
        ran = self.ran

        class Quick(Worker, name="HeldQuick"):
            def perform(self, n: int) -> None:
                with lock:
                    ran.append(self.jid)

        class Slow(Worker, name="HeldSlow"):
            def perform(self, n: int) -> None:
                time.sleep(slow)
                with lock:
                    ran.append(self.jid)

        self.workers = [Quick, Slow]
        self.app = make_app(queues={"default": 2}, workers=self.workers)
        self.jids = self.app.enqueue_bulk(Quick, [[i] for i in range(600)])
        self.app.flush(10)
        self.app.start()
        try:
            wait_for(lambda: len(ran) == 600, timeout=30, what="the quick jobs ran")
            # One job that waited for the GIL or a CPU (this thread's polling is enough) can
            # leave the lane's average "slow" at the end: it then fetches only what its threads
            # start, which these tests do not test. More quick jobs until it holds more.
            for _ in range(20):
                if self.app._server.capacity(0) > 2:
                    break
                self.jids += self.app.enqueue_bulk(Quick, [[i] for i in range(100)])
                self.app.flush(10)
                wait_for(lambda: len(ran) == len(self.jids), timeout=30, what="more quick jobs ran")
            assert self.app._server.capacity(0) > 2, "the lane learned its jobs are short"
            self.jids += self.app.enqueue_bulk(Slow, [[i] for i in range(n)])
            self.app.flush(10)
            wait_for(lambda: r.llen("queue:default") == 0, what=f"all {n} slow jobs fetched by the process")
        except BaseException:
            self.app.stop(timeout=5)
            raise


def test_jobs_held_when_they_turn_slow_go_back_to_their_queue_for_other_processes(make_app, r):
    """Once the first of 60 held slow jobs ends, those no thread started go back to the queue,
    oldest first, where a second process takes them. Every job runs exactly once."""
    held = _Held(make_app, r, 60, 0.3)
    a, ran = held.app, held.ran
    b = None
    try:
        wait_for(lambda: r.llen("queue:default") >= 50, timeout=10, what="the held ones handed back")
        back = [json.loads(j)["args"][0] for j in r.lrange("queue:default", 0, -1)]
        assert list(reversed(back)) == sorted(back) and back[0] == 59, "oldest at the right end"
        assert a._server.out(0) <= 2 + (60 - len(back)), "no longer held"
        b = make_app(queues={"default": 10}, workers=held.workers)
        b.start()
        wait_for(lambda: len(ran) == len(held.jids), timeout=60, what="every job ran")
    finally:
        a.stop(timeout=5)
        if b is not None:
            b.stop(timeout=5)
    assert sorted(ran) == sorted(held.jids), "each job ran once"
    assert r.llen("queue:default") == 0 and r.keys("kiq:wip|*") == []


def test_auto_prefetch_is_off_for_slow_jobs_and_on_with_async_workers(make_app, r):
    """Slow jobs: only what the threads can start now is taken, as Sidekiq does. A process
    with an async worker prefetches short jobs too (held jobs wait for a slot:
    test_asyncio.py checks the concurrency holds)."""
    release = threading.Event()

    class Hold(Worker, name="AutoHoldOnly"):
        def perform(self, n: int) -> None:
            release.wait(30)

    app = make_app(queues={"default": 2}, workers=[Hold])
    app.enqueue_bulk(Hold, [[i] for i in range(10)])
    app.flush(10)
    app.start()
    try:
        wait_for(lambda: r.llen("queue:default") == 8, what="2 running")
        time.sleep(0.3)
        assert sum(r.llen(k) for k in r.keys("kiq:wip|*")) == 2
    finally:
        release.set()
        app.stop(timeout=5)
    r.delete("queue:default")

    class Later(Worker, name="AutoAsync"):
        async def perform(self) -> None:
            pass

    most = _auto_prefetch_run(make_app, r, extra_workers=[Later])
    assert 2 < most <= 2 + 1024, most


def test_auto_prefetch_is_off_with_a_throttled_worker(make_app, r):
    """A fetched job takes its throttle's slot, so a process with a throttle never holds
    more jobs than its threads, however short they are."""

    @worker(name="AutoThrottled", throttle=Throttle(1))
    def throttled(user: int) -> None:
        pass

    assert _auto_prefetch_run(make_app, r, extra_workers=[throttled]) <= 2, "no prefetch with a throttle"


def test_held_jobs_refused_back_by_redis_run_here_once(make_app, r, caplog):
    """The queue set holds the wrong type when held jobs turn slow: Redis refuses the hand-back,
    so they run in this process (said once, not retried in a loop), each exactly once."""
    # Slow enough that the first slow job ends after the key is replaced below.
    held = _Held(make_app, r, 30, 0.2)
    try:
        with caplog.at_level("ERROR", logger="kiq"):
            r.delete("queues")
            r.set("queues", "not a set")
            wait_for(lambda: len(held.ran) == len(held.jids), timeout=30, what="every job ran")
            refused = [m for m in (rec.getMessage() for rec in caplog.records) if "cannot hand" in m]
        assert len(refused) == 1 and "WRONGTYPE" in refused[0], refused
    finally:
        held.app.stop(timeout=5)
        r.delete("queues")
    assert sorted(held.ran) == sorted(held.jids), "each job ran once"
    assert r.llen("queue:default") == 0 and r.keys("kiq:wip|*") == []
