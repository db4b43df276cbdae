"""Interleaved A/B of the drain between two kiq builds, on one machine, in one go.

    python bench/ab_drain.py /path/to/other/checkout/python [--jobs 100000] [--rounds 5]

"other" runs with ``PYTHONPATH`` set to that directory (a checkout whose
``python/kiq/`` holds its own built ``_kiq`` extension); "this" is the kiq this
interpreter imports. Rounds alternate which goes first, each on a fresh
redis-server, so drift on a noisy VM hits both alike. Prints each run and the
medians of drain rate and worker CPU per job (from ``bench/kiq_drain.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

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
    results: dict[str, list[tuple[float, float]]] = {"other": [], "this": []}
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
                out = subprocess.run([sys.executable, str(script), server.url, str(ns.jobs), "25"],
                                     capture_output=True, text=True, check=True, env=env, timeout=900)
                report = json.loads(out.stdout.strip().splitlines()[-1])
                cpu = report["cpu_core_us_per_job"] + report["cpu_python_us_per_job"]
                results[name].append((report["rate"], cpu))
                print(f"round {rnd} {name:5} {report['rate']:>9,.0f} jobs/s  {cpu:5.1f} us/job CPU", flush=True)
            finally:
                server.close()
    for name, runs in results.items():
        rate = statistics.median(r for r, _ in runs)
        cpu = statistics.median(c for _, c in runs)
        print(f"{name:5} median {rate:,.0f} jobs/s, {cpu:.1f} us/job CPU")


if __name__ == "__main__":
    main()
