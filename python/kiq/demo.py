"""The demo: one kiq worker process running 100,000 jobs against Redis.

``python -m kiq.demo`` (or ``scripts/demo.sh``) uses ``$REDIS_URL`` when set,
else starts a throwaway ``redis-server`` on a free loopback port. It bulk
enqueues the jobs, shows a progress bar while a ``{"kiq_demo": 25}`` worker
runs them, and prints both rates. Only the ``kiq_demo`` queue is touched.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import sys
import time
from collections.abc import Iterator

from kiq import Kiq, worker
from kiq.redis_server import RedisServer

QUEUE = "kiq_demo"


@contextlib.contextmanager
def throwaway_redis() -> Iterator[str]:
    """A redis-server on a free 127.0.0.1 port that keeps nothing on disk."""
    try:
        server = RedisServer().start()
    except RuntimeError as exc:
        sys.exit(f"{exc} (or set REDIS_URL)")
    try:
        yield server.url
    finally:
        server.close()


def bar(done: int, total: int, elapsed: float, width: int = 40) -> str:
    filled = int(width * done / total) if total else width
    rate = done / elapsed if elapsed > 0 else 0.0
    return f"\r  [{'#' * filled}{'.' * (width - filled)}] {done:>9,}/{total:,}  {rate:>9,.0f} jobs/s"


def run(url: str, jobs: int, concurrency: int) -> None:
    counter = itertools.count(1)
    finished = [0]

    @worker(name="Kiq::DemoJob", queue=QUEUE)
    def demo_job(n: int) -> None:
        finished[0] = next(counter)

    app = Kiq(url, queues={QUEUE: concurrency}, workers=[demo_job])
    print(f"kiq demo: {jobs:,} jobs, queue {QUEUE!r} with concurrency {concurrency}, Redis {url}")
    t0 = time.perf_counter()
    chunk = 10_000
    for start in range(0, jobs, chunk):
        app.enqueue_bulk(demo_job, ([i] for i in range(start, min(start + chunk, jobs))))
    app.flush()  # counted until every job is in Redis, not just buffered
    enqueue_s = time.perf_counter() - t0
    print(f"  enqueued {jobs:,} jobs in {enqueue_s:.2f} s: {jobs / enqueue_s:,.0f} jobs/s (bulk, 10,000 per call)")
    t1 = time.perf_counter()
    app.start()
    tty = sys.stdout.isatty()
    last_print = 0.0
    while finished[0] < jobs:
        time.sleep(0.05)
        now = time.perf_counter()
        if tty or now - last_print >= 1.0:
            sys.stdout.write(bar(finished[0], jobs, now - t1) + ("" if tty else "\n"))
            sys.stdout.flush()
            last_print = now
    run_s = time.perf_counter() - t1
    sys.stdout.write(bar(jobs, jobs, run_s) + "\n")
    app.stop()
    print(f"  processed {jobs:,} jobs in {run_s:.2f} s: {jobs / run_s:,.0f} jobs/s")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m kiq.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=25)
    args = parser.parse_args(argv)
    url = os.environ.get("REDIS_URL")
    if url:
        run(url, args.jobs, args.concurrency)
    else:
        with throwaway_redis() as url:
            run(url, args.jobs, args.concurrency)


if __name__ == "__main__":
    main()
