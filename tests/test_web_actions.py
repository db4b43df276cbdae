"""The dashboard's core operations do to the keys what Sidekiq's Web UI does,
read by windows, and agree with Sidekiq 6.4.1's own Web UI on the same Redis."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading

import urllib.request

import pytest

import kiq.web
from kiq import Job, worker
from kiq.api import Api
from support import free_port, sidekiq_server, wait_for
from test_web_ui import Browser, web as sidekiq_web  # noqa: F401 - Sidekiq 6.4.1's Web UI fixture
from webtools import serve


def _key(r, set_name: str, jid: str) -> str:
    for member, score in r.zrange(set_name, 0, -1, withscores=True):
        if json.loads(member)["jid"] == jid:
            return f"{score!r}-{jid}"
    raise AssertionError(f"{jid} not in {set_name}")


def test_retry_now_decrements_retry_count_add_to_queue_does_not(make_app, r) -> None:
    app = make_app()
    admin = Api(app).admin
    jobs = {name: json.dumps({"retry": True, "queue": "q", "class": name, "args": [1], "jid": f"{i:024x}",
                              "retry_count": 3, "error_class": "E", "error_message": "m", "failed_at": 1.5})
            for i, name in enumerate(["A", "B"], start=1)}
    r.zadd("retry", {jobs["A"]: 100.5, jobs["B"]: 100.5})  # the same score: found by jid
    assert admin.act("retry", "retry", [_key(r, "retry", f"{1:024x}")]) == 1
    assert admin.act("retry", "add_to_queue", [_key(r, "retry", f"{2:024x}")]) == 1
    pushed = {j["class"]: j for j in map(json.loads, r.lrange("queue:q", 0, -1))}
    assert pushed["A"]["retry_count"] == 2 and pushed["B"]["retry_count"] == 3
    assert all(isinstance(j["enqueued_at"], float) and "at" not in j for j in pushed.values())
    assert r.sismember("queues", "q") and r.zcard("retry") == 0
    assert admin.act("retry", "retry", [f"100.5-{1:024x}"]) == 0, "a job already gone is skipped"


def test_kill_trims_the_dead_set_as_sidekiq_does(make_app, r) -> None:
    app = make_app(dead_limit=3)
    admin = Api(app).admin
    for i in range(5):
        r.zadd("retry", {json.dumps({"class": "K", "args": [i], "jid": f"{i:024x}", "queue": "q"}): 10 + i})
    assert admin.act_all("retry", "kill") == 5
    # ZREMRANGEBYRANK dead 0 -3 after the adds: Sidekiq's trim keeps dead_limit - 1.
    assert r.zcard("dead") == 2 and r.zcard("retry") == 0


def test_windows_filters_and_bulk_actions_by_filter(make_app, r) -> None:
    app = make_app()
    admin = Api(app).admin
    members = {json.dumps({"class": "Billing::Charge" if i % 3 == 0 else "Mail", "queue": "a" if i % 2 else "b",
                           "args": [i], "jid": f"{i:024x}", "error_message": f"boom {i}"}): float(i)
               for i in range(2500)}
    r.zadd("dead", members)
    page = admin.window("dead", 10, 5, newest_first=True)
    assert page.total == 2500 and [j.args[0] for j in page.jobs] == ["2489", "2488", "2487", "2486", "2485"]
    assert [j.args[0] for j in admin.window("dead", 0, 2).jobs] == ["0", "1"]
    # A bounded search: stops after its budget and says where to continue.
    found = admin.search("dead", 0, 25, 1000, class_name="charge", queue="a", newest_first=True)
    # Newest first, i % 6 == 3 matches: the 25th is 2355, the 145th entry from the top.
    assert found.scanned == 145 and found.next == 145 and len(found.jobs) == 25
    assert all(j.class_name == "Billing::Charge" and j.queue == "a" for j in found.jobs)
    sparse = admin.search("dead", 0, 25, 1000, text="boom 1234")
    assert sparse.jobs == [] and sparse.scanned == 1000 and sparse.next == 1000
    more = admin.search("dead", sparse.next, 25, 1000, text="boom 1234")
    assert [j.args[0] for j in more.jobs] == ["1234"] and more.next == 2000
    end = admin.search("dead", 2400, 500, 1000, text="boom")
    assert end.scanned == 100 and end.next is None and len(end.jobs) == 100
    # All matching the filter, in ZSCAN steps.
    assert admin.act_all("dead", "delete", class_name="billing::charge") == 834
    assert r.zcard("dead") == 2500 - 834
    assert admin.act_all("dead", "add_to_queue", queue="a", text="boom 1") > 0
    assert all(json.loads(m)["class"] == "Mail" for m in r.lrange("queue:a", 0, -1))
    rest = r.zcard("dead")
    assert admin.act_all("dead", "delete") == rest and r.zcard("dead") == 0


def test_queue_delete_clear_and_signal(make_app, r) -> None:
    app = make_app()
    api = Api(app)
    jids = app.enqueue_bulk(worker(name="W")(lambda n: None), [[i] for i in range(1200)], sync=True)
    assert api.admin.window("", 0, 3, queue="default", newest_first=False).jobs[0].jid == jids[0]
    assert api.admin.queue_delete("default", jids[3]) and not api.admin.queue_delete("default", jids[3])
    assert r.llen("queue:default") == 1199
    assert api.admin.queue_clear("default") == 1199 and not r.exists("queue:default")
    assert not r.sismember("queues", "default")
    api.admin.signal("host:1:abc", "TSTP")
    assert r.lrange("host:1:abc-signals", 0, -1) == ["TSTP"] and 0 < r.ttl("host:1:abc-signals") <= 60
    with pytest.raises(kiq.errors.ConfigError):
        api.admin.signal("host:1:abc", "KILL")


def test_kiq_web_command_binds_loopback_and_asks_for_a_password(redis_url: str, r, tmp_path) -> None:
    from kiq.cli import parser

    assert parser().parse_args(["web"]).bind == ("127.0.0.1", 7433)
    port = free_port()
    env = {"KIQ_WEB_USER": "ops", "KIQ_WEB_PASSWORD": "s3cret", "PATH": "/usr/bin:/bin"}
    log = open(tmp_path / "web.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "kiq", "web", "--bind", f"127.0.0.1:{port}", "-r", redis_url],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"

    def status(auth: str | None) -> int:
        req = urllib.request.Request(base + "/", headers={"Authorization": auth} if auth else {})
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except OSError:
            return 0

    try:
        wait_for(lambda: status(None) == 401, timeout=30, interval=0.1, what="kiq web to answer")
        import base64

        assert status("Basic " + base64.b64encode(b"ops:wrong").decode()) == 401
        assert status("Basic " + base64.b64encode(b"ops:s3cret").decode()) == 200
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()
    assert "kiq web: http://127.0.0.1" in (tmp_path / "web.log").read_text()


def test_same_counts_and_processes_as_sidekiq_web(make_app, r, redis_url: str, sidekiq_web: Browser) -> None:
    """Sidekiq 6.4.1's Web UI and kiq's dashboard, on one Redis with a Ruby and a kiq process."""
    release = threading.Event()

    @worker(name="Parity::Busy")
    def busy() -> None:
        release.wait(30)

    @worker(name="Parity::Fails", retry=2)
    def fails() -> None:
        raise RuntimeError("x")

    @worker(name="Parity::Dies", retry=0)
    def dies() -> None:
        raise RuntimeError("y")

    app = make_app(queues={"default": 3}, workers=[busy, fails, dies], heartbeat_interval=0.2, scheduler=False)
    app.enqueue_all([busy.new(), fails.new(), fails.new(), dies.new()])
    app.enqueue(Job("Parity::Later", [1]), delay=3600)
    app.enqueue_all([Job("Parity::Waiting", [i], queue="parked") for i in range(4)])
    with sidekiq_server(redis_url, "class Parked; include Sidekiq::Worker; def perform; end; end\n",
                        "-q", "ruby_only", "-c", "1"):
        app.start()
        wait_for(lambda: r.zcard("retry") == 2 and r.zcard("dead") == 1 and r.scard("processes") == 2
                 and r.hget(app.identity, "busy") == "1", timeout=30, what="kiq and Ruby processes, jobs settled")
        with serve(kiq.web.create_app(redis_url)) as ours:
            with urllib.request.urlopen(ours + "/stats.json", timeout=10) as resp:
                mine = json.loads(resp.read())["sidekiq"]
            theirs = json.loads(sidekiq_web.get("/stats")[1])["sidekiq"]
            for name in ["processed", "failed", "enqueued", "retries", "scheduled", "dead", "processes", "busy"]:
                assert mine[name] == theirs[name], name
            ruby_busy = sidekiq_web.get("/busy")[1]
            with urllib.request.urlopen(ours + "/busy", timeout=10) as resp:
                our_busy = resp.read().decode()
        ids = set(re.findall(r'name="identity" value="([^"]+)"', ruby_busy))
        assert ids == set(re.findall(r'data-identity="([^"]+)"', our_busy)) and app.identity in ids and len(ids) == 2
        release.set()

