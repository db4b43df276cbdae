"""Memory through long drains: a worker's VmRSS and the jobs in its
in-progress lists, sampled from outside every 0.5 s.

    python bench/bench_memory.py [--jobs 2000000] [--shapes c25,8xc10,c80,async-c25]

Shapes: ``c25`` (one queue, 25 threads: the default), ``c80``, ``8xc10``
(8 queues with 10 threads each, one fetcher per queue), ``async-c25``
(``async def perform``, 25 at once). For each, the table
gives the rate, the VmRSS once a tenth, half and nine tenths of the jobs had left
the queues, the peak (VmHWM), and the most jobs that were in progress at
once (fetched, not yet written back as done: held, running, or finished
with their results waiting to be written). A flat RSS and a bounded
in-progress count are the point; a count that grows with the run means
results are written more slowly than jobs finish.

Uses $REDIS_URL if set, else a throwaway redis-server.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import redis

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

from bench_encryption import redis_url  # noqa: E402  ($REDIS_URL, else a throwaway redis-server)
from bench_shapes import fill  # noqa: E402

SHAPES = {"c25": (25, "1", "sync"), "c80": (80, "1", "sync"), "8xc10": (10, "8", "sync"),
          "async-c25": (25, "1", "async")}


def vm(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM in kB (empty once the process is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in f) if k in ("VmRSS", "VmHWM")}
    except OSError:
        return {}


def run(url: str, n: int, shape: str) -> dict[str, Any]:
    concurrency, queues, kind = SHAPES[shape]
    fill(url, n, kind, int(queues))
    r = redis.Redis.from_url(url)
    queue_keys = [k for k in r.scan_iter("queue:*")]
    proc = subprocess.Popen([sys.executable, str(HERE / "kiq_drain.py"), url, str(n), str(concurrency), "default",
                             kind, queues], stdout=subprocess.PIPE, text=True)
    marks: dict[float, float] = {}
    most, peak = 0, 0
    while proc.poll() is None:
        time.sleep(0.5)
        queued = sum(r.llen(k) for k in queue_keys)
        wip = sum(r.llen(k) for k in r.scan_iter("kiq:wip|*"))
        mem = vm(proc.pid)
        if not mem:
            break
        most, peak = max(most, wip), max(peak, mem["VmHWM"])
        left = 1 - queued / n
        for mark in (0.1, 0.5, 0.9):
            if left >= mark and mark not in marks:
                marks[mark] = mem["VmRSS"] / 1024
    out, _ = proc.communicate(timeout=900)
    report = json.loads(out.strip().splitlines()[-1])
    return {"rate": report["rate"], "marks": marks, "peak": max(peak / 1024, report["peak_rss_mb"]), "most": most}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=2_000_000)
    ap.add_argument("--shapes", default="c25,8xc10,c80,async-c25")
    args = ap.parse_args()
    shapes = args.shapes.split(",")
    for s in shapes:
        if s not in SHAPES:
            sys.exit(f"unknown shape {s!r}: one of {', '.join(SHAPES)}")

    with redis_url() as url:
        rows = []
        for s in shapes:
            res = run(url, args.jobs, s)
            rows.append((s, res))
            print(f"{s}: {res['rate']:,.0f} jobs/s", file=sys.stderr)
        print(f"\nN={args.jobs:,} no-op jobs, VmRSS sampled every 0.5 s from outside\n")
        print("| shape | drain jobs/s | RSS MB at 10% / 50% / 90% of the jobs fetched | peak RSS MB | most in progress |")
        print("|---|---|---|---|---|")
        for s, res in rows:
            marks = " / ".join(f"{res['marks'][m]:.0f}" if m in res["marks"] else "-" for m in (0.1, 0.5, 0.9))
            print(f"| {s} | {res['rate']:,.0f} | {marks} | {res['peak']:.0f} | {res['most']:,} |")


if __name__ == "__main__":
    main()
