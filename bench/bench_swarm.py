"""The swarm (``kiq run -p N``): CPU-bound throughput, memory shared by
preloading, and how fast a killed child's jobs come back.

    python bench/bench_swarm.py [--jobs 3000] [--runs 3] [--processes 2]

1. Throughput: N jobs of 5 ms of pure Python each (``time.thread_time``),
   drained by one ``kiq run`` process, then by ``kiq run -p P``; each process
   works its queue with 2 threads (more cannot help a CPU-bound job under the
   GIL). The drain time runs from the first job's start to the last job's end
   (recorded by the jobs), so process start-up is left out. Median of the runs.
2. Memory: an app that imports a large module (the standard library's big
   packages plus 300,000 small dicts, about 150 MB) run with ``-p P``, then
   with ``-p P --no-preload``; once every child fetches, each process's RSS
   and PSS (``/proc/<pid>/smaps_rollup``: a page shared by k processes counts
   1/k to each). The parent's own numbers too.
3. Recovery: ``-p P`` with 50 threads per child and 2,000 jobs of 100 ms; one
   child is killed (SIGKILL) once it holds 50 jobs; reported: how long until
   none of its jobs is left in its in-progress list (they are back in the
   queue), and until the parent has a new child fetching.

Uses $REDIS_URL if set (it is flushed!), else a throwaway redis-server.
Numbers are reported, never asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import redis

from kiq import Kiq
from kiq.demo import throwaway_redis
from kiq.swarm.memory import rss_pss_bytes

BURN = textwrap.dedent(
    """
    import os, time
    import redis
    from kiq import Kiq, worker

    r = redis.Redis.from_url(os.environ["REDIS_URL"])

    @worker(name="Burn")
    def burn(n: int) -> None:
        start = time.time()
        end = time.thread_time() + 0.005
        while time.thread_time() < end:
            pass
        r.pipeline(transaction=False).zadd("started", {n: start}).zadd("ended", {n: time.time()}).execute()

    app = Kiq(queues={"default": 2}, workers=[burn], heartbeat_interval=1, shutdown_timeout=5)
    """
)

FAT = textwrap.dedent(
    """
    import asyncio, decimal, email.mime.multipart, http.server, json, logging.handlers, sqlite3, xml.etree.ElementTree
    import os
    from kiq import Kiq, worker

    # An application's import-time state: 300,000 small dicts (gc-tracked, like ORM metadata or caches).
    TABLE = [{"id": i, "name": f"row-{i}", "tags": ("a", "b")} for i in range(300_000)]

    @worker(name="Idle")
    def idle() -> None:
        pass

    app = Kiq(queues={"default": 5}, workers=[idle], heartbeat_interval=1, shutdown_timeout=5)
    """
)

NAPS = textwrap.dedent(
    """
    import os, time
    import redis
    from kiq import Kiq, worker

    r = redis.Redis.from_url(os.environ["REDIS_URL"])

    @worker(name="Nap")
    def nap(n: int) -> None:
        time.sleep(0.1)
        r.hincrby("runs", n, 1)

    app = Kiq(queues={"default": 50}, workers=[nap], heartbeat_interval=0.5, shutdown_timeout=5)
    """
)


@contextlib.contextmanager
def kiq_run(where: Path, url: str, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    """``kiq run jobs:app ARGS`` in ``where``, stopped (TERM, then waited for) at the end."""
    proc = subprocess.Popen([sys.executable, "-m", "kiq", "run", "jobs:app", "--log-level", "warning", *args],
                            cwd=where, env={**os.environ, "REDIS_URL": url}, stderr=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def children_of(parent: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()
                if int(stat[1]) == parent:
                    out.append(int(entry))
    return sorted(out)


def wait(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            sys.exit(f"timed out waiting for {what}")
        time.sleep(0.02)


def throughput(url: str, where: Path, jobs: int, runs: int, processes: int) -> None:
    r = redis.Redis.from_url(url, decode_responses=True)
    (where / "jobs.py").write_text(BURN)
    results: dict[str, list[float]] = {"1 process": [], f"-p {processes}": []}
    for _ in range(runs):
        for label, args in (("1 process", ()), (f"-p {processes}", ("-p", str(processes)))):
            r.flushall()
            Kiq(url, buffer=False).enqueue_bulk("Burn", [[i] for i in range(jobs)], sync=True)
            with kiq_run(where, url, *args):
                wait(lambda: r.zcard("ended") == jobs, 600, f"{jobs} jobs with {label}")
            first = float(r.zrange("started", 0, 0, withscores=True)[0][1])
            last = float(r.zrange("ended", -1, -1, withscores=True)[0][1])
            results[label].append(jobs / (last - first))
    one, many = (statistics.median(v) for v in results.values())
    print(f"\nthroughput, {jobs} jobs of 5 ms CPU each, median of {runs} (all runs: "
          + "; ".join(f"{k}: {', '.join(f'{x:.0f}' for x in v)}" for k, v in results.items()) + ")")
    print("| processes | jobs/s |\n|---|---|")
    print(f"| 1 (plain `kiq run`) | {one:.0f} |\n| {processes} (`kiq run -p {processes}`) | {many:.0f} |")
    print(f"ratio: {many / one:.2f}x (load average now {os.getloadavg()[0]:.1f})")


def memory(url: str, where: Path, processes: int) -> None:
    r = redis.Redis.from_url(url, decode_responses=True)
    (where / "jobs.py").write_text(FAT)
    print(f"\nmemory, -p {processes}, an app importing ~150 MB (MiB; PSS counts a shared page 1/k to each of k sharers)")
    print("| mode | process | RSS | PSS |\n|---|---|---|---|")
    for label, args in (("preload", ()), ("--no-preload", ("--no-preload",))):
        r.flushall()
        with kiq_run(where, url, "-p", str(processes), *args) as proc:
            wait(lambda: r.scard("processes") == processes, 120, "every child's heartbeat")
            time.sleep(2)
            kids = children_of(proc.pid)
            total_pss = 0
            for name, pid in [("parent", proc.pid), *((f"child {i}", p) for i, p in enumerate(kids))]:
                rss, pss = rss_pss_bytes(pid) or (0, 0)
                total_pss += pss
                print(f"| {label} | {name} | {rss / 2**20:.0f} | {pss / 2**20:.0f} |")
            print(f"| {label} | all (sum of PSS) | | {total_pss / 2**20:.0f} |")


def recovery(url: str, where: Path, processes: int) -> None:
    r = redis.Redis.from_url(url, decode_responses=True)
    (where / "jobs.py").write_text(NAPS)
    r.flushall()
    Kiq(url, buffer=False).enqueue_bulk("Nap", [[i] for i in range(2000)], sync=True)
    with kiq_run(where, url, "-p", str(processes)) as proc:
        victim: list[str] = []

        def busy() -> bool:
            for identity in r.smembers("processes"):
                if sum(r.llen(k) for k in r.keys(f"kiq:wip|{identity}|*")) >= 50:
                    victim.append(identity)
                    return True
            return False

        wait(busy, 60, "a child with 50 jobs in flight")
        os.kill(int(victim[0].split(":")[-2]), signal.SIGKILL)
        t0 = time.monotonic()
        wait(lambda: not any(r.llen(k) for k in r.keys(f"kiq:wip|{victim[0]}|*")), 60, "its jobs back")
        back = time.monotonic() - t0
        wait(lambda: r.scard("processes") == processes and victim[0] not in r.smembers("processes"), 60,
             "a new child")
        replaced = time.monotonic() - t0
        wait(lambda: r.hlen("runs") == 2000, 300, "all 2,000 jobs")
        twice = sum(1 for v in r.hvals("runs") if int(v) > 1)
        print(f"\nrecovery: a child killed with 50 jobs in flight: its jobs back in their queue after {back:.3f}s, "
              f"a new child beating after {replaced:.2f}s; all 2,000 jobs ran ({twice} twice: those killed mid-run)")
        del proc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--only", choices=["throughput", "memory", "recovery"])
    ns = parser.parse_args()
    with contextlib.ExitStack() as stack:
        url = os.environ.get("REDIS_URL") or stack.enter_context(throwaway_redis())
        where = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="kiq-swarm-bench-")))
        print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} (other work on the machine skews the "
              f"ratio), Python {sys.version.split()[0]}, Redis at {url}")
        if ns.only in (None, "throughput"):
            throughput(url, where, ns.jobs, ns.runs, ns.processes)
        if ns.only in (None, "memory"):
            memory(url, where, ns.processes)
        if ns.only in (None, "recovery"):
            recovery(url, where, ns.processes)


if __name__ == "__main__":
    main()
