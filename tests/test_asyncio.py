"""async def workers on kiq's event loop, mixed with sync ones; timeouts;
cancelling at a stop; the async client."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter

import pytest

from kiq import Job, Worker, worker
from support import wait_for


def test_mixed_sync_and_async_10000_jobs_within_each_queues_limit(make_app, r):
    lock = threading.Lock()
    now: Counter[str] = Counter()
    peak: Counter[str] = Counter()
    done: Counter[str] = Counter()

    def enter(key: str) -> None:
        with lock:
            now[key] += 1
            peak[key] = max(peak[key], now[key])

    def leave(key: str) -> None:
        with lock:
            now[key] -= 1
            done[key] += 1

    @worker(name="AsyncFast", queue="fast")
    async def async_fast(n: int) -> None:
        enter("fast")
        await asyncio.sleep(0.002)
        leave("fast")

    class AsyncSlow(Worker, name="AsyncSlow", queue="slow"):
        async def perform(self, n: int) -> None:
            enter("slow")
            await asyncio.sleep(0.01)
            leave("slow")

    @worker(name="SyncFast", queue="fast")
    def sync_fast(n: int) -> None:
        enter("fast")
        time.sleep(0.001)
        leave("fast")

    app = make_app(queues={"fast": 20, "slow": 4}, workers=[async_fast, AsyncSlow, sync_fast])
    app.enqueue_bulk(async_fast, [[i] for i in range(6000)])
    app.enqueue_bulk(sync_fast, [[i] for i in range(3000)])
    app.enqueue_bulk(AsyncSlow, [[i] for i in range(1000)])
    app.start()
    wait_for(lambda: sum(done.values()) == 10_000, timeout=90, what="10,000 jobs")
    assert done == {"fast": 9000, "slow": 1000}
    print(f"peak concurrency per queue: {dict(peak)} (limits fast=20, slow=4)")
    assert peak["fast"] <= 20 and peak["slow"] <= 4, peak
    assert peak["fast"] >= 10 and peak["slow"] == 4, f"the limits were reached: {peak}"
    wait_for(lambda: r.get("stat:processed") == "10000", what="stats")


def test_async_job_past_its_timeout_is_cancelled_and_retried(make_app, r):
    cancelled = threading.Event()

    @worker(name="Sleepy", timeout=0.2, retry=1)
    async def sleepy() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    app = make_app(workers=[sleepy])
    app.enqueue(sleepy.new())
    t0 = time.monotonic()
    app.start()
    [entry] = wait_for(lambda: r.zrange("retry", 0, -1), what="a retry entry")
    assert time.monotonic() - t0 < 5 and cancelled.is_set()
    assert '"error_class":"kiq.errors.JobTimeoutError"' in entry and "timeout of 0.2s" in entry


def test_sync_job_past_its_timeout_fails_when_it_returns(make_app, r):
    @worker(name="Slow", timeout=0.1, retry=1)
    def slow() -> None:
        time.sleep(0.3)

    app = make_app(workers=[slow])
    app.enqueue(slow.new())
    app.start()
    [entry] = wait_for(lambda: r.zrange("retry", 0, -1), what="a retry entry")
    assert "kiq.errors.JobTimeoutError" in entry and "cannot be stopped" in entry


def test_async_jobs_running_at_the_stop_deadline_are_cancelled_and_requeued(make_app, r):
    started = threading.Semaphore(0)

    @worker(name="Forever")
    async def forever(n: int) -> None:
        started.release()
        await asyncio.sleep(600)

    app = make_app(queues={"default": 3}, workers=[forever])
    app.enqueue_bulk(forever, [[i] for i in range(5)])
    app.start()
    for _ in range(3):
        assert started.acquire(timeout=5)
    t0 = time.monotonic()
    result = app.stop(timeout=0.3)
    assert time.monotonic() - t0 < 5
    assert r.llen("queue:default") == 5 and result.requeued == 3
    assert r.get("stat:failed") is None


def test_the_async_client(make_app, r):
    app = make_app()

    async def main() -> list[str]:
        jid = await app.enqueue_async(Job("FromAsync", [1]))
        jids = await app.enqueue_bulk_async("FromAsync", [[2], [3]])
        await app.flush_async()
        return [jid, *jids]

    jids = asyncio.run(main())
    assert len(jids) == 3 and r.llen("queue:default") == 3


@pytest.mark.parametrize("prefetch", [200, "auto"])
def test_prefetched_async_jobs_wait_for_a_slot(make_app, r, prefetch):
    """Held (prefetched) jobs of an app of async workers start only as running ones end:
    its one thread per queue hands jobs to the loop without waiting for them, yet no
    more than the concurrency run at once, and each job runs once. With "auto", quick
    jobs first (the queue turns short and prefetches), then slow ones."""
    lock = threading.Lock()
    running, peak, seen = [0], [0], Counter()

    @worker(name="Napper")
    async def napper(n: int) -> None:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
            seen[n] += 1
        await asyncio.sleep(0.005 if n >= 0 else 0)
        with lock:
            running[0] -= 1

    app = make_app(queues={"default": 5}, workers=[napper], prefetch=prefetch)
    quick = [] if prefetch != "auto" else app.enqueue_bulk(napper, [[-1 - i] for i in range(2000)])
    jids = quick + app.enqueue_bulk(napper, [[i] for i in range(300)])
    app.start()
    wait_for(lambda: sum(seen.values()) >= len(jids) and running[0] == 0, timeout=60, what="every job ran")
    app.stop(timeout=5)
    assert peak[0] == 5, f"at most the concurrency at once, and reached: {peak[0]}"
    assert sorted(seen) == sorted(range(-len(quick), 300)) and set(seen.values()) == {1}, "each ran once"
    assert r.llen("queue:default") == 0 and r.keys("kiq:wip|*") == []
    wait_for(lambda: r.get("stat:processed") == str(len(jids)), what="stats")


def test_an_app_of_async_workers_runs_a_queues_full_concurrency_on_one_thread(make_app, r):
    """With every worker async, each queue has one thread (it only hands jobs
    to the loop): the queue still runs exactly its concurrency at once, every
    job runs once, and /ready counts one thread as the full set."""
    from test_health import probe

    lock = threading.Lock()
    running, peak, seen = [0], [0], Counter()
    gate = threading.Event()

    @worker(name="Gated")
    async def gated(n: int) -> None:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
            seen[n] += 1
        while not gate.is_set():
            await asyncio.sleep(0.005)
        with lock:
            running[0] -= 1

    app = make_app(queues={"default": 10, "other": 4}, workers=[gated], health_address="127.0.0.1:0",
                   heartbeat_interval=0.3)
    app.enqueue_bulk(gated, [[i] for i in range(30)])
    app.enqueue_bulk(Job("Gated", queue="other"), [[100 + i] for i in range(6)])
    app.start()
    try:
        assert app._threads is not None and app._threads.wanted == [1, 1]
        assert len(app._threads.threads) == 2
        wait_for(lambda: running[0] == 14, what="10 + 4 jobs running at once")
        time.sleep(0.3)
        assert running[0] == 14 and peak[0] == 14, "no more than each queue's concurrency"
        assert app.health_address is not None
        status, body = probe(app.health_address, "/ready")
        assert status == 200, body
        gate.set()
        wait_for(lambda: sum(seen.values()) == 36 and running[0] == 0, what="all 36 jobs ran")
    finally:
        gate.set()
        app.stop(5)
    assert sorted(seen) == list(range(30)) + [100 + i for i in range(6)] and set(seen.values()) == {1}
    assert r.llen("queue:default") == 0 and r.llen("queue:other") == 0


def test_a_job_cancelled_before_it_starts_leaves_no_coroutine_never_awaited() -> None:
    """After a stop's deadline the loop cancels jobs handed over before they start: their
    coroutine is never made (a warning at garbage collection otherwise)."""
    import gc
    import warnings

    from kiq.aio import AsyncRunner, clocked

    class Clock:
        def clock_start(self) -> None: ...
        def clock_stop(self) -> None: ...

    async def perform() -> None:
        await asyncio.sleep(1)

    runner = AsyncRunner()
    ended: list[BaseException | None] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            runner.stopping = True
            runner.submit(clocked(Clock(), perform), None, Clock(), lambda d, exc: ended.append(exc))
            wait_for(lambda: ended, what="the job cancelled")
            gc.collect()
        assert isinstance(ended[0], asyncio.CancelledError)
        assert not [w for w in caught if "never awaited" in str(w.message)], [str(w.message) for w in caught]
    finally:
        runner.close()
