"""No enqueue is dropped silently: a script that exits while Redis is away
says so on stderr (whether or not logging is configured), saves the jobs to
disk, and names the command that delivers them; delivering them later pushes
each exactly once. A spool left by an earlier run flushes at construction."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import redis

from kiq import Kiq
from support import RedisServer, free_port, wait_for

SCRIPT = textwrap.dedent(
    """
    import sys
    from kiq import Job, Kiq
    app = Kiq(sys.argv[1], shutdown_timeout=1, state_dir=sys.argv[2])
    for i in range(int(sys.argv[3])):
        print(app.enqueue(Job("X", [i])), flush=True)
    """
)


def run_script(url: str, state: Path, n: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", SCRIPT, url, str(state), str(n)], capture_output=True, text=True,
                          timeout=60)


def test_jobs_left_at_exit_are_saved_and_delivered_exactly_once(tmp_path: Path) -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    proc = run_script(url, tmp_path, 5)
    assert proc.returncode == 0
    jids = proc.stdout.split()
    assert len(jids) == 5
    err = proc.stderr
    assert f"waiting up to 1s for 5 buffered jobs to reach Redis at redis://127.0.0.1:{port}/0" in err, err
    assert "Ctrl-C stops waiting" in err
    saved = [d for d in tmp_path.iterdir() if d.name.startswith("unsent-")]
    assert len(saved) == 1, list(tmp_path.iterdir())
    assert f"5 jobs could not reach Redis at redis://127.0.0.1:{port}/0 within 1s; saved to {saved[0]}" in err
    assert f"kiq spool push {saved[0]}" in err
    server = RedisServer(port).start()
    try:
        r = redis.Redis(port=port, decode_responses=True)
        push = subprocess.run([sys.executable, "-m", "kiq", "spool", "push", str(saved[0]), "-r", url],
                              capture_output=True, text=True, timeout=60)
        assert push.returncode == 0 and "5 jobs delivered" in push.stdout, push
        assert sorted(json.loads(p)["jid"] for p in r.lrange("queue:default", 0, -1)) == sorted(jids)
        again = subprocess.run([sys.executable, "-m", "kiq", "spool", "push", str(saved[0]), "-r", url],
                               capture_output=True, text=True, timeout=60)
        assert again.returncode == 0 and "0 jobs delivered" in again.stdout, again
        assert r.llen("queue:default") == 5
    finally:
        server.close()


def test_a_reachable_redis_at_exit_says_nothing(redis_url: str, r: redis.Redis, tmp_path: Path) -> None:
    proc = run_script(redis_url, tmp_path, 3)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert r.llen("queue:default") == 3
    assert list(tmp_path.iterdir()) == []


def test_a_spool_from_an_earlier_run_flushes_at_construction(tmp_path: Path) -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    spool = tmp_path / "spool"
    code = textwrap.dedent(
        """
        import os, sys
        from kiq import Job, Kiq
        app = Kiq(sys.argv[1], buffer_path=sys.argv[2])
        for i in range(300):
            app.enqueue(Job("X", [i]))
        os._exit(0)  # no atexit flush: the jobs stay in the spool
        """
    )
    subprocess.run([sys.executable, "-c", code, url, str(spool)], check=True, timeout=60)
    server = RedisServer(port).start()
    try:
        r = redis.Redis(port=port, decode_responses=True)
        app = Kiq(url, buffer_path=spool)  # never enqueues: construction alone delivers the spool
        wait_for(lambda: r.llen("queue:default") == 300, what="the earlier run's jobs")
        app.flush(5)
        assert sorted(json.loads(p)["args"][0] for p in r.lrange("queue:default", 0, -1)) == list(range(300))
    finally:
        server.close()


def test_flush_includes_the_spool_of_an_earlier_run(tmp_path: Path, redis_url: str, r: redis.Redis) -> None:
    spool = tmp_path / "spool"
    code = textwrap.dedent(
        """
        import os, sys
        from kiq import Job, Kiq
        app = Kiq("redis://127.0.0.1:1/0", buffer_path=sys.argv[1])
        for i in range(50):
            app.enqueue(Job("X", [i]))
        os._exit(0)
        """
    )
    subprocess.run([sys.executable, "-c", code, str(spool)], check=True, timeout=60)
    app = Kiq(redis_url, buffer_path=spool)
    app.flush(10)
    assert r.llen("queue:default") == 50, "flush() returned only once the spool's jobs were in Redis"
    assert isinstance(app, Kiq)
