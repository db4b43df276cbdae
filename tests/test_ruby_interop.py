"""Interop with Debian's Ruby Sidekiq 6.4.1, both ways, on one redis-server.

Ruby pushes and kiq runs; kiq pushes and a real Sidekiq server runs; kiq's
failures are read by Sidekiq's own RetrySet, DeadSet and Stats.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from kiq import Job, Worker, worker
from support import require_ruby, ruby, sidekiq_server, wait_for

pytestmark = pytest.mark.usefixtures("ruby_available")


@pytest.fixture(scope="module")
def ruby_available() -> None:
    require_ruby()


# Each value as Ruby writes it and as Python must see it.
RUBY_ARGS = '[1, "two", {"nested" => {"list" => [1.5, nil, true, false], "é✓" => "ünï"}}, 2**80, -7, 0.1, nil, true, "", [], {}]'
PY_ARGS: list[Any] = [1, "two", {"nested": {"list": [1.5, None, True, False], "é✓": "ünï"}}, 2**80, -7, 0.1, None, True, "", [], {}]


class HardJob(Worker, name="HardJob"):
    seen: list[tuple[str, list[Any]]] = []

    def perform(self, *args: Any) -> None:
        HardJob.seen.append((self.jid, list(args)))


@pytest.fixture(autouse=True)
def _reset() -> None:
    HardJob.seen = []


def test_ruby_push_push_bulk_and_perform_in_run_in_kiq(make_app, redis_url, r):
    out = ruby(
        f"""
        class HardJob; include Sidekiq::Worker; end
        a = Sidekiq::Client.push("class" => "HardJob", "args" => {RUBY_ARGS})
        b = Sidekiq::Client.push_bulk("class" => "HardJob", "args" => [[1], [2], [3]])
        c = HardJob.perform_in(1, "scheduled", 2.5)
        puts JSON.generate([a, b, c])
        """,
        redis_url,
    )
    pushed, bulk, scheduled = json.loads(out)
    assert r.zcard("schedule") == 1
    app = make_app(workers=[HardJob])
    app.start()
    wait_for(lambda: len(HardJob.seen) == 5, timeout=15, what="5 Ruby jobs run by kiq")
    by_jid = dict(HardJob.seen)
    assert by_jid[pushed] == PY_ARGS
    assert [by_jid[j] for j in bulk] == [[1], [2], [3]]
    assert by_jid[scheduled] == ["scheduled", 2.5]
    assert type(by_jid[pushed][3]) is int and by_jid[pushed][3] == 2**80
    wait_for(lambda: r.get("stat:processed") == "5", what="stats")


RUBY_WORKERS = """
class RubyJob
  include Sidekiq::Worker
  sidekiq_options queue: "rb"
  def perform(*args)
    Sidekiq.redis { |c| c.rpush("ruby:results", JSON.generate({"jid" => jid, "args" => args})) }
  end
end
Sidekiq.options[:poll_interval_average] = 1
"""


def test_kiq_pushes_run_in_a_ruby_sidekiq_server(make_app, redis_url, r):
    app = make_app()
    now_jid = app.enqueue(Job("RubyJob", PY_ARGS, queue="rb"))
    later_jid = app.enqueue(Job("RubyJob", ["later", {"at": 1}], queue="rb"), delay=1)
    bulk = app.enqueue_bulk(Job("RubyJob", queue="rb"), [[i, f"n{i}"] for i in range(50)])
    with sidekiq_server(redis_url, RUBY_WORKERS, "-q", "rb", "-c", "5") as proc:
        wait_for(lambda: r.llen("ruby:results") == 52, timeout=40, what=f"52 jobs run by Ruby (pid {proc.pid})")
    results = {d["jid"]: d["args"] for d in map(json.loads, r.lrange("ruby:results", 0, -1))}
    assert results[now_jid] == PY_ARGS
    assert results[later_jid] == ["later", {"at": 1}]
    assert [results[j] for j in bulk] == [[i, f"n{i}"] for i in range(50)]
    assert r.llen("queue:rb") == 0 and r.zcard("schedule") == 0


def test_kiq_failures_read_by_ruby_retry_set_dead_set_and_stats(make_app, redis_url, r):
    @worker(name="Payments::Charge", retry=1, backtrace=True)
    def charge(amount: int) -> None:
        raise ConnectionRefusedError(f"gateway down for {amount}")

    @worker(name="NoRetry", retry=False)
    def no_retry() -> None:
        raise RuntimeError("gone")

    app = make_app(workers=[charge, no_retry])
    jid = app.enqueue(charge.new(42))
    app.enqueue(no_retry.new())
    app.start()
    wait_for(lambda: r.zcard("retry") == 1 and r.get("stat:failed") == "2", what="first failures")
    report = json.loads(
        ruby(
            """
            j = Sidekiq::RetrySet.new.first
            puts JSON.generate({
              "size" => Sidekiq::RetrySet.new.size, "klass" => j.klass, "display_class" => j.display_class,
              "jid" => j.jid, "queue" => j.queue, "args" => j.args, "error_class" => j["error_class"],
              "error_message" => j["error_message"], "retry_count" => j["retry_count"],
              "backtrace" => j.error_backtrace, "at" => j.at.to_f, "failed_at" => j["failed_at"],
              "processed" => Sidekiq::Stats.new.processed, "failed" => Sidekiq::Stats.new.failed,
            })
            """,
            redis_url,
        )
    )
    assert report["size"] == 1 and report["klass"] == "Payments::Charge" and report["display_class"] == "Payments::Charge"
    assert (report["jid"], report["queue"], report["args"]) == (jid, "default", [42])
    assert (report["error_class"], report["error_message"]) == ("ConnectionRefusedError", "gateway down for 42")
    assert report["retry_count"] == 0
    assert report["backtrace"] and "in `charge'" in report["backtrace"][0]
    assert time.time() + 10 < report["at"] < time.time() + 30
    assert (report["processed"], report["failed"]) == (2, 2)
    # "Retry now" as the Web UI does it: Sidekiq decrements retry_count and
    # re-pushes; kiq runs it, it fails again, and (a manual retry using no
    # attempt, as in Sidekiq) it is back in the retry set with retry_count 0.
    ruby("Sidekiq::RetrySet.new.each(&:retry)", redis_url)
    again = wait_for(
        lambda: [json.loads(m) for m in r.zrange("retry", 0, -1) if "retried_at" in json.loads(m)],
        what="failed again after retry-now",
    )[0]
    assert again["retry_count"] == 0 and again["jid"] == jid
    # When its retry comes due, kiq's scheduler re-runs it; out of retries, it dies.
    for member in r.zrange("retry", 0, -1):
        r.zadd("retry", {member: time.time() - 1}, xx=True)
    wait_for(lambda: r.zcard("dead") == 1, timeout=10, what="job dead after its retry")
    dead = json.loads(
        ruby(
            """
            d = Sidekiq::DeadSet.new.first
            puts JSON.generate({"size" => Sidekiq::DeadSet.new.size, "klass" => d.klass, "jid" => d.jid,
              "retry_count" => d["retry_count"], "error_class" => d["error_class"],
              "retried_at" => d["retried_at"], "failed" => Sidekiq::Stats.new.failed,
              "retry_size" => Sidekiq::RetrySet.new.size, "dead_count" => Sidekiq::Stats.new.dead_size})
            """,
            redis_url,
        )
    )
    assert (dead["size"], dead["klass"], dead["jid"]) == (1, "Payments::Charge", jid)
    assert dead["retry_count"] == 1 and isinstance(dead["retried_at"], float)
    assert dead["error_class"] == "ConnectionRefusedError"
    assert (dead["failed"], dead["retry_size"], dead["dead_count"]) == (4, 0, 1)


def test_ruby_reads_kiq_scheduled_jobs_and_queue_latency(make_app, redis_url, r):
    app = make_app()
    app.enqueue(Job("RubyJob", [1], queue="rb"), delay=3600)
    app.enqueue(Job("RubyJob", [2], queue="rb"))
    out = json.loads(
        ruby(
            """
            s = Sidekiq::ScheduledSet.new.first
            q = Sidekiq::Queue.new("rb")
            puts JSON.generate({"klass" => s.klass, "args" => s.args, "at" => s.at.to_f, "queue" => s.queue,
              "size" => q.size, "latency" => q.latency, "queues" => Sidekiq::Queue.all.map(&:name),
              "enqueued" => Sidekiq::Stats.new.enqueued, "first" => q.first.args})
            """,
            redis_url,
        )
    )
    assert (out["klass"], out["args"], out["queue"]) == ("RubyJob", [1], "rb")
    assert abs(out["at"] - (time.time() + 3600)) < 10
    assert (out["size"], out["queues"], out["enqueued"], out["first"]) == (1, ["rb"], 1, [2])
    assert 0 <= out["latency"] < 10
