"""What rate limiters and throttles cost.

    python bench/bench_limiter.py [--seconds 3] [--jobs 50000] [--runs 3]

1. Limiter acquire + release pairs per second from one process: a concurrent
   limiter too large to bind, ``with lim.within_limit(): pass`` in 1 to 16
   threads, and ``async with`` in 64 tasks on one event loop; a bucket
   limiter's acquires (no release). Redis commands are counted around each
   run (``INFO commandstats``): each acquire and each release is one
   ``EVALSHA``.
2. The drain of N no-op jobs by one process (concurrency 25): unthrottled,
   with a throttle that never binds (``concurrency=1000`` class-wide: checked
   in the core only), and with a key function (``key=lambda n: ...``: one
   Python call per job), runs interleaved so the machine's noise hits all
   alike; median of the runs.

Uses $REDIS_URL if set, else a throwaway redis-server. Reported here, never
asserted in tests.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import threading
import time
from typing import Any

import redis

from bench_encryption import redis_url  # $REDIS_URL, else a throwaway redis-server
from kiq import Job, Kiq, Throttle, worker
from kiq.limiter import Limiter


def evalsha_calls(r: redis.Redis) -> int:
    stats: dict[str, Any] = r.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


def redis_cpu(r: redis.Redis) -> float:
    cpu: dict[str, Any] = r.info("cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


def process_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def pairs_in_threads(lim: Limiter, threads: int, seconds: float) -> int:
    counts = [0] * threads
    deadline = time.monotonic() + seconds

    def run(i: int) -> None:
        n = 0
        while time.monotonic() < deadline:
            with lim.within_limit():
                pass
            n += 1
        counts[i] = n

    ts = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return sum(counts)


def pairs_in_tasks(lim: Limiter, tasks: int, seconds: float) -> int:
    async def main() -> int:
        deadline = time.monotonic() + seconds
        total = 0

        async def run() -> None:
            nonlocal total
            while time.monotonic() < deadline:
                async with lim.within_limit():
                    pass
                total += 1

        await asyncio.gather(*(run() for _ in range(tasks)))
        return total

    return asyncio.run(main())


def limiter_rates(url: str, seconds: float) -> None:
    r = redis.Redis.from_url(url)
    app = Kiq(url, pool_size=8)
    big = app.limiter.concurrent("bench-c", 1_000_000)
    bucket = app.limiter.bucket("bench-b", 1_000_000_000, "day")
    print("| limiter, caller | pairs/s (acquire + release) | EVALSHA per pair | process CPU µs/pair "
          "| Redis CPU µs/pair |\n|---|---|---|---|---|")
    for label, run in (
        *((f"concurrent, {n} thread{'s' if n > 1 else ''}", lambda n=n: pairs_in_threads(big, n, seconds))
          for n in (1, 4, 8, 16)),
        ("concurrent, 64 asyncio tasks", lambda: pairs_in_tasks(big, 64, seconds)),
        ("bucket (acquire only), 8 threads", lambda: pairs_in_threads(bucket, 8, seconds)),
    ):
        before, cpu0, rcpu0 = evalsha_calls(r), process_cpu(), redis_cpu(r)
        n = max(run(), 1)
        calls, cpu, rcpu = evalsha_calls(r) - before, process_cpu() - cpu0, redis_cpu(r) - rcpu0
        print(f"| {label} | {n / seconds:,.0f} | {calls / n:.2f} | {cpu / n * 1e6:.1f} | {rcpu / n * 1e6:.1f} |")


def drain(url: str, n: int, mode: str) -> tuple[float, float, float]:
    """Jobs/s, and this process's and Redis's CPU µs per job."""
    r = redis.Redis.from_url(url)
    r.flushdb()
    state = {"count": 0, "first": 0.0, "last": 0.0}
    done = threading.Event()
    lock = threading.Lock()
    throttle = {
        "plain": None,
        "throttle, no key": Throttle(1000),
        "throttle, key function": Throttle(1000, key=lambda i: f"k{i % 100}"),
    }[mode]

    @worker(name="NoopJob", throttle=throttle)
    def noop(i: int) -> None:
        with lock:
            state["count"] += 1
            c = state["count"]
        if c == 1:
            state["first"] = time.perf_counter()
        elif c == n:
            state["last"] = time.perf_counter()
            done.set()

    app = Kiq(url, queues={"default": 25}, workers=[noop])
    for start in range(0, n, 10_000):
        app.enqueue_bulk(Job("NoopJob"), ([i] for i in range(start, min(start + 10_000, n))))
    app.flush()
    cpu0, rcpu0 = process_cpu(), redis_cpu(r)
    app.start()
    if not done.wait(600):
        raise SystemExit(f"only {state['count']} of {n} jobs ran")
    cpu1, rcpu1 = process_cpu(), redis_cpu(r)
    app.stop()
    return n / (state["last"] - state["first"]), (cpu1 - cpu0) / n * 1e6, (rcpu1 - rcpu0) / n * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=3.0, help="seconds per limiter measurement")
    p.add_argument("--jobs", type=int, default=50_000)
    p.add_argument("--runs", type=int, default=3)
    ns = p.parse_args()
    modes = ("plain", "throttle, no key", "throttle, key function")
    with redis_url() as url:
        limiter_rates(url, ns.seconds)
        print()
        runs: dict[str, list[tuple[float, float, float]]] = {m: [] for m in modes}
        for _ in range(ns.runs):
            for m in modes:
                runs[m].append(drain(url, ns.jobs, m))
    med = {m: [statistics.median(x[i] for x in runs[m]) for i in range(3)] for m in modes}
    plain = med["plain"][0]
    print(f"| drain | jobs/s | of unthrottled | worker CPU µs/job | Redis CPU µs/job |  (N={ns.jobs}, concurrency 25, "
          f"median of {ns.runs})\n|---|---|---|---|---|")
    for m in modes:
        rate, cpu, rcpu = med[m]
        print(f"| {m} | {rate:,.0f} | {rate / plain:.0%} | {cpu:.1f} | {rcpu:.1f} |")


if __name__ == "__main__":
    main()
