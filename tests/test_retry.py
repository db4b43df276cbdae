"""Failures: Sidekiq's retry fields and backoff, retries when due, the dead set."""

from __future__ import annotations

import json
import time

from kiq import Worker, _kiq, worker
from support import wait_for


class Boom(Worker, name="Boom", backtrace=True):
    def perform(self, n: int) -> None:
        self.explode(n)

    def explode(self, n: int) -> None:
        raise ValueError(f"bad {n}")


def retries(r) -> list[tuple[dict, float]]:
    return [(json.loads(m), s) for m, s in r.zrange("retry", 0, -1, withscores=True)]


def make_due(r, key: str = "retry") -> None:
    for member, _ in r.zrange(key, 0, -1, withscores=True):
        r.zadd(key, {member: time.time() - 1}, xx=True)


def test_first_failure_writes_sidekiq_fields(make_app, r):
    app = make_app(workers=[Boom])
    t0 = time.time()
    jid = app.enqueue(Boom.new(1))
    app.start()
    [(job, score)] = wait_for(lambda: retries(r), what="retry entry")
    assert job["jid"] == jid and job["class"] == "Boom" and job["queue"] == "default"
    assert (job["error_class"], job["error_message"], job["retry_count"]) == ("ValueError", "bad 1", 0)
    assert isinstance(job["failed_at"], float) and "retried_at" not in job
    keys = list(job)
    assert keys[-5:] == ["error_message", "error_class", "failed_at", "retry_count", "error_backtrace"]
    assert keys.index("error_message") < keys.index("error_class") < keys.index("failed_at") < keys.index("retry_count")
    # count 0: 0**4 + 15 + rand(10) * 1 seconds.
    assert t0 + 15 <= score <= time.time() + 15 + 10
    lines = _kiq.decode_backtrace(job["error_backtrace"])
    assert "in `explode'" in lines[0] and "in `perform'" in lines[1], lines
    assert all("processor.py" not in line for line in lines)
    assert r.llen("queue:default") == 0 and r.llen(f"kiq:wip|{app.identity}|default") == 0


def test_retried_when_due_then_dead_after_its_retries(make_app, r):
    calls: list[int] = []

    @worker(name="AlwaysFails", retry=2)
    def always_fails(n: int) -> None:
        calls.append(n)
        raise RuntimeError("still broken")

    app = make_app(workers=[always_fails])
    app.enqueue(always_fails.new(5))
    app.start()
    first = wait_for(lambda: retries(r), what="first failure")[0][0]
    make_due(r)
    second = wait_for(lambda: [j for j, _ in retries(r) if j["retry_count"] == 1], what="second failure")[0]
    assert second["failed_at"] == first["failed_at"], "failed_at is the first failure's time"
    assert isinstance(second["retried_at"], float) and second["retried_at"] > first["failed_at"]
    make_due(r)
    [dead] = wait_for(lambda: r.zrange("dead", 0, -1), what="dead entry")
    dead = json.loads(dead)
    assert (dead["retry_count"], dead["error_message"]) == (2, "still broken")
    assert r.zcard("retry") == 0 and calls == [5, 5, 5], "N retries is N+1 runs"
    assert r.get("stat:failed") == "3" and r.get("stat:processed") == "3"


def test_retry_false_drops_and_dead_false_drops_at_exhaustion(make_app, r):
    @worker(name="NoRetry", retry=False)
    def no_retry() -> None:
        raise RuntimeError("x")

    @worker(name="NoDead", retry=0, dead=False)
    def no_dead() -> None:
        raise RuntimeError("y")

    @worker(name="Zero", retry=0)
    def zero() -> None:
        raise RuntimeError("z")

    app = make_app(workers=[no_retry, no_dead, zero])
    app.enqueue_all([no_retry.new(), no_dead.new(), zero.new()])
    app.start()
    wait_for(lambda: r.get("stat:failed") == "3", what="3 failures")
    time.sleep(0.1)
    assert r.zcard("retry") == 0
    assert [json.loads(m)["class"] for m in r.zrange("dead", 0, -1)] == ["Zero"]


def test_retry_queue_and_ruby_style_retry_option_in_payload(make_app, r):
    @worker(name="Mover", retry_queue="slow")
    def mover() -> None:
        raise RuntimeError("move me")

    app = make_app(workers=[mover])
    app.enqueue(mover.new())
    # A payload's own retry option wins over the worker's (as Sidekiq's does).
    r.lpush("queue:default", json.dumps({"class": "Mover", "args": [], "jid": "a" * 24, "retry": False}))
    app.start()
    [(job, _)] = wait_for(lambda: retries(r), what="retry")
    assert job["queue"] == "slow" and job["retry_queue"] == "slow"
    wait_for(lambda: r.get("stat:failed") == "2", what="both failed")
    assert r.zcard("retry") == 1
    make_due(r)
    wait_for(lambda: r.llen("queue:slow") == 1, what="retry lands in the retry queue")


def test_dead_set_trimmed_by_count_and_age(make_app, r):
    @worker(name="Die", retry=0)
    def die(n: int) -> None:
        raise RuntimeError(str(n))

    r.zadd("dead", {"ancient": time.time() - 200 * 86400})
    app = make_app(workers=[die], dead_limit=5)
    app.enqueue_bulk(die, [[i] for i in range(8)])
    app.start()
    wait_for(lambda: r.get("stat:failed") == "8", what="8 deaths")
    time.sleep(0.1)
    members = r.zrange("dead", 0, -1)
    assert "ancient" not in members, "older than dead_timeout (180 days)"
    # Sidekiq's trim (ZREMRANGEBYRANK dead 0 -limit) keeps limit - 1 entries.
    assert len(members) == 4


def test_failure_message_is_capped_at_10000_chars(make_app, r):
    @worker(name="Loud", retry=1)
    def loud() -> None:
        raise RuntimeError("x" * 20_000)

    app = make_app(workers=[loud])
    app.enqueue(loud.new())
    app.start()
    [(job, _)] = wait_for(lambda: retries(r), what="retry")
    assert len(job["error_message"]) == 10_000
