"""OverLimit inside a job reschedules it through the schedule set (Sidekiq
Enterprise's rule): ``overrated`` counts the reschedules, the delay is
``300 * overrated + rand(300) + 1`` s (or a backoff's), it is not counted as
failed, it is logged and reported; after the cap it takes the retry path."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import pytest
import redis

from kiq import JobInfo, Kiq, Reporter, Worker, errors
from kiq.limiter import Limiter
from kiq.testing import drain, enqueued
from support import wait_for


class Seen(Reporter):
    def __init__(self) -> None:
        self.rescheduled: list[tuple[str, str, float, int]] = []
        self.failed: list[str] = []

    def handle_rescheduled(self, job: JobInfo, reason: str, at: float) -> None:
        self.rescheduled.append((job.jid, reason, at, job.overrated))

    def handle_failure(self, job: JobInfo, error: BaseException, traceback: Any) -> None:
        self.failed.append(type(error).__name__)


def busy(app: Kiq, name: str, **options: Any) -> tuple[Limiter, Any]:
    """A concurrent limiter of one slot, held by the test (so jobs find no room)."""
    lim = app.limiter.concurrent(name, 1, wait_timeout=0, **options)
    hold = lim.within_limit()
    hold.__enter__()
    return lim, hold


def scheduled(r: redis.Redis) -> list[tuple[dict[str, Any], float]]:
    return [(json.loads(m), s) for m, s in r.zrange("schedule", 0, -1, withscores=True)]


def test_over_limit_reschedules_with_overrated_and_the_documented_delay(
    make_app: Any, r: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="kiq")
    seen = Seen()
    app = make_app(queues={"default": 2}, extra_reporters=[seen], scheduler=False)
    lim, _hold = busy(app, "partner")
    events: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
    app.instrument.attach(lambda e, m, meta: events.append((e, m, meta)), events=["job.rescheduled"])

    class CallPartner(Worker, name="CallPartner"):
        def perform(self, n: int) -> None:
            with lim.within_limit():
                raise AssertionError("never gets room")

    app.register(CallPartner)
    jid = app.enqueue(CallPartner.new(1), sync=True)
    before = time.time()
    app.start()
    wait_for(lambda: r.zcard("schedule") == 1 and r.get("stat:processed") == "1", what="the rescheduled job")
    (item, score), = scheduled(r)
    assert (item["jid"], item["overrated"], item["args"]) == (jid, 1, [1])
    assert before + 1 - 0.5 <= score <= time.time() + 300 + 0.5, "300 * 0 + rand(300) + 1 seconds"
    assert r.get("stat:failed") is None, "not counted as failed"
    assert r.zcard("retry") == 0
    wait_for(lambda: seen.rescheduled, what="the reporter")
    assert seen.rescheduled == [(jid, "over_limit", pytest.approx(score, abs=1e-3), 0)]
    assert seen.failed == []
    wait_for(lambda: events, what="the instrumentation event")
    assert events[0][0] == "job.rescheduled" and events[0][2]["reason"] == "over_limit"
    line = next(rec for rec in caplog.records if rec.getMessage().startswith("job_rescheduled"))
    assert f"jid={jid}" in line.getMessage() and "reason=over_limit" in line.getMessage()
    assert line.kiq["event"] == "job_rescheduled" and line.kiq["reason"] == "over_limit"  # type: ignore[attr-defined]

    # The second reschedule waits 300 * 1 + rand(300) + 1 s.
    r.delete("schedule")
    r.lpush("queue:default", json.dumps({**item, "jid": "b" * 24}))
    wait_for(lambda: r.zcard("schedule") == 1, what="the second reschedule")
    (item2, score2), = scheduled(r)
    now = time.time()
    assert item2["overrated"] == 2
    assert now + 301 - 2 <= score2 <= now + 600 + 0.5


def test_after_the_cap_over_limit_takes_the_retry_path(make_app: Any, r: redis.Redis) -> None:
    seen = Seen()
    app = make_app(queues={"default": 2}, extra_reporters=[seen], scheduler=False)
    lim, _hold = busy(app, "capped", reschedule=3)

    class Capped(Worker, name="Capped", retry=5):
        def perform(self) -> None:
            with lim.within_limit():
                pass

    app.register(Capped)
    payload = {"class": "Capped", "args": [], "jid": "c" * 24, "queue": "default", "retry": 5, "overrated": 3}
    r.lpush("queue:default", json.dumps(payload))
    app.start()
    wait_for(lambda: r.zcard("retry") == 1, what="the retry entry")
    retried = json.loads(r.zrange("retry", 0, 0)[0])
    assert retried["error_class"] == "kiq.errors.OverLimit" and retried["overrated"] == 3
    assert 'concurrent limiter "capped" (1 at once) is over its limit' in retried["error_message"]
    assert r.zcard("schedule") == 0
    wait_for(lambda: r.get("stat:failed") == "1", what="counted as failed")
    wait_for(lambda: seen.failed == ["OverLimit"], what="the failure reported")


def test_a_backoff_chooses_the_delay_and_zero_reschedules_means_none(make_app: Any, r: redis.Redis) -> None:
    app = make_app(queues={"default": 2}, scheduler=False)
    asked: list[tuple[str, int]] = []

    def backoff(limiter: Limiter | None, job: JobInfo, exc: errors.OverLimit) -> float:
        asked.append((limiter.name if limiter else "", job.overrated))
        return 7 + job.overrated

    lim, _hold = busy(app, "custom", backoff=backoff)
    plain = app.limiter.concurrent("plain", 1, wait_timeout=0, reschedule=0)
    plain_hold = plain.within_limit()
    plain_hold.__enter__()

    class Custom(Worker, name="Custom"):
        def perform(self, which: str) -> None:
            with (lim if which == "custom" else plain).within_limit():
                pass

    app.register(Custom)
    app.enqueue(Custom.new("custom"), sync=True)
    app.enqueue(Custom.new("plain"), sync=True)
    app.start()
    wait_for(lambda: r.zcard("schedule") == 1 and r.zcard("retry") == 1, what="one rescheduled, one retried")
    (item, score), = scheduled(r)
    assert item["args"] == ["custom"] and 7 - 1 <= score - time.time() <= 7 + 0.5
    assert asked == [("custom", 0)]
    assert json.loads(r.zrange("retry", 0, 0)[0])["args"] == ["plain"]


def test_an_over_limit_raised_by_hand_uses_the_app_defaults(make_app: Any, r: redis.Redis) -> None:
    app = make_app(queues={"default": 1}, scheduler=False)
    app.limiter.configure(backoff=lambda limiter, job, exc: 42.0)

    class Manual(Worker, name="Manual"):
        def perform(self) -> None:
            raise errors.OverLimit("the partner said 429")

    app.register(Manual)
    app.enqueue(Manual.new(), sync=True)
    app.start()
    wait_for(lambda: r.zcard("schedule") == 1, what="rescheduled")
    (item, score), = scheduled(r)
    assert item["overrated"] == 1 and 41 <= score - time.time() <= 42.5


def test_the_sandbox_reschedules_too() -> None:
    app = Kiq(test_mode="sandbox")
    runs: list[int] = []

    class Flaky(Worker, name="Flaky", retry=0, dead=True):
        def perform(self) -> None:
            runs.append(1)
            raise errors.OverLimit("no room")

    app.register(Flaky)
    app.limiter.configure(reschedule=2)
    app.enqueue(Flaky.new())
    drain(app)
    assert len(runs) == 3, "two reschedules, then the retry path (retry=0: dead)"
    (dead,) = enqueued(app, state="dead")
    assert dead.item["overrated"] == 2 and dead.item["error_class"] == "kiq.errors.OverLimit"
