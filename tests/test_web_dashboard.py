"""kiq's web dashboard in a real browser (Debian's Chromium, driven by
Selenium through chromedriver), against a real Redis and real kiq processes.

Screenshots of each main page go to ``$KIQ_WEB_SCREENSHOTS`` when set (the
README's come from there), else to a pytest temporary directory, printed."""

from __future__ import annotations

import http.cookiejar
import json
import os
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import kiq.web
from kiq import Job, Worker, worker
from support import wait_for
from webtools import chromium, serve

pytest.importorskip("selenium")
from selenium.webdriver.common.by import By  # noqa: E402


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as driver:
        yield driver


@pytest.fixture
def web(redis_url: str, r: Any) -> Iterator[str]:
    with serve(kiq.web.create_app(redis_url, poll_interval=0.5)) as base:
        yield base


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = os.environ.get("KIQ_WEB_SCREENSHOTS")
    path = Path(where) if where else tmp_path_factory.mktemp("web-screenshots")
    path.mkdir(parents=True, exist_ok=True)
    print(f"dashboard screenshots: {path}")
    return path


def click(browser: Any, css: str, *, accept: bool = False) -> None:
    browser.find_element(By.CSS_SELECTOR, css).click()
    if accept:
        browser.switch_to.alert.accept()


def rows(browser: Any, table: str = "jobs") -> list[str]:
    return [tr.text for tr in browser.find_elements(By.CSS_SELECTOR, f"#{table} tbody tr")]


def test_failing_job_shows_in_retries_and_retry_now_runs_it(make_app, r, web: str, browser: Any) -> None:
    runs: list[int] = []

    @worker(name="Billing::Flaky", retry=5, backtrace=True)
    def flaky(n: int) -> None:
        runs.append(n)
        if len(runs) == 1:
            raise RuntimeError(f"first attempt of {n} fails")

    # No scheduler: only the button can bring the job back.
    app = make_app(workers=[flaky], scheduler=False)
    jid = app.enqueue(flaky.new(7))
    app.start()
    wait_for(lambda: r.zcard("retry") == 1, what="the failure in the retry set")

    browser.get(web + "/retries")
    [row] = rows(browser)
    assert "Billing::Flaky" in row and "RuntimeError" in row and "first attempt of 7 fails" in row
    browser.find_element(By.LINK_TEXT, "Billing::Flaky").click()
    job = wait_for(lambda: browser.find_elements(By.ID, "job"), what="the job's page")
    assert jid in job[0].text
    assert "in `flaky'" in browser.find_element(By.CSS_SELECTOR, "pre.backtrace").text
    click(browser, 'button[value="retry"]')
    wait_for(lambda: runs == [7, 7], what="the retried job to run")
    wait_for(lambda: r.zcard("retry") == 0 and r.llen("queue:default") == 0, what="the job gone from Retries")
    assert "1 retried now" in browser.find_element(By.CSS_SELECTOR, ".notice").text
    browser.get(web + "/retries")
    assert rows(browser) == ["no jobs"]


def test_bulk_delete_of_filtered_dead_jobs(make_app, r, web: str, browser: Any) -> None:
    @worker(name="Doomed::Mailer", retry=0)
    def mailer(n: int) -> None:
        raise ValueError(f"no mail server for {n}")

    @worker(name="Doomed::Report", retry=0)
    def report(n: int) -> None:
        raise ValueError(f"no data for {n}")

    app = make_app(workers=[mailer, report])
    mailer_jids = app.enqueue_bulk(mailer, [[i] for i in range(4)])
    report_jids = app.enqueue_bulk(report, [[i] for i in range(2)])
    app.start()
    wait_for(lambda: r.zcard("dead") == 6, what="six dead jobs")

    browser.get(web + "/morgue")
    browser.find_element(By.NAME, "class").send_keys("mailer")
    click(browser, "form.filter button")
    # The click starts a navigation; the filtered page is there once its note is.
    note = wait_for(lambda: browser.find_elements(By.ID, "scan-note"), what="the filtered page")
    assert "reads the set" in note[0].text
    assert len(rows(browser)) == 4 and all("Doomed::Mailer" in row for row in rows(browser))
    click(browser, '#all button[value="delete"]', accept=True)
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, ".notice"), what="the action's notice")
    assert "4 deleted" in browser.find_element(By.CSS_SELECTOR, ".notice").text
    left = {m for m in r.zrange("dead", 0, -1)}
    assert {re.search(r'"jid":"(\w+)"', m).group(1) for m in left} == set(report_jids)  # type: ignore[union-attr]
    assert not set(mailer_jids) & {re.search(r'"jid":"(\w+)"', m).group(1) for m in left}  # type: ignore[union-attr]


def test_quiet_button_quiets_a_kiq_process(make_app, r, web: str, browser: Any) -> None:
    app = make_app(heartbeat_interval=0.2, tag="web-test")
    app.start()
    wait_for(lambda: r.hget(app.identity, "info"), what="the heartbeat")
    browser.get(web + "/busy")
    row = browser.find_element(By.CSS_SELECTOR, f'tr[data-identity="{app.identity}"]')
    assert "web-test" in row.text and "quiet" not in row.text.split()
    row.find_element(By.CSS_SELECTOR, 'button[value="quiet"]').click()
    wait_for(lambda: r.hget(app.identity, "quiet") == "true", what="the heartbeat to say quiet")
    browser.get(web + "/busy")
    row = browser.find_element(By.CSS_SELECTOR, f'tr[data-identity="{app.identity}"]')
    assert "quiet" in row.text.split() and not row.find_elements(By.CSS_SELECTOR, 'button[value="quiet"]')
    assert app.running


def test_script_argument_is_shown_as_text_and_never_runs(make_app, r, web: str, browser: Any) -> None:
    evil = ["<script>window.kiqPwned = 1</script>", "<img src=x onerror=\"window.kiqPwned = 2\">"]
    app = make_app()
    app.enqueue(Job("Evil<b>Job</b>", evil), delay=3600, sync=True)
    # An encrypted job as a Ruby Enterprise client writes it (only the flag matters to the display rule).
    secret = {"class": "Secret::Job", "args": [1, "c2VjcmV0IGNpcGhlcnRleHQ="], "encrypt": True, "queue": "default",
              "jid": "e" * 24, "retry": True, "created_at": time.time()}
    r.zadd("schedule", {json.dumps(secret): time.time() + 60})
    browser.get(web + "/scheduled")
    text = browser.find_element(By.ID, "jobs").text
    assert "<script>window.kiqPwned = 1</script>" in text and "Evil<b>Job</b>" in text
    assert "[encrypted data]" in text and "c2VjcmV0" not in browser.page_source
    browser.find_element(By.PARTIAL_LINK_TEXT, "Evil").click()
    assert "<img src=x" in browser.find_element(By.ID, "job").text
    assert browser.execute_script("return window.kiqPwned === undefined")
    assert not browser.find_elements(By.CSS_SELECTOR, "#job img, #jobs img")


def _session(base: str) -> tuple[urllib.request.OpenerDirector, str]:
    """An HTTP client with the dashboard's cookie, and a valid CSRF token from a page."""
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    with opener.open(base + "/retries", timeout=10) as resp:
        page = resp.read().decode()
    token = re.search(r'name="authenticity_token" value="([0-9a-f]+)"', page)
    return opener, token.group(1) if token else ""


def _post(opener: urllib.request.OpenerDirector, url: str, form: dict[str, str]) -> int:
    data = urllib.parse.urlencode(form).encode()
    try:
        with opener.open(url, data=data, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_post_without_csrf_token_is_refused(make_app, r, web: str) -> None:
    app = make_app()
    jid = app.enqueue(Job("Later", [1]), delay=3600, sync=True)
    [(member, score)] = r.zrange("schedule", 0, -1, withscores=True)
    key = f"{score!r}-{jid}"
    opener, token = _session(web)
    assert token
    assert _post(opener, f"{web}/scheduled", {"key": key, "action": "delete"}) == 403
    assert _post(opener, f"{web}/scheduled", {"key": key, "action": "delete", "authenticity_token": "0" * 64}) == 403
    other, _ = _session(web)  # another browser's cookie with this one's token
    assert _post(other, f"{web}/scheduled", {"key": key, "action": "delete", "authenticity_token": token}) == 403
    assert r.zcard("schedule") == 1
    assert _post(opener, f"{web}/scheduled", {"key": key, "action": "delete", "authenticity_token": token}) == 200
    assert r.zcard("schedule") == 0


def test_read_only_mode_has_no_buttons_and_refuses_posts(make_app, r, redis_url: str, browser: Any) -> None:
    app = make_app(heartbeat_interval=0.2)
    app.enqueue(Job("Later", [1]), delay=3600, sync=True)
    app.enqueue(Job("Waiting", [1], queue="waiting"), sync=True)
    app.start()
    wait_for(lambda: r.hget(app.identity, "info"), what="the heartbeat")
    with serve(kiq.web.create_app(redis_url, read_only=True)) as base:
        for page in ["/", "/busy", "/queues", "/queues/waiting", "/scheduled", "/retries", "/morgue"]:
            browser.get(base + page)
            assert browser.find_element(By.CSS_SELECTOR, ".badge.ro").text == "read-only"
            assert browser.find_elements(By.CSS_SELECTOR, "main form[method=post], button[name=action]") == [], page
        opener, token = _session(base)
        [(_, score)] = r.zrange("schedule", 0, -1, withscores=True)
        jid = re.search(r'"jid":"(\w+)"', r.zrange("schedule", 0, -1)[0]).group(1)  # type: ignore[union-attr]
        form = {"key": f"{score!r}-{jid}", "action": "delete", "authenticity_token": token}
        assert _post(opener, f"{base}/scheduled", form) == 403
        assert _post(opener, f"{base}/busy", {"action": "stop", "authenticity_token": token}) == 403
        assert _post(opener, f"{base}/queues/waiting/clear", {"authenticity_token": token}) == 403
    assert r.zcard("schedule") == 1 and r.llen("queue:waiting") == 1 and app.running


def test_main_pages_render_and_are_saved_as_screenshots(make_app, r, web: str, browser: Any, shots: Path) -> None:
    release = threading.Event()

    class ImportFeed(Worker, name="Feeds::ImportFeed", queue="feeds"):
        def perform(self, url: str) -> None:
            release.wait(30)

    @worker(name="Mailer::Welcome", queue="mail", retry=3, backtrace=5)
    def welcome(user_id: int, locale: str) -> None:
        if user_id % 3 == 0:
            raise ConnectionError(f"SMTP server refused user {user_id}")
        time.sleep(0.002 * (user_id % 5))

    @worker(name="Billing::Invoice", retry=0)
    def invoice(invoice_id: int) -> None:
        raise KeyError(f"invoice {invoice_id} has no customer")

    app = make_app(queues={"default": 5, "mail": 5, "feeds": 2}, workers=[ImportFeed, welcome, invoice],
                   heartbeat_interval=0.2, tag="web", scheduler=False)
    app.enqueue_bulk(welcome, [[i, "en"] for i in range(30)])
    app.enqueue_bulk(invoice, [[1000 + i] for i in range(3)])
    app.enqueue(ImportFeed.new("https://example.com/feed.xml"))
    app.enqueue(Job("Reports::Nightly", [{"day": "2026-12-01", "format": "pdf"}], queue="reports"), delay=3600)
    app.enqueue(Job("Ruby::CleanupJob", [42]), delay=600)
    app.enqueue_all([Job("Reports::Nightly", [{"day": f"2026-11-{d:02}"}], queue="reports") for d in range(1, 8)])
    app.start()
    wait_for(lambda: r.zcard("dead") == 3 and r.zcard("retry") == 10 and r.hget(app.identity, "busy") == "1",
             timeout=20, what="retries, dead jobs and a running job")
    wait_for(lambda: r.keys("j|*"), what="execution metrics")
    try:
        pages = {"dashboard": "/", "busy": "/busy", "queues": "/queues", "queue": "/queues/reports",
                 "retries": "/retries", "scheduled": "/scheduled", "dead": "/morgue", "metrics": "/metrics"}
        for name, path in pages.items():
            browser.get(web + path)
            assert "kiq" in browser.title and browser.find_element(By.TAG_NAME, "h1").text
            if name == "dashboard":
                wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#realtime polyline.processed"),
                         what="the live chart drawn from polled stats")
                wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#history rect"), what="the history chart")
            browser.save_screenshot(str(shots / f"{name}.png"))
        assert "Mailer::Welcome" in browser.find_element(By.ID, "metrics").text
        browser.get(web + "/retries")
        browser.find_element(By.LINK_TEXT, "Mailer::Welcome").click()
        browser.save_screenshot(str(shots / "retry-job.png"))
        assert "ConnectionError" in browser.find_element(By.CSS_SELECTOR, ".error-panel").text
    finally:
        release.set()
    assert {p.name for p in shots.glob("*.png")} >= {f"{n}.png" for n in pages}
    assert all(p.stat().st_size > 5000 for p in shots.glob("*.png"))
