"""Dashboard page times with a big retry set.

    python bench/bench_web.py [--jobs 100000] [--runs 20]

Fills the ``retry`` set of a throwaway ``redis-server`` (or ``$REDIS_URL``,
which it flushes) with N failed-job payloads shaped like kiq's and Sidekiq's
(error fields, a backtrace, ~600 bytes each), then times full HTTP GETs of
dashboard pages over loopback against the ASGI app under uvicorn: the first
page, a page deep in the set, a job page, the dashboard, and a filtered
search (which reads the set in windows and stops after ``scan_budget``
entries). Reports the median and worst of ``--runs`` requests per page.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import threading
import time
import urllib.request

import redis
import uvicorn

import kiq.web
from kiq import _kiq
from kiq.demo import throwaway_redis
from kiq.redis_server import free_port



def fill(r: redis.Redis, n: int) -> str:
    backtrace = _kiq.encode_backtrace([f"app/jobs/charge.py:{i}:in `perform'" for i in range(20)])
    now = time.time()
    pipe = r.pipeline(transaction=False)
    key = ""
    for i in range(n):
        jid = f"{i:024x}"
        payload = json.dumps({
            "retry": True, "queue": "billing" if i % 4 else "mail", "class": "Billing::Charge" if i % 10 else "Mailer",
            "args": [i, {"customer": f"cus_{i}", "amount": i * 1.5}], "jid": jid, "created_at": now - 3600,
            "enqueued_at": now - 60, "error_message": f"card declined for customer cus_{i}",
            "error_class": "Stripe::CardError", "failed_at": now - 30, "retry_count": i % 25,
            "error_backtrace": backtrace,
        }, separators=(",", ":"))
        score = now + 15 + i
        pipe.zadd("retry", {payload: score})
        if i == n // 2:
            key = f"{score!r}-{jid}"
        if i % 5000 == 4999:
            pipe.execute()
    pipe.execute()
    return key


def timed(url: str, runs: int) -> tuple[float, float]:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        with urllib.request.urlopen(url, timeout=60) as resp:
            resp.read()
            assert resp.status == 200
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times), max(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=20)
    ns = ap.parse_args()
    with contextlib.nullcontext(os.environ["REDIS_URL"]) if os.environ.get("REDIS_URL") else throwaway_redis() as url:
        r = redis.Redis.from_url(url, decode_responses=True)
        r.flushdb()
        t = time.perf_counter()
        key = fill(r, ns.jobs)
        print(f"filled retry with {r.zcard('retry'):,} jobs in {time.perf_counter() - t:.1f}s "
              f"({r.memory_usage('retry') or 0:,} bytes)")
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(kiq.web.create_app(url), host="127.0.0.1", port=port,
                                               log_level="warning", lifespan="off"))
        threading.Thread(target=server.run, daemon=True).start()
        while not server.started:
            time.sleep(0.02)
        base = f"http://127.0.0.1:{port}"
        pages = {
            "retries, first page (25 jobs)": "/retries",
            "retries, page 2,000 (ZREVRANGE offset 49,975)": "/retries?page=2000",
            "retries, 500 jobs per page": "/retries?count=500",
            "a job page (found by score and jid)": "/retries/" + key,
            "dashboard": "/",
            "stats.json (the live chart's poll)": "/stats.json",
            "filter, class 'mailer' (fills a page)": "/retries?class=mailer",
            "filter, text matching nothing (one 10,000-entry budget)": "/retries?q=no-such-text",
        }
        timed(base + "/retries", 3)  # warm up
        print(f"{'page':<60} {'median ms':>10} {'worst ms':>10}")
        for name, path in pages.items():
            median, worst = timed(base + path, ns.runs)
            print(f"{name:<60} {median:>10.1f} {worst:>10.1f}")
        server.should_exit = True


if __name__ == "__main__":
    main()
