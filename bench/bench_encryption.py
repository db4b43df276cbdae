"""What Sidekiq Enterprise-format encryption costs.

    python bench/bench_encryption.py [--jobs 50000] [--runs 3]

1. Encrypt and decrypt of one secret bag through the Python API
   (``Keyring.encrypt`` / ``Keyring.decrypt``: Python values to Marshal and
   back included), for a ~1 KB bag and a small one. The core alone is
   ``cargo run --release --example crypto_bench``.
2. The drain of N no-op jobs ``NoopJob(i, bag)`` by one process (concurrency
   25), plain against ``encrypt=True`` (decrypted at fetch by the core), runs
   interleaved so the machine's noise hits both alike; median of the runs.

Uses $REDIS_URL if set, else a throwaway redis-server. Reported here, never
asserted in tests.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import threading
import time
import timeit
from collections.abc import Iterator
from typing import Any

import redis

from kiq import Job, Kiq, _kiq, worker
from kiq.demo import throwaway_redis

KEYS = {1: bytes(range(32))}
BAGS: dict[str, Any] = {
    "1 KB": {**{f"field_{i:02}": "x" * 32 for i in range(20)}, "amount": 1234.56, "account": 9_876_543_210},
    "small": {"ssn": "123-45-6789", "name": "Ada Lovelace"},
}


def per_call(fn: Any, n: int) -> float:
    return min(timeit.repeat(fn, number=n, repeat=5)) / n * 1e6


def api_costs(n: int) -> None:
    ring = _kiq.Keyring(KEYS)
    print("| bag | Marshal bytes → Base64 bytes | encrypt µs | decrypt µs |\n|---|---|---|---|")
    for name, bag in BAGS.items():
        text = ring.encrypt(bag)
        blob = len(_kiq.read_envelope(text)[4])
        enc = per_call(lambda b=bag: ring.encrypt(b), n)
        dec = per_call(lambda t=text: ring.decrypt(t), n)
        print(f"| {name} | {blob} → {len(text)} | {enc:.1f} | {dec:.1f} |")


def drain(url: str, n: int, bag: Any, encrypt: bool) -> float:
    r = redis.Redis.from_url(url)
    r.flushdb()
    state = {"count": 0, "first": 0.0, "last": 0.0}
    done = threading.Event()
    lock = threading.Lock()

    @worker(name="NoopJob")
    def noop(i: int, secret: Any) -> None:
        with lock:
            state["count"] += 1
            c = state["count"]
        if c == 1:
            state["first"] = time.perf_counter()
        elif c == n:
            state["last"] = time.perf_counter()
            done.set()

    app = Kiq(url, queues={"default": 25}, workers=[noop], encryption_keys=KEYS)
    template = Job("NoopJob", encrypt=encrypt)
    for start in range(0, n, 10_000):
        app.enqueue_bulk(template, ([i, bag] for i in range(start, min(start + 10_000, n))))
    app.flush()
    app.start()
    if not done.wait(600):
        raise SystemExit(f"only {state['count']} of {n} jobs ran")
    app.stop()
    return n / (state["last"] - state["first"])


@contextlib.contextmanager
def redis_url() -> Iterator[str]:
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
    else:
        with throwaway_redis() as url:
            yield url


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=50_000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--calls", type=int, default=20_000, help="calls per timing of encrypt/decrypt")
    ns = p.parse_args()
    api_costs(ns.calls)
    print()
    with redis_url() as url:
        rates: dict[tuple[str, bool], list[float]] = {}
        for _ in range(ns.runs):
            for name, bag in BAGS.items():
                for encrypt in (False, True):
                    rates.setdefault((name, encrypt), []).append(drain(url, ns.jobs, bag, encrypt))
    print(f"| bag | plain jobs/s | encrypted jobs/s | encrypted / plain |  (N={ns.jobs}, median of {ns.runs})")
    print("|---|---|---|---|")
    for name in BAGS:
        plain, enc = statistics.median(rates[name, False]), statistics.median(rates[name, True])
        print(f"| {name} | {plain:,.0f} | {enc:,.0f} | {enc / plain:.2f} |")


if __name__ == "__main__":
    main()
