"""Interleaved A/B of the drain between two kiq builds, on one machine, in one go.

    python bench/ab_drain.py /path/to/other/checkout/python [--jobs 100000] [--rounds 5]

"other" runs with ``PYTHONPATH`` set to that directory (a checkout whose
``python/kiq/`` holds its own built ``_kiq`` extension); "this" is the kiq this
interpreter imports. Rounds alternate which goes first, each on a fresh
redis-server, so drift on a noisy VM hits both alike. Prints each run and the
medians of drain rate, worker CPU per job (from ``bench/kiq_drain.py``), and
Redis's CPU and script calls (``EVALSHA``) per job, and of those the fetches
(``RPOP`` inside fetch.lua) and result writes (``HSET`` of settle.lua's
number), from ``INFO`` around the drain.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import redis

from kiq import Kiq
from kiq.redis_server import RedisServer

HERE = Path(__file__).parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("other", help="the other build's python/ directory")
    ap.add_argument("--jobs", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=5)
    ns = ap.parse_args()
    other = Path(ns.other)
    setups = {
        "other": ({**os.environ, "PYTHONPATH": str(other)}, other.parent / "bench" / "kiq_drain.py"),
        "this": (dict(os.environ), HERE / "kiq_drain.py"),
    }
    results: dict[str, list[tuple[float, ...]]] = {"other": [], "this": []}
    for rnd in range(ns.rounds):
        for name in ("other", "this") if rnd % 2 == 0 else ("this", "other"):
            env, script = setups[name]
            server = RedisServer().start()
            try:
                app = Kiq(server.url)
                for start in range(0, ns.jobs, 10_000):
                    app.enqueue_bulk("NoopJob", ([i] for i in range(start, min(start + 10_000, ns.jobs))))
                app.flush()
                app.stop()
                r = redis.Redis.from_url(server.url)
                cpu0, req0, fetch0, write0 = redis_load(r)
                out = subprocess.run([sys.executable, str(script), server.url, str(ns.jobs), "25"],
                                     capture_output=True, text=True, check=True, env=env, timeout=900)
                report = json.loads(out.stdout.strip().splitlines()[-1])
                cpu1, req1, fetch1, write1 = redis_load(r)
                r.close()
                cpu = report["cpu_core_us_per_job"] + report["cpu_python_us_per_job"]
                rcpu, reqs = (cpu1 - cpu0) / ns.jobs * 1e6, (req1 - req0) / ns.jobs
                per_fetch, per_write = ns.jobs / max(1, fetch1 - fetch0), ns.jobs / max(1, write1 - write0)
                results[name].append((report["rate"], cpu, rcpu, reqs, per_fetch, per_write))
                print(f"round {rnd} {name:5} {report['rate']:>9,.0f} jobs/s  {cpu:5.1f} us/job CPU  "
                      f"Redis {rcpu:5.1f} us/job, {reqs:.3f} scripts/job ({per_fetch:.0f} jobs per fetch, "
                      f"{per_write:.0f} per result write)", flush=True)
            finally:
                server.close()
    for name, runs in results.items():
        rate, cpu, rcpu, reqs, per_fetch, per_write = (statistics.median(run[k] for run in runs) for k in range(6))
        print(f"{name:5} median {rate:,.0f} jobs/s, {cpu:.1f} us/job CPU; Redis {rcpu:.1f} us/job, "
              f"{reqs:.3f} scripts/job ({per_fetch:.0f} jobs per fetch, {per_write:.0f} per result write)")


def redis_load(r: redis.Redis) -> tuple[float, int, int, int]:
    """Redis's CPU seconds so far, and the calls it has served of ``EVALSHA``,
    ``RPOP`` and ``HSET`` (commands scripts run count too)."""
    info = r.info("all")

    def calls(cmd: str) -> int:
        return int(info.get(f"cmdstat_{cmd}", {}).get("calls", 0))

    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"]), calls("evalsha"), calls("rpop"), calls("hset")


if __name__ == "__main__":
    main()
