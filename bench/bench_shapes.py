"""Drains of other shapes than bench_throughput.py's, and pickup latency.

    python bench/bench_shapes.py [--jobs 100000] [--runs 3] [--latency 50]

- mixed: half ``def perform``, half ``async def perform`` no-op jobs in one
  queue (interleaved in chunks of 500), c25: the rate, and how long before
  the end each kind finished (a starved kind would finish last, far behind).
- 1q x c80 against 8 queues sharing 80 threads in one ``kiq.Capsule``
  (strict order, and weighted with weights 1), and against 8q x c10 (the
  same 80 threads, 10 per queue, one fetcher each); the jobs spread evenly
  over the 8 queues.
- pickup latency: one job pushed (synchronously) into an idle queue, timed
  from before the push to the start of ``perform``, repeated with pauses.

Uses $REDIS_URL if set, else a throwaway redis-server. Reports medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import redis

from kiq import Job, Kiq, worker
from kiq.demo import throwaway_redis

HERE = Path(__file__).parent


def fill(url: str, n: int, kind: str, nqueues: int) -> None:
    redis.Redis.from_url(url).flushall()
    app = Kiq(url, buffer=False)
    queues = ["default"] if nqueues == 1 else [f"q{k}" for k in range(nqueues)]
    per = n // len(queues)
    for q in queues:
        for start in range(0, per, 1000):
            end = min(per, start + 1000)
            if kind == "mixed":
                app.enqueue_bulk(Job("NoopJob", queue=q), [[i] for i in range(start, end, 2)])
                app.enqueue_bulk(Job("AsyncNoopJob", queue=q), [[i] for i in range(start + 1, end, 2)])
            else:
                app.enqueue_bulk(Job("NoopJob", queue=q), [[i] for i in range(start, end)])


def drain(url: str, n: int, concurrency: int, kind: str, shape: str) -> dict[str, Any]:
    """``shape``: the number of queues, then ``s`` or ``w`` for one capsule (kiq_drain.py's QUEUES)."""
    nqueues = int(shape.rstrip("sw"))
    fill(url, n, kind, nqueues)
    out = subprocess.run([sys.executable, str(HERE / "kiq_drain.py"), url, str(n // nqueues * nqueues),
                          str(concurrency), "default", kind, shape],
                         capture_output=True, text=True, check=True, timeout=900)
    return json.loads(out.stdout.strip().splitlines()[-1])


def latency(url: str, samples: int) -> list[float]:
    redis.Redis.from_url(url).flushall()
    started: dict[int, float] = {}
    seen = threading.Semaphore(0)

    @worker(name="Ping")
    def ping(i: int) -> None:
        started[i] = time.time()
        seen.release()

    app = Kiq(url, queues={"default": 25}, workers=[ping])
    app.start()
    out = []
    try:
        time.sleep(1.0)  # the fetcher is waiting in BLMOVE on an empty queue
        for i in range(samples):
            t0 = time.time()
            app.enqueue(ping.new(i), sync=True)
            assert seen.acquire(timeout=10)
            out.append((started[i] - t0) * 1000)
            time.sleep(0.05 + (i % 7) * 0.01)
    finally:
        app.stop()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--latency", type=int, default=50, help="pickup latency samples")
    args = ap.parse_args()

    def go(url: str) -> None:
        shapes = {"mixed sync+async, c25": (25, "mixed", "1"), "1 queue x c80": (80, "sync", "1"),
                  "8 queues, one capsule of 80, strict": (80, "sync", "8s"),
                  "8 queues, one capsule of 80, weighted": (80, "sync", "8w"),
                  "8 queues x c10": (10, "sync", "8")}
        res: dict[str, list[dict[str, Any]]] = {k: [] for k in shapes}
        for run in range(args.runs):
            for name, (c, kind, q) in shapes.items():
                r = drain(url, args.jobs, c, kind, q)
                res[name].append(r)
                print(f"run {run + 1} {name:24} {r['rate']:>9,.0f} jobs/s", file=sys.stderr)
        print(f"\nN={args.jobs:,} no-op jobs, median of {args.runs} runs\n")
        print("| shape | drain jobs/s | worker CPU us/job | peak RSS MB | notes |")
        print("|---|---|---|---|---|")
        for name, rs in res.items():
            rate = statistics.median(x["rate"] for x in rs)
            cpu = statistics.median(x["cpu_core_us_per_job"] + x["cpu_python_us_per_job"] for x in rs)
            rss = max(x["peak_rss_mb"] for x in rs)
            note = ""
            if "mixed" in name:
                behind = {k: statistics.median(x["ended_before_last_s"].get(k, 0.0) for x in rs)
                          for k in ("sync", "async")}
                note = "; ".join(f"{k} ended {v * 1000:.0f} ms before the last job" for k, v in behind.items())
            print(f"| {name} | {rate:,.0f} | {cpu:.1f} | {rss:.0f} | {note} |")
        if args.latency:
            ms = latency(url, args.latency)
            ms.sort()
            print(f"\npickup latency into an idle queue ({len(ms)} jobs): median {statistics.median(ms):.2f} ms, "
                  f"p95 {ms[int(len(ms) * 0.95) - 1]:.2f} ms, max {ms[-1]:.2f} ms")

    url = os.environ.get("REDIS_URL")
    if url:
        go(url)
    else:
        with throwaway_redis() as url:
            go(url)


if __name__ == "__main__":
    main()
