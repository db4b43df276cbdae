"""Cancelling a job by jid: waiting jobs are deleted, running ones told (async cancelled, sync cooperative)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from kiq import Reporter, current_job, worker
from kiq.api import Api
from support import wait_for

BEAT = 0.3  # the running process sees a request at its next heartbeat


class Aborts(Reporter):
    def __init__(self) -> None:
        self.aborted: list[tuple[str, str]] = []

    def handle_aborted(self, job: Any, reason: str) -> None:
        self.aborted.append((job.jid, reason))


def test_a_running_sync_job_sees_the_request_and_ends_unretried(make_app, r) -> None:
    started, steps = threading.Event(), []

    @worker(name="LongSync", retry=3)
    def long_sync() -> None:
        started.set()
        job = current_job()
        assert job is not None
        for step in range(200):
            job.raise_if_cancelled()
            steps.append(step)
            time.sleep(0.05)

    aborts = Aborts()
    app = make_app(workers=[long_sync], heartbeat_interval=BEAT, extra_reporters=[aborts])
    jid = app.enqueue(long_sync.new())
    app.start()
    assert started.wait(5)
    t0 = time.monotonic()
    assert Api(app).cancel(jid) == "requested"
    wait_for(lambda: r.get("stat:processed") == "1", timeout=10, what="the job to end")
    assert time.monotonic() - t0 < BEAT + 1.5, "seen at the next heartbeat"
    assert len(steps) < 200
    assert r.zcard("retry") == 0 and r.zcard("dead") == 0 and r.get("stat:failed") in (None, "0")
    wait_for(lambda: aborts.aborted == [(jid, "cancelled")], what="the reporter told")
    assert not r.keys("kiq:wip|*") or all(r.llen(k) == 0 for k in r.keys("kiq:wip|*"))


def test_a_running_async_job_is_cancelled(make_app, r) -> None:
    cancelled = threading.Event()

    @worker(name="LongAsync")
    async def long_async() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    app = make_app(workers=[long_async], heartbeat_interval=BEAT)
    jid = app.enqueue(long_async.new())
    app.start()
    wait_for(lambda: Api(app).work(), what="the job running")
    t0 = time.monotonic()
    assert Api(app).cancel(jid) == "requested"
    assert cancelled.wait(5)
    assert time.monotonic() - t0 < BEAT + 1.5
    wait_for(lambda: r.get("stat:processed") == "1", what="counted as processed")
    assert r.zcard("retry") == 0


def test_waiting_jobs_are_deleted(make_app, r) -> None:
    app = make_app()
    queued = app.enqueue(long_noop.new(), sync=True)
    scheduled = app.enqueue(long_noop.new(), delay=3600, sync=True)
    api = Api(app)
    assert api.cancel(queued) == "deleted" and api.cancel(scheduled) == "deleted"
    assert r.llen("queue:default") == 0 and r.zcard("schedule") == 0
    assert api.cancel("f" * 24) == "requested"  # maybe running elsewhere: asked, kept a day
    assert r.zscore("kiq:cancelled", "f" * 24) is not None
    # Sidekiq 7.3+'s iterable-job cancel mark too, so a Ruby iterable job with that jid stops.
    assert r.hexists("it-" + "f" * 24, "cancelled") and 0 < r.ttl("it-" + "f" * 24) <= 2_592_000


def test_sidekiq_iterable_cancel_mark_cancels_a_kiq_job(make_app, r) -> None:
    @worker(name="Steps")
    def steps() -> None:
        job = current_job()
        assert job is not None
        for _ in range(200):
            job.raise_if_cancelled()
            time.sleep(0.05)

    app = make_app(workers=[steps], heartbeat_interval=BEAT)
    jid = app.enqueue(steps.new())
    app.start()
    wait_for(lambda: Api(app).work(), what="the job running")
    r.hsetnx(f"it-{jid}", "cancelled", int(time.time()))  # what Sidekiq 7.3's cancel! writes
    wait_for(lambda: r.get("stat:processed") == "1", timeout=5, what="the job to end")
    assert r.zcard("retry") == 0


@worker(name="LongNoop")
def long_noop() -> None:
    pass


def test_kiq_cancel_command(make_app, redis_url, r) -> None:
    app = make_app()
    jid = app.enqueue(long_noop.new(), sync=True)
    kiq = Path(sys.executable).with_name("kiq")
    env = {**os.environ, "REDIS_URL": redis_url}
    out = subprocess.run([str(kiq), "cancel", jid], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0 and "deleted" in out.stdout, out.stderr
    out = subprocess.run([str(kiq), "cancel", jid], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0 and "cancellation requested" in out.stdout
    bad = subprocess.run([str(kiq), "cancel", "not a jid!"], capture_output=True, text=True, env=env, timeout=60)
    assert bad.returncode != 0 and "is not a job id" in bad.stderr
    assert r.zrange("kiq:cancelled", 0, -1) == [jid]
