"""HTTP health checks for Kubernetes probes: /live and /ready, answered by the core."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time

import pytest
import redis

from kiq import Job, Kiq, worker
from kiq.errors import ConfigError
from support import RedisServer, wait_for


def metrics(address: str) -> dict[str, float]:
    """The samples of the Prometheus text at /metrics."""
    host, port = address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        assert resp.status == 200 and resp.getheader("Content-Type", "").startswith("text/plain")
        lines = resp.read().decode().splitlines()
    finally:
        conn.close()
    return {k: float(v) for k, v in (line.rsplit(" ", 1) for line in lines if not line.startswith("#"))}


def probe(address: str, path: str, method: str = "GET") -> tuple[int, dict[str, object]]:
    host, port = address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, json.loads(body) if body else {}
    finally:
        conn.close()


def test_ready_follows_quiet_and_redis_while_live_stays_up() -> None:
    server = RedisServer().start()
    hold = threading.Event()

    @worker(name="Hold")
    def held() -> None:
        hold.wait(10)

    app = Kiq(server.url, workers=[held], heartbeat_interval=0.3, health_address="127.0.0.1:0", shutdown_timeout=5)
    try:
        app.start()
        address = app.health_address
        assert address is not None and not address.endswith(":0")
        wait_for(lambda: probe(address, "/ready")[0] == 200, what="ready after the first heartbeat")
        app.enqueue(held.new(), sync=True)
        status, body = wait_for(lambda: (s := probe(address, "/ready"))[1]["busy"] == 1 and s, what="busy 1")
        assert status == 200 and body["status"] == "ok" and body["identity"] == app.identity
        assert body["state"] == "running" and isinstance(body["last_beat_age"], float)
        hold.set()
        wait_for(lambda: metrics(address).get('kiq_jobs_finished_total{outcome="success"}') == 1, what="counted")
        samples = metrics(address)
        assert samples['kiq_queue_concurrency{queue="default"}'] == 25 and samples["kiq_jobs_running"] == 0
        assert samples["kiq_quiet"] == 0 and samples["kiq_leader"] in (0, 1)
        assert 0 <= samples["kiq_heartbeat_age_seconds"] < 5

        app.quiet()
        status, body = probe(address, "/ready")
        assert (status, body["state"]) == (503, "quiet") and "quiet" in str(body["reason"])
        assert probe(address, "/live")[0] == 200
        app.configure(quiet=False)
        assert probe(address, "/ready")[0] == 200

        redis.Redis(port=server.port).shutdown(nosave=True)
        status, body = wait_for(lambda: (s := probe(address, "/ready"))[0] == 503 and s, timeout=10,
                                what="unready while Redis is down")
        assert "Redis unreachable" in str(body["reason"])
        assert probe(address, "/live")[0] == 200, "a Redis outage is no reason to restart the worker"
        server.start()
        wait_for(lambda: probe(address, "/ready")[0] == 200, timeout=15, what="ready again once Redis is back")

        assert probe(address, "/nope")[0] == 404
        assert probe(address, "/live", "POST")[0] == 405
        assert probe(address, "/live", "HEAD") == (200, {})
        app.stop()
        with pytest.raises(OSError):
            probe(address, "/live")
    finally:
        hold.set()
        app.stop(1)
        server.close()


def test_probes_answer_while_a_job_holds_the_gil(make_app) -> None:
    started = threading.Event()

    @worker(name="Spin")
    def spin() -> None:
        started.set()
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            sum(range(200_000))  # pure Python: the GIL is only released at switch intervals

    app = make_app(workers=[spin], heartbeat_interval=0.3, health_address="127.0.0.1:0")
    app.start()
    address = app.health_address
    wait_for(lambda: probe(address, "/ready")[0] == 200, what="ready")
    app.enqueue(spin.new())
    assert started.wait(5)
    took = []
    for _ in range(5):
        t = time.monotonic()
        assert probe(address, "/live")[0] == 200
        took.append(time.monotonic() - t)
    assert max(took) < 1.0, took


def test_bad_or_taken_addresses_are_clear_errors(make_app, r) -> None:
    with pytest.raises(ConfigError, match="HOST:PORT"):
        Kiq(health_address="8080")
    app = make_app(health_address="127.0.0.1:notaport")
    with pytest.raises(ConfigError, match="health_address must be HOST:PORT"):
        app.start()
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        port = taken.getsockname()[1]
        app = make_app(health_address=f"127.0.0.1:{port}")
        app.enqueue(Job("Waiting"), sync=True)
        with pytest.raises(ConfigError, match=f"cannot answer health checks on 127.0.0.1:{port}"):
            app.start()
        assert not app.running
        time.sleep(0.3)
        assert r.llen("queue:default") == 1, "a failed start fetches nothing"
    finally:
        taken.close()


STUCK = """
import sys
from kiq import Kiq, worker

@worker(name="Spin")
def spin() -> None:
    sum(range(400_000_000))  # C code holding the GIL for seconds

app = Kiq(sys.argv[1], workers=[spin], heartbeat_interval=0.3, health_address="127.0.0.1:" + sys.argv[2],
          stuck_after=0.5, shutdown_timeout=30)
app.run()
"""


def test_a_job_stuck_in_c_code_shows_in_ready_and_metrics() -> None:
    import subprocess
    import sys

    from support import free_port

    server = RedisServer().start()
    port = free_port()
    address = f"127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-c", STUCK, server.url, str(port)])
    try:
        wait_for(lambda: _ready(address), timeout=20, what="ready")
        Kiq(server.url).enqueue(Job("Spin"), sync=True)
        status, body = wait_for(lambda: (s := probe(address, "/ready"))[0] == 503 and s, timeout=15,
                                what="unready while the job spins")
        assert "job Spin jid=" in str(body["reason"]) and "longer than stuck_after (0.5s)" in str(body["reason"])
        assert metrics(address)["kiq_job_running_seconds"] >= 1
        assert probe(address, "/live")[0] == 200
        wait_for(lambda: probe(address, "/ready")[0] == 200, timeout=60, what="ready again once it finished")
    finally:
        proc.terminate()
        proc.wait(30)
        server.close()


def _ready(address: str) -> bool:
    try:
        return probe(address, "/ready")[0] == 200
    except OSError:
        return False
