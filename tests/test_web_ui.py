"""Sidekiq 6.4.1's own Web UI, served by Debian's rack + webrick, shows kiq's
process and jobs, and its Quiet and Stop buttons act on the kiq process."""

from __future__ import annotations

import html
import http.cookiejar
import os
import re
import subprocess
import tempfile
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator

import pytest

from kiq import Capsule, Job, Worker, worker
from support import RUBY_PRELUDE, free_port, require_ruby, wait_for

CONFIG_RU = RUBY_PRELUDE + """
require "sidekiq/web"
require "securerandom"
use Rack::Session::Cookie, secret: SecureRandom.hex(32), same_site: true, max_age: 86400
run Sidekiq::Web
"""


class Browser:
    def __init__(self, base: str) -> None:
        self.base = base
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))

    def get(self, path: str) -> tuple[int, str]:
        with self.opener.open(self.base + path, timeout=10) as resp:
            return resp.status, resp.read().decode()

    def post(self, path: str, form: dict[str, str]) -> int:
        _, page = self.get(path)
        token = re.search(r"name=['\"]authenticity_token['\"] value=['\"]([^'\"]+)['\"]", page)
        assert token, "no CSRF token on the page"
        data = urllib.parse.urlencode({**form, "authenticity_token": html.unescape(token.group(1))}).encode()
        with self.opener.open(self.base + path, data=data, timeout=10) as resp:
            return resp.status


@pytest.fixture
def web(redis_url: str) -> Iterator[Browser]:
    require_ruby()
    port = free_port()
    with tempfile.TemporaryDirectory() as d:
        ru = os.path.join(d, "config.ru")
        with open(ru, "w") as f:
            f.write(CONFIG_RU)
        log = open(os.path.join(d, "rack.log"), "w")  # noqa: SIM115 - closed below
        proc = subprocess.Popen(["rackup", "-s", "webrick", "-o", "127.0.0.1", "-p", str(port), ru],
                                env={**os.environ, "REDIS_URL": redis_url}, stdout=log, stderr=subprocess.STDOUT)
        browser = Browser(f"http://127.0.0.1:{port}")

        def up() -> bool:
            try:
                return browser.get("/")[0] == 200
            except OSError:
                return False

        try:
            wait_for(up, timeout=30, interval=0.2, what="Sidekiq::Web to start")
            yield browser
        finally:
            proc.terminate()
            proc.wait(10)
            log.close()


def test_pages_show_kiq_process_and_jobs_and_buttons_work(make_app, r, web: Browser) -> None:
    release = threading.Event()

    class BusyJob(Worker, name="Kiq::BusyJob"):
        def perform(self, n: int) -> None:
            release.wait(30)

    @worker(name="Kiq::FailingJob", retry=3)
    def failing() -> None:
        raise ValueError("shown in the UI")

    @worker(name="Kiq::DyingJob", retry=0)
    def dying() -> None:
        raise RuntimeError("dead on arrival")

    # A weighted capsule beside a queue of its own: Sidekiq 7's capsule info, which 6.4's page reads too.
    app = make_app(queues=[Capsule({"default": 2, "mail": 1}, concurrency=2), Capsule(["solo"], 1)],
                   workers=[BusyJob, failing, dying], heartbeat_interval=0.2, tag="kiq-test")
    app.enqueue_all([BusyJob.new(1), failing.new(), dying.new()])
    app.enqueue(Job("Kiq::LaterJob", [1]), delay=3600)
    app.enqueue(Job("Kiq::WaitingJob", [2], queue="waiting"))
    app.start()
    wait_for(lambda: r.hget(app.identity, "busy") == "1" and r.zcard("retry") == 1 and r.zcard("dead") == 1,
             what="a running, a retrying and a dead job")
    pages = {p: web.get(p) for p in ["/", "/busy", "/queues", "/retries", "/scheduled", "/morgue"]}
    assert {p: status for p, (status, _) in pages.items()} == dict.fromkeys(pages, 200)
    busy = pages["/busy"][1]
    host, pid, _ = app.identity.split(":")
    assert host in busy and pid in busy and "kiq-test" in busy and "Kiq::BusyJob" in busy
    assert "mail" in busy and "solo" in busy, "the process's queues"
    assert "Kiq::FailingJob" in pages["/retries"][1] and "shown in the UI" in pages["/retries"][1]
    assert "Kiq::LaterJob" in pages["/scheduled"][1]
    assert "Kiq::DyingJob" in pages["/morgue"][1]
    assert "waiting" in pages["/queues"][1]
    assert web.get("/queues/waiting")[0] == 200 and "Kiq::WaitingJob" in web.get("/queues/waiting")[1]

    # The Busy page's Quiet button, as a browser posts it.
    assert web.post("/busy", {"identity": app.identity, "quiet": "1"}) == 200
    wait_for(lambda: r.hget(app.identity, "quiet") == "true", what="kiq quiet after the Quiet button")
    assert app.running
    release.set()
    # ... and its Stop button: a graceful stop.
    assert web.post("/busy", {"identity": app.identity, "stop": "1"}) == 200
    wait_for(lambda: not app.running, timeout=15, what="kiq stopped by the Stop button")
    wait_for(lambda: not r.sismember("processes", app.identity), what="gone from the Busy page")
    assert app.identity not in web.get("/busy")[1]
    assert r.keys("kiq:wip|*") == []
