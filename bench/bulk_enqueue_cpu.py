"""Where a bulk enqueue's time goes: Redis CPU per job, the push script's time
per batch, and the CPU of each thread of this process.

    python bench/bulk_enqueue_cpu.py [--jobs 1000000] [--runs 3]

Each run pushes ``--jobs`` jobs with ``app.enqueue_bulk("NoopJob", ...)``,
10,000 per call (``bench_throughput.py``'s first phase), into a fresh
redis-server, then flushes. The flusher sends a batch, waits for Redis to run
``push.lua`` on it, and sends the next, so jobs/s into Redis is bound by the
script's time per batch plus the flusher's own work per batch.
"""

from __future__ import annotations

import argparse
import os
import time

import redis

from kiq import Kiq
from kiq.redis_server import RedisServer


def thread_cpu() -> dict[str, float]:
    """CPU seconds used so far by each thread of this process, by name and id."""
    out = {}
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open(f"/proc/self/task/{tid}/comm") as f:
            name = f.read().strip()
        out[f"{name}-{tid}"] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


def run(url: str, n: int) -> None:
    r = redis.Redis.from_url(url)
    app = Kiq(url)
    app.enqueue_bulk("NoopJob", [[0]])
    app.flush(30)
    r.flushall()
    r.config_resetstat()

    def redis_cpu() -> float:
        info = r.info("cpu")
        return float(info["used_cpu_user"] + info["used_cpu_sys"])

    threads0, cpu0, t0 = thread_cpu(), redis_cpu(), time.perf_counter()
    for start in range(0, n, 10_000):
        app.enqueue_bulk("NoopJob", ([i] for i in range(start, min(start + 10_000, n))))
    t1 = time.perf_counter()
    app.flush(300)
    t2, cpu1, threads1 = time.perf_counter(), redis_cpu(), thread_cpu()
    assert r.llen("queue:default") == n
    script = r.info("commandstats").get("cmdstat_evalsha", {})
    busy = {k: round(v - threads0.get(k, 0.0), 2) for k, v in threads1.items() if v - threads0.get(k, 0.0) > 0.01}
    print(f"calls {n / (t1 - t0):>11,.0f} jobs/s  into Redis {n / (t2 - t0):>9,.0f} jobs/s  "
          f"Redis CPU {(cpu1 - cpu0) / n * 1e6:.2f} us/job  push.lua {script.get('usec_per_call', 0) / 1000:.1f} ms "
          f"x {script.get('calls', 0)} batches  threads (CPU s) {busy}", flush=True)
    r.flushall()
    r.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=3)
    ns = ap.parse_args()
    server = RedisServer().start()
    try:
        for _ in range(ns.runs):
            run(server.url, ns.jobs)
    finally:
        server.close()


if __name__ == "__main__":
    main()
