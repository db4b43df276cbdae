"""Batches against a real redis-server: Pro's semantics, callbacks exactly once,
nesting, invalidation, empty batches, blocks that raise, reopening, bad input,
Sidekiq Pro's ``bid`` in a mixed fleet. Every job records its jid."""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
from typing import Any

import pytest
import redis

from kiq import BatchStatus, Job, Kiq, current_job, worker
from kiq.api import Api
from kiq.errors import BatchError, ConfigError
from support import wait_for


class Record:
    """What the jobs and callbacks of one test did, in order."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.runs: collections.Counter[str] = collections.Counter()
        self.callbacks: list[tuple[str, str, BatchStatus, dict[str, Any], float, float]] = []

    def ran(self, jid: str) -> None:
        with self.lock:
            self.runs[jid] += 1

    def events(self, event: str | None = None) -> list[BatchStatus]:
        with self.lock:
            return [c[2] for c in self.callbacks if event is None or c[1] == event]


def workers(rec: Record) -> tuple[Any, Any]:
    @worker(name="T.Work")
    def work(n: int, fail_once: bool = False) -> None:
        job = current_job()
        assert job is not None
        rec.ran(job.jid)
        if fail_once and job.retry_count is None:
            raise ValueError(f"job {n} fails once")

    @worker(name="T.Done")
    def done(status: BatchStatus, options: dict[str, Any]) -> None:
        start = time.monotonic()
        assert isinstance(status, BatchStatus)
        if options.get("sleep"):
            time.sleep(options["sleep"])
        with rec.lock:
            snapshot = BatchStatus(status, ran=len(rec.runs))
            rec.callbacks.append((status.bid, status.event or "", snapshot, options, start, time.monotonic()))

    return work, done


def test_ten_thousand_jobs_one_percent_failing_once(make_app, r: redis.Redis) -> None:
    """complete fires once, after every job ran once; success once, after the last retry succeeded; exact counts."""
    rec = Record()
    work, done = workers(rec)
    app: Kiq = make_app(queues={"default": 25}, workers=[work, done])
    batch = app.batch(description="ten thousand")
    batch.on("complete", done, {"which": "complete"}).on("success", done, {"which": "success"})
    with batch.jobs():
        app.enqueue_bulk(work, [[n, n % 100 == 0] for n in range(10_000)])
    status = app.batch_status(batch.bid)
    assert (status.total, status.pending, status.failures, status.complete) == (10_000, 10_000, 0, False)
    app.start()
    wait_for(lambda: rec.events("complete"), timeout=60, what="complete")
    [complete] = rec.events("complete")
    assert complete["ran"] == 10_000, "every job ran once before complete fired"
    assert (complete.total, complete.pending, complete.failures) == (10_000, 100, 100)
    assert len(complete.failed_jids) == 100 and complete.dead_jids == [] and complete.complete
    assert rec.events("success") == [], "success waits for the retries"
    # Retry Now, as the Web UI does, instead of waiting the 15-25 s backoff.
    api = Api(app)
    for job in api.retries.jobs(0, 200):
        assert api.retries.retry(job.jid)
    wait_for(lambda: rec.events("success"), timeout=60, what="success")
    time.sleep(0.5)  # a second firing would have arrived by now
    [success] = rec.events("success")
    assert len(rec.events("complete")) == 1
    assert (success.total, success.pending, success.failures) == (10_000, 0, 0)
    assert len(rec.runs) == 10_000 and sum(rec.runs.values()) == 10_100
    final = app.batch_status(batch.bid)
    assert (final.total, final.pending, final.failures, final.complete, final.success) == (10_000, 0, 0, True, True)
    assert final["callbacks_done"] == ["complete", "success"] and final["expires_in"] <= 86_400
    assert r.zcard("schedule") == 0 and r.zcard("retry") == 0


def test_a_death_fires_once_and_propagates_to_the_parent_once(make_app, r: redis.Redis) -> None:
    rec = Record()
    work, done = workers(rec)
    app: Kiq = make_app(workers=[work, done])
    parent = app.batch(description="parent")
    parent.on("death", done, {"level": "parent"})
    with parent.jobs():
        app.enqueue(work.new(1))
        child = app.batch(description="child")
        child.on("death", done, {"level": "child"})
        with child.jobs():
            app.enqueue(Job("T.Work", [2, True], retry=0))
            app.enqueue(Job("T.Work", [3, True], retry=0))
    assert child.parent_bid == parent.bid
    app.start()
    wait_for(lambda: len(rec.events("death")) == 2, what="both deaths")
    wait_for(lambda: r.zcard("dead") == 2 and app.batch_status(child.bid).failures == 2, what="the second death")
    time.sleep(0.5)
    deaths = rec.events("death")
    assert [(s.bid, s.event) for s in deaths] == [(child.bid, "death"), (parent.bid, "death")]
    assert deaths[0].dead_jids and set(deaths[0].dead_jids) <= {j for j in rec.runs}
    status = app.batch_status(child.bid)
    assert (status.failures, len(status.dead_jids), status.complete, status.success) == (2, 2, True, False)
    assert app.batch_status(parent.bid)["fired"] == ["complete", "death"]


def test_three_levels_callbacks_run_children_first(make_app) -> None:
    rec = Record()
    work, done = workers(rec)
    app: Kiq = make_app(queues={"default": 10}, workers=[work, done])
    top = app.batch(description="top")
    for event in ("complete", "success"):
        top.on(event, done, {"level": 0, "sleep": 0.05})
    with top.jobs():
        app.enqueue(work.new(0))
        mid = app.batch(description="mid")
        for event in ("complete", "success"):
            mid.on(event, done, {"level": 1, "sleep": 0.05})
        with mid.jobs():
            app.enqueue_bulk(work, [[i] for i in range(5)])
            leaf = app.batch(description="leaf")
            for event in ("complete", "success"):
                leaf.on(event, done, {"level": 2, "sleep": 0.05})
            with leaf.jobs():
                app.enqueue_bulk(work, [[i] for i in range(5)])
    assert (leaf.parent_bid, mid.parent_bid) == (mid.bid, top.bid)
    app.start()
    wait_for(lambda: len(rec.callbacks) == 6, what="six callbacks")
    time.sleep(0.3)
    assert len(rec.callbacks) == 6
    for event in ("complete", "success"):
        ran = sorted((c for c in rec.callbacks if c[1] == event), key=lambda c: c[4])
        assert [c[3]["level"] for c in ran] == [2, 1, 0]
        for child, parent in zip(ran, ran[1:]):
            assert child[5] <= parent[4], f"{event}: a child's callback ended before its parent's started"
    assert app.batch_status(top.bid).child_count == 1 and app.batch_status(mid.bid).child_count == 1


def test_a_child_made_inside_a_batch_job_holds_its_parent(make_app) -> None:
    rec = Record()
    work, done = workers(rec)

    @worker(name="T.Spawn")
    def spawn() -> None:
        child = app.batch(description="spawned")
        with child.jobs():
            app.enqueue_bulk(work, [[i] for i in range(3)])
        rec.ran(child.bid)

    app: Kiq = make_app(workers=[work, done, spawn])
    top = app.batch()
    top.on("success", done)
    with top.jobs():
        app.enqueue(spawn.new())
    app.start()
    [status] = wait_for(lambda: rec.events("success"), what="success")
    assert status.child_count == 1 and status.total == 1 and len(rec.runs) == 4


def test_empty_batches_fire(make_app) -> None:
    rec = Record()
    work, done = workers(rec)
    app: Kiq = make_app(workers=[work, done])
    batch = app.batch(description="empty")
    batch.on("complete", done).on("success", done)
    with batch.jobs():
        pass
    app.start()
    wait_for(lambda: len(rec.callbacks) == 2, what="both callbacks of the empty batch")
    assert sorted(s.event or "" for s in rec.events()) == ["complete", "success"]
    assert rec.events()[0].total == 0


def test_a_block_that_raises_pushes_nothing(make_app, r: redis.Redis) -> None:
    app: Kiq = make_app()
    batch = app.batch()
    with pytest.raises(ZeroDivisionError):
        with batch.jobs():
            app.enqueue(Job("T.Work", [1]))
            # More than a chunk: one was staged in Redis before the block raised.
            app.enqueue_bulk("T.Work", [[i] for i in range(10_001)])
            raise ZeroDivisionError
    assert r.keys("*") == [], "no queue, no batch, nothing staged"
    with pytest.raises(BatchError, match="does not exist"):
        app.batch_status(batch.bid)
    # The same with a child batch whose block had ended inside.
    outer = app.batch()
    with pytest.raises(KeyError):
        with outer.jobs():
            inner = app.batch()
            with inner.jobs():
                app.enqueue(Job("T.Work", [2]))
            raise KeyError("late")
    assert r.keys("*") == []
    app.enqueue(Job("T.Work", [3]), sync=True)
    assert r.llen("queue:default") == 1, "enqueues outside a block go straight on"


def test_reopening_from_a_job_adds_jobs_before_the_batch_can_complete(make_app) -> None:
    rec = Record()
    work, done = workers(rec)

    @worker(name="T.Grow")
    def grow(n: int) -> None:
        job = current_job()
        assert job is not None and job.batch is not None and job.bid == job.batch.bid
        rec.ran(job.jid)
        if n > 0:
            with job.batch.jobs():
                app.enqueue(grow.new(n - 1))
            time.sleep(0.2)  # the added job finishes first; the batch must still wait for this one

    app: Kiq = make_app(queues={"default": 5}, workers=[work, done, grow])
    batch = app.batch()
    batch.on("complete", done).on("success", done)
    with batch.jobs():
        app.enqueue(grow.new(3))
    app.start()
    wait_for(lambda: len(rec.callbacks) == 2, what="callbacks")
    [complete, success] = rec.events()
    assert complete["ran"] == 4 and success.total == 4 and success.pending == 0


def test_invalidated_batches_skip_their_jobs(make_app, r: redis.Redis, caplog) -> None:
    rec = Record()
    work, done = workers(rec)
    seen: list[bool] = []
    release = threading.Event()

    @worker(name="T.Check")
    def check() -> None:
        job = current_job()
        assert job is not None and job.batch is not None
        release.wait(10)
        seen.append(job.batch.valid)

    app: Kiq = make_app(queues={"default": 1}, workers=[work, done, check])
    batch = app.batch()
    batch.on("success", done)
    with batch.jobs():
        app.enqueue(check.new())
        app.enqueue_bulk(work, [[i] for i in range(5)])
    assert batch.valid
    with caplog.at_level(logging.WARNING, logger="kiq"):
        app.start()
        wait_for(lambda: r.llen("queue:default") == 5, what="the first job running")
        batch.invalidate()
        assert not batch.valid
        time.sleep(1.1)  # each process trusts what it read about the batch for a second
        release.set()
        [status] = wait_for(lambda: rec.events("success"), what="success of the invalidated batch")
    assert seen == [False], "the running job saw it"
    assert len(rec.runs) == 0, "none of the other jobs ran"
    assert status.invalidated and status.total == 6 and status.pending == 0
    assert caplog.text.count("reason=batch_invalidated") == 5
    # The running job and the callback (whose result may still be on its way), never the skipped ones.
    wait_for(lambda: r.get("stat:processed") == "2", what="the two jobs that ran counted")
    time.sleep(0.2)
    assert r.get("stat:processed") == "2", "the skipped jobs are not counted as processed"
    with pytest.raises(BatchError):
        app.batch("NoSuchBatch123").invalidate()


def test_bad_input_is_refused_clearly(make_app, r: redis.Redis) -> None:
    rec = Record()
    work, done = workers(rec)
    app: Kiq = make_app(workers=[work, done])
    batch = app.batch()
    with pytest.raises(ConfigError, match='unknown batch event "finished"'):
        batch.on("finished", done)
    with pytest.raises(ConfigError, match="must be a kiq worker or a class name"):
        batch.on("success", 42)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="must be a kiq worker or a class name"):
        batch.on("success", len)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="Class#method"):
        batch.on("success", "Billing::Done#on_success")
    with pytest.raises(ConfigError, match="must be a dict"):
        batch.on("success", done, [1, 2])  # type: ignore[arg-type]
    with pytest.raises(BatchError, match="does not exist"):
        app.batch("NoSuchBatch123")
    with pytest.raises(ConfigError, match="not a batch id"):
        app.batch("has space")
    with pytest.raises(BatchError, match="does not exist"):
        app.batch_status("NoSuchBatch123")
    with pytest.raises(ConfigError, match="unique jobs cannot be part of a batch"):
        with batch.jobs():
            app.enqueue(Job("T.Work", [1], unique_for=60))
    assert r.keys("*") == []
    # Expired: the batch is gone from Redis by the time it is reopened.
    with batch.jobs():
        app.enqueue(Job("T.Work", [1]))
    again = app.batch(batch.bid)
    r.delete(f"kiq:batch|{batch.bid}")
    with pytest.raises(BatchError, match="expired"):
        with again.jobs():
            app.enqueue(Job("T.Work", [2]))
    with pytest.raises(BatchError, match="expired"):
        app.batch(batch.bid)
    with pytest.raises(ConfigError, match="callbacks are set before"):
        again.on("success", done)


def test_succeeded_batches_take_no_more_jobs(make_app) -> None:
    rec = Record()
    work, done = workers(rec)
    app: Kiq = make_app(workers=[work, done])
    batch = app.batch()
    batch.on("success", done)
    with batch.jobs():
        app.enqueue(work.new(1))
    app.start()
    batch.wait(10)
    with pytest.raises(BatchError, match="already succeeded"):
        with app.batch(batch.bid).jobs():
            app.enqueue(work.new(2))


def test_pro_bids_run_with_one_warning_per_bid(make_app, r: redis.Redis, caplog) -> None:
    """A job carrying Sidekiq Pro's bid (kiq did not create it) runs as usual;
    kiq warns once per bid that Pro's accounting will not happen."""
    rec = Record()
    work, done = workers(rec)
    app: Kiq = make_app(workers=[work, done])
    for i, bid in enumerate(["proBatchAAAAAA", "proBatchAAAAAA", "proBatchBBBBBB"]):
        r.lpush("queue:default", json.dumps({"class": "T.Work", "args": [i], "queue": "default", "retry": True,
                                             "jid": f"{i:024x}", "bid": bid, "created_at": time.time()}))
    with caplog.at_level(logging.WARNING, logger="kiq"):
        app.start()
        wait_for(lambda: len(rec.runs) == 3, what="the three Pro batch jobs")
        wait_for(lambda: caplog.text.count("Sidekiq Pro batch") == 2, what="the warnings")
    assert caplog.text.count("proBatchAAAAAA") == 1 and caplog.text.count("proBatchBBBBBB") == 1
    assert "route queues holding Pro batch jobs" in caplog.text
    assert not r.keys("kiq:batch*") and not r.keys("b-*"), "kiq writes nothing for a Pro batch"


def test_batch_jobs_carry_kiqs_own_field(make_app, r: redis.Redis) -> None:
    app: Kiq = make_app()
    outer = app.batch(description="outer")
    with outer.jobs():
        inner = app.batch()
        with inner.jobs():
            app.enqueue(Job("Ruby::Job", [1], queue="rb"))
    [raw] = r.lrange("queue:rb", 0, -1)
    job = json.loads(raw)
    assert job["kiq_bid"] == inner.bid and job["kiq_bid_up"] == [outer.bid] and "bid" not in job
    listed = Api(app).batches()
    assert [b.bid for b in listed] == [inner.bid, outer.bid] or {b.bid for b in listed} == {inner.bid, outer.bid}
    assert Api(app).batch(outer.bid).child_count == 1 and Api(app).batch("NoSuchBatch123") is None


def test_a_kill_from_the_web_ui_or_the_api_is_a_death(make_app, r: redis.Redis) -> None:
    """Sidekiq runs its death handlers on a Kill (so Pro's batch death fires): kiq counts it the same way."""
    rec = Record()
    work, done = workers(rec)
    app: Kiq = make_app(workers=[work, done])
    batch = app.batch()
    batch.on("death", done).on("complete", done)
    with batch.jobs():
        app.enqueue(work.new(1, True))
        app.enqueue(work.new(2, True))
    app.start()
    wait_for(lambda: r.zcard("retry") == 2, what="two failures")
    api = Api(app)
    first, second = (job.jid for job in api.retries.jobs())
    assert api.retries.kill(first)
    [death] = wait_for(lambda: rec.events("death"), what="death")
    assert death.dead_jids == [first] and len(rec.events("complete")) == 1
    assert api.admin.act("retry", "kill", [k for k in (job_key(api, second),) if k]) == 1
    wait_for(lambda: app.batch_status(batch.bid).dead_jids == sorted([first, second]), what="the second death")
    time.sleep(0.3)
    assert len(rec.events("death")) == 1


def job_key(api: Api, jid: str) -> str:
    """The dashboard's name of a retrying job: ``<score>-<jid>``."""
    [(_, score)] = api.client.find_job("retry", jid)
    return f"{score}-{jid}"


def test_scheduled_and_encrypted_jobs_count_in_their_batch(make_app) -> None:
    rec = Record()
    work, done = workers(rec)

    @worker(name="T.Secret", encrypt=True)
    def secret(n: int, bag: dict[str, str]) -> None:
        assert bag == {"card": "4111"}
        rec.ran(f"secret-{n}")

    app: Kiq = make_app(workers=[work, done, secret], encryption_keys={1: bytes(range(32))})
    batch = app.batch()
    batch.on("success", done)
    with batch.jobs():
        app.enqueue(work.new(1), delay=0.3)
        app.enqueue(secret.new(2, {"card": "4111"}))
    assert app.batch_status(batch.bid).total == 2
    started = time.monotonic()
    app.start()
    [status] = wait_for(lambda: rec.events("success"), what="success")
    assert time.monotonic() - started >= 0.3 and status.total == 2 and len(rec.runs) == 2
