"""One kiq worker process draining N no-op jobs; prints a JSON report.

    python bench/kiq_drain.py URL N CONCURRENCY [MODE [KIND [QUEUES [PREFETCH]]]]

Run by bench_throughput.py and bench_shapes.py. MODE is default, none,
warning, info or reporter (logging and reporters, below); KIND is sync,
async (``async def perform``) or mixed (NoopJob sync and AsyncNoopJob async,
the queue holding both); QUEUES > 1 serves queues q0..q{QUEUES-1} with
CONCURRENCY threads each (the jobs are enqueued there by the caller), and
QUEUES followed by ``s`` (strict) or ``w`` (weights 1: random) serves them
with one ``kiq.Capsule`` of CONCURRENCY threads;
PREFETCH is ``Kiq(prefetch=...)`` (``auto``, kiq's default, unless given);
only the workers a KIND needs are registered (an ``async def`` worker turns
the automatic prefetch off).
Timing runs from the first job started to the last finished; CPU time is
split between kiq's Rust core threads and the Python threads (from
/proc/self/task)."""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time

from kiq import Kiq, Reporter, worker
from kiq.logs import JsonFormatter


def thread_cpu() -> dict[str, float]:
    """CPU seconds of this process: the core's threads and the rest (Python).

    The total is the process CPU clock (nanoseconds); /proc's per-thread
    counts are in 10 ms ticks, so with 80 threads their sum could be off by
    most of a second. Only the few core threads are summed from /proc, and
    Python gets the rest."""
    tick = os.sysconf("SC_CLK_TCK")
    core = 0.0
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                name = f.read().strip()
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # CPython 3.11 does not name OS threads; the core's are named by tokio.
        if name.startswith("kiq-core"):
            core += (int(fields[11]) + int(fields[12])) / tick
    total = time.clock_gettime(time.CLOCK_PROCESS_CPUTIME_ID)
    return {"core": core, "python": total - core}


def peak_rss_mb() -> float:
    """This process's high-water RSS since it was exec'd (VmHWM, as sidekiq_drain.rb reads it).

    Not ``getrusage().ru_maxrss``: Linux carries that across exec, so it would
    report the RSS of the (big) benchmark parent this process was forked from."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


class NoopReporter(Reporter):
    """Receives every event and does nothing with it."""


def main() -> None:
    url, n, concurrency = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    # none: no metrics, no log handler; warning / info: kiq's defaults with a
    # JSON log handler (to /dev/null) at that level; reporter: warning plus
    # one no-op extra reporter.
    mode = sys.argv[4] if len(sys.argv) > 4 else "default"
    kind = sys.argv[5] if len(sys.argv) > 5 else "sync"
    shape = sys.argv[6] if len(sys.argv) > 6 else "1"
    nqueues = int(shape.rstrip("sw"))
    prefetch: int | str = sys.argv[7] if len(sys.argv) > 7 else "auto"
    prefetch = prefetch if prefetch == "auto" else int(prefetch)
    if mode in ("warning", "info", "reporter"):
        handler = logging.StreamHandler(open(os.devnull, "w"))  # noqa: SIM115 - lives as long as the process
        handler.setFormatter(JsonFormatter())
        log = logging.getLogger("kiq")
        log.addHandler(handler)
        log.setLevel(logging.INFO if mode == "info" else logging.WARNING)
    state = {"count": 0, "first": 0.0, "last": 0.0}
    done = threading.Event()
    lock = threading.Lock()

    per_class: dict[str, float] = {}

    def count(name: str) -> None:
        with lock:
            state["count"] += 1
            c = state["count"]
        per_class[name] = time.perf_counter()  # when the last job of each class ended
        if c == 1:
            state["first"] = time.perf_counter()
            state["cpu0"] = thread_cpu()  # type: ignore[assignment]
        elif c == n:
            state["last"] = time.perf_counter()
            done.set()

    if kind == "async":
        @worker(name="NoopJob")
        async def noop(i: int) -> None:
            count("async")
    else:
        @worker(name="NoopJob")
        def noop(i: int) -> None:
            count("sync")

    @worker(name="AsyncNoopJob")
    async def async_noop(i: int) -> None:
        count("async")

    names = ["default"] if nqueues == 1 else [f"q{k}" for k in range(nqueues)]
    queues: dict[str, int] | list[Capsule] = {q: concurrency for q in names}
    if shape.endswith(("s", "w")):
        from kiq import Capsule  # here, so an older build (ab_drain.py) runs the other shapes
    if shape.endswith("s"):
        queues = [Capsule(names, concurrency)]
    elif shape.endswith("w"):
        queues = [Capsule(dict.fromkeys(names, 1), concurrency)]
    workers = [noop, async_noop] if kind == "mixed" else [noop]
    app = Kiq(url, queues=queues, workers=workers, metrics=mode != "none", prefetch=prefetch,  # type: ignore[arg-type]
              extra_reporters=[NoopReporter()] if mode == "reporter" else [])
    app.start()
    done.wait(600)
    cpu1 = thread_cpu()
    assert app._server is not None
    waits, gil_s = app._server.gil_wait_stats()
    app.stop()
    cpu0: dict[str, float] = state.get("cpu0", {})  # type: ignore[assignment]
    elapsed = state["last"] - state["first"]
    print(json.dumps({
        "jobs": state["count"],
        "seconds": elapsed,
        "rate": n / elapsed if elapsed else 0.0,
        "cpu_core_us_per_job": (cpu1.get("core", 0) - cpu0.get("core", 0)) / n * 1e6,
        "cpu_python_us_per_job": (cpu1.get("python", 0) - cpu0.get("python", 0)) / n * 1e6,
        "peak_rss_mb": peak_rss_mb(),
        "wakeups_per_job": waits / n,
        "gil_wait_us_per_job": gil_s / n * 1e6,
        # mixed: how long before the end each class finished (0 for the last one; a starved class ends last)
        "ended_before_last_s": {k: state["last"] - v for k, v in per_class.items()},
    }))


if __name__ == "__main__":
    main()
