"""The ``kiq`` command, run as a user runs it: a subprocess against a real redis-server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import http.client
import time
from pathlib import Path

import pytest
import redis

from support import free_port, wait_for

KIQ = Path(sys.executable).with_name("kiq")  # the console script in this venv
NOWHERE = "redis://127.0.0.1:1/0"


def kiq(*args: str, url: str | None = None, cwd: Path | None = None, check: int | None = 0,
        module: bool = False) -> subprocess.CompletedProcess[str]:
    env = {**os.environ}
    if url is not None:
        env["REDIS_URL"] = url
    cmd = [sys.executable, "-m", "kiq", *args] if module else [str(KIQ), *args]
    out = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=60)
    if check is not None:
        assert out.returncode == check, f"exit {out.returncode}\n{out.stdout}\n{out.stderr}"
    return out


def test_enqueue_writes_a_sidekiq_job(redis_url: str, r: redis.Redis) -> None:
    jid = kiq("enqueue", "Billing::Invoice", "42", "bob", '{"cents": 10}', "-q", "billing", "--retry", "3",
              url=redis_url).stdout.strip()
    [raw] = r.lrange("queue:billing", 0, -1)
    job = json.loads(raw)
    assert job["jid"] == jid and job["class"] == "Billing::Invoice" and job["queue"] == "billing"
    assert job["args"] == [42, "bob", {"cents": 10}] and job["retry"] == 3
    assert r.sismember("queues", "billing")
    kiq("enqueue", "Later", "--args-json", '["5"]', "--in", "60", "-r", redis_url, module=True)
    [(raw, score)] = r.zrange("schedule", 0, -1, withscores=True)
    assert json.loads(raw)["args"] == ["5"] and score == pytest.approx(time.time() + 60, abs=5)


def test_stats_and_queues(redis_url: str, r: redis.Redis) -> None:
    for _ in range(3):
        kiq("enqueue", "HardJob", "1", url=redis_url)
    kiq("enqueue", "Mailer", "-q", "mail", url=redis_url)
    r.set("stat:processed", 7)
    text = kiq("stats", url=redis_url).stdout
    assert "processed        7" in text and "enqueued         4" in text
    stats = json.loads(kiq("stats", "--json", url=redis_url).stdout)
    assert stats["processed"] == 7 and stats["queues"] == {"default": 3, "mail": 1}
    lines = kiq("queues", url=redis_url).stdout.splitlines()
    assert lines[0].split() == ["queue", "size", "latency"]
    assert [line.split()[:2] for line in lines[1:]] == [["default", "3"], ["mail", "1"]]
    assert [q["name"] for q in json.loads(kiq("queues", "--json", url=redis_url).stdout)] == ["default", "mail"]


def failed_job(r: redis.Redis, jid: str, zset: str = "retry") -> str:
    payload = json.dumps({"class": "HardJob", "args": [1], "queue": "default", "jid": jid, "retry": True,
                          "retry_count": 0, "error_class": "RuntimeError", "error_message": "boom",
                          "created_at": time.time(), "failed_at": time.time()})
    r.zadd(zset, {payload: time.time() + 600})
    return payload


def test_retry_kill_and_delete_by_jid(redis_url: str, r: redis.Redis) -> None:
    failed_job(r, "a" * 24)
    failed_job(r, "b" * 24)
    failed_job(r, "c" * 24, zset="dead")
    assert "enqueued now (from retry)" in kiq("retry", "a" * 24, url=redis_url).stdout
    assert json.loads(r.lpop("queue:default") or "")["jid"] == "a" * 24
    assert "moved to the dead set" in kiq("kill", "b" * 24, url=redis_url).stdout
    assert r.zcard("retry") == 0 and r.zcard("dead") == 2
    assert "deleted (from dead)" in kiq("delete", "c" * 24, url=redis_url).stdout
    assert r.zcard("dead") == 1
    kiq("enqueue", "HardJob", url=redis_url)
    jid = json.loads(r.lindex("queue:default", 0) or "")["jid"]
    assert "deleted (from queue default)" in kiq("delete", jid, url=redis_url).stdout
    missing = kiq("retry", "f" * 24, url=redis_url, check=1)
    assert "no job ffffffffffffffffffffffff in retry, dead, schedule" in missing.stderr


def _get(address: str, path: str) -> str | None:
    """The body of a 200 answer, else None (not up yet, or not ready)."""
    host, port = address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=2)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.read().decode() if resp.status == 200 else None
    except OSError:
        return None
    finally:
        conn.close()


def test_generated_worker_and_app_run_and_process_a_job(tmp_path: Path, redis_url: str, r: redis.Redis) -> None:
    assert "wrote send_email.py" in kiq("gen", "worker", "SendEmail", "-q", "mail", "-r", "5", "--no-dead",
                                        cwd=tmp_path).stdout
    kiq("gen", "reporter", "AuditReporter", cwd=tmp_path)
    kiq("gen", "app", "jobs", cwd=tmp_path)
    source = (tmp_path / "send_email.py").read_text()
    assert 'queue="mail", retry=5, name="SendEmail", dead=False' in source
    assert "from send_email import SendEmail" in (tmp_path / "jobs.py").read_text()
    typed = subprocess.run([sys.executable, "-m", "mypy", "--strict", "."], cwd=tmp_path, capture_output=True,
                           text=True)
    assert typed.returncode == 0, typed.stdout
    kiq("enqueue", "SendEmail", "ada@example.com", "-q", "mail", url=redis_url)
    health = f"127.0.0.1:{free_port()}"
    proc = subprocess.Popen([str(KIQ), "run", "jobs:app", "-t", "5", "--health", health], cwd=tmp_path,
                            env={**os.environ, "REDIS_URL": redis_url}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: r.get("stat:processed") == "1", timeout=30, what="the job to run")
        ready = wait_for(lambda: _get(health, "/ready"), timeout=15, what="the /ready probe")
        assert json.loads(ready)["status"] == "ok"
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out
    assert "SendEmail" in out and "ran with ('ada@example.com',)" in out  # the worker's own log line
    assert "SendEmail" in out and "succeeded in" in out  # the generated reporter's
    assert "got SIGTERM, stopping" in out
    assert r.llen("queue:mail") == 0


def test_gen_refuses_to_overwrite_and_bad_names(tmp_path: Path) -> None:
    kiq("gen", "worker", "resize_image", cwd=tmp_path)
    assert (tmp_path / "resize_image.py").read_text().count("class ResizeImage(Worker") == 1
    assert "exists; pass --force" in kiq("gen", "worker", "ResizeImage", cwd=tmp_path, check=2).stderr
    kiq("gen", "worker", "ResizeImage", "--force", cwd=tmp_path)
    assert "not a Python identifier" in kiq("gen", "worker", "9lives", cwd=tmp_path, check=2).stderr
    assert "no worker module" in kiq("gen", "app", "jobs", "-w", "nope", cwd=tmp_path, check=2).stderr


def test_bad_module_paths_exit_2(tmp_path: Path, redis_url: str) -> None:
    (tmp_path / "broken.py").write_text("import nonexistent_dependency\n")
    (tmp_path / "plain.py").write_text("x = 1\n")
    cases = {
        "no_such_module": "no module named 'no_such_module'",
        "plain:nope": "module 'plain' has no attribute 'nope'",
        "plain:x": "plain:x is a int, not a kiq.Kiq",
        "plain": "module 'plain' has no kiq.Kiq objects",
        "broken": "importing 'broken' failed: ModuleNotFoundError",
        "bad path!": "is not a module path",
    }
    for target, message in cases.items():
        assert message in kiq("run", target, url=redis_url, cwd=tmp_path, check=2).stderr, target


def test_unreachable_redis_exits_3(tmp_path: Path) -> None:
    kiq("gen", "worker", "Ping", cwd=tmp_path)
    kiq("gen", "app", "jobs", cwd=tmp_path)
    for args in (["run", "jobs"], ["stats"], ["queues"], ["enqueue", "HardJob"], ["retry", "a" * 24]):
        out = kiq(*args, url=NOWHERE, cwd=tmp_path, check=3)
        assert f"cannot reach Redis at {NOWHERE}" in out.stderr, args


def test_usage_errors_exit_2() -> None:
    assert "--retry takes true, false or a number" in kiq("enqueue", "X", "--retry", "maybe", check=2).stderr
    assert "the following arguments are required" in kiq("enqueue", check=2).stderr
    assert kiq("--help").stdout.startswith("usage: kiq")


def test_batches_and_batch(redis_url: str, r: redis.Redis) -> None:
    from kiq import Job, Kiq

    app = Kiq(redis_url)
    batch = app.batch(description="nightly import")
    with batch.jobs():
        app.enqueue(Job("Import", [1]))
    lines = kiq("batches", url=redis_url).stdout.splitlines()
    assert lines[0].split()[:3] == ["bid", "created", "(UTC)"]
    assert lines[1].split()[0] == batch.bid and "running" in lines[1] and lines[1].endswith("nightly import")
    [listed] = json.loads(kiq("batches", "--json", url=redis_url).stdout)
    assert listed["bid"] == batch.bid and listed["total"] == 1 and listed["pending"] == 1
    text = kiq("batch", batch.bid, url=redis_url).stdout
    assert "pending        1" in text and "description    nightly import" in text
    assert json.loads(kiq("batch", batch.bid, "--json", url=redis_url).stdout)["failed_jids"] == []
    missing = kiq("batch", "NoSuchBatch123", url=redis_url, check=1)
    assert "no batch NoSuchBatch123" in missing.stderr
    r.flushall()
    assert kiq("batches", url=redis_url).stdout.strip() == "no batches"
