"""Interleaved A/B of enqueue rates between two kiq installs, on one machine, in one go.

    python bench/ab_enqueue.py /path/to/other/venv/bin/python [--jobs 200000] [--rounds 5]

Each run is a fresh process of one interpreter ("this" is the one running
this script, "other" the one given) on a flushed redis-server: single
buffered ``app.enqueue(HardJob.new(i, "user-<i>", {...}))`` calls from one
thread (``bench_enqueue.py``'s first row: calls/s until the last call
returned, and jobs/s until flushed), then ``enqueue_bulk`` of 10,000 jobs per
call (``bench_throughput.py``'s first phase: jobs/s until flushed). Rounds
alternate which goes first, so drift on a noisy VM hits both alike.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import textwrap

import redis

from kiq.redis_server import RedisServer

RUN = textwrap.dedent(
    """
    import json, sys, time
    from kiq import Kiq, Worker

    class HardJob(Worker, name="HardJob"):
        def perform(self, *args):
            pass

    url, n = sys.argv[1], int(sys.argv[2])
    app = Kiq(url)
    app.enqueue(HardJob.new(0, "warm-up", {}))
    app.flush(60)
    t0 = time.perf_counter()
    for i in range(n):
        app.enqueue(HardJob.new(i, f"user-{i}", {"plan": "pro", "amount": i * 1.25}))
    t1 = time.perf_counter()
    app.flush(120)
    t2 = time.perf_counter()
    t3 = time.perf_counter()
    for start in range(0, n, 10_000):
        app.enqueue_bulk("NoopJob", ([i] for i in range(start, min(start + 10_000, n))))
    app.flush(120)
    t4 = time.perf_counter()
    print(json.dumps({"calls": n / (t1 - t0), "single_in_redis": n / (t2 - t0), "bulk": n / (t4 - t3)}))
    """
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("other", help="the other install's python interpreter")
    ap.add_argument("--jobs", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=5)
    ns = ap.parse_args()
    pythons = {"other": ns.other, "this": sys.executable}
    results: dict[str, list[dict[str, float]]] = {"other": [], "this": []}
    server = RedisServer().start()
    r = redis.Redis.from_url(server.url)
    try:
        for rnd in range(ns.rounds):
            for name in ("other", "this") if rnd % 2 == 0 else ("this", "other"):
                r.flushall()
                out = subprocess.run([pythons[name], "-c", RUN, server.url, str(ns.jobs)],
                                     capture_output=True, text=True, check=True, timeout=900)
                rates = json.loads(out.stdout.strip().splitlines()[-1])
                assert r.llen("queue:default") == 2 * ns.jobs + 1
                results[name].append(rates)
                print(f"round {rnd} {name:5} single {rates['calls']:>9,.0f} calls/s "
                      f"({rates['single_in_redis']:>9,.0f} into Redis)  bulk {rates['bulk']:>11,.0f} jobs/s", flush=True)
    finally:
        r.close()
        server.close()
    for name, runs in results.items():
        med = {k: statistics.median(x[k] for x in runs) for k in runs[0]}
        print(f"median {name:5} single {med['calls']:>9,.0f} calls/s ({med['single_in_redis']:>9,.0f} into Redis)  "
              f"bulk {med['bulk']:>11,.0f} jobs/s")


if __name__ == "__main__":
    main()
