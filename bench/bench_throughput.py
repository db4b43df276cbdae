"""End-to-end throughput: kiq next to Ruby Sidekiq 6.4.1, same Redis, same run.

    python bench/bench_throughput.py [--jobs 200000] [--runs 3]

For each system and run: flush Redis, bulk-enqueue N no-op jobs (10,000 per
call), then start one worker process with concurrency 25 and time the drain
(kiq twice: ``def perform`` and ``async def perform`` no-op jobs)
from the first job started to the last finished. Reports the median of the
runs, peak RSS, CPU per job, and Redis commands and Redis CPU per job (from
INFO) so the limit can be seen. Uses $REDIS_URL if set, else a throwaway
redis-server. Performance is reported here, never asserted in tests.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from kiq import Kiq
from kiq.demo import throwaway_redis

HERE = Path(__file__).parent
CHUNK = 10_000


def redis_counters(r: redis.Redis) -> tuple[int, float]:
    calls = sum(v["calls"] for k, v in r.info("commandstats").items() if not k.startswith("cmdstat_info"))
    cpu = r.info("cpu")
    return calls, float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


def kiq_enqueue(url: str, n: int) -> float:
    app = Kiq(url)
    t0 = time.perf_counter()
    for start in range(0, n, CHUNK):
        app.enqueue_bulk("NoopJob", ([i] for i in range(start, min(start + CHUNK, n))))
    app.flush()  # until every job is in Redis
    return n / (time.perf_counter() - t0)


def kiq_drain(url: str, n: int, kind: str = "sync", prefetch: str = "auto") -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, str(HERE / "kiq_drain.py"), url, str(n), "25", "default", kind, "1", str(prefetch)],
        capture_output=True, text=True, check=True, timeout=900,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


RUBY_PUSH = """
require "sidekiq"
Redis.silence_deprecations = true if Redis.respond_to?(:silence_deprecations=)
Sidekiq.configure_client { |c| c.redis = { url: ENV.fetch("REDIS_URL") } }
n = Integer(ARGV[0]); chunk = Integer(ARGV[1])
t0 = Process.clock_gettime(Process::CLOCK_MONOTONIC)
(0...n).each_slice(chunk) { |s| Sidekiq::Client.push_bulk("class" => "NoopJob", "args" => s.map { |i| [i] }) }
puts n / (Process.clock_gettime(Process::CLOCK_MONOTONIC) - t0)
"""


def ruby_enqueue(url: str, n: int) -> float:
    out = subprocess.run(["ruby", "-e", RUBY_PUSH, str(n), str(CHUNK)], env={**os.environ, "REDIS_URL": url},
                         capture_output=True, text=True, check=True, timeout=900)
    return float(out.stdout.strip())


def ruby_drain(url: str, n: int) -> dict[str, Any]:
    report = Path(tempfile.mkdtemp()) / "report.json"
    env = {**os.environ, "REDIS_URL": url, "KIQ_BENCH_N": str(n), "KIQ_BENCH_OUT": str(report)}
    proc = subprocess.Popen(["sidekiq", "-c", "25", "-q", "default", "-r", str(HERE / "sidekiq_drain.rb")],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 900
        while not report.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("Ruby Sidekiq did not finish the drain")
            time.sleep(0.1)
        time.sleep(0.1)
        return json.loads(report.read_text())
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(report.parent, ignore_errors=True)


def measure(system: str, url: str, n: int) -> dict[str, Any]:
    r = redis.Redis.from_url(url)
    r.flushall()
    rate_in = ruby_enqueue(url, n) if system == "sidekiq" else kiq_enqueue(url, n)
    assert r.llen("queue:default") == n
    r.config_resetstat()
    calls0, cpu0 = redis_counters(r)
    if system == "sidekiq":
        drained = ruby_drain(url, n)
    else:
        drained = kiq_drain(url, n, "async" if system == "kiq-async" else "sync", "0" if system == "kiq-p0" else "auto")
    calls1, cpu1 = redis_counters(r)
    r.close()
    return {"enqueue_rate": rate_in, **drained,
            "redis_cmds_per_job": (calls1 - calls0) / n, "redis_cpu_us_per_job": (cpu1 - cpu0) / n * 1e6}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=200_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--only", choices=["kiq", "kiq-p0", "kiq-async", "sidekiq"])
    args = ap.parse_args()
    systems = [args.only] if args.only else ["kiq", "kiq-p0", "kiq-async", "sidekiq"]

    def go(url: str) -> None:
        results: dict[str, list[dict[str, Any]]] = {s: [] for s in systems}
        for run in range(args.runs):
            for s in systems:
                res = measure(s, url, args.jobs)
                results[s].append(res)
                print(f"run {run + 1} {s:12} enqueue {res['enqueue_rate']:>9,.0f}/s  drain {res['rate']:>8,.0f}/s",
                      file=sys.stderr)
        print(f"\nN={args.jobs:,} no-op jobs, concurrency 25, median of {args.runs} runs\n")
        cols = ["bulk enqueue/s", "drain jobs/s", "peak RSS MB", "worker CPU us/job", "redis cmds/job",
                "redis CPU us/job"]
        print("| system | " + " | ".join(cols) + " |")
        print("|---" * (len(cols) + 1) + "|")
        for s in systems:
            rs = results[s]

            def med(key: str, rs: list[dict[str, Any]] = rs) -> float:
                return statistics.median(x[key] for x in rs)

            if s != "sidekiq":
                cpu = f"{med('cpu_core_us_per_job') + med('cpu_python_us_per_job'):.1f} " \
                      f"(core {med('cpu_core_us_per_job'):.1f} + python {med('cpu_python_us_per_job'):.1f})"
                name = {"kiq-async": "kiq (async def)", "kiq-p0": "kiq (prefetch=0, as Sidekiq)"}.get(s, "kiq")
            else:
                cpu = f"{med('cpu_us_per_job'):.1f}"
                name = "Ruby Sidekiq 6.4.1"
            print(f"| {name} | {med('enqueue_rate'):,.0f} | {med('rate'):,.0f} | {max(x['peak_rss_mb'] for x in rs):.0f} | "
                  f"{cpu} | {med('redis_cmds_per_job'):.2f} | {med('redis_cpu_us_per_job'):.1f} |")
        if "kiq" in systems:
            k = results["kiq"]
            print(f"\nkiq: {statistics.median(x['wakeups_per_job'] for x in k):.2f} thread wake-ups per job, "
                  f"{statistics.median(x['gil_wait_us_per_job'] for x in k):.1f} us per job waiting for the GIL after one")
        if "kiq" in systems and "sidekiq" in systems:
            k, s = results["kiq"], results["sidekiq"]
            print(f"\nkiq / Sidekiq: drain {statistics.median(x['rate'] for x in k) / statistics.median(x['rate'] for x in s):.1f}x, "
                  f"bulk enqueue {statistics.median(x['enqueue_rate'] for x in k) / statistics.median(x['enqueue_rate'] for x in s):.1f}x")
        for other, label in (("kiq-p0", "kiq prefetch=0"), ("kiq-async", "kiq async")):
            if other in systems and "sidekiq" in systems:
                a, s = results[other], results["sidekiq"]
                print(f"{label} / Sidekiq: drain "
                      f"{statistics.median(x['rate'] for x in a) / statistics.median(x['rate'] for x in s):.1f}x")

    url = os.environ.get("REDIS_URL")
    if url:
        go(url)
    else:
        with throwaway_redis() as url:
            go(url)


if __name__ == "__main__":
    main()
