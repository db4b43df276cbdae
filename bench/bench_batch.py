"""What batches cost.

    python bench/bench_batch.py [--jobs 200000] [--create 100000] [--runs 3]

1. Creating a batch of ``--create`` no-op jobs: the time from ``app.batch()``
   to the end of its ``jobs()`` block (jobs staged in chunks of 10,000, then
   moved to the queue in steps), with one ``enqueue_bulk`` per 10,000 jobs
   and with one ``enqueue`` per job; next to a plain ``enqueue_bulk`` of the
   same jobs flushed to Redis.
2. The drain of ``--jobs`` no-op jobs by one process (concurrency 25) in one
   batch (with a success callback) against the same jobs without a batch,
   runs interleaved so the machine's noise hits both alike; median of the
   runs. A batch job's result also updates its batch in the same script call.

Uses $REDIS_URL if set, else a throwaway redis-server. Reported here, never
asserted in tests.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import threading
import time
from collections.abc import Iterator
from typing import Any

import redis

from kiq import BatchStatus, Job, Kiq, worker
from kiq.demo import throwaway_redis

CHUNK = 10_000


@worker(name="NoopJob")
def noop_job(i: int) -> None:
    """What the create benchmark enqueues (never run there)."""


def create(url: str, n: int, mode: str) -> float:
    """Seconds to get ``n`` jobs into Redis: in a batch (bulk or one by one) or plainly (bulk)."""
    redis.Redis.from_url(url).flushdb()
    app = Kiq(url)
    template = Job("NoopJob")
    start = time.perf_counter()
    if mode == "plain bulk":
        for at in range(0, n, CHUNK):
            app.enqueue_bulk(template, ([i] for i in range(at, min(at + CHUNK, n))))
        app.flush()
    elif mode == "plain, one enqueue per job":
        for i in range(n):
            app.enqueue(noop_job.new(i))
        app.flush()
    else:
        batch = app.batch(description="bench")
        batch.on("success", "BatchDone")
        with batch.jobs():
            if mode == "batch, bulk":
                for at in range(0, n, CHUNK):
                    app.enqueue_bulk(template, ([i] for i in range(at, min(at + CHUNK, n))))
            else:
                for i in range(n):
                    app.enqueue(noop_job.new(i))
    took = time.perf_counter() - start
    assert redis.Redis.from_url(url).llen("queue:default") == n
    return took


def drain(url: str, n: int, batched: bool) -> float:
    r = redis.Redis.from_url(url)
    r.flushdb()
    state = {"count": 0, "first": 0.0, "last": 0.0}
    done = threading.Event()
    finished = threading.Event()
    lock = threading.Lock()

    @worker(name="NoopJob")
    def noop(i: int) -> None:
        with lock:
            state["count"] += 1
            c = state["count"]
        if c == 1:
            state["first"] = time.perf_counter()
        elif c == n:
            state["last"] = time.perf_counter()
            done.set()

    @worker(name="BatchDone")
    def batch_done(status: BatchStatus, options: dict[str, Any]) -> None:
        assert status.total == n and status.pending == 0
        finished.set()

    app = Kiq(url, queues={"default": 25}, workers=[noop, batch_done])
    template = Job("NoopJob")
    with app.batch().on("success", batch_done).jobs() if batched else contextlib.nullcontext():
        for at in range(0, n, CHUNK):
            app.enqueue_bulk(template, ([i] for i in range(at, min(at + CHUNK, n))))
    app.flush()
    app.start()
    if not done.wait(600) or (batched and not finished.wait(60)):
        raise SystemExit(f"only {state['count']} of {n} jobs ran")
    app.stop()
    return n / (state["last"] - state["first"])


@contextlib.contextmanager
def redis_url() -> Iterator[str]:
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
    else:
        with throwaway_redis() as url:
            yield url


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=200_000)
    p.add_argument("--create", type=int, default=100_000)
    p.add_argument("--runs", type=int, default=3)
    ns = p.parse_args()
    with redis_url() as url:
        modes = ("batch, bulk", "plain bulk", "batch, one enqueue per job", "plain, one enqueue per job")
        took: dict[str, list[float]] = {m: [] for m in modes}
        for _ in range(ns.runs):
            for mode in modes:
                took[mode].append(create(url, ns.create, mode))
        print(f"| create {ns.create:,} jobs | median s | best s |  (median of {ns.runs})\n|---|---|---|")
        for mode in modes:
            print(f"| {mode} | {statistics.median(took[mode]):.3f} | {min(took[mode]):.3f} |")
        print()
        rates: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(ns.runs):
            for batched in (False, True):
                rates[batched].append(drain(url, ns.jobs, batched))
    plain, batched = statistics.median(rates[False]), statistics.median(rates[True])
    print(f"| drain {ns.jobs:,} no-op jobs | jobs/s (median of {ns.runs}) | runs |\n|---|---|---|")
    print(f"| without a batch | {plain:,.0f} | {', '.join(f'{x:,.0f}' for x in rates[False])} |")
    print(f"| in one batch | {batched:,.0f} | {', '.join(f'{x:,.0f}' for x in rates[True])} |")
    print(f"\nbatched / plain: {batched / plain:.2f}")


if __name__ == "__main__":
    main()
