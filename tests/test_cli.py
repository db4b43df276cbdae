"""The ``kiq`` command, run as a user runs it: a subprocess against a real redis-server."""

from __future__ import annotations

import contextlib
import json
import re
import os
import signal
import subprocess
import sys
import http.client
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from kiq import Worker
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


@contextlib.contextmanager
def kiq_run(cwd: Path, *args: str, env: dict[str, str] | None = None) -> Iterator[None]:
    """``kiq run jobs:app ARGS`` in ``cwd`` while the block runs; then SIGTERM, which must end it with 0."""
    proc = subprocess.Popen([str(KIQ), "run", "jobs:app", "-t", "2", *args], cwd=cwd, env={**os.environ, **(env or {})},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


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
    assert "got SIGTERM: stopping gracefully" in out
    assert " started: queues " in out and "kiq kiq" not in out, "the logger's name is not repeated"
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


def test_jobs_lists_sets_and_queues_as_a_table_or_json(redis_url: str, r: redis.Redis) -> None:
    now = time.time()
    for i in range(30):
        job = {"class": "HardJob" if i % 3 else "Mailer", "args": [i, "x" * 60, {"token": "c2VjcmV0"}],
               "queue": "critical", "jid": f"{i:024d}", "error_class": "ValueError" if i % 2 else "KeyError",
               "error_message": f"bad {i}", "retry_count": 2, "encrypt": i == 4}
        r.zadd("retry", {json.dumps(job): now + 300 * (i + 1)})
    r.zadd("dead", {json.dumps({"class": "Old", "args": [], "jid": "d" * 24, "queue": "q"}): now - 3600})
    r.zadd("schedule", {json.dumps({"class": "Later", "args": [1], "jid": "s" * 24, "queue": "q"}): now + 7500})
    kiq("enqueue", "First", "1", "-q", "work", url=redis_url)
    kiq("enqueue", "Second", "2", "-q", "work", url=redis_url)

    out = kiq("jobs", "retry", "--limit", "5", url=redis_url)
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["JID", "CLASS", "ARGS", "QUEUE", "ERROR", "WHEN"]
    assert [line.split()[0] for line in lines[1:]] == [f"{i:024d}" for i in range(5)], "soonest first"
    assert "Mailer" in lines[1] and "KeyError: bad 0" in lines[1] and re.search(r"in 4m[45]\ds$|in 5m0s$", lines[1]), "the wait, counted from now (the CLI starts slowly under load)"
    assert all(len(line) < 200 for line in lines), "long arguments are cut"
    assert "5 shown of 30 in the retry set; more: --start 5" in out.stderr
    mailers = json.loads(kiq("jobs", "retry", "--class", "Mailer", "--error", "keyerror", "--json", "--limit", "100",
                             url=redis_url).stdout)
    assert [j["jid"] for j in mailers] == [f"{i:024d}" for i in range(0, 30, 6)]
    assert mailers[0]["args"] == [0, "x" * 60, {"token": "c2VjcmV0"}] and mailers[0]["retry_count"] == 2
    [secret] = [j for j in json.loads(kiq("jobs", "retry", "--json", url=redis_url).stdout) if j["jid"].endswith("04")]
    assert secret["args"] == [4, "x" * 60, "[encrypted data]"], "an encrypted job's last argument is never shown"
    page2 = json.loads(kiq("jobs", "retry", "--json", "--start", "25", url=redis_url).stdout)
    assert len(page2) == 5
    assert "Old" in kiq("jobs", "dead", url=redis_url).stdout.splitlines()[1]
    assert "in 2h" in kiq("jobs", "scheduled", url=redis_url).stdout
    queued = json.loads(kiq("jobs", "queue", "work", "--json", url=redis_url).stdout)
    assert [j["class"] for j in queued] == ["First", "Second"], "next to run first"
    assert kiq("jobs", "busy", url=redis_url).stdout.strip() == "no jobs"
    assert "expected retry | dead | scheduled | queue NAME" in kiq("jobs", "nope", url=redis_url, check=2).stderr
    assert "name the queue" in kiq("jobs", "queue", url=redis_url, check=2).stderr


def test_retry_and_delete_all_confirm_counts(redis_url: str, r: redis.Redis) -> None:
    for i in range(12):
        payload = {"class": "HardJob" if i % 2 else "Mailer", "args": [i], "queue": "default", "jid": f"{i:024d}",
                   "error_class": "Timeout" if i < 4 else "KeyError", "error_message": "m", "retry_count": 1}
        r.zadd("retry" if i < 8 else "dead", {json.dumps(payload): time.time() + 600})
    ask = kiq("retry", "--all", "retry", "--class", "HardJob", url=redis_url, check=2)
    assert "Run 4 jobs of class HardJob in the retry set now? Add --yes to confirm" in ask.stderr
    assert r.zcard("retry") == 8, "nothing done without a confirmation"
    done = kiq("retry", "--all", "retry", "--class", "HardJob", "--yes", url=redis_url)
    assert "4 jobs enqueued now from the retry set" in done.stdout
    assert sorted(json.loads(j)["args"][0] for j in r.lrange("queue:default", 0, -1)) == [1, 3, 5, 7]
    nothing = kiq("retry", "--all", "retry", "--class", "HardJob", "--yes", url=redis_url, check=1)
    assert "no jobs of class HardJob in the retry set" in nothing.stderr
    assert "2 jobs deleted from the retry set" in kiq("delete", "--all", "retry", "--error", "timeout", "-y",
                                                      url=redis_url).stdout
    assert r.zcard("retry") == 2
    assert "4 jobs deleted from the dead set" in kiq("delete", "--all", "dead", "--yes", url=redis_url).stdout
    assert r.zcard("dead") == 0
    assert "4 jobs deleted from queue default" in kiq("delete", "--all", "queue", "default", "--yes",
                                                      url=redis_url).stdout
    assert "expected retry | dead | scheduled, not queue default" in kiq(
        "retry", "--all", "queue", "default", "--yes", url=redis_url, check=2).stderr
    assert "takes one JID" in kiq("retry", "a" * 24, "b" * 24, url=redis_url, check=2).stderr


def test_enqueue_with_the_app_uses_the_workers_options(tmp_path: Path, redis_url: str, r: redis.Redis) -> None:
    (tmp_path / "myjobs.py").write_text(
        "from kiq import Kiq, Worker\n"
        "class HardJob(Worker, queue='critical', retry=5, backtrace=True, tags=['vip']):\n"
        "    def perform(self, name: str, count: int) -> None: ...\n"
        "app = Kiq(workers=[HardJob])\n"
    )
    out = kiq("enqueue", "HardJob", "bob", "5", "--app", "myjobs:app", url=redis_url, cwd=tmp_path)
    assert "with the options of the worker myjobs:app registers: queue=critical, retry=5, backtrace=True, " \
           "tags=['vip']" in out.stderr
    [job] = [json.loads(j) for j in r.lrange("queue:critical", 0, -1)]
    assert (job["jid"], job["class"], job["retry"], job["backtrace"], job["tags"]) == (
        out.stdout.strip(), "myjobs.HardJob", 5, True, ["vip"])
    out = kiq("enqueue", "myjobs.HardJob", "bob", "5", "--app", "myjobs:app", "-q", "low", "--retry", "false",
              url=redis_url, cwd=tmp_path)
    assert "queue=low (command line), retry=False (command line), backtrace=True" in out.stderr
    assert json.loads(r.lindex("queue:low", 0) or "")["retry"] is False
    bad = kiq("enqueue", "HardJob", "bob", "--app", "myjobs:app", url=redis_url, cwd=tmp_path, check=2)
    assert "HardJob.perform() takes 2 arguments (name, count), but the job was given 1" in bad.stderr
    assert "registers no worker named 'Nope' (it registers: myjobs.HardJob)" in kiq(
        "enqueue", "Nope", "--app", "myjobs:app", url=redis_url, cwd=tmp_path, check=2).stderr


def test_papercuts(tmp_path: Path, redis_url: str, r: redis.Redis) -> None:
    (tmp_path / "jobs.py").write_text("from kiq import Kiq\napp = Kiq(queues={'default': 1})\n")
    (tmp_path / "broken.py").write_text("import os\n\n\ndef f():\n    return 1 / 0\n\n\nf()\n")
    # -r works for run as for every other command; -q default:0 and -c 0 are refused, not replaced.
    with kiq_run(tmp_path, "-r", redis_url, env={"REDIS_URL": NOWHERE}):
        wait_for(lambda: r.scard("processes") == 1, timeout=30, what="kiq run -r to beat")
    assert "a queue runs at least 1 job" in kiq("run", "jobs:app", "-q", "default:0", cwd=tmp_path, check=2).stderr
    assert "a queue runs at least 1 job" in kiq("run", "jobs:app", "-c", "0", cwd=tmp_path, check=2).stderr
    out = kiq("enqueue", "X", "--args-json", "not json", url=redis_url, check=2)
    assert out.stderr.startswith("kiq: --args-json is not JSON") and "Traceback" not in out.stderr
    # A bad URL scheme is a usage error (2) from every command, run included.
    for args in (["run", "jobs:app"], ["stats"], ["queues"], ["jobs", "dead"], ["enqueue", "X"], ["retry", "a" * 24],
                 ["cancel", "a" * 24]):
        assert "invalid Redis URL" in kiq(*args, "-r", "http://127.0.0.1:1", cwd=tmp_path, check=2).stderr, args
    # An import that fails inside the module keeps its traceback (file and line).
    broken = kiq("run", "broken", url=redis_url, cwd=tmp_path, check=2).stderr
    assert f'File "{tmp_path / "broken.py"}", line 5, in f' in broken and "ZeroDivisionError" in broken
    assert "importing 'broken' failed" in broken
    # A reader that goes away early (`kiq jobs retry | head -1`) ends it quietly.
    for i in range(3000):
        r.zadd("retry", {json.dumps({"class": "X", "args": [i], "jid": f"{i:024d}", "queue": "q"}): i})
    piped = subprocess.run(f"{KIQ} jobs retry --limit 3000 -r {redis_url} | head -1", shell=True, capture_output=True,
                           text=True, timeout=60)
    assert piped.stdout.startswith("JID") and "Traceback" not in piped.stderr and "BrokenPipe" not in piped.stderr
    # What cancel says matches what happens to a running sync job.
    said = kiq("cancel", "a" * 24, url=redis_url).stdout
    assert "a sync job stops only where it calls current_job().raise_if_cancelled()" in said
    assert "runs to its end and succeeds" in said


def test_run_with_sidekiq_weights_shares_threads(tmp_path: Path, redis_url: str, r: redis.Redis) -> None:
    """-q NAME,WEIGHT (Sidekiq's spelling) puts those queues in one capsule of -c threads; a plain -q
    queue keeps threads of its own."""
    (tmp_path / "jobs.py").write_text("from kiq import Kiq\napp = Kiq(queues={'default': 1})\n")
    with kiq_run(tmp_path, "-r", redis_url, "-q", "critical,3", "-q", "default,1", "-q", "reports:2", "-c", "6"):
        identity = wait_for(lambda: next(iter(r.smembers("processes")), None), timeout=30, what="kiq run to beat")
        info = json.loads(wait_for(lambda: r.hget(identity, "info"), what="its info"))
        assert info["capsules"] == {
            "critical,default": {"concurrency": 6, "mode": "weighted", "weights": {"critical": 3, "default": 1}},
            "reports": {"concurrency": 2, "mode": "strict", "weights": {"reports": 0}},
        }
        assert info["concurrency"] == 8
    bad = kiq("run", "jobs:app", "-q", "critical,x", cwd=tmp_path, check=2).stderr
    assert "QUEUE,WEIGHT takes a whole number" in bad


def test_jobs_busy_lists_running_jobs(make_app, redis_url: str, r: redis.Redis) -> None:
    release = threading.Event()

    class Holds(Worker, name="Holds"):
        def perform(self, n: int) -> None:
            release.wait(30)

    app = make_app(workers=[Holds], heartbeat_interval=0.2)
    jid = app.enqueue(Holds.new(7))
    app.start()
    try:
        rows = wait_for(lambda: json.loads(kiq("jobs", "busy", "--json", url=redis_url).stdout), timeout=20,
                        what="the running job in the heartbeat")
        [row] = rows
        assert (row["jid"], row["class"], row["args"], row["process"]) == (jid, "Holds", [7], app.identity)
        table = kiq("jobs", "busy", url=redis_url).stdout
        assert jid in table and "Holds" in table and "ago" in table
        assert json.loads(kiq("jobs", "busy", "--json", "--class", "Other", url=redis_url).stdout) == []
        assert json.loads(kiq("jobs", "busy", "--json", "--error", "timeout", url=redis_url).stdout) == []
    finally:
        release.set()
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


def test_a_bid_starting_with_a_dash_is_a_bid_not_an_option(redis_url: str) -> None:
    # URL-safe Base64 bids start with "-" one time in 64.
    out = kiq("batch", "-5wRq47XXAAXEg", "--json", url=redis_url, check=None)
    assert "no batch -5wRq47XXAAXEg" in out.stderr and "required" not in out.stderr
    out = kiq("batch", "-r", redis_url, "-5wRq47XXAAXEg", check=None)
    assert "no batch -5wRq47XXAAXEg" in out.stderr
