"""Stopping while Redis is gone neither hangs nor raises; the jobs stay safe in
the in-progress list for when Redis returns."""

from __future__ import annotations

import threading
import time

import redis

from kiq import Kiq, worker
from support import RedisServer, wait_for


def test_stop_with_redis_gone_reports_and_keeps_jobs() -> None:
    server = RedisServer().start()
    gate = threading.Event()

    @worker(name="Blocked")
    def blocked(n: int) -> None:
        gate.wait(10)

    app = Kiq(server.url, queues={"default": 2}, workers=[blocked], poll_interval_average=0.1)
    app.enqueue_bulk(blocked, [[1], [2], [3]])
    app.start()
    check = redis.Redis(port=server.port)
    wait_for(lambda: check.llen(f"kiq:wip|{app.identity}|default") == 2, what="2 in progress")
    check.close()
    port = server.port
    server.stop()
    gate.set()
    t0 = time.monotonic()
    result = app.stop(timeout=1)
    took = time.monotonic() - t0
    assert result.error is not None and result.requeued == 0, result
    assert took < 20, f"stop took {took:.1f}s with Redis down"
    # Redis is back (empty, as a restarted server without persistence would
    # be): nothing kiq could not write was claimed as written.
    server = RedisServer(port).start()
    server.close()
