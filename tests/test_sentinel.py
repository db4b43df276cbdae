"""Redis Sentinel: a primary fails over and processing carries on, against a
sentinel and two redis-servers the test starts on loopback."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import redis

from kiq import Kiq, Worker
from support import RedisServer, free_port, wait_for


def test_processing_continues_after_a_failover(tmp_path: Path) -> None:
    primary = RedisServer().start()
    replica = RedisServer(None, "--replicaof", "127.0.0.1", str(primary.port)).start()
    sport = free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(
        f"port {sport}\nbind 127.0.0.1\ndir {tmp_path}\n"
        f"sentinel monitor mymaster 127.0.0.1 {primary.port} 1\n"
        "sentinel down-after-milliseconds mymaster 1000\n"
        "sentinel failover-timeout mymaster 5000\n"
    )
    sentinel = subprocess.Popen(["redis-server", str(conf), "--sentinel"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    done: set[int] = set()
    lock = threading.Lock()

    class Job(Worker, name="SentinelJob"):
        def perform(self, n: int) -> None:
            with lock:
                done.add(n)

    app: Kiq | None = None
    try:
        s = redis.Redis(port=sport, decode_responses=True)
        wait_for(lambda: _ask(s), what="the sentinel to know the master")
        rep = redis.Redis(port=replica.port, decode_responses=True)
        wait_for(lambda: rep.info("replication").get("master_link_status") == "up", what="replication")
        app = Kiq(f"redis+sentinel://127.0.0.1:{sport}/mymaster/0", workers=[Job], heartbeat_interval=0.5,
                  poll_interval_average=0.2)
        app.start()
        app.enqueue_bulk(Job, [[i] for i in range(100)], sync=True)
        wait_for(lambda: len(done) == 100, what="jobs on the first primary")
        primary.stop()  # the primary dies; Sentinel promotes the replica
        wait_for(lambda: _ask(s) == ("127.0.0.1", str(replica.port)), timeout=30, what="the failover")
        wait_for(lambda: rep.info("replication")["role"] == "master", what="the replica promoted")
        # Enqueues during and after the failover: buffered, then flushed to the new primary.
        for i in range(100, 200):
            app.enqueue(Job.new(i))
        app.flush(30)
        wait_for(lambda: len(done) == 200, timeout=30, what="jobs on the new primary")
        assert done == set(range(200))
        assert rep.llen("queue:default") == 0
        wait_for(lambda: rep.sismember("processes", app.identity), what="the heartbeat on the new primary")
        rep.close()
        s.close()
    finally:
        if app is not None:
            app.stop(2)
        sentinel.kill()
        sentinel.wait()
        replica.close()
        primary.close()


def _ask(s: redis.Redis) -> tuple[str, str] | None:
    try:
        addr = s.execute_command("SENTINEL", "get-master-addr-by-name", "mymaster")
        return tuple(addr) if addr else None  # type: ignore[return-value]
    except redis.RedisError:
        return None
