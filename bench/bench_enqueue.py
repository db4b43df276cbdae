"""Enqueue from one Python thread: buffered vs synchronous, spool on vs off,
and what a buffered job costs in memory, compressed vs raw.

    python bench/bench_enqueue.py [--jobs 200000]

Each job is ``HardJob.new(i, "user-<i>", {"plan": "pro", "amount": <float>})``
enqueued one call at a time (not bulk). Buffered rates count until the last
call returns and, separately, until ``flush()`` confirms every job in Redis.
Memory: the jobs are enqueued with Redis unreachable (they wait, compressed,
as during an outage) and ``buffer_stats()`` gives bytes held per job.
"""

from __future__ import annotations

import argparse
import atexit
import shutil
import tempfile
import time

import redis

from kiq import Kiq, Worker
from kiq.demo import throwaway_redis


class HardJob(Worker, name="HardJob"):
    def perform(self, *args: object) -> None:
        pass


def calls(app: Kiq, n: int, sync: bool = False) -> tuple[float, float]:
    """(calls/s until the last call returned, jobs/s until all are in Redis)."""
    t0 = time.perf_counter()
    for i in range(n):
        app.enqueue(HardJob.new(i, f"user-{i}", {"plan": "pro", "amount": i * 1.25}), sync=sync)
    t1 = time.perf_counter()
    app.flush(120)
    t2 = time.perf_counter()
    return n / (t1 - t0), n / (t2 - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=200_000)
    args = ap.parse_args()
    n = args.jobs
    rows = []
    with throwaway_redis() as url:
        r = redis.Redis.from_url(url)
        for label, kwargs, count, sync in [
            ("buffered (default)", {}, n, False),
            ("synchronous (sync=True)", {}, n // 10, True),
            ("buffered + spool, fsync interval", {"spool_fsync": "interval"}, n, False),
            ("buffered + spool, fsync never", {"spool_fsync": "never"}, n, False),
            ("buffered + spool, fsync always", {"spool_fsync": "always"}, n // 100, False),
        ]:
            r.flushall()
            with tempfile.TemporaryDirectory() as d:
                spool = {"buffer_path": d, **kwargs} if kwargs else {}
                app = Kiq(url, **spool)  # type: ignore[arg-type]
                rate, in_redis = calls(app, count, sync)
                assert r.llen("queue:default") == count
                rows.append((label, count, rate, in_redis))
                del app
        r.close()
    print(f"\nOne Python thread, {n:,} single-job enqueue calls (fewer for the slow modes)\n")
    print("| mode | calls | calls/s | jobs/s into Redis |")
    print("|---|---|---|---|")
    for label, count, rate, in_redis in rows:
        print(f"| {label} | {count:,} | {rate:,.0f} | {in_redis:,.0f} |")
    # Memory while Redis is away: everything waits, compressed. At exit kiq
    # saves those jobs to an unsent-* dir of its state dir: a temp dir here,
    # removed after (atexit runs handlers last-registered first).
    state = tempfile.mkdtemp(prefix="kiq-bench-outage-")
    atexit.register(shutil.rmtree, state, True)
    app = Kiq("redis://127.0.0.1:1/0", buffer_max_bytes=1 << 30, state_dir=state, shutdown_timeout=0.1)
    m = min(n, 100_000)
    for i in range(m):
        app.enqueue(HardJob.new(i, f"user-{i}", {"plan": "pro", "amount": i * 1.25}))
    time.sleep(3)  # the first failed flush compresses what waits
    stats = app.buffer_stats() or {}
    print(f"\nBuffered during an outage: {m:,} jobs, {stats['raw_bytes'] / m:.1f} bytes/job raw, "
          f"{stats['bytes'] / m:.1f} bytes/job held ({stats['raw_bytes'] / max(1, stats['bytes']):.1f}x smaller)")


if __name__ == "__main__":
    main()
