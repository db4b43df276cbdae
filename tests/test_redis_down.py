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
