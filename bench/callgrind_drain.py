"""Instructions per job of a worker draining no-op jobs, counted by callgrind
(stable on a noisy machine, unlike wall-clock time).

    python bench/callgrind_drain.py [--jobs 20000] [--concurrency 25] [--async] [--prefetch auto|N]

Runs the drain twice under ``valgrind --tool=callgrind`` (N and 2N jobs, the
queue filled beforehand by this script) and reports the difference divided
by N: the per-job cost with start-up and shutdown cancelled out. Needs
valgrind (Debian's package). Under valgrind a no-op job takes far longer
than the automatic prefetch's mark, so it stays off: ``--prefetch 100`` (what
it holds at c25 on a real run) stands in for it."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import textwrap

from kiq import Job, Kiq
from kiq.redis_server import RedisServer

DRAIN = textwrap.dedent(
    """
    import sys, threading
    from kiq import Kiq, worker
    n, concurrency, is_async = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
    prefetch = {} if sys.argv[5] == "auto" else {"prefetch": int(sys.argv[5])}
    done = threading.Event()
    count = [0]
    lock = threading.Lock()
    if is_async:
        @worker(name="NoopJob")
        async def noop(i: int) -> None:
            count[0] += 1
            if count[0] == n:
                done.set()
    else:
        @worker(name="NoopJob")
        def noop(i: int) -> None:
            with lock:
                count[0] += 1
                if count[0] == n:
                    done.set()
    app = Kiq(sys.argv[1], queues={"default": concurrency}, workers=[noop], metrics=False, **prefetch)
    app.start()
    done.wait(3600)
    app.stop()
    """
)


def instructions(url: str, n: int, concurrency: int, is_async: bool, prefetch: str) -> int:
    Kiq(url, buffer=False).enqueue_bulk(Job("NoopJob"), [[i] for i in range(n)])
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "cg.out")
        subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, "-c", DRAIN,
                        url, str(n), str(concurrency), "1" if is_async else "0", prefetch],
                       check=True, capture_output=True, timeout=7200)
        total = 0
        for path in os.listdir(tmp):
            with open(os.path.join(tmp, path)) as f:
                m = re.search(r"^summary:\s+(\d+)", f.read(), re.M)
                if m:
                    total += int(m.group(1))
        return total


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--jobs", type=int, default=20000)
    p.add_argument("--concurrency", type=int, default=25)
    p.add_argument("--async", dest="is_async", action="store_true")
    p.add_argument("--prefetch", default="auto", help="auto (the default) or a number")
    ns = p.parse_args()
    server = RedisServer().start()
    try:
        small = instructions(server.url, ns.jobs, ns.concurrency, ns.is_async, ns.prefetch)
        big = instructions(server.url, 2 * ns.jobs, ns.concurrency, ns.is_async, ns.prefetch)
    finally:
        server.close()
    print(json.dumps({"jobs": ns.jobs, "async": ns.is_async, "prefetch": ns.prefetch,
                      "instructions_per_job": (big - small) / ns.jobs,
                      "instructions_small": small, "instructions_big": big}))


if __name__ == "__main__":
    main()
