"""Stopping while Redis is gone neither hangs nor raises; the jobs stay safe in
the in-progress list for when Redis returns."""

from __future__ import annotations

import threading
import time

import redis

from kiq import Kiq, worker
from support import RedisServer, wait_for


def test_stop_with_redis_gone_reports_and_keeps_jobs() -> None:
    # AOF, so the restarted server has what the stopped one had (as a persistent Redis would).
    server = RedisServer(None, "--appendonly", "yes", "--appendfsync", "always").start()
    gate = threading.Event()
    ran: list[int] = []

    @worker(name="Blocked")
    def blocked(n: int) -> None:
        gate.wait(10)
        ran.append(n)

    app = Kiq(server.url, queues={"default": 2}, workers=[blocked], poll_interval_average=0.1,
              heartbeat_interval=0.3, heartbeat_ttl=1.5, leader_ttl=1)
    app.enqueue_bulk(blocked, [[1], [2], [3]])
    app.start()
    check = redis.Redis(port=server.port, decode_responses=True)
    wip = f"kiq:wip|{app.identity}|default"
    wait_for(lambda: check.llen(wip) == 2, what="2 in progress")
    check.close()
    server.stop()
    gate.set()
    t0 = time.monotonic()
    result = app.stop(timeout=1)
    took = time.monotonic() - t0
    assert result.error is not None and result.requeued == 0, result
    assert took < 20, f"stop took {took:.1f}s with Redis down"
    # Redis is back: nothing kiq could not write was claimed as written. The
    # two jobs it ran wait in its in-progress list (their results never got
    # through), the third in the queue; a new process runs all three.
    server.start()
    try:
        check = redis.Redis(port=server.port, decode_responses=True)
        assert check.llen(wip) == 2 and check.llen("queue:default") == 1
        assert check.get("stat:processed") is None, "no result was written"
        ran.clear()
        rescuer = Kiq(server.url, queues={"default": 2}, workers=[blocked], heartbeat_interval=0.3,
                      leader_ttl=1, orphan_check_interval=0.3, shutdown_timeout=5)
        rescuer.start()
        try:
            wait_for(lambda: sorted(ran) == [1, 2, 3], timeout=20, what="all three jobs run after the outage")
        finally:
            rescuer.stop(5)
        assert check.llen(wip) == 0 and check.get("stat:processed") == "3"
        check.close()
    finally:
        server.close()


def test_held_jobs_turning_slow_while_redis_is_away_go_back_once_it_returns(caplog) -> None:
    """Jobs held for the automatic prefetch turn slow while Redis is away: handing them back
    waits for Redis (retrying), then moves them to the queue, and every job runs exactly once."""
    server = RedisServer(None, "--appendonly", "yes", "--appendfsync", "always").start()
    ran: list[str] = []
    lock = threading.Lock()

    @worker(name="HeldQuick")
    def quick(n: int) -> None:
        with lock:
            ran.append(f"q{n}")

    @worker(name="HeldSlow")
    def slow(n: int) -> None:
        time.sleep(0.3)
        with lock:
            ran.append(f"s{n}")

    app = Kiq(server.url, queues={"default": 2}, workers=[quick, slow], heartbeat_interval=0.3, shutdown_timeout=5)
    check = redis.Redis(port=server.port, decode_responses=True)
    try:
        app.enqueue_bulk(quick, [[i] for i in range(600)])
        app.flush(10)
        app.start()
        wait_for(lambda: len(ran) == 600, timeout=30, what="the quick jobs ran (the queue's jobs are short)")
        app.enqueue_bulk(slow, [[i] for i in range(30)])
        app.flush(10)
        wait_for(lambda: check.llen("queue:default") == 0, what="all 30 slow jobs held by the process")
        check.close()
        with caplog.at_level("WARNING", logger="kiq"):
            server.stop()
            # The first slow jobs end meanwhile: the queue turns slow, and the hand-back fails.
            wait_for(lambda: any("held jobs back to queue" in r.getMessage() for r in caplog.records),
                     timeout=10, what="a hand-back tried while Redis is away")
            server.start()
            wait_for(lambda: len(ran) == 630, timeout=60, what="every job ran")
    finally:
        app.stop(5)
    try:
        check = redis.Redis(port=server.port, decode_responses=True)
        assert sorted(ran) == sorted([f"q{i}" for i in range(600)] + [f"s{i}" for i in range(30)]), "each once"
        wait_for(lambda: check.get("stat:processed") == "630", what="every result written")
        assert check.llen("queue:default") == 0 and check.keys("kiq:wip|*") == []
        check.close()
    finally:
        server.close()
