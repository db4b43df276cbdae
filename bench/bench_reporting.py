"""What reporting costs: drain throughput by logging level and reporters, and
heartbeat commands per minute per process.

    python bench/bench_reporting.py [--jobs 100000] [--runs 3]

Modes (one kiq process, concurrency 25, N no-op jobs, median of the runs):
``none`` (no metrics, no log handler), ``warning`` and ``info`` (kiq's
defaults: metrics on, a JSON log handler writing to /dev/null at that level),
``reporter`` (warning plus one no-op extra reporter). Then an idle process is
watched for 60 s and the commands its heartbeat sends are counted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import redis

from kiq import Kiq
from kiq.demo import throwaway_redis

HERE = Path(__file__).parent
MODES = ["none", "warning", "info", "reporter"]


def drain(url: str, n: int, mode: str) -> tuple[float, float]:
    """(jobs/s, worker CPU µs per job)."""
    r = redis.Redis.from_url(url)
    r.flushall()
    app = Kiq(url)
    for start in range(0, n, 10_000):
        app.enqueue_bulk("NoopJob", ([i] for i in range(start, min(start + 10_000, n))))
    app.flush()
    out = subprocess.run([sys.executable, str(HERE / "kiq_drain.py"), url, str(n), "25", mode],
                         capture_output=True, text=True, check=True, timeout=900)
    r.close()
    rep = json.loads(out.stdout.strip().splitlines()[-1])
    return float(rep["rate"]), float(rep["cpu_core_us_per_job"]) + float(rep["cpu_python_us_per_job"])


def heartbeat_commands_per_minute(url: str, seconds: float = 60.0) -> tuple[float, dict[str, int]]:
    r = redis.Redis.from_url(url)
    r.flushall()
    app = Kiq(url, scheduler=False)
    app.start()
    time.sleep(1.0)
    r.config_resetstat()
    time.sleep(seconds)
    stats = r.info("commandstats")
    app.stop()
    r.close()
    calls = {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}
    # The idle fetcher's BLMOVE is not the heartbeat's; INFO/CONFIG are this script's.
    beat = {k: v for k, v in calls.items() if k not in ("blmove", "info", "config|resetstat")}
    return sum(beat.values()) * 60.0 / seconds, beat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    with throwaway_redis() as url:
        rates: dict[str, list[float]] = {m: [] for m in MODES}
        cpus: dict[str, list[float]] = {m: [] for m in MODES}
        for run in range(args.runs):
            for mode in MODES:
                rate, cpu = drain(url, args.jobs, mode)
                rates[mode].append(rate)
                cpus[mode].append(cpu)
                print(f"run {run + 1} {mode:9} {rate:>9,.0f} jobs/s {cpu:6.1f} us/job", file=sys.stderr)
        base = statistics.median(rates["none"])
        base_cpu = statistics.median(cpus["none"])
        print(f"\nN={args.jobs:,} no-op jobs, concurrency 25, median of {args.runs} runs\n")
        print("| mode | drain jobs/s | vs none | worker CPU us/job | vs none |")
        print("|---|---|---|---|---|")
        for mode in MODES:
            med, cpu = statistics.median(rates[mode]), statistics.median(cpus[mode])
            print(f"| {mode} | {med:,.0f} | {100 * (med / base - 1):+.1f}% | {cpu:.1f} | "
                  f"{100 * (cpu / base_cpu - 1):+.1f}% |")
        per_min, detail = heartbeat_commands_per_minute(url)
        print(f"\nheartbeat: {per_min:.0f} Redis commands per minute per idle process ({detail})")


if __name__ == "__main__":
    main()
