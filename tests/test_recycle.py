"""Recycling: a process stops gracefully after max_jobs, or above max_memory_bytes, losing nothing."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from kiq import Job, Kiq, worker
from kiq.errors import ConfigError

QUEUE = "recycle"


def run_with_guard(app: Kiq, limit: float = 30) -> float:
    """Runs ``app.run()`` (it must return by itself); returns how long it ran."""
    guard = threading.Timer(limit, app.request_stop)
    guard.start()
    t0 = time.monotonic()
    try:
        app.run()
    finally:
        guard.cancel()
    took = time.monotonic() - t0
    assert took < limit, "run() did not return by itself"
    return took


def test_max_jobs_stops_gracefully_and_loses_nothing(make_app, r, caplog) -> None:
    done: list[int] = []
    lock = threading.Lock()

    @worker(name="Counted", queue=QUEUE)
    def counted(n: int) -> None:
        time.sleep(0.002)
        with lock:
            done.append(n)

    app = make_app(queues={QUEUE: 5}, workers=[counted], max_jobs=50, heartbeat_interval=0.5)
    app.enqueue_bulk(counted, [[i] for i in range(300)], sync=True)
    with caplog.at_level(logging.INFO, logger="kiq"):
        run_with_guard(app)
    assert "recycling" in caplog.text
    # The 50th finished job quiets the process; jobs already fetched still run or go back.
    assert 50 <= len(done) <= 50 + 5, len(done)
    assert r.llen(f"queue:{QUEUE}") == 300 - len(done), "every job not run is back in its queue"
    assert not r.keys("kiq:wip|*")
    waiting = [json.loads(m)["args"][0] for m in r.lrange(f"queue:{QUEUE}", 0, -1)]
    assert sorted(done + waiting) == list(range(300)), "each job run once or waiting, none lost"


def test_max_memory_bytes_recycles_at_the_next_heartbeat(make_app, caplog) -> None:
    app = make_app(queues={QUEUE: 1}, max_memory_bytes=1 << 20, heartbeat_interval=0.2)  # any process is above 1 MiB
    with caplog.at_level(logging.INFO, logger="kiq"):
        took = run_with_guard(app)
    assert "is above max_memory_bytes" in caplog.text and "recycling" in caplog.text
    assert took < 10


def test_bad_limits_are_clear_errors() -> None:
    for bad in (0, -1, True, 1.5, "10"):
        with pytest.raises(ConfigError, match="max_jobs must be a positive int"):
            Kiq(max_jobs=bad)  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match="max_memory_bytes must be a positive int"):
            Kiq(max_memory_bytes=bad)  # type: ignore[arg-type]


def test_kiq_run_max_jobs_exits_0_by_itself(tmp_path: Path, redis_url: str, r) -> None:
    (tmp_path / "jobs.py").write_text(textwrap.dedent(
        f"""
        from kiq import Kiq, worker

        @worker(name="Tick", queue="{QUEUE}")
        def tick(n: int) -> None:
            pass

        app = Kiq(queues={{"{QUEUE}": 2}}, workers=[tick])
        """
    ))
    Kiq(redis_url).enqueue_bulk(Job("Tick", queue=QUEUE), [[i] for i in range(20)], sync=True)
    kiq = Path(sys.executable).with_name("kiq")
    out = subprocess.run([str(kiq), "run", "jobs:app", "--max-jobs", "5"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=60, env={**os.environ, "REDIS_URL": redis_url})
    assert out.returncode == 0, out.stderr
    processed = int(r.get("stat:processed") or 0)
    assert 5 <= processed <= 7 and r.llen(f"queue:{QUEUE}") == 20 - processed
    assert "recycling" in out.stderr
    bad = subprocess.run([str(kiq), "run", "jobs:app", "--max-jobs", "0"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=60, env={**os.environ, "REDIS_URL": redis_url})
    assert bad.returncode == 2 and "--max-jobs must be at least 1" in bad.stderr
