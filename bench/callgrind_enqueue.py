"""Instructions per enqueued job, counted by callgrind (stable on a noisy
machine, unlike wall-clock time).

    python bench/callgrind_enqueue.py [--jobs 20000] [--mode single|bulk|both]

``single``: one buffered ``app.enqueue(HardJob.new(i, "user-<i>", {...}))``
per job from one Python thread (``bench_enqueue.py``'s shape). ``bulk``:
``app.enqueue_bulk("NoopJob", [[i], ...])``, 10,000 jobs per call
(``bench_throughput.py``'s first phase). Each runs under ``valgrind
--tool=callgrind --separate-threads=yes --fair-sched=yes`` twice (N and 2N
jobs, all flushed to Redis; without fair scheduling a starved flusher lets
the buffer back up and the counts depend on scheduling) and reports the difference divided by N, for the calling thread
(what limits calls/s) and for all threads (the flusher included): the
per-job cost with start-up and shutdown cancelled out. ``--keep DIR`` keeps
both runs' profiles for ``callgrind_annotate``. Needs valgrind.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap

from kiq.redis_server import RedisServer

ENQUEUE = textwrap.dedent(
    """
    import sys
    from kiq import Kiq, Worker

    class HardJob(Worker, name="HardJob"):
        def perform(self, *args):
            pass

    url, mode, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    app = Kiq(url)
    if mode == "single":
        for i in range(n):
            app.enqueue(HardJob.new(i, f"user-{i}", {"plan": "pro", "amount": i * 1.25}))
    else:
        for start in range(0, n, 10_000):
            app.enqueue_bulk("NoopJob", ([i] for i in range(start, min(start + 10_000, n))))
    app.flush(600)
    """
)


def instructions(url: str, mode: str, n: int, keep: str | None) -> tuple[int, int]:
    """(calling thread, all threads) instructions of one run of N jobs."""
    import redis

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "cg.out")
        subprocess.run(["valgrind", "--tool=callgrind", "--separate-threads=yes", "--fair-sched=yes", f"--callgrind-out-file={out}",
                        sys.executable, "-c", ENQUEUE, url, mode, str(n)],
                       check=True, capture_output=True, timeout=7200)
        r = redis.Redis.from_url(url)
        assert r.llen("queue:default") == n, (r.llen("queue:default"), n)
        r.flushall()
        r.close()
        caller = total = 0
        for path in os.listdir(tmp):
            with open(os.path.join(tmp, path)) as f:
                text = f.read()
            m = re.search(r"^summary:\s+(\d+)", text, re.M)
            if not m:
                continue
            total += int(m.group(1))
            if path.endswith("-01"):  # the main (calling) thread
                caller = int(m.group(1))
        if keep:
            os.makedirs(keep, exist_ok=True)
            for path in os.listdir(tmp):
                shutil.copy(os.path.join(tmp, path), os.path.join(keep, f"{mode}-{n}-{path}"))
        return caller, total


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--jobs", type=int, default=20000)
    p.add_argument("--mode", choices=["single", "bulk", "both"], default="both")
    p.add_argument("--keep", help="directory for both runs' callgrind files")
    ns = p.parse_args()
    modes = ["single", "bulk"] if ns.mode == "both" else [ns.mode]
    server = RedisServer().start()
    try:
        for mode in modes:
            n = ns.jobs if mode == "single" else max(ns.jobs, 10_000) // 10_000 * 10_000
            small = instructions(server.url, mode, n, ns.keep)
            big = instructions(server.url, mode, 2 * n, ns.keep)
            print(json.dumps({
                "mode": mode, "jobs": n,
                "caller_per_job": round((big[0] - small[0]) / n), "all_threads_per_job": round((big[1] - small[1]) / n),
                "caller_small": small[0], "caller_big": big[0], "all_small": small[1], "all_big": big[1],
            }), flush=True)
    finally:
        server.close()


if __name__ == "__main__":
    main()
