"""Enqueueing: immediate, scheduled and bulk pushes land where Sidekiq puts them."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import time

import pytest

from kiq import Job, Kiq, Worker, worker
from kiq.errors import CodecError, ConfigError, ConnectionError, TimeoutError
from support import wait_for


class HardJob(Worker, name="HardJob"):
    def perform(self, *args: object) -> None:
        pass


class Opts(Worker, queue="low", retry=5, backtrace=10, tags=["a"], dead=False, retry_queue="slow", name="OptJob"):
    pass


@worker(queue="events", name="Billing::InvoiceJob")
def invoice(invoice_id: int) -> int:
    return invoice_id


def test_immediate_push_is_sadd_plus_lpush(make_app, r):
    app = make_app()
    jid = app.enqueue(HardJob.new(1, "two", {"k": 3.5}))
    app.flush()
    assert len(jid) == 24 and int(jid, 16) >= 0
    assert r.smembers("queues") == {"default"}
    [raw] = r.lrange("queue:default", 0, -1)
    job = json.loads(raw)
    assert list(job) == ["retry", "queue", "args", "class", "jid", "created_at", "enqueued_at"]
    assert job == {**job, "retry": True, "queue": "default", "args": [1, "two", {"k": 3.5}], "class": "HardJob", "jid": jid}
    assert isinstance(job["created_at"], float) and abs(job["created_at"] - time.time()) < 5
    assert job["enqueued_at"] == job["created_at"]


def test_worker_options_are_written_like_sidekiq_options(make_app, r):
    make_app().enqueue(Opts.new(1), sync=True)
    job = json.loads(r.lrange("queue:low", 0, -1)[0])
    assert list(job)[:7] == ["retry", "queue", "backtrace", "retry_queue", "dead", "tags", "args"]
    assert (job["retry"], job["backtrace"], job["dead"], job["tags"], job["retry_queue"]) == (5, 10, False, ["a"], "slow")


def test_function_worker_and_wire_name(make_app, r):
    assert invoice(3) == 3
    make_app().enqueue(invoice.new(42), sync=True)
    job = json.loads(r.lrange("queue:events", 0, -1)[0])
    assert job["class"] == "Billing::InvoiceJob" and job["args"] == [42]
    with pytest.raises(ConfigError, match="positional"):
        invoice.new(invoice_id=1)


def test_default_wire_name_is_the_dotted_path():
    class Local(Worker):
        pass

    assert Local.wire_name() == f"{__name__}.test_default_wire_name_is_the_dotted_path.<locals>.Local"

    class Child(HardJob):
        pass

    assert Child.wire_name().endswith("Child"), "a subclass does not inherit its parent's name"
    # new() binds the name and options once per class: each class gets its own.
    assert Local.new().class_name == Local.wire_name() and Child.new(1).class_name == Child.wire_name()
    assert HardJob.new(1).class_name == "HardJob"

    class Low(Opts, queue="lower"):
        pass

    job = Low.new(1)
    assert (job.class_name, job.queue, job.retry, dict(job.options)) == (
        Low.wire_name(), "lower", 5, {"backtrace": 10, "retry_queue": "slow", "dead": False, "tags": ["a"]})
    assert Opts.new(1).queue == "low", "the parent keeps its own"
    Low.kiq_options = dataclasses.replace(Low.kiq_options, queue="lowest")
    assert Low.new(1).queue == "lowest", "options replaced after the class was made are seen"


def test_enqueue_by_class_name_for_ruby_workers(make_app, r):
    app = make_app()
    app.enqueue(Job("Ruby::Mailer", ["hi"], queue="mail", retry=3, options={"tags": ["x"]}), sync=True)
    job = json.loads(r.lrange("queue:mail", 0, -1)[0])
    assert (job["class"], job["args"], job["retry"], job["tags"]) == ("Ruby::Mailer", ["hi"], 3, ["x"])
    assert app.enqueue(Job("X").set(queue="other", tags=["t"]), sync=True)
    assert json.loads(r.lrange("queue:other", 0, -1)[0])["tags"] == ["t"]


def test_scheduled_push_is_zadd_without_enqueued_at_or_sadd(make_app, r):
    app = make_app()
    before = time.time()
    app.enqueue(HardJob.new("later"), delay=60)
    app.enqueue(HardJob.new("at"), at=dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1))
    app.enqueue(HardJob.new("epoch"), at=time.time() + 120)
    app.enqueue(HardJob.new("td"), delay=dt.timedelta(minutes=5))
    app.flush()
    assert r.smembers("queues") == set()
    entries = r.zrange("schedule", 0, -1, withscores=True)
    assert len(entries) == 4
    by_arg = {json.loads(m)["args"][0]: (json.loads(m), s) for m, s in entries}
    job, score = by_arg["later"]
    assert before + 59 < score < time.time() + 61
    assert "enqueued_at" not in job and "at" not in job
    assert abs(by_arg["at"][1] - (before + 3600)) < 5
    assert abs(by_arg["td"][1] - (before + 300)) < 5


def test_a_time_in_the_past_pushes_now(make_app, r):
    app = make_app()
    app.enqueue(HardJob.new(1), delay=-5)
    app.enqueue(HardJob.new(2), at=dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc))
    app.flush()
    assert r.llen("queue:default") == 2 and r.zcard("schedule") == 0


def test_bad_times_are_refused(make_app):
    app = make_app()
    with pytest.raises(ConfigError, match="relative delay"):
        app.enqueue(HardJob.new(1), at=3600)
    with pytest.raises(ConfigError, match="not both"):
        app.enqueue(HardJob.new(1), at=time.time(), delay=1)
    with pytest.raises(ConfigError):
        app.enqueue(HardJob.new(1), delay="5")  # type: ignore[arg-type]


def test_bulk_push_one_round_trip(make_app, r):
    app = make_app()
    jids = app.enqueue_bulk(HardJob, [[i, "x"] for i in range(2500)], sync=True)
    assert len(jids) == len(set(jids)) == 2500
    raw = r.lrange("queue:default", 0, -1)
    assert len(raw) == 2500
    # FIFO: the first job is at the right end, where consumers take from.
    assert json.loads(raw[-1])["args"] == [0, "x"] and json.loads(raw[0])["args"] == [2499, "x"]
    assert app.enqueue_bulk(Opts, [[1], [2]], delay=30, sync=True) and r.zcard("schedule") == 2


def test_enqueue_all_mixes_classes_and_queues(make_app, r):
    jids = make_app().enqueue_all([HardJob.new(1), invoice.new(2), Job("Ruby", [3], queue="rb")], sync=True)
    assert len(jids) == 3
    assert r.smembers("queues") == {"default", "events", "rb"}


@dataclasses.dataclass
class Point:
    x: int
    y: float


def test_args_sanitised_or_rejected_at_enqueue(make_app, r):
    app = make_app()
    app.enqueue(HardJob.new((1, 2), Point(1, 2.5), 2**100, "é✓", None, True, -0.0, 1e16))
    app.flush()
    job = json.loads(r.lrange("queue:default", 0, -1)[0])
    assert job["args"] == [[1, 2], {"x": 1, "y": 2.5}, 2**100, "é✓", None, True, -0.0, 1e16]
    assert isinstance(job["args"][-1], float)
    for bad, needle in [
        (object(), "args[0] has type object"),
        ({"when": dt.datetime.now()}, 'args[0]["when"] has type datetime.datetime'),
        ({1: "x"}, "key of type int"),
        (math.nan, "JSON cannot carry"),
        ({1, 2}, "type set"),
        (b"bytes", "type bytes"),
    ]:
        with pytest.raises(CodecError, match=needle.replace("[", r"\[").replace("]", r"\]")):
            app.enqueue(HardJob.new(bad))
    app.flush()
    assert r.llen("queue:default") == 1, "nothing half-written"


def test_bad_queue_names_and_options(make_app):
    app = make_app()
    with pytest.raises(CodecError, match="queue name"):
        app.enqueue(Job("X", [], queue="has space"))
    with pytest.raises(CodecError, match="set by kiq"):
        app.enqueue(Job("X", [], options={"jid": "abc"}))
    with pytest.raises(ConfigError):
        Job("X", "not a list")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        Kiq(queues={"default": 0})


def test_unreachable_redis_is_a_clear_connection_error():
    app = Kiq("redis://127.0.0.1:1/0")
    with pytest.raises(ConnectionError):
        app.enqueue(HardJob.new(1), sync=True)
    with pytest.raises(ConfigError, match="invalid Redis URL"):
        Kiq("http://nope").enqueue(HardJob.new(1))
    # Buffered, the job waits for Redis instead of failing; flush says it is not there yet.
    app = Kiq("redis://127.0.0.1:1/0", buffer_full_timeout=0.1)
    app.enqueue(HardJob.new(1))
    with pytest.raises(TimeoutError, match="not all in Redis"):
        app.flush(0.3)
    wait_for(lambda: (app.buffer_stats() or {}).get("failing"), what="the flush error")
    assert app.buffer_stats()["jobs"] == 1


def test_redis_url_from_environment(monkeypatch, redis_url):
    monkeypatch.setenv("REDIS_URL", redis_url)
    assert Kiq().redis_url == redis_url
    monkeypatch.delenv("REDIS_URL")
    assert Kiq().redis_url == "redis://localhost:6379/0"


def test_namespace_prefixes_keys(make_app, r):
    make_app(namespace="myapp").enqueue(HardJob.new(1), sync=True)
    assert r.llen("myapp:queue:default") == 1 and r.smembers("myapp:queues") == {"default"}


def test_millisecond_timestamps_for_sidekiq_8(make_app, r):
    make_app(timestamps="milliseconds").enqueue(HardJob.new(1), sync=True)
    job = json.loads(r.lrange("queue:default", 0, -1)[0])
    assert isinstance(job["created_at"], int) and abs(job["created_at"] / 1000 - time.time()) < 5
