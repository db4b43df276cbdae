"""kiq.api: what the Web UI shows and does, scripted."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time

from kiq import Job, worker
from kiq.api import Api
from support import wait_for


def test_stats_queues_and_latency(make_app, r):
    app = make_app()
    app.enqueue(Job("A", [1]))
    app.enqueue(Job("B", [2], queue="low"))
    app.enqueue(Job("C", [3]), delay=60)
    r.set("stat:processed", 7)
    api = Api(app)
    app.flush(5)  # the buffered enqueues are in Redis
    stats = api.stats()
    assert (stats.processed, stats.failed, stats.scheduled_size, stats.enqueued) == (7, 0, 1, 2)
    assert stats.queues == {"default": 1, "low": 1} and 0 < stats.default_queue_latency < 5
    assert [q.name for q in api.queues()] == ["default", "low"]
    [job] = api.queue("low").jobs()
    assert (job.class_name, job.args, job.queue) == ("B", [2], "low")
    assert api.queue("default").delete(api.queue("default").jobs()[0].jid) and api.queue("default").size() == 0
    api.queue("low").clear()
    assert [q.name for q in api.queues()] == ["default"]


def test_retry_set_retry_now_delete_and_kill(make_app, r):
    calls: list[int] = []

    @worker(name="Flaky", retry=5, backtrace=True)
    def flaky(n: int) -> None:
        calls.append(n)
        raise RuntimeError(f"fail {n}")

    app = make_app(workers=[flaky])
    jids = app.enqueue_bulk(flaky, [[1], [2], [3]])
    app.start()
    api = Api(app)
    wait_for(lambda: api.retries.size() == 3, what="3 retries")
    [rec] = api.retries.find(jids[0])
    assert rec.error_class == "RuntimeError" and rec.error_message == "fail 1" and rec.retry_count == 0
    assert "in `flaky'" in rec.error_backtrace[0] and rec.at and rec.at > time.time()
    assert api.retries.retry(jids[0])
    wait_for(lambda: calls.count(1) == 2, what="retried now")
    wait_for(lambda: api.retries.size() == 3, what="back in retry")
    [again] = api.retries.find(jids[0])
    assert again.retry_count == 0, "a manual retry uses no attempt (Sidekiq's Retry Now)"
    assert api.retries.delete(jids[1]) and api.retries.find(jids[1]) == []
    assert api.retries.kill(jids[2]) and [d.jid for d in api.dead.jobs()] == [jids[2]]
    assert api.dead.retry(jids[2]) and api.dead.size() == 0
    assert not api.retries.retry("f" * 24)


def test_processes_and_work(make_app, r):
    release = threading.Event()

    @worker(name="Wait")
    def wait() -> None:
        release.wait(10)

    app = make_app(workers=[wait], heartbeat_interval=0.2, tag="t")
    jid = app.enqueue(wait.new())
    app.start()
    api = Api(app)
    wait_for(lambda: [p for p in api.processes() if p.busy == 1], what="busy process")
    [proc] = api.processes()
    assert proc.identity == app.identity and proc.tag == "t" and proc.concurrency == 25 and not proc.quiet
    [w] = api.work()
    assert (w.process, w.queue, w.job.jid) == (app.identity, "default", jid)
    proc.quiet_down()
    wait_for(lambda: api.processes()[0].quiet, what="quiet")
    release.set()
    proc.stop()
    wait_for(lambda: api.processes() == [], what="stopped")


def test_the_runtime_never_imports_the_api(redis_url, r):
    code = textwrap.dedent(
        f"""
        import sys, time
        from kiq import Kiq, worker
        @worker(name="Noop")
        def noop(): pass
        app = Kiq({redis_url!r}, workers=[noop], poll_interval_average=0.1)
        app.enqueue(noop.new())
        with app:
            time.sleep(1)
        assert "kiq.api" not in sys.modules, "the runtime imported kiq.api"
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr
