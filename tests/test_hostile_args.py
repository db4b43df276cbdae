"""A job's arguments never cost a worker thread: payloads beyond the limits
(too deep, numbers a float cannot hold) fail as ordinary jobs with a clear
error, big integers reach Python intact, and a worker thread that dies anyway
is replaced while /ready says so."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest
import redis

from kiq import Job, Kiq, worker
from kiq.errors import CodecError
from support import wait_for
from test_health import probe


def nested(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = [value]
    return value


def raw_job(jid: str, args_json: str) -> str:
    """A job as a Ruby client (or any Redis writer) might push it."""
    return f'{{"class":"Probe","args":{args_json},"queue":"default","jid":"{jid}","retry":1,"created_at":1.0}}'


def test_hostile_payloads_fail_their_jobs_and_every_thread_lives(make_app: Any, r: redis.Redis) -> None:
    done: list[str] = []
    seen: dict[str, Any] = {}
    lock = threading.Lock()

    @worker(name="Probe")
    def probe_job(tag: str, value: Any = None) -> None:
        with lock:
            done.append(tag)
            seen[tag] = value

    big = "9" * 5000
    hostile = {
        "deep130": f'["deep130", {json.dumps(nested(129))}]',
        "deep99": f'["deep99", {json.dumps(nested(99))}]',  # one container past the limit
        "float": '["float", [0, 1e400]]',
    }
    for jid, args in hostile.items():
        r.lpush("queue:default", raw_job(f"bad{jid}", args))
    r.lpush("queue:default", raw_job("bigint", f'["big", {big}]'))
    r.lpush("queue:default", raw_job("deep98", f'["deep98", {json.dumps(nested(98))}]'))  # at the limit
    r.sadd("queues", "default")
    app = make_app(queues={"default": 3}, workers=[probe_job], health_address="127.0.0.1:0",
                   heartbeat_interval=0.3)
    for i in range(20):
        app.enqueue(probe_job.new(f"n{i}"))
    app.start()
    wait_for(lambda: len(done) == 22, timeout=20, what="the 20 normal jobs, the big integer and depth 98")
    assert sorted(done) == sorted([f"n{i}" for i in range(20)] + ["big", "deep98"])
    assert seen["big"] == 10**5000 - 1, "a 5,000-digit integer reaches Python intact"
    wait_for(lambda: r.zcard("retry") == 3, what="the three hostile jobs in the retry set")
    errors = {json.loads(m)["jid"]: json.loads(m) for m in r.zrange("retry", 0, -1)}
    for jid in ("baddeep130", "baddeep99"):
        assert errors[jid]["error_class"] == "kiq.errors.InvalidJobError"
        assert "nest more than 98 levels" in errors[jid]["error_message"]
        assert "max_nesting" in errors[jid]["error_message"]
    assert errors["badfloat"]["error_class"] == "kiq.errors.InvalidJobError"
    assert "args[1][1] is the number 1e+400, which is outside the range of a float" in errors["badfloat"]["error_message"]
    wait_for(lambda: not r.keys("kiq:wip|*") or all(r.llen(k) == 0 for k in r.keys("kiq:wip|*")),
             what="no job left in an in-progress list")
    address = app.health_address
    assert address is not None
    status, body = wait_for(lambda: (s := probe(address, "/ready"))[0] == 200 and s, what="ready")
    assert body["status"] == "ok"
    assert app._threads is not None and all(t.is_alive() for t in app._threads.threads)


def test_enqueue_accepts_exactly_what_a_worker_runs(make_app: Any, r: redis.Redis) -> None:
    app = make_app()
    with pytest.raises(CodecError, match=r"nested more than 98 levels deep.*max_nesting"):
        app.enqueue(Job("X", [nested(99)]))
    app.enqueue(Job("X", [nested(98)]), sync=True)
    huge = -(10**4400) + 7
    app.enqueue(Job("X", [huge]), sync=True)  # over Python's 4,300-digit int->str limit: no ValueError
    digits = "-" + "9" * 4399 + "3"  # str(huge) itself would hit Python's limit
    assert f'"args":[{digits}]' in r.lrange("queue:default", 0, 0)[0]


def test_a_dead_worker_thread_is_replaced_and_ready_says_so_meanwhile(make_app: Any, r: redis.Redis) -> None:
    ran: list[int] = []

    @worker(name="Count")
    def count(n: int) -> None:
        ran.append(n)

    app = make_app(queues={"default": 2}, workers=[count], health_address="127.0.0.1:0", heartbeat_interval=0.3)
    app.start()
    address = app.health_address
    assert address is not None and app._threads is not None and app._server is not None
    wait_for(lambda: probe(address, "/ready")[0] == 200, what="ready")
    # Simulate a thread lost outside kiq's control: the core is told one is gone.
    app._server.report_threads([1], [2])
    status, body = probe(address, "/ready")
    assert status == 503 and "has 1 of its 2 worker threads running" in str(body["reason"])
    # A thread that really ends is replaced by the supervisor within a second.
    victim = app._threads.threads[0]
    app._threads.slots[0] = (0, threading.Thread(target=lambda: None, name=victim.name))
    app._threads.slots[0][1].start()
    app._threads.slots[0][1].join()
    wait_for(lambda: app._threads.slots[0][1].is_alive(), timeout=5, what="a replacement thread")
    wait_for(lambda: probe(address, "/ready")[0] == 200, what="ready again")
    for i in range(10):
        app.enqueue(count.new(i))
    wait_for(lambda: len(ran) == 10, what="jobs run after the replacement")
    time.sleep(0.1)


def test_an_error_outside_perform_fails_the_job_not_the_thread(make_app: Any, r: redis.Redis) -> None:
    import logging

    ran: list[int] = []

    @worker(name="Count")
    def count(n: int) -> None:
        ran.append(n)

    def broken(record: logging.LogRecord) -> bool:
        if getattr(record, "kiq", {}).get("event") == "job_started" and record.args and record.args[1] == "boom":
            raise RuntimeError("a log filter broke")
        return True

    log = logging.getLogger("kiq")
    old_level = log.level
    log.setLevel(logging.INFO)  # the observed path, where log records are built
    log.addFilter(broken)
    try:
        app = make_app(queues={"default": 1}, workers=[count])
        app.enqueue(Job("Count", [0], jid="boom"))
        for i in range(1, 6):
            app.enqueue(count.new(i))
        app.start()
        wait_for(lambda: sorted(ran) == [1, 2, 3, 4, 5], what="the five jobs after the broken one")
        failed = json.loads(wait_for(lambda: r.zrange("retry", 0, -1), what="the broken job in retry")[0])
        assert failed["jid"] == "boom" and failed["error_class"] == "RuntimeError"
        assert "kiq failed while running this job: a log filter broke" in failed["error_message"]
        assert app._threads is not None and all(t.is_alive() for t in app._threads.threads)
    finally:
        log.removeFilter(broken)
        log.setLevel(old_level)


def test_a_retry_count_beyond_any_limit_dies_instead_of_retrying_forever(make_app: Any, r: redis.Redis) -> None:
    @worker(name="Fails")
    def fails() -> None:
        raise ValueError("no")

    for n, count in enumerate(["1e308", "9223372036854775807"]):
        r.lpush("queue:default", f'{{"class":"Fails","args":[],"jid":"j{n}","retry":true,"retry_count":{count},'
                                 f'"failed_at":1.0,"queue":"default"}}')
    app = make_app(workers=[fails])
    app.start()
    wait_for(lambda: r.zcard("dead") == 2, what="both jobs dead")
    assert r.zcard("retry") == 0
    for member in r.zrange("dead", 0, -1):
        assert '"retry_count":9223372036854775807' in member
