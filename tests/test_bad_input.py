"""Payloads that cannot run never crash the process and never run code: they
go to the dead set (unreadable JSON, as Sidekiq does) or the retry path."""

from __future__ import annotations

import json
import os
import tempfile

from kiq import worker
from support import wait_for


def test_bad_payloads_are_handled_and_good_ones_still_run(make_app, r, rb):
    ran: list[int] = []

    @worker(name="Good")
    def good(n: int) -> None:
        ran.append(n)

    marker = os.path.join(tempfile.mkdtemp(), "pwned")
    bad = [
        b"not json",
        b"[1, 2]",
        b'"just a string"',
        b"\xff\xfe{\"class\":1}",
        json.dumps({"args": [1], "jid": "a" * 24}).encode(),
        json.dumps({"class": "Good", "args": "oops", "jid": "b" * 24}).encode(),
        json.dumps({"class": "Good", "jid": "c" * 24}).encode(),
        json.dumps({"class": "os.system", "args": [f"touch {marker}"], "jid": "d" * 24, "retry": 0}).encode(),
        json.dumps({"class": "subprocess.call", "args": [["touch", marker]], "jid": "e" * 24}).encode(),
    ]
    for payload in bad:
        r.lpush("queue:default", payload)
    app = make_app(workers=[good])
    app.enqueue(good.new(1))
    app.start()
    wait_for(lambda: ran == [1], what="the good job")
    wait_for(lambda: r.zcard("dead") + r.zcard("retry") == len(bad), what="every bad payload settled")
    assert not os.path.exists(marker), "a class name from Redis was never imported"
    raw_dead = rb.zrange("dead", 0, -1)
    dead = [m.decode("utf-8", "replace") for m in raw_dead]
    assert {"not json", "[1, 2]", '"just a string"'} <= set(dead)
    assert b"\xff\xfe{\"class\":1}" in raw_dead, "unreadable bytes are kept as they were"
    unknown = json.loads(next(m for m in dead if "os.system" in m))
    assert unknown["error_class"] == "kiq.errors.UnknownWorkerError"
    assert "no worker is registered for class 'os.system'" in unknown["error_message"]
    retry = {json.loads(m)["jid"][0]: json.loads(m) for m in r.zrange("retry", 0, -1)}
    assert set(retry) == {"a", "b", "c", "e"}
    assert retry["a"]["error_class"] == "kiq.errors.InvalidJobError"
    assert 'no "class"' in retry["a"]["error_message"]
    assert '"args"' in retry["b"]["error_message"] and '"args"' in retry["c"]["error_message"]
    # No `retry` field and an unknown class: retried, not silently dropped.
    assert retry["e"]["retry_count"] == 0 and retry["e"]["error_class"] == "kiq.errors.UnknownWorkerError"
    assert r.keys("kiq:wip|*") == [] or r.llen(f"kiq:wip|{app.identity}|default") == 0


def test_a_job_raising_system_exit_fails_only_itself(make_app, r):
    ran: list[int] = []

    @worker(name="Exit", retry=False)
    def exits(n: int) -> None:
        if n == 0:
            raise SystemExit(3)
        ran.append(n)

    app = make_app(queues={"default": 1}, workers=[exits])
    app.enqueue_bulk(exits, [[0], [1], [2]])
    app.start()
    wait_for(lambda: ran == [1, 2], what="the thread kept working")
    wait_for(lambda: r.get("stat:failed") == "1", what="the failure counted")
